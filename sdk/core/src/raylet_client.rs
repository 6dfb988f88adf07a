//! The connection to the node's raylet: blocking frames over its Unix socket.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use rayd_common::framing::{self, InputWaiter};
use rayd_common::proto::raylet::v1 as pb;
use rayd_gcs::GcsClient;

use crate::CoreError;

/// Both halves of the connection; writes may come from any thread, reads from one.
#[derive(Debug)]
pub(crate) struct RayletConnection {
    writer: Mutex<BufWriter<UnixStream>>,
    reader: Mutex<Option<BufReader<InputWaiter>>>,
}

impl RayletConnection {
    pub fn connect(path: &Path) -> Result<Self, CoreError> {
        let stream = UnixStream::connect(path).map_err(|source| CoreError::RayletConnect {
            path: path.display().to_string(),
            source,
        })?;
        let reader = stream.try_clone().map_err(CoreError::Raylet)?;
        Ok(Self {
            writer: Mutex::new(BufWriter::new(stream)),
            reader: Mutex::new(Some(BufReader::new(InputWaiter::new(reader)))),
        })
    }

    /// Sends one message.
    pub fn send(&self, kind: pb::client_message::Kind) -> Result<(), CoreError> {
        let message = pb::ClientMessage { kind: Some(kind) };
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        framing::write_message(&mut *writer, &message).map_err(CoreError::Raylet)?;
        writer.flush().map_err(CoreError::Raylet)
    }

    /// Waits for the next message from the raylet.
    pub fn receive(&self) -> Result<pb::server_message::Kind, CoreError> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let reader = guard.as_mut().ok_or(CoreError::RayletClosed)?;
        match framing::read_message::<pb::ServerMessage>(reader).map_err(CoreError::Raylet)? {
            Some(pb::ServerMessage { kind: Some(kind) }) => Ok(kind),
            Some(_) => Err(CoreError::Unexpected {
                expected: "a message",
                got: "an empty one".into(),
            }),
            None => Err(CoreError::RayletClosed),
        }
    }

    /// Hands the reading half over (drivers: see [`crate::inbox`]), with a clone of the
    /// socket to wait on.
    pub fn take_reader(&self) -> Option<(BufReader<InputWaiter>, UnixStream)> {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let socket = reader.get_ref().socket().try_clone().ok()?;
        Some((reader, socket))
    }
}

impl Drop for RayletConnection {
    /// Ends the connection for the raylet too, even while the reading half (a clone of
    /// the socket) lives on in the driver's inbox.
    fn drop(&mut self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// The raylet socket of the node on `ip` in the cluster whose GCS is at `redis_address`;
/// when that node's socket is there but closed to this user, says so.
pub fn find_local_raylet(
    redis_address: &str,
    password: Option<&str>,
    ip: &str,
) -> Result<String, CoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CoreError::Runtime)?;
    let mut nodes = runtime.block_on(async {
        let gcs = GcsClient::connect(redis_address, password).await?;
        let nodes = gcs.nodes().await?;
        gcs.quit().await;
        Ok::<_, CoreError>(nodes)
    })?;
    nodes.retain(|n| n.alive && n.node_ip_address == ip);
    nodes.sort_by_key(|n| std::cmp::Reverse(n.last_heartbeat_ms));
    let mut denied = None;
    for node in nodes {
        // Connecting needs search permission on the directories and write permission on
        // the socket: what a user outside the daemons' group lacks.
        match nix::unistd::access(
            Path::new(&node.raylet_socket),
            nix::unistd::AccessFlags::W_OK,
        ) {
            Ok(()) => return Ok(node.raylet_socket),
            Err(e @ (nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)) => {
                denied.get_or_insert((node.raylet_socket, e.desc()));
            }
            Err(_) => {}
        }
    }
    Err(match denied {
        Some((socket, reason)) => CoreError::RayletDenied {
            ip: ip.to_string(),
            socket,
            reason: reason.to_string(),
        },
        None => CoreError::NoLocalRaylet {
            redis_address: redis_address.to_string(),
            ip: ip.to_string(),
        },
    })
}
