//! The raylet's Unix socket: one reader and one writer task per connected driver or
//! worker, talking to the scheduler through events.
//!
//! A frame that is too long or does not decode closes that connection (logged); the
//! scheduler sees it as a disconnect and nobody else is affected. A frame's memory grows
//! with the bytes that arrive ([`FrameDecoder`]), bounded per connection and in all; a
//! connection whose unfinished frame gets no byte for [`STALL_TIMEOUT`] closes.
//!
//! A socket is watched for input only, never for room to write (only while a write waits
//! for it): the kernel announces freed send space every time the peer reads, which woke
//! the raylet once per message it sent, for nothing.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::StreamExt;
use prost::Message;
use rayd_common::framing::{self, Budget, FrameDecoder};
use rayd_common::proto::raylet::v1 as pb;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::io::Input;
use crate::scheduler::{ConnId, Event};

/// Bytes that the unfinished frames of all connections may hold: a client's memory grows
/// with what it sends, never with what it announces, and all of them together stop here.
const UNFINISHED_FRAMES_LIMIT: usize = 256 << 20;
/// How long an unfinished frame may wait for its next byte before its connection closes.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: UnixListener,
    events: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
) {
    let mut next: ConnId = 0;
    let budget = Budget::new(UNFINISHED_FRAMES_LIMIT);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("cannot accept a connection: {e}");
                    continue;
                }
            },
        };
        next += 1;
        let stream = match stream.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
            Ok(pair) => pair,
            Err(e) => {
                log::warn!("cannot set up a connection: {e}");
                continue;
            }
        };
        tokio::spawn(handle(
            stream,
            budget.clone(),
            next,
            events.clone(),
            cancel.clone(),
        ));
    }
}

/// The reading side of a connection, registered for input alone.
struct Readable(AsyncFd<UnixStream>);

impl AsyncRead for Readable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(len)) => {
                    buf.advance(len);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Registers `stream` with the runtime for `interest` alone.
fn watch(
    stream: UnixStream,
    interest: Interest,
) -> Result<AsyncFd<UnixStream>, (UnixStream, io::Error)> {
    // SAFETY: the stream owns its descriptor, which stays open and unchanged while the
    // AsyncFd holds the stream (it is only ever taken back with `into_inner`).
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts())
}

/// Writes all of `bytes` to the non-blocking `stream`, waiting for room (registered for
/// it only meanwhile) when its buffer is full.
async fn write_all(stream: &mut Option<UnixStream>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let Some(writer) = stream.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        match writer.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Some(writer) = stream.take() else {
                    return Err(io::ErrorKind::NotConnected.into());
                };
                let waiting = match watch(writer, Interest::WRITABLE) {
                    Ok(fd) => fd,
                    Err((writer, e)) => {
                        *stream = Some(writer);
                        return Err(e);
                    }
                };
                let result = waiting.writable().await.map(|mut g| g.clear_ready());
                *stream = Some(waiting.into_inner());
                result?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn handle(
    (read, write): (UnixStream, UnixStream),
    budget: Arc<Budget>,
    conn: ConnId,
    events: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
) {
    let read = match watch(read, Interest::READABLE) {
        Ok(fd) => Readable(fd),
        Err((_, e)) => {
            log::warn!(conn; "cannot watch a connection: {e}");
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if events.send(Input::Connected { conn, tx }).is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        let mut write = Some(write);
        let mut batch = Vec::new();
        while let Some(frame) = rx.recv().await {
            // Everything queued goes in one write.
            batch.clear();
            batch.extend(frame);
            while let Ok(frame) = rx.try_recv() {
                batch.extend(frame);
            }
            if let Err(e) = write_all(&mut write, &batch).await {
                log::debug!(conn; "cannot write to a connection: {e}");
                return;
            }
        }
    });
    let mut frames = FramedRead::new(read, FrameDecoder::new(budget, framing::MAX_FRAME));
    let mut check = tokio::time::interval(STALL_TIMEOUT / 4);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break,
            frame = frames.next() => frame,
            _ = check.tick() => {
                if frames
                    .decoder()
                    .stalled_since()
                    .is_some_and(|since| since.elapsed() >= STALL_TIMEOUT)
                {
                    log::warn!(conn; "closing a connection whose frame got no byte for {STALL_TIMEOUT:?}");
                    break;
                }
                continue;
            }
        };
        let message = match frame {
            None => break,
            Some(Err(e)) => {
                log::warn!(conn; "closing a connection after a bad frame: {e}");
                break;
            }
            Some(Ok(bytes)) => match pb::ClientMessage::decode(bytes) {
                Ok(pb::ClientMessage { kind: Some(kind) }) => kind,
                Ok(_) => {
                    log::warn!(conn; "closing a connection after an empty message");
                    break;
                }
                Err(e) => {
                    log::warn!(conn; "closing a connection after a malformed message: {e}");
                    break;
                }
            },
        };
        if events
            .send(Event::Message { conn, message }.into())
            .is_err()
        {
            break;
        }
    }
    let _ = events.send(Event::Disconnected { conn }.into());
    writer.abort();
}
