//! Length-prefixed protobuf frames: a `u32` little-endian length, then one message.
//!
//! The raylet's local protocol uses this framing over its Unix socket (the raylet with
//! tokio's `FramedRead` and the `FrameDecoder` here, with the `tokio` feature: memory
//! bounded by what arrives; clients with the blocking helpers here). A frame longer than
//! [`MAX_FRAME`] is refused before it is read.

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

#[cfg(feature = "tokio")]
pub use self::bounded::{Budget, FrameDecoder};

#[cfg(feature = "tokio")]
mod bounded {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use tokio_util::bytes::{Buf, BytesMut};

    use super::MAX_FRAME;

    /// The bytes of unfinished frames that all the connections of a server may hold.
    #[derive(Debug)]
    pub struct Budget {
        held: AtomicUsize,
        limit: usize,
    }

    impl Budget {
        pub fn new(limit: usize) -> Arc<Self> {
            Arc::new(Self {
                held: AtomicUsize::new(0),
                limit,
            })
        }

        /// Bytes held now.
        pub fn held(&self) -> usize {
            self.held.load(Ordering::Relaxed)
        }

        /// Takes `n` more bytes, unless that would pass the limit.
        fn take(&self, n: usize) -> bool {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_add(n).filter(|total| *total <= self.limit)
                })
                .is_ok()
        }

        fn give_back(&self, n: usize) {
            self.held.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Length-prefixed frames ([`super::encode`]) for tokio's `FramedRead`, whose memory
    /// grows with the bytes that arrive, never with the length a peer announces (tokio's
    /// `LengthDelimitedCodec` reserves the whole announced frame at once). The bytes of
    /// an unfinished frame count against the connection's `limit` and the server's shared
    /// [`Budget`]; [`FrameDecoder::stalled_since`] tells how long an unfinished frame has
    /// waited for its next byte.
    #[derive(Debug)]
    pub struct FrameDecoder {
        budget: Arc<Budget>,
        limit: usize,
        /// Bytes of an unfinished frame charged to the budget.
        charged: usize,
        /// When the unfinished frame last grew.
        progress: Instant,
    }

    impl FrameDecoder {
        /// A decoder of frames up to `limit` bytes (at most [`MAX_FRAME`]) on `budget`.
        pub fn new(budget: Arc<Budget>, limit: usize) -> Self {
            Self {
                budget,
                limit: limit.min(MAX_FRAME),
                charged: 0,
                progress: Instant::now(),
            }
        }

        /// When the unfinished frame last received a byte; `None` between frames.
        pub fn stalled_since(&self) -> Option<Instant> {
            (self.charged > 0).then_some(self.progress)
        }

        /// Charges exactly `buffered` bytes of an unfinished frame.
        fn charge(&mut self, buffered: usize) -> std::io::Result<()> {
            if buffered > self.charged {
                if !self.budget.take(buffered - self.charged) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::OutOfMemory,
                        format!(
                            "the unfinished frames of all connections hold {} bytes, the limit",
                            self.budget.held()
                        ),
                    ));
                }
                self.progress = Instant::now();
            } else {
                self.budget.give_back(self.charged - buffered);
            }
            self.charged = buffered;
            Ok(())
        }
    }

    impl Drop for FrameDecoder {
        fn drop(&mut self) {
            self.budget.give_back(self.charged);
        }
    }

    impl tokio_util::codec::Decoder for FrameDecoder {
        type Item = BytesMut;
        type Error = std::io::Error;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
            if src.len() < 4 {
                self.charge(src.len())?;
                return Ok(None);
            }
            let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > self.limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes exceeds the limit of {}", self.limit),
                ));
            }
            if src.len() < 4 + len {
                self.charge(src.len())?;
                return Ok(None);
            }
            src.advance(4);
            let frame = src.split_to(len);
            // What follows the frame belongs to the next one.
            self.charge(0)?;
            Ok(Some(frame))
        }
    }
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

/// The raylet's frames against any bytes, cut anywhere (a fuzz target run for a fixed
/// number of cases by `cargo test`).
#[cfg(all(test, feature = "tokio"))]
mod fuzz {
    use proptest::prelude::*;
    use prost::Message;
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::proto::raylet::v1 as pb;

    const BUDGET: usize = 1024;

    #[test]
    fn the_budget_refuses_bytes_past_its_limit_and_gets_them_back() {
        let budget = Budget::new(BUDGET);
        let mut a = FrameDecoder::new(budget.clone(), MAX_FRAME);
        let mut b = FrameDecoder::new(budget.clone(), MAX_FRAME);
        let mut promise = BytesMut::from(&(60u32 << 20).to_le_bytes()[..]);
        promise.extend_from_slice(&[0; 600]);
        assert!(a.decode(&mut promise.clone()).unwrap().is_none());
        assert!(a.stalled_since().is_some());
        assert_eq!(budget.held(), 604);
        let err = b.decode(&mut promise).unwrap_err();
        assert!(err.to_string().contains("the limit"), "{err}");
        drop(a);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_decode_or_fail_within_the_limits(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(1usize..700, 1..16),
            limit in 0usize..2048,
        ) {
            let budget = Budget::new(BUDGET);
            {
                let mut decoder = FrameDecoder::new(budget.clone(), limit);
                let mut buffer = BytesMut::new();
                let mut rest = &data[..];
                let mut cuts = cuts.iter().cycle();
                'feed: while !rest.is_empty() {
                    let n = cuts.next().copied().unwrap_or(1).min(rest.len());
                    buffer.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    loop {
                        match decoder.decode(&mut buffer) {
                            Ok(Some(frame)) => {
                                prop_assert!(frame.len() <= limit);
                                let _ = pb::ClientMessage::decode(frame.freeze());
                            }
                            Ok(None) => break,
                            Err(_) => break 'feed,
                        }
                    }
                    // What an unfinished frame holds is charged, and within the budget.
                    prop_assert_eq!(budget.held(), buffer.len());
                    prop_assert!(budget.held() <= BUDGET);
                }
            }
            prop_assert_eq!(budget.held(), 0);
        }

        #[test]
        fn frames_cut_anywhere_come_out_whole(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in 1usize..64,
        ) {
            let mut stream = Vec::new();
            for body in &bodies {
                stream.extend_from_slice(&(body.len() as u32).to_le_bytes());
                stream.extend_from_slice(body);
            }
            let mut decoder = FrameDecoder::new(Budget::new(BUDGET), MAX_FRAME);
            let mut buffer = BytesMut::new();
            let mut out = Vec::new();
            for piece in stream.chunks(cut) {
                buffer.extend_from_slice(piece);
                while let Some(frame) = decoder.decode(&mut buffer).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    out.push(frame.to_vec());
                }
            }
            prop_assert_eq!(out, bodies);
        }
    }
}
