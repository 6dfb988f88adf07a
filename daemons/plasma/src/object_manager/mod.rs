//! The object manager: moves sealed objects between the plasma stores of two nodes.
//!
//! Serving side ([`Service`]): the gRPC `Pull` streams a sealed object, pinned for the
//! transfer, in chunks of `object_chunk_size` (or less, if the puller asks), each with
//! its CRC-32C. Pulling side: [`pull`] creates the object locally from the sizes in the
//! first chunk, writes each piece of a chunk straight into the new object's shared memory
//! as it arrives, checks the chunk's offset and checksum, and seals the object once every
//! byte has arrived; any failure aborts the local object. Each transfer is its own
//! stream, so several run at once; a large object comes as ranges over [`STREAMS`]
//! connections at once, which keeps both ends' cores busy (one stream left a third of
//! them idle, waiting on the other end). Both ends encode and decode the stream's
//! messages themselves ([`wire`]), so that no chunk is copied in user space.

mod serve;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http_body_util::{BodyExt, Full};
use prost::bytes::Bytes;
use rayd_common::id::ObjectId;
use rayd_common::proto::objectmanager::v1::PullRequest;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::{Code, Status};

pub use serve::Service;
use wire::{ChunkDecoder, ChunkStart, Piece};

use crate::memory::{Mapping, MemoryError};
use crate::state::State;
use crate::store::{ClientId, Memory, ObjectView, StoreError, StoreEvent};

/// The path of the `Pull` method.
const PULL_PATH: &str = "/rayd.objectmanager.v1.ObjectManager/Pull";
/// Chunks in flight per transfer, between reading the object and the network.
const CHUNKS_IN_FLIGHT: usize = 4;
/// HTTP/2 flow-control window of a transfer stream.
pub const WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame (the protocol's maximum is 16 MiB - 1).
pub const MAX_FRAME: u32 = (1 << 24) - 1;
/// Smallest chunk a puller may ask for.
const MIN_CHUNK: u64 = 4 << 10;
/// How long a pull waits for a connection to the source.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections a large object's ranges travel over at once.
pub const STREAMS: u64 = 3;
/// The first range of every pull (it brings the sizes); the rest is split among the
/// streams.
const FIRST_RANGE_CHUNKS: u64 = 4;
/// How long a pull waits for a concurrent pull (or create) of the same object to finish.
const CONCURRENT_WAIT: Duration = Duration::from_secs(300);
/// How long either end of a transfer waits for the other to take or send a frame before
/// it gives up on the stream.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the serving side pings a puller's connection (a dead one is closed, and the
/// objects its streams pinned go free).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Streams one connection may hold open (a pull opens one per connection).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid source address `{0}`")]
    Source(String),
    #[error("cannot reach the object manager at {source_address}: {error}")]
    Connect {
        source_address: String,
        #[source]
        error: tonic::transport::Error,
    },
    #[error("object manager at {source_address} refused object {id}: {status}")]
    Refused {
        source_address: String,
        id: ObjectId,
        status: Status,
    },
    #[error("object {id} from {source_address} is corrupt: {reason}")]
    Corrupt {
        source_address: String,
        id: ObjectId,
        reason: String,
    },
    #[error("cannot store pulled object: {0}")]
    Store(#[from] StoreError),
    #[error("cannot map pulled object {id}: {source}")]
    Memory {
        id: ObjectId,
        #[source]
        source: MemoryError,
    },
    #[error("cannot write pulled object {id}: {error}")]
    Write {
        id: ObjectId,
        #[source]
        error: std::io::Error,
    },
    #[error("object {0} did not appear while another transfer of it was under way")]
    Concurrent(ObjectId),
}

/// Unpins an object and forgets an internal client when dropped.
struct TransferPin {
    state: Arc<State>,
    client: ClientId,
}

impl Drop for TransferPin {
    fn drop(&mut self) {
        self.state.with_store(|s| s.disconnect(self.client));
    }
}

/// How a pull writes its object: a small one through the daemon's mapping of the arena;
/// one in a segment of its own into the segment's file, which one blocking thread per
/// pull fills with `pwrite` ([`SegmentWriter`]), or, where the file takes no `pwrite`
/// (hugetlbfs, whose pages were reserved at create), through a writable mapping of the
/// segment that goes before the seal.
#[derive(Clone)]
enum Destination {
    Mapped(Arc<Mapping>),
    Own(WriterQueue),
}

impl Destination {
    /// The destination of the object `view`, and the writer thread it needs, if any.
    fn new(
        state: &State,
        view: &ObjectView,
        pin: &Arc<TransferPin>,
    ) -> Result<(Self, u64, Option<SegmentWriter>), TransferError> {
        let id = view.id;
        Ok(match &view.memory {
            Memory::Arena(offset) => (Self::Mapped(state.arena_map.clone()), *offset, None),
            Memory::Segment(segment) if !state.backing.takes_writes() => {
                let mapping = segment.write_map().map_err(|e| TransferError::Write {
                    id,
                    error: std::io::Error::other(e),
                })?;
                (Self::Mapped(Arc::new(mapping)), 0, None)
            }
            Memory::Segment(segment) => {
                let (queue, writer) = segment
                    .dup_fds()
                    .and_then(|fds| {
                        let files = fds
                            .into_iter()
                            .map(std::fs::File::from)
                            .zip(segment.parts().iter().copied())
                            .collect();
                        SegmentWriter::start(files, pin.clone())
                    })
                    .map_err(|error| TransferError::Write { id, error })?;
                (Self::Own(queue), 0, Some(writer))
            }
        })
    }

    /// Writes all of `bytes` at `offset` of the segment (or hands them to its writer).
    async fn write_at(&self, bytes: Bytes, offset: u64) -> std::io::Result<()> {
        match self {
            Self::Mapped(mapping) => {
                // SAFETY: the pull that created the object is its only writer until it
                // seals it, each of its ranges has one writer, and the caller checked the
                // range against the object.
                let target = unsafe { mapping.slice_mut(offset, bytes.len() as u64) }
                    .ok_or(std::io::ErrorKind::InvalidInput)?;
                target.copy_from_slice(&bytes);
                Ok(())
            }
            Self::Own(queue) => queue.push(bytes, offset).await,
        }
    }
}

/// The threads that write a pull's pieces into a large object's segment, one per file
/// of it (see `rayd_plasma_client::parts`: writes to one file take turns at its lock,
/// writes to two run at once), each writing its file's pieces in the order they arrive.
/// Written with `pwrite`, not through a mapping: building the page tables of a fresh
/// 500 MB range took longer than the copy, and the writes allocate its pages as they go
/// where the pool had none ready (see [`crate::store::Store::create_pulled`]). Not one
/// per stream: writers of one file spin for its lock, and a runtime worker blocked in a
/// write reads no socket. Threads of their own, not the runtime's blocking pool, which a
/// busy node can have in use to the last thread.
struct SegmentWriter(Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>);

/// Bytes for one file of a segment, where they go in it, and the room they take.
type QueuedPiece = (Bytes, u64, tokio::sync::OwnedSemaphorePermit);

/// The queue to a [`SegmentWriter`], bounded by bytes: HTTP/2 returns flow-control credit
/// as soon as a frame is read, so without this bound a fast source could queue any
/// amount of memory here.
#[derive(Clone)]
struct WriterQueue {
    /// One per file, with the file's length.
    txs: Vec<(u64, mpsc::UnboundedSender<QueuedPiece>)>,
    room: Arc<tokio::sync::Semaphore>,
}

impl WriterQueue {
    /// Bytes queued at most.
    const BYTES: u32 = 16 << 20;
    /// What a piece counts for at least, so that tiny frames cannot queue without bound.
    const MIN_PIECE: u32 = 4 << 10;

    /// Queues `bytes` for `offset` of the segment, once there is room: each part of
    /// them to the writer of the file it falls in.
    async fn push(&self, bytes: Bytes, offset: u64) -> std::io::Result<()> {
        let stopped = || std::io::Error::other("the segment's writer stopped (see its error)");
        let sizes: Vec<u64> = self.txs.iter().map(|(len, _)| *len).collect();
        let size: u64 = sizes.iter().sum();
        if offset.saturating_add(bytes.len() as u64) > size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at {offset} are past the segment's {size} bytes",
                    bytes.len()
                ),
            ));
        }
        for (index, at, range) in
            rayd_plasma_client::parts::pieces(&sizes, offset, bytes.len() as u64)
        {
            let weight = u32::try_from(range.len())
                .unwrap_or(u32::MAX)
                .clamp(Self::MIN_PIECE, Self::BYTES);
            let permit = self
                .room
                .clone()
                .acquire_many_owned(weight)
                .await
                .map_err(|_| stopped())?;
            self.txs[index]
                .1
                .send((bytes.slice(range), at, permit))
                .map_err(|_| stopped())?;
        }
        Ok(())
    }
}

impl SegmentWriter {
    /// Starts the threads, one per file (with its length); they stop once every queue
    /// handle is gone (or a write fails), and they keep the object pinned until then.
    fn start(
        files: Vec<(std::fs::File, u64)>,
        pin: Arc<TransferPin>,
    ) -> Result<(WriterQueue, Self), std::io::Error> {
        let room = Arc::new(tokio::sync::Semaphore::new(WriterQueue::BYTES as usize));
        let mut txs = Vec::with_capacity(files.len());
        let mut done = Vec::with_capacity(files.len());
        for (file, len) in files {
            let (tx, mut rx) = mpsc::unbounded_channel::<QueuedPiece>();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let room_left = room.clone();
            let pin = pin.clone();
            std::thread::Builder::new()
                .name("rayd-pull-write".into())
                .spawn(move || {
                    let mut written = Ok(());
                    while let Some((bytes, offset, _permit)) = rx.blocking_recv() {
                        written = std::os::unix::fs::FileExt::write_all_at(&file, &bytes, offset);
                        if written.is_err() {
                            break;
                        }
                    }
                    // Senders waiting for room see the writer gone.
                    room_left.close();
                    // Unpinned before the pull hears that the writes are over: a failed
                    // pull's object is gone by the time it reports.
                    drop(pin);
                    let _ = done_tx.send(written);
                })?;
            txs.push((len, tx));
            done.push(done_rx);
        }
        Ok((WriterQueue { txs, room }, Self(done)))
    }

    /// Waits until every queued piece is written (the queue handles must be gone).
    async fn finish(self) -> std::io::Result<()> {
        let mut result = Ok(());
        for done in self.0 {
            let written = done
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the segment's writer died")));
            result = result.and(written);
        }
        result
    }
}

/// Pulls object `id` from the object manager at `source` (`host:port`) into this store.
/// Returns at once when the object is already here.
pub async fn pull(state: &Arc<State>, id: ObjectId, source: &str) -> Result<(), TransferError> {
    if state.with_store(|s| s.contains(&id)) {
        return Ok(());
    }
    let from = Source::new(state, id, source)?;
    let chunk = state.chunk_size.max(MIN_CHUNK);
    let mut stream = from.open(0, FIRST_RANGE_CHUNKS * chunk).await?;
    let first = stream.first_start(&from).await?;
    let sizes = (first.data_size, first.metadata_size);
    let total = sizes
        .0
        .checked_add(sizes.1)
        .ok_or_else(|| from.corrupt("sizes overflow".into()))?;
    let client_id = state.with_store(|s| s.connect());
    // Whatever happens below, the internal client goes: an unsealed object is aborted,
    // once the last range task (which holds a clone) has stopped writing.
    let pin = Arc::new(TransferPin {
        state: state.clone(),
        client: client_id,
    });
    let view = match state.with_store(|s| s.create_pulled(client_id, id, sizes.0, sizes.1)) {
        Ok(view) => view,
        Err(StoreError::Exists(_)) => return wait_until_sealed(state, id).await,
        Err(e) => return Err(e.into()),
    };
    let (destination, base, writer) = Destination::new(state, &view, &pin)?;
    let target = Target {
        destination,
        base,
        sizes,
        from,
    };
    let first_end = (FIRST_RANGE_CHUNKS * chunk).min(total);
    // Dropped (the pull given up), the set aborts its tasks.
    let mut others = tokio::task::JoinSet::new();
    for (start, end) in split(first_end, total, chunk) {
        let (target, pin) = (target.clone(), Arc::clone(&pin));
        others.spawn(async move {
            let _pin = pin;
            let stream = target.from.open(start, end - start).await?;
            target.receive(stream, start, end).await
        });
    }
    let mut result = target.receive(stream, 0, first_end).await;
    if result.is_err() {
        others.abort_all();
    }
    while let Some(joined) = others.join_next().await {
        if result.is_ok() {
            result = joined
                .unwrap_or_else(|e| Err(target.from.corrupt(format!("a range ended early: {e}"))));
        }
        if result.is_err() {
            others.abort_all();
        }
    }
    // The writer stops once the last queue handle (in `target`) is gone; a mapping of
    // the segment goes before the seal, so it can take the strict write seal.
    drop(target);
    settle(result, writer, id).await?;
    state.with_store(|s| s.seal(client_id, id))?;
    state.count_pull(total);
    log::debug!(object:% = id, bytes = total, source = source; "pulled an object");
    Ok(())
}

/// The outcome of a pull whose streams ended with `result`, once its writer (if any) has
/// written what they queued. The writer's own error says more than a stream's "the
/// writer stopped", so it comes first.
async fn settle(
    result: Result<(), TransferError>,
    writer: Option<SegmentWriter>,
    id: ObjectId,
) -> Result<(), TransferError> {
    let Some(writer) = writer else {
        return result;
    };
    let written = writer
        .finish()
        .await
        .map_err(|error| TransferError::Write { id, error });
    written.and(result)
}

/// `[start, total)` in up to `STREAMS - 1` ranges of whole chunks.
fn split(start: u64, total: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let rest = total - start;
    let parts = (STREAMS - 1).min(rest.div_ceil(chunk)).max(1);
    let per = rest.div_ceil(parts).div_ceil(chunk) * chunk;
    (0..parts)
        .map(move |i| (start + i * per, (start + (i + 1) * per).min(total)))
        .filter(|(start, end)| start < end)
}

/// Where a pull comes from.
#[derive(Debug, Clone)]
struct Source {
    address: String,
    endpoint: tonic::transport::Endpoint,
    id: ObjectId,
    chunk: u64,
    limit: usize,
    /// The cluster's token, sent with each pull.
    token: Option<HeaderValue>,
}

impl Source {
    fn new(state: &State, id: ObjectId, address: &str) -> Result<Self, TransferError> {
        if address.is_empty() || address.contains('/') {
            return Err(TransferError::Source(address.to_string()));
        }
        let endpoint = state
            .client
            .endpoint(address)
            .map_err(|_| TransferError::Source(address.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows would stall the stream on every few frames.
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW * 2)
            .max_frame_size(MAX_FRAME);
        Ok(Self {
            address: address.to_string(),
            endpoint,
            id,
            chunk: state.chunk_size,
            limit: usize::try_from(state.chunk_size).unwrap_or(usize::MAX) + (1 << 20),
            token: state.token.clone(),
        })
    }

    /// A stream of the object's bytes from `offset` on (`length` of them, or up to the
    /// end), over a connection of its own.
    async fn open(&self, offset: u64, length: u64) -> Result<ChunkStream, TransferError> {
        let mut channel =
            self.endpoint
                .connect()
                .await
                .map_err(|error| TransferError::Connect {
                    source_address: self.address.clone(),
                    error,
                })?;
        let message = wire::encode_message(&PullRequest {
            object_id: self.id.as_bytes().to_vec(),
            chunk_size: self.chunk,
            offset,
            length,
        });
        let mut request = http::Request::post(PULL_PATH)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
            .header(TE, HeaderValue::from_static("trailers"));
        if let Some(token) = &self.token {
            request = request.header(rayd_common::auth::GRPC_HEADER, token.clone());
        }
        let request = request
            .body(Body::new(Full::new(message)))
            .map_err(|e| self.refused(Status::internal(e.to_string())))?;
        let transport = |e: tonic::transport::Error| self.refused(Status::from_error(e.into()));
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(transport)?;
        let response = channel.call(request).await.map_err(transport)?;
        if response.status() != http::StatusCode::OK {
            return Err(self.refused(Status::unknown(format!(
                "HTTP status {}",
                response.status()
            ))));
        }
        let content_type = response.headers().get(CONTENT_TYPE);
        if !content_type.is_some_and(|t| t.as_bytes().starts_with(b"application/grpc")) {
            return Err(self.refused(Status::unknown(format!(
                "not a gRPC response (content-type {content_type:?})"
            ))));
        }
        // A status in the headers ends the call at once ("trailers-only").
        let ended = match grpc_status(response.headers()) {
            Some(status) if status.code() != Code::Ok => return Err(self.refused(status)),
            Some(_) => true,
            None => false,
        };
        Ok(ChunkStream {
            body: response.into_body(),
            decoder: ChunkDecoder::new(self.limit),
            peeked: None,
            ended,
        })
    }

    fn refused(&self, status: Status) -> TransferError {
        TransferError::Refused {
            source_address: self.address.clone(),
            id: self.id,
            status,
        }
    }

    fn corrupt(&self, reason: String) -> TransferError {
        TransferError::Corrupt {
            source_address: self.address.clone(),
            id: self.id,
            reason,
        }
    }
}

/// The status in gRPC trailers (or trailers-only headers), if any. Only the code and the
/// message: tonic's own parser panics on binary details that are not base64.
fn grpc_status(headers: &http::HeaderMap) -> Option<Status> {
    let mut plain = http::HeaderMap::new();
    for name in ["grpc-status", "grpc-message"] {
        if let Some(value) = headers.get(name) {
            plain.insert(name, value.clone());
        }
    }
    Status::from_header_map(&plain)
}

/// The response to a `Pull`, read as [`Piece`]s.
struct ChunkStream {
    body: Body,
    decoder: ChunkDecoder,
    /// A piece read ahead, handed out again.
    peeked: Option<Piece>,
    /// Whether the status arrived, and was OK.
    ended: bool,
}

impl ChunkStream {
    /// The next piece, or `None` once the stream has ended with an OK status.
    async fn next(&mut self, from: &Source) -> Result<Option<Piece>, TransferError> {
        if let Some(piece) = self.peeked.take() {
            return Ok(Some(piece));
        }
        loop {
            let corrupt = |e: wire::WireError| from.corrupt(e.to_string());
            if let Some(piece) = self.decoder.next_piece().map_err(corrupt)? {
                return Ok(Some(piece));
            }
            let Ok(frame) = tokio::time::timeout(STALL_TIMEOUT, self.body.frame()).await else {
                return Err(from.refused(Status::deadline_exceeded(format!(
                    "nothing arrived for {} s",
                    STALL_TIMEOUT.as_secs()
                ))));
            };
            let frame = match frame {
                Some(frame) => frame.map_err(|s| from.refused(s))?,
                None if !self.decoder.at_boundary() => {
                    return Err(corrupt(wire::WireError::EndsInsideMessage))
                }
                None if self.ended => return Ok(None),
                None => {
                    return Err(from.refused(Status::unknown("the stream ended without a status")))
                }
            };
            match frame.into_data() {
                Ok(data) => self.decoder.feed(data),
                Err(frame) => {
                    let status = frame
                        .trailers_ref()
                        .and_then(grpc_status)
                        .unwrap_or_else(|| Status::unknown("trailers without a status"));
                    if status.code() != Code::Ok {
                        return Err(from.refused(status));
                    }
                    self.ended = true;
                }
            }
        }
    }

    /// The start of the first chunk (which brings the sizes), left to be read again.
    async fn first_start(&mut self, from: &Source) -> Result<ChunkStart, TransferError> {
        match self.next(from).await? {
            Some(Piece::Start(start)) => {
                self.peeked = Some(Piece::Start(start));
                Ok(start)
            }
            _ => Err(from.corrupt("the stream ended before the first chunk".into())),
        }
    }
}

/// The local object a pull fills.
#[derive(Clone)]
struct Target {
    destination: Destination,
    /// The object's offset in its segment.
    base: u64,
    /// Data and metadata sizes, as the first chunk announced them.
    sizes: (u64, u64),
    from: Source,
}

impl Target {
    /// Writes the chunks of `stream` into `[start, end)` of the object as their pieces
    /// arrive, checking that each continues the last, stays in the range and matches its
    /// checksum, and that the range arrives whole. (A chunk that fails its checksum has
    /// been written by then: the pull fails, and the object is aborted unsealed.)
    async fn receive(
        &self,
        mut stream: ChunkStream,
        start: u64,
        end: u64,
    ) -> Result<(), TransferError> {
        let mut received = start;
        // The running CRC-32C of the current chunk, and where it began.
        let mut crc = 0;
        let mut chunk_offset = start;
        // Only an empty range comes as an empty chunk (which still brings the sizes):
        // a source sending empty chunks would otherwise hold the pull forever.
        let empty_range = start == end;
        while let Some(piece) = stream.next(&self.from).await? {
            match piece {
                Piece::Start(chunk) => {
                    if (chunk.data_size, chunk.metadata_size) != self.sizes {
                        return Err(self.from.corrupt("the sizes changed between chunks".into()));
                    }
                    if chunk.offset != received {
                        return Err(self.from.corrupt(format!(
                            "chunk at offset {} where {received} was expected",
                            chunk.offset
                        )));
                    }
                    (crc, chunk_offset) = (0, received);
                }
                Piece::Payload(bytes) => {
                    let len = bytes.len() as u64;
                    if received + len > end {
                        return Err(self.from.corrupt(format!(
                            "more than the {} bytes asked for at {start}",
                            end - start
                        )));
                    }
                    crc = crc32c::crc32c_append(crc, &bytes);
                    // The range lies inside the object (checked against `end` above), and
                    // this transfer is the object's only writer until it seals it.
                    self.destination
                        .write_at(bytes, self.base + received)
                        .await
                        .map_err(|error| TransferError::Write {
                            id: self.from.id,
                            error,
                        })?;
                    received += len;
                }
                Piece::End { crc32c } if crc32c != crc => {
                    return Err(self.from.corrupt(format!(
                        "checksum mismatch in the chunk at offset {chunk_offset}"
                    )));
                }
                Piece::End { .. } if received == chunk_offset && !empty_range => {
                    return Err(self
                        .from
                        .corrupt(format!("an empty chunk at offset {chunk_offset}")));
                }
                Piece::End { .. } => {}
            }
        }
        if received != end {
            return Err(self.from.corrupt(format!(
                "{} of the {} bytes at {start} arrived",
                received - start,
                end - start
            )));
        }
        Ok(())
    }
}

async fn wait_until_sealed(state: &Arc<State>, id: ObjectId) -> Result<(), TransferError> {
    let mut events = state.subscribe();
    let deadline = tokio::time::Instant::now() + CONCURRENT_WAIT;
    loop {
        if state.with_store(|s| s.contains(&id)) {
            return Ok(());
        }
        if !state.with_store(|s| s.exists(&id)) {
            return Err(TransferError::Concurrent(id));
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(StoreEvent::Sealed { .. }) | Ok(StoreEvent::Removed { .. }) | Err(_) => {}
            },
            // Aborts make no event: look again now and then.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => return Err(TransferError::Concurrent(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;
    use crate::memory::{self, Backing};
    use crate::store::Store;

    const MIB: u64 = 1 << 20;

    /// The state of a 64 MiB store, and its spill directory (a temp dir of the test's own,
    /// removed when the test drops it).
    fn state() -> (Arc<State>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(64 * MIB, Backing::Memfd, dir.path().join("spill")).unwrap();
        let state = State::new(
            store,
            rayd_common::id::NodeId::random(),
            "127.0.0.1:1".into(),
            MIB,
            None,
            None,
            None,
        )
        .unwrap();
        (state, dir)
    }

    /// A response made of `frames`, as the puller reads it.
    fn stream(frames: Vec<Frame<Bytes>>) -> ChunkStream {
        let frames = futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
        ChunkStream {
            body: Body::new(StreamBody::new(frames)),
            decoder: ChunkDecoder::new(2 * MIB as usize),
            peeked: None,
            ended: false,
        }
    }

    /// The frames of `bytes` as chunks of `chunk` bytes from offset 0, each chunk's head
    /// and payload cut in two more frames at odd places.
    fn chunk_frames(bytes: &[u8], chunk: usize) -> Vec<Frame<Bytes>> {
        let mut frames = Vec::new();
        for (i, payload) in bytes.chunks(chunk).enumerate() {
            let start = ChunkStart {
                data_size: bytes.len() as u64,
                metadata_size: 0,
                offset: (i * chunk) as u64,
            };
            let mut message =
                wire::chunk_head(&start, crc32c::crc32c(payload), payload.len()).to_vec();
            message.extend_from_slice(payload);
            let (a, b) = message.split_at(3);
            let (b, c) = b.split_at(b.len() / 3);
            frames.extend([a, b, c].map(|p| Frame::data(Bytes::copy_from_slice(p))));
        }
        frames
    }

    fn trailers(code: &str, message: Option<&str>, details: Option<&str>) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.parse().unwrap());
        if let Some(message) = message {
            map.insert("grpc-message", message.parse().unwrap());
        }
        if let Some(details) = details {
            map.insert("grpc-status-details-bin", details.parse().unwrap());
        }
        Frame::trailers(map)
    }

    /// A fresh object of `size` bytes in the store, and the target that fills it.
    fn new_target(state: &Arc<State>, size: u64) -> (Target, Option<SegmentWriter>, ObjectView) {
        let client = state.with_store(|s| s.connect());
        let pin = Arc::new(TransferPin {
            state: state.clone(),
            client,
        });
        let id = ObjectId::random();
        let view = state
            .with_store(|s| s.create_pulled(client, id, size, 0))
            .unwrap();
        let (destination, base, writer) = Destination::new(state, &view, &pin).unwrap();
        let target = Target {
            destination,
            base,
            sizes: (size, 0),
            from: Source::new(state, id, "127.0.0.1:1").unwrap(),
        };
        (target, writer, view)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn chunks_cut_anywhere_land_in_the_object() {
        let (state, _spill) = state();
        let bytes = pattern(10_000);
        let (target, writer, view) = new_target(&state, bytes.len() as u64);
        assert!(writer.is_none(), "a small object lands in the arena");
        let mut frames = chunk_frames(&bytes, 3_000);
        frames.push(trailers("0", None, None));
        target
            .receive(stream(frames), 0, bytes.len() as u64)
            .await
            .unwrap();
        let Memory::Arena(offset) = view.memory else {
            panic!("not in the arena")
        };
        // SAFETY: the object is written and no one else writes it.
        let landed = unsafe { state.arena_map.slice(offset, bytes.len() as u64) }.unwrap();
        assert!(landed == &bytes[..], "the bytes differ");
    }

    #[tokio::test]
    async fn a_stream_must_end_with_an_ok_status() {
        let (state, _spill) = state();
        let bytes = pattern(1000);
        let end = bytes.len() as u64;

        let (target, _, _) = new_target(&state, end);
        let err = target
            .receive(stream(chunk_frames(&bytes, 1000)), 0, end)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("without a status"), "{err}");

        // Binary details that are not base64 (tonic's own parser panics on them).
        let (target, _, _) = new_target(&state, end);
        let mut frames = chunk_frames(&bytes, 500);
        frames.push(trailers("15", Some("gone%20away"), Some("!!not base64!!")));
        match target.receive(stream(frames), 0, end).await.unwrap_err() {
            TransferError::Refused { status, .. } => {
                assert_eq!(status.code(), Code::DataLoss);
                assert_eq!(status.message(), "gone away");
            }
            other => panic!("{other}"),
        }

        // An OK status before every byte arrived.
        let (target, _, _) = new_target(&state, end);
        let mut frames = chunk_frames(&bytes, 500);
        frames.truncate(3);
        frames.push(trailers("0", None, None));
        let err = target.receive(stream(frames), 0, end).await.unwrap_err();
        assert!(err.to_string().contains("500 of the 1000 bytes"), "{err}");
    }

    #[tokio::test]
    async fn the_pool_waits_while_another_node_pulls_from_here() {
        let (state, _spill) = state();
        let client = state.with_store(|s| s.connect());
        let id = ObjectId::random();
        let bytes = pattern(1000);
        state
            .with_store(|s| s.put_small(client, id, (1000, 0), &bytes, None))
            .unwrap();
        assert!(!state.serving());
        let request = PullRequest {
            object_id: id.as_bytes().to_vec(),
            offset: 0,
            length: 0,
            chunk_size: 0,
        };
        let mut frames = serve::start(state.clone(), request).unwrap();
        assert!(state.serving(), "a pull is being served");
        while frames.recv().await.is_some() {}
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while state.serving() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the served pull never ended"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_the_error_a_pull_reports() {
        let (state, _spill) = state();
        let bytes = pattern(40 * MIB as usize);
        let end = bytes.len() as u64;
        let (target, writer, view) = new_target(&state, end);
        assert!(writer.is_some(), "a large object is written with pwrite");
        // Sealed against writes, its segment refuses the writer's first `pwrite`.
        let Memory::Segment(segment) = &view.memory else {
            panic!("not in a segment of its own")
        };
        for fd in segment.dup_fds().unwrap() {
            assert!(memory::seal_against_writes(std::os::fd::AsFd::as_fd(&fd)).unwrap());
        }
        let mut frames = chunk_frames(&bytes, MIB as usize);
        frames.push(trailers("0", None, None));
        let result = target.receive(stream(frames), 0, end).await;
        drop(target);
        match settle(result, writer, view.id).await.unwrap_err() {
            TransferError::Write { error, .. } => {
                assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}")
            }
            other => panic!("{other}"),
        }
    }
}
