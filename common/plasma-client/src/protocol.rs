//! The store's framing on its Unix socket, shared by the server and both clients.
//!
//! A frame is a little-endian `u32` length and that many bytes of one protobuf message
//! (`rayd.plasma.v1.Request` from clients; `Reply`, or `Event` after `Subscribe`, from
//! the store). File descriptors travel as SCM_RIGHTS attached to the frame's bytes: a
//! reply lists its `new_segments`, and one descriptor per file of each arrives with it,
//! in order ([`fds_of`]). A frame carrying many descriptors is sent in pieces of at most
//! [`MAX_FDS_PER_SEND`] descriptors each, because the kernel hands one piece's
//! descriptors to one `recvmsg`, whose control buffer here has room for that many.
//!
//! This module only moves bytes and descriptors; it works on non-blocking sockets (it
//! returns `WouldBlock`, for the async callers) and on blocking ones alike.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use prost::Message;
use rayd_common::id::ObjectId;

/// ID of the arena segment: the one segment every client maps at connect.
pub const ARENA_SEGMENT: u64 = 0;

/// The segment ID of the revocation page (no object segment gets it: they count up from 1).
pub const REVOCATION_SEGMENT: u64 = u64::MAX;
/// Largest frame a client may send: requests are small.
pub const MAX_REQUEST_FRAME: usize = 1 << 20;
/// Largest frame the store sends (a listing of many objects).
pub const MAX_REPLY_FRAME: usize = 256 << 20;
/// Most descriptors in one `sendmsg`.
pub const MAX_FDS_PER_SEND: usize = 64;
/// Most object IDs in one request.
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// How many descriptors come with `segments`: one per file of each.
pub fn fds_of(segments: &[crate::pb::Segment]) -> usize {
    segments.iter().map(|s| s.parts.len().max(1)).sum()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("undecodable {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("a frame announced {expected} descriptors but {received} arrived")]
    MissingFds { expected: usize, received: usize },
    #[error("descriptors were lost in transit (control buffer too small)")]
    TruncatedFds,
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Encodes `message` as one frame.
pub fn encode_frame(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    // Writing into a Vec cannot run out of room.
    let _ = message.encode(&mut frame);
    frame
}

/// Decodes one message of a frame's body.
pub fn decode<M: Message + Default>(what: &'static str, body: &[u8]) -> Result<M, ProtocolError> {
    M::decode(body).map_err(|source| ProtocolError::Decode { what, source })
}

/// Parses a 20-byte object ID from a message field.
pub fn object_id(bytes: &[u8]) -> Result<ObjectId, ProtocolError> {
    ObjectId::from_slice(bytes).map_err(|e| ProtocolError::Invalid(e.to_string()))
}

/// A frame on its way out, possibly with descriptors.
#[derive(Debug)]
pub struct Outgoing<'a> {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<BorrowedFd<'a>>,
    fds_sent: usize,
}

impl<'a> Outgoing<'a> {
    /// A frame and the descriptors to attach to it.
    pub fn new(bytes: Vec<u8>, fds: Vec<BorrowedFd<'a>>) -> Self {
        Self {
            bytes,
            sent: 0,
            fds,
            fds_sent: 0,
        }
    }

    /// Whether everything went out.
    pub fn is_done(&self) -> bool {
        self.sent == self.bytes.len() && self.fds_sent == self.fds.len()
    }

    /// One `sendmsg`: returns after some bytes went out (or `WouldBlock`).
    pub fn send_some(&mut self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let fds_left = self.fds.len() - self.fds_sent;
        let rest = &self.bytes[self.sent..];
        let (len, batch): (usize, Vec<RawFd>) = if fds_left == 0 {
            (rest.len(), Vec::new())
        } else {
            let take = fds_left.min(MAX_FDS_PER_SEND);
            let batch = self.fds[self.fds_sent..self.fds_sent + take]
                .iter()
                .map(AsRawFd::as_raw_fd)
                .collect();
            // Later batches need bytes of their own to ride on.
            let len = if take < fds_left { 1 } else { rest.len() };
            (len.min(rest.len()), batch)
        };
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame has fewer bytes than descriptor batches",
            ));
        }
        let iov = [IoSlice::new(&rest[..len])];
        let rights = [ControlMessage::ScmRights(&batch)];
        let cmsgs: &[ControlMessage<'_>] = if batch.is_empty() { &[] } else { &rights };
        let n = sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        if n > 0 {
            self.sent += n;
            self.fds_sent += batch.len();
        }
        Ok(())
    }

    /// Sends all of it on a blocking socket.
    pub fn send_blocking(mut self, socket: BorrowedFd<'_>) -> io::Result<()> {
        while !self.is_done() {
            match self.send_some(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reassembles frames from the socket and keeps the descriptors that came with them.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    /// A reader that refuses frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max_frame,
            fds: VecDeque::new(),
        }
    }

    /// The next complete frame's body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let available = &self.buf[self.start..self.end];
        if available.len() < 4 {
            return Ok(None);
        }
        let len =
            u32::from_le_bytes([available[0], available[1], available[2], available[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if available.len() < 4 + len {
            return Ok(None);
        }
        let body = available[4..4 + len].to_vec();
        self.start += 4 + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(body))
    }

    /// Bytes received and not yet taken as frames (an unfinished frame, when nonzero
    /// after [`Self::next_frame`] returned `None`).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// One `recvmsg` into the buffer. `Ok(false)` at end of stream.
    pub fn recv(&mut self, socket: BorrowedFd<'_>) -> io::Result<bool> {
        if self.buf.len() - self.end < READ_CHUNK {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_CHUNK {
                self.buf.resize(self.end + READ_CHUNK, 0);
            }
        }
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_SEND]);
        let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for message in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = message {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor for us; nothing
                    // else owns it.
                    self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if truncated {
            return Err(io::Error::other(ProtocolError::TruncatedFds));
        }
        self.end += n;
        Ok(n > 0)
    }

    /// Takes the `n` descriptors that came with the frame just read.
    pub fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>, ProtocolError> {
        if self.fds.len() < n {
            return Err(ProtocolError::MissingFds {
                expected: n,
                received: self.fds.len(),
            });
        }
        Ok(self.fds.drain(..n).collect())
    }

    /// Drops descriptors nobody asked for (a client must not send any).
    pub fn discard_fds(&mut self) -> usize {
        let n = self.fds.len();
        self.fds.clear();
        n
    }

    /// Reads until a whole frame is buffered, on a blocking socket.
    pub fn read_frame_blocking(
        &mut self,
        socket: BorrowedFd<'_>,
    ) -> Result<Vec<u8>, ProtocolError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            match self.recv(socket) {
                Ok(true) => {}
                Ok(false) => return Err(ProtocolError::Closed),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use rayd_common::proto::plasma::v1 as pb;

    #[test]
    fn frames_and_many_descriptors_arrive_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..150).map(|_| tempfile::tempfile().unwrap()).collect();
        let reply = pb::Reply {
            new_segments: (0..150)
                .map(|i| pb::Segment {
                    id: i,
                    size: 1,
                    parts: Vec::new(),
                })
                .collect(),
            kind: Some(pb::reply::Kind::Ack(pb::Ack {})),
        };
        let fds = files.iter().map(|f| f.as_fd()).collect();
        Outgoing::new(encode_frame(&reply), fds)
            .send_blocking(a.as_fd())
            .unwrap();
        Outgoing::new(encode_frame(&pb::Reply::default()), Vec::new())
            .send_blocking(a.as_fd())
            .unwrap();
        let mut reader = FrameReader::new(MAX_REPLY_FRAME);
        let body = reader.read_frame_blocking(b.as_fd()).unwrap();
        let got: pb::Reply = decode("reply", &body).unwrap();
        assert_eq!(got, reply);
        assert_eq!(reader.take_fds(150).unwrap().len(), 150);
        let body = reader.read_frame_blocking(b.as_fd()).unwrap();
        assert_eq!(
            decode::<pb::Reply>("reply", &body).unwrap(),
            pb::Reply::default()
        );
        assert!(reader.take_fds(1).is_err());
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        use std::io::Write;
        (&a).write_all(&(10u32 << 20).to_le_bytes()).unwrap();
        let mut reader = FrameReader::new(MAX_REQUEST_FRAME);
        let err = reader.read_frame_blocking(b.as_fd()).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
        drop(a);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The plasma protocol against any bytes from a client, in any pieces (a fuzz
        /// target): frames over the limit are refused, the buffer holds no more than what
        /// arrived (and a read's worth of room), and any body decodes or fails cleanly.
        #[test]
        fn any_request_bytes_decode_or_fail_within_the_limits(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8192),
            cuts in proptest::collection::vec(1usize..3000, 1..8),
            max in 0usize..4096,
        ) {
            use std::io::Write;
            let (a, b) = UnixStream::pair().unwrap();
            let mut reader = FrameReader::new(max);
            let mut rest = &data[..];
            let mut cuts = cuts.iter().cycle();
            'feed: while !rest.is_empty() {
                let n = cuts.next().copied().unwrap_or(1).min(rest.len());
                (&a).write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
                // A piece is in the socket whole: one read takes it (the buffer has room
                // for READ_CHUNK bytes, more than a piece).
                proptest::prop_assert!(reader.recv(b.as_fd()).unwrap());
                loop {
                    match reader.next_frame() {
                        Ok(Some(body)) => {
                            proptest::prop_assert!(body.len() <= max);
                            let _ = decode::<pb::Request>("request", &body);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                proptest::prop_assert!(reader.buf.len() <= data.len() + 2 * READ_CHUNK);
            }
        }
    }
}
