//! The raylet's Unix socket: one reader and one writer task per connected driver or
//! worker, talking to the scheduler through events.
//!
//! A frame that is too long or does not decode closes that connection (logged); the
//! scheduler sees it as a disconnect and nobody else is affected.

use futures::{SinkExt, StreamExt};
use prost::Message;
use rayd_common::framing;
use rayd_common::proto::raylet::v1 as pb;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::scheduler::Event;

/// A connection's number, unique for the raylet's life.
pub type ConnId = u64;

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: UnixListener,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let mut next: ConnId = 0;
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
        tokio::spawn(handle(stream, next, events.clone(), cancel.clone()));
    }
}

async fn handle(
    stream: UnixStream,
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let (read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<pb::ServerMessage>();
    if events.send(Event::Connected { conn, tx }).is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(write, framing::codec());
        while let Some(message) = rx.recv().await {
            if sink
                .feed(prost::bytes::Bytes::from(message.encode_to_vec()))
                .await
                .is_err()
            {
                return;
            }
            // Batch what is queued into one write.
            while let Ok(message) = rx.try_recv() {
                if sink
                    .feed(prost::bytes::Bytes::from(message.encode_to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if SinkExt::<prost::bytes::Bytes>::flush(&mut sink)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut frames = FramedRead::new(read, framing::codec());
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break,
            frame = frames.next() => frame,
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
        if events.send(Event::Message { conn, message }).is_err() {
            break;
        }
    }
    let _ = events.send(Event::Disconnected { conn });
    writer.abort();
}
