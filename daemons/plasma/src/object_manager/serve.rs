//! The serving side: the `Pull` method as a tower service that tonic's server routes
//! to. Each chunk goes out as two data frames, its fields ([`wire::chunk_head`]) and its
//! payload, which is the object's shared memory itself: nothing is copied before the
//! kernel copies it into the socket.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::bytes::Bytes;
use rayd_common::id::ObjectId;
use rayd_common::proto::objectmanager::v1::object_manager_server::SERVICE_NAME;
use rayd_common::proto::objectmanager::v1::PullRequest;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::wire::{self, ChunkStart};
use super::{TransferPin, CHUNKS_IN_FLIGHT, MIN_CHUNK, PULL_PATH, STALL_TIMEOUT};
use crate::memory::{Mapping, MemoryError};
use crate::state::{Serving, State};
use crate::store::{Memory, ObjectView};

/// A frame of a response body.
type FrameResult = Result<Frame<Bytes>, Infallible>;

/// The object manager's gRPC service on this node.
#[derive(Debug, Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// The service, ready to add to a tonic server.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

impl NamedService for Service {
    const NAME: &'static str = SERVICE_NAME;
}

impl tonic::codegen::Service<http::Request<Body>> for Service {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            Ok(respond(state, request)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

/// The response to one call: a stream of chunks, or an error status alone.
async fn respond(
    state: Arc<State>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    let presented = request
        .headers()
        .get(rayd_common::auth::GRPC_HEADER)
        .map(HeaderValue::as_bytes);
    let expected = state.token.as_ref().map(HeaderValue::as_bytes);
    rayd_common::auth::check_token(expected, presented).map_err(Status::unauthenticated)?;
    if request.uri().path() != PULL_PATH {
        return Err(Status::unimplemented(format!(
            "no method {}",
            request.uri().path()
        )));
    }
    let body = Limited::new(request.into_body(), wire::MAX_REQUEST).collect();
    let body = tokio::time::timeout(STALL_TIMEOUT, body)
        .await
        .map_err(|_| Status::deadline_exceeded("the request did not end in time"))?
        .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?
        .to_bytes();
    let request = wire::decode_request(body).map_err(|e| match e {
        wire::WireError::Compressed => Status::unimplemented(e.to_string()),
        e => Status::invalid_argument(e.to_string()),
    })?;
    let frames = start(state, request)?;
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(frames));
    let mut response = http::Response::new(Body::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// A chunk of a sealed object in shared memory, handed to the network without a copy:
/// it keeps the mapping and the object's pin alive while any part of it is referenced.
struct ChunkOwner {
    mapping: Arc<Mapping>,
    offset: u64,
    len: u64,
    _pin: Arc<TransferPin>,
}

impl AsRef<[u8]> for ChunkOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the object is sealed and pinned by `_pin` for this value's life, so no
        // one writes these bytes; the range was checked against the mapping when the
        // chunk was made.
        unsafe { self.mapping.slice(self.offset, self.len) }.unwrap_or_default()
    }
}

/// The bytes of a sealed object, mapped read-only, and their offset in the mapping.
fn map_object(state: &State, view: &ObjectView) -> Result<(Arc<Mapping>, u64), MemoryError> {
    match &view.memory {
        Memory::Arena(offset) => Ok((state.arena_map.clone(), *offset)),
        Memory::Segment(segment) => Ok((segment.read_map()?, 0)),
    }
}

/// Pins the object of `request` and starts sending its range: the frames come out of
/// the returned channel, the last one the trailers with the status.
pub(super) fn start(
    state: Arc<State>,
    request: PullRequest,
) -> Result<mpsc::Receiver<FrameResult>, Status> {
    let id = ObjectId::from_slice(&request.object_id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let chunk = match request.chunk_size {
        0 => state.chunk_size,
        n => n.clamp(MIN_CHUNK, state.chunk_size),
    };
    let client = state.with_store(|s| s.connect());
    let pin = TransferPin {
        state: state.clone(),
        client,
    };
    let view = state
        .with_store(|s| s.get(client, id))
        .ok_or_else(|| Status::not_found(format!("object {id} is not sealed in this store")))?;
    let total = view.total_size();
    if request.offset > total {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of object {id} of {total} bytes",
            request.offset
        )));
    }
    let end = match request.length {
        0 => total,
        n => request.offset.saturating_add(n).min(total),
    };
    let (mapping, base) = map_object(&state, &view)
        .map_err(|e| Status::internal(format!("cannot map object {id}: {e}")))?;
    log::debug!(object:% = id, bytes = end - request.offset; "serving a pull");
    let sender = Chunks {
        mapping,
        base,
        chunk,
        end,
        data_size: view.data_size,
        metadata_size: view.metadata_size,
        pin: Arc::new(pin),
        _serving: state.begin_serving(),
    };
    // Each chunk is two frames.
    let (tx, rx) = mpsc::channel(2 * CHUNKS_IN_FLIGHT);
    let offset = request.offset;
    tokio::spawn(async move {
        if let Some(status) = sender.send(&tx, offset).await {
            let _ = tx.send(Ok(Frame::trailers(trailers(&status)))).await;
        }
    });
    Ok(rx)
}

/// The range of a pinned object being sent.
struct Chunks {
    mapping: Arc<Mapping>,
    /// The object's offset in the mapping.
    base: u64,
    chunk: u64,
    end: u64,
    data_size: u64,
    metadata_size: u64,
    pin: Arc<TransferPin>,
    /// Holds the pool back while the range is sent.
    _serving: Serving,
}

impl Chunks {
    /// Sends the chunks from `offset` on; the status to end with, or `None` when the
    /// puller has gone or stopped reading (the object's pin goes with the last frame).
    async fn send(&self, tx: &mpsc::Sender<FrameResult>, mut offset: u64) -> Option<Status> {
        // An empty range (an empty object) still sends one chunk: it carries the sizes.
        loop {
            let len = self.chunk.min(self.end - offset);
            if !self.mapping.contains(self.base + offset, len) {
                return Some(Status::internal("object outside its segment"));
            }
            let payload = Bytes::from_owner(ChunkOwner {
                mapping: self.mapping.clone(),
                offset: self.base + offset,
                len,
                _pin: self.pin.clone(),
            });
            let start = ChunkStart {
                data_size: self.data_size,
                metadata_size: self.metadata_size,
                offset,
            };
            let head = wire::chunk_head(&start, crc32c::crc32c(&payload), payload.len());
            for frame in [head, payload] {
                match tokio::time::timeout(STALL_TIMEOUT, tx.send(Ok(Frame::data(frame)))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        log::warn!(
                            offset = offset;
                            "a puller took nothing for {} s: its stream ends here",
                            STALL_TIMEOUT.as_secs()
                        );
                        return None;
                    }
                }
            }
            offset += len;
            if offset >= self.end {
                return Some(Status::new(Code::Ok, ""));
            }
        }
    }
}

/// The trailers that end a response with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
    }
    trailers
}
