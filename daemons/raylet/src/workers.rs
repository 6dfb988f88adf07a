//! Worker processes: starting `rayd-worker`, forwarding what it prints, noticing its end.

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::Signal;
use rayd_common::process::set_parent_death_signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::io::{Input, WorkerCommand};
use crate::scheduler::Event;

/// Starts workers from one thread that lives as long as the raylet.
///
/// A worker's parent-death signal fires when the *thread* that forked it ends, not its
/// process. Workers were started from tokio's blocking pool, whose threads end after 10 s
/// without work: every worker was killed 10 s after the last worker start, whatever it was
/// running (its task was retried; an actor restarted or died).
#[derive(Debug)]
pub struct Spawner {
    starts: std::sync::mpsc::Sender<()>,
    inputs: mpsc::UnboundedSender<Input>,
}

impl Spawner {
    /// Starts the thread; each [`Self::start`] then starts one worker, whose pid (or why
    /// it could not start) comes back on `inputs`.
    pub fn new(
        command: WorkerCommand,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> std::io::Result<Self> {
        let (starts, requests) = std::sync::mpsc::channel::<()>();
        let runtime = tokio::runtime::Handle::current();
        let events = inputs.clone();
        std::thread::Builder::new()
            .name("worker-spawner".into())
            .spawn(move || {
                // The child's pipes and its wait are tokio's.
                let _runtime = runtime.enter();
                for () in requests {
                    let event = match spawn_worker(
                        &command.binary,
                        &command.raylet_socket,
                        &command.log_level,
                        &command.node_id,
                        &events,
                    ) {
                        Ok(pid) => Event::WorkerSpawned { pid },
                        Err(e) => Event::WorkerSpawnFailed {
                            error: format!("{}: {e}", command.binary.display()),
                        },
                    };
                    let _ = events.send(event.into());
                }
            })?;
        Ok(Self { starts, inputs })
    }

    /// Starts one worker (off the caller's thread: a fork and exec take milliseconds).
    pub fn start(&self) {
        if self.starts.send(()).is_err() {
            // The thread is gone (it panicked): the start fails visibly, not silently.
            let error = "the worker-spawner thread is gone".to_string();
            let _ = self.inputs.send(Event::WorkerSpawnFailed { error }.into());
        }
    }
}

/// Starts a worker that connects to the raylet at `socket`; returns its pid.
fn spawn_worker(
    binary: &Path,
    socket: &Path,
    log_level: &str,
    node_id: &str,
    events: &mpsc::UnboundedSender<Input>,
) -> std::io::Result<u32> {
    let mut command = Command::new(binary);
    command
        .env("RAYD_RAYLET_SOCKET", socket)
        .env("RAYD_WORKER_LOG_LEVEL", log_level)
        .env("RAYD_NODE_ID", node_id)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A worker never outlives its raylet.
    set_parent_death_signal(&mut command, Signal::SIGKILL);
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, pid, false, events.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, pid, true, events.clone()));
    }
    let events = events.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        let _ = events.send(Event::WorkerExited { pid, status }.into());
    });
    Ok(pid)
}

async fn forward(
    stream: impl AsyncRead + Unpin,
    pid: u32,
    stderr: bool,
    events: mpsc::UnboundedSender<Input>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if events
            .send(Event::WorkerOutput { pid, line, stderr }.into())
            .is_err()
        {
            return;
        }
    }
}
