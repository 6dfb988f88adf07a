//! The object manager: moves sealed objects between the plasma stores of two nodes.
//!
//! Serving side: the gRPC `Pull` streams a sealed object, pinned for the transfer, in
//! chunks of `object_chunk_size` (or less, if the puller asks), each with its CRC-32C.
//! Pulling side: [`pull`] creates the object locally from the sizes in the first chunk,
//! writes each chunk straight into the new object's shared memory after checking its
//! offset and checksum, and seals it once every byte has arrived; any failure aborts the
//! local object. Each transfer is its own stream, so several run at once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rayd_common::id::ObjectId;
use rayd_common::proto::objectmanager::v1::object_manager_client::ObjectManagerClient;
use rayd_common::proto::objectmanager::v1::object_manager_server::{
    ObjectManager, ObjectManagerServer,
};
use rayd_common::proto::objectmanager::v1::{ObjectChunk, PullRequest};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::memory::{Mapping, MemoryError};
use crate::state::State;
use crate::store::{ClientId, ObjectView, Placement, StoreError, StoreEvent};

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
/// How long a pull waits for a concurrent pull (or create) of the same object to finish.
const CONCURRENT_WAIT: Duration = Duration::from_secs(300);

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
    #[error("object {0} did not appear while another transfer of it was under way")]
    Concurrent(ObjectId),
}

/// The gRPC service of this node.
#[derive(Debug, Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// The service, ready to add to a tonic server.
    pub fn server(state: Arc<State>) -> ObjectManagerServer<Self> {
        let limit = usize::try_from(state.chunk_size).unwrap_or(usize::MAX) + (1 << 20);
        ObjectManagerServer::new(Self { state })
            .max_encoding_message_size(limit)
            .max_decoding_message_size(1 << 20)
    }
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

/// The bytes of an object as the daemon sees them.
fn map_object(
    state: &State,
    view: &ObjectView,
    writable: bool,
) -> Result<(Arc<Mapping>, u64), MemoryError> {
    match &view.placement {
        Placement::Arena { offset } => Ok((state.arena_map.clone(), *offset)),
        Placement::Own(segment) => {
            let fd = if writable {
                std::os::fd::AsFd::as_fd(&segment.fd)
            } else {
                segment.fd_for_client()
            };
            let len = usize::try_from(segment.size).unwrap_or(usize::MAX);
            Ok((Arc::new(Mapping::new(fd, len, writable, writable)?), 0))
        }
    }
}

#[tonic::async_trait]
impl ObjectManager for Service {
    type PullStream = Pin<Box<dyn Stream<Item = Result<ObjectChunk, Status>> + Send>>;

    async fn pull(
        &self,
        request: Request<PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let request = request.into_inner();
        let id = ObjectId::from_slice(&request.object_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let chunk = match request.chunk_size {
            0 => self.state.chunk_size,
            n => n.clamp(MIN_CHUNK, self.state.chunk_size),
        };
        let state = self.state.clone();
        let client = state.with_store(|s| s.connect());
        let pin = TransferPin {
            state: state.clone(),
            client,
        };
        let view = state
            .with_store(|s| s.get(client, id))
            .ok_or_else(|| Status::not_found(format!("object {id} is not sealed in this store")))?;
        let (mapping, base) = map_object(&state, &view, false)
            .map_err(|e| Status::internal(format!("cannot map object {id}: {e}")))?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (data_size, metadata_size) = (view.data_size, view.metadata_size);
        let total = view.total_size();
        log::debug!(object:% = id, bytes = total; "serving a pull");
        let pin = Arc::new(pin);
        tokio::task::spawn_blocking(move || {
            let mut offset = 0;
            loop {
                let len = chunk.min(total - offset);
                if !mapping.contains(base + offset, len) {
                    let _ = tx.blocking_send(Err(Status::internal("object outside its segment")));
                    return;
                }
                let payload = prost::bytes::Bytes::from_owner(ChunkOwner {
                    mapping: mapping.clone(),
                    offset: base + offset,
                    len,
                    _pin: pin.clone(),
                });
                let message = ObjectChunk {
                    data_size,
                    metadata_size,
                    offset,
                    crc32c: crc32c::crc32c(&payload),
                    payload,
                };
                if tx.blocking_send(Ok(message)).is_err() {
                    return;
                }
                offset += len;
                if offset >= total {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Pulls object `id` from the object manager at `source` (`host:port`) into this store.
/// Returns at once when the object is already here.
pub async fn pull(state: &Arc<State>, id: ObjectId, source: &str) -> Result<(), TransferError> {
    if state.with_store(|s| s.contains(&id)) {
        return Ok(());
    }
    if source.is_empty() || source.contains('/') {
        return Err(TransferError::Source(source.to_string()));
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{source}"))
        .map_err(|_| TransferError::Source(source.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows would stall the stream on every few frames.
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW * 2)
        .max_frame_size(MAX_FRAME);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| TransferError::Connect {
            source_address: source.to_string(),
            error,
        })?;
    let limit = usize::try_from(state.chunk_size).unwrap_or(usize::MAX) + (1 << 20);
    let mut client = ObjectManagerClient::new(channel).max_decoding_message_size(limit);
    let refused = |status| TransferError::Refused {
        source_address: source.to_string(),
        id,
        status,
    };
    let mut stream = client
        .pull(PullRequest {
            object_id: id.as_bytes().to_vec(),
            chunk_size: state.chunk_size,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let corrupt = |reason: String| TransferError::Corrupt {
        source_address: source.to_string(),
        id,
        reason,
    };
    let Some(first) = stream.message().await.map_err(refused)? else {
        return Err(corrupt("the stream ended before the first chunk".into()));
    };
    let (data_size, metadata_size) = (first.data_size, first.metadata_size);
    let total = data_size
        .checked_add(metadata_size)
        .ok_or_else(|| corrupt("sizes overflow".into()))?;
    let client_id = state.with_store(|s| s.connect());
    // Whatever happens below, the internal client goes: an unsealed object is aborted.
    let _pin = TransferPin {
        state: state.clone(),
        client: client_id,
    };
    let view = match state.with_store(|s| s.create(client_id, id, data_size, metadata_size)) {
        Ok(view) => view,
        Err(StoreError::Exists(_)) => return wait_until_sealed(state, id).await,
        Err(e) => return Err(e.into()),
    };
    let (mapping, base) =
        map_object(state, &view, true).map_err(|source| TransferError::Memory { id, source })?;
    let mut received = 0u64;
    let mut next = Some(first);
    while let Some(chunk) = next {
        if (chunk.data_size, chunk.metadata_size) != (data_size, metadata_size) {
            return Err(corrupt("the sizes changed between chunks".into()));
        }
        if chunk.offset != received {
            return Err(corrupt(format!(
                "chunk at offset {} where {received} was expected",
                chunk.offset
            )));
        }
        let len = chunk.payload.len() as u64;
        if received + len > total {
            return Err(corrupt(format!("more than the announced {total} bytes")));
        }
        if crc32c::crc32c(&chunk.payload) != chunk.crc32c {
            return Err(corrupt(format!(
                "checksum mismatch in the chunk at offset {received}"
            )));
        }
        // SAFETY: this transfer created the object and is its only writer until the seal
        // below; the range lies inside the object (checked against `total` above).
        let target = unsafe { mapping.slice_mut(base + received, len) }
            .ok_or_else(|| corrupt("chunk outside the object".into()))?;
        target.copy_from_slice(&chunk.payload);
        received += len;
        next = stream.message().await.map_err(refused)?;
    }
    if received != total {
        return Err(corrupt(format!("{received} of {total} bytes arrived")));
    }
    // Unmap before sealing, so the segment can take the strict write seal.
    drop(mapping);
    state.with_store(|s| s.seal(client_id, id))?;
    state.count_pull();
    log::debug!(object:% = id, bytes = total, source = source; "pulled an object");
    Ok(())
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
