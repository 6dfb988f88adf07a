//! Length-prefixed protobuf frames: a `u32` little-endian length, then one message.
//!
//! The raylet's local protocol uses this framing over its Unix socket (the raylet with
//! tokio's `LengthDelimitedCodec` configured by `codec`, with the `tokio` feature; clients
//! with the blocking helpers here). A frame longer than [`MAX_FRAME`] is refused before it is read.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use prost::Message;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// One message as a frame.
pub fn encode(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(4 + len);
    // encoded_len() is below MAX_FRAME for every message rayd sends (specs, small values).
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    message.encode(&mut frame).unwrap_or_default();
    frame
}

/// Writes one message as a frame.
pub fn write_message(writer: &mut impl Write, message: &impl Message) -> io::Result<()> {
    writer.write_all(&encode(message))
}

/// Reads one frame and decodes it; `Ok(None)` at a clean end of stream.
pub fn read_message<M: Message + Default>(reader: &mut impl Read) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    M::decode(body.as_slice())
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

/// The reading side of a Unix stream for a thread that blocks until input comes: it
/// sleeps in `poll` for input rather than in `recv`. A thread asleep in `recv` is woken
/// each time the peer reads what this side wrote (the kernel announces the freed send
/// space on the same wait queue), only to find nothing and sleep again: on a stream of
/// requests and replies that doubled the wakeups of both sides.
#[derive(Debug)]
pub struct InputWaiter(UnixStream);

impl InputWaiter {
    pub fn new(stream: UnixStream) -> Self {
        Self(stream)
    }

    /// The stream read from.
    pub fn socket(&self) -> &UnixStream {
        &self.0
    }
}

impl Read for InputWaiter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recv, MsgFlags};
        let fd = self.0.as_fd();
        loop {
            match recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                buf,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => return Ok(n),
                Err(nix::Error::EAGAIN) => {
                    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The codec settings matching [`encode`], for tokio's `LengthDelimitedCodec` (with the
/// `tokio` feature).
#[cfg(feature = "tokio")]
pub fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::raylet::v1 as pb;

    #[test]
    fn a_frame_round_trips_and_bad_frames_are_refused() {
        let message = pb::Exit {
            reason: "done".into(),
        };
        let frame = encode(&message);
        let read: pb::Exit = read_message(&mut frame.as_slice()).unwrap().unwrap();
        assert_eq!(read, message);
        assert!(read_message::<pb::Exit>(&mut [].as_slice())
            .unwrap()
            .is_none());

        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_message::<pb::Exit>(&mut huge.as_slice()).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"));

        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        let err = read_message::<pb::Exit>(&mut garbage.as_slice()).unwrap_err();
        assert!(err.to_string().contains("malformed frame"), "{err}");
    }
}
