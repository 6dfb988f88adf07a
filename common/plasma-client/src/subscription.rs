//! A connection that streams the store's events: objects sealed and deleted (evicted
//! ones included). The raylet uses it to learn when task arguments become local.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rayd_common::id::ObjectId;
use rayd_common::proto::plasma::v1 as pb;

use crate::protocol::{self, FrameReader, Outgoing, ProtocolError};
use crate::ClientError;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Sealed,
    Deleted,
}

/// One event of a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub id: ObjectId,
    /// Sizes, for sealed objects.
    pub data_size: u64,
    pub metadata_size: u64,
}

/// The store's stream of events, from the moment of subscribing.
#[derive(Debug)]
pub struct Subscription {
    stream: UnixStream,
    reader: FrameReader,
}

impl Subscription {
    /// Subscribes to the store at `socket`, on a connection of its own.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let request = pb::Request {
            kind: Some(pb::request::Kind::Subscribe(pb::Subscribe {})),
        };
        Outgoing::new(protocol::encode_frame(&request), Vec::new())
            .send_blocking(stream.as_fd())
            .map_err(ProtocolError::Io)?;
        let mut reader = FrameReader::new(protocol::MAX_REQUEST_FRAME);
        let body = reader.read_frame_blocking(stream.as_fd())?;
        let reply: pb::Reply = protocol::decode("reply", &body)?;
        match reply.kind {
            Some(pb::reply::Kind::Ack(_)) => Ok(Self { stream, reader }),
            Some(pb::reply::Kind::Error(e)) => Err(ClientError::from_reply(e)),
            other => Err(ClientError::Unexpected {
                expected: "ack",
                got: format!("{other:?}"),
            }),
        }
    }

    /// Waits at most `timeout` (forever when `None`) for the next event; `Ok(None)` when
    /// the time passed.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(ProtocolError::Io)?;
        let body = match self.reader.read_frame_blocking(self.stream.as_fd()) {
            Ok(body) => body,
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let event: pb::Event = protocol::decode("event", &body)?;
        let kind = match pb::event::Kind::try_from(event.kind) {
            Ok(pb::event::Kind::Sealed) => EventKind::Sealed,
            Ok(pb::event::Kind::Deleted) => EventKind::Deleted,
            _ => {
                return Err(
                    ProtocolError::Invalid(format!("unknown event kind {}", event.kind)).into(),
                )
            }
        };
        Ok(Some(Event {
            kind,
            id: protocol::object_id(&event.object_id)?,
            data_size: event.data_size,
            metadata_size: event.metadata_size,
        }))
    }
}
