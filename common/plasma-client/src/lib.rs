//! The plasma client library: what the raylet, the workers and the Python SDK link to
//! reach their node's store. It depends on no part of the store: what both sides share is
//! here, and the store (`rayd-plasma`) depends on it: [`protocol`] (the framing and
//! descriptor passing on the store's socket), [`mapping`] (mappings of shared memory
//! segments), [`parts`] (large segments made of several files) and [`allocator`]
//! (placement in the arena, and of objects in a lease).
//!
//! - [`PlasmaClient`] (blocking) and [`AsyncPlasmaClient`] (the same, for tokio) connect
//!   to the store's socket, receive its memory descriptors and map each segment once,
//!   read-only: a client never writes the arena, nor any sealed object.
//! - [`ObjectBuilder`] is an unsealed object its creator fills; [`ObjectBuilder::seal`]
//!   makes it an [`ObjectBuffer`]. A small object is filled in this client's own memory
//!   and its bytes go to the store with its seal, which the store copies into the arena:
//!   into this client's lease there (the store's `lease` module) without a reply, so
//!   other clients see it once the store has read the message (their gets wait for
//!   that). A larger object gets a segment of its own, filled with `pwrite` (a large one
//!   is made of several files, written by a thread each: see [`parts`]) or in place
//!   through a writable mapping that goes before the seal; the store then seals the
//!   segment against writes for good.
//! - [`ObjectBuffer`] is a pinned, sealed object: `data()` and `metadata()` are zero-copy
//!   slices of read-only shared memory (the creator of a small one reads its own copy).
//!   Clones share one pin; the last drop releases it. A get of an object this client
//!   already holds is answered locally, without a round trip.
//! - [`Subscription`] is the stream of sealed/deleted events (for the raylet).
//!
//! One connection serves one request at a time: a blocking `get` holds it until its
//! objects arrive. Threads that wait on objects concurrently each use their own client.

pub mod allocator;
mod blocking;
pub mod mapping;
mod nonblocking;
pub mod parts;
pub mod protocol;
mod retention;
mod subscription;

use std::sync::Arc;

use rayd_common::id::ObjectId;
use rayd_common::proto::plasma::v1 as pb;

pub use blocking::{Got, PlasmaClient};

/// Raises this process's soft limit on open descriptors to the hard one (once): every
/// object in a segment of its own holds one descriptor per file of it, in the store and
/// in each client that holds it.
pub fn raise_descriptor_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    log::warn!(limit = limit.rlim_max; "cannot raise the limit on open descriptors");
                }
            }
        }
    });
}
pub use nonblocking::AsyncPlasmaClient;
pub use pb::StoreStats;
pub use subscription::{Event, EventKind, Subscription};

use crate::mapping::{MapError, Mapping};
use crate::protocol::ProtocolError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the plasma store at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plasma protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("object store full: {0}")]
    StoreFull(String),
    #[error("object too large: {0}")]
    TooLarge(String),
    #[error("object exists: {0}")]
    ObjectExists(String),
    #[error("object not found: {0}")]
    ObjectNotFound(String),
    #[error("the store is out of memory: {0}")]
    OutOfMemory(String),
    #[error("transfer failed: {0}")]
    TransferFailed(String),
    #[error("the store failed: {0}")]
    Internal(String),
    #[error("request refused: {0}")]
    Invalid(String),
    #[error("the store answered {got} where {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error("cannot map object memory: {0}")]
    Memory(#[from] MapError),
    #[error("the store sent an object outside its segment: {0}")]
    BadLocation(ObjectId),
    #[error("cannot write object {0}: {1}")]
    Write(ObjectId, #[source] std::io::Error),
}

impl ClientError {
    fn from_reply(error: pb::Error) -> Self {
        use pb::error::Code;
        let message = error.message;
        match Code::try_from(error.code).unwrap_or(Code::Unspecified) {
            Code::StoreFull => Self::StoreFull(message),
            Code::TooLarge => Self::TooLarge(message),
            Code::ObjectExists => Self::ObjectExists(message),
            Code::ObjectNotFound => Self::ObjectNotFound(message),
            Code::OutOfMemory => Self::OutOfMemory(message),
            Code::TransferFailed => Self::TransferFailed(message),
            Code::Internal => Self::Internal(message),
            Code::InvalidRequest | Code::Unspecified => Self::Invalid(message),
        }
    }

    /// Whether the store has no room for the object: full now, or too small for it ever
    /// (`ObjectStoreFullError` in Python, as in Ray).
    pub fn is_store_full(&self) -> bool {
        matches!(self, Self::StoreFull(_) | Self::TooLarge(_))
    }

    /// Whether the store is gone (it stopped or died): its connection broke, or its
    /// socket is missing or refuses connections.
    pub fn is_store_gone(&self) -> bool {
        match self {
            Self::Protocol(protocol::ProtocolError::Closed | protocol::ProtocolError::Io(_)) => {
                true
            }
            Self::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// Where the bytes of a sealed object this client holds are.
#[derive(Clone)]
enum Sealed {
    /// In a read-only mapping of the store's memory, from this offset.
    Mapped(Arc<Mapping>, u64),
    /// This client's own copy of a small object it created (the store holds another).
    Owned(Arc<[u8]>),
}

impl Sealed {
    /// `len` bytes from `start` of the object (empty when outside).
    fn bytes(&self, start: u64, len: u64) -> &[u8] {
        match self {
            // SAFETY: the object is sealed (immutable) and pinned while its buffer lives;
            // the range was checked against the mapping when the buffer was made.
            Sealed::Mapped(mapping, offset) => {
                unsafe { mapping.slice(offset + start, len) }.unwrap_or_default()
            }
            Sealed::Owned(bytes) => usize::try_from(start)
                .ok()
                .zip(usize::try_from(start + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .unwrap_or_default(),
        }
    }
}

/// A sealed object, pinned in the store while this (or a clone) lives.
pub struct ObjectBuffer {
    id: ObjectId,
    memory: Sealed,
    data_size: u64,
    metadata_size: u64,
    owner: blocking::Releaser,
}

impl std::fmt::Debug for ObjectBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBuffer")
            .field("id", &self.id)
            .field("data_size", &self.data_size)
            .field("metadata_size", &self.metadata_size)
            .finish()
    }
}

impl ObjectBuffer {
    /// The object's ID.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        self.memory.bytes(0, self.data_size)
    }

    /// The metadata bytes, right after the data.
    pub fn metadata(&self) -> &[u8] {
        self.memory.bytes(self.data_size, self.metadata_size)
    }

    /// Whether the bytes are out of reach of writes (always, for sealed objects: a
    /// read-only mapping, or this client's own copy behind a shared reference).
    pub fn is_read_only(&self) -> bool {
        match &self.memory {
            Sealed::Mapped(mapping, _) => !mapping.is_writable(),
            Sealed::Owned(_) => true,
        }
    }
}

impl Clone for ObjectBuffer {
    fn clone(&self) -> Self {
        self.owner.add_ref(self.id);
        Self {
            id: self.id,
            memory: self.memory.clone(),
            data_size: self.data_size,
            metadata_size: self.metadata_size,
            owner: self.owner.clone(),
        }
    }
}

impl Drop for ObjectBuffer {
    fn drop(&mut self) {
        self.owner.release(self.id);
    }
}

/// Where an unsealed object is filled.
enum Unsealed {
    /// This client's memory: a small object, whose bytes go with its seal.
    Heap(Vec<u8>),
    /// The object's own segment: written with `pwrite`, or through a writable mapping
    /// made when first asked for; both go before the seal.
    Segment {
        /// Its files end to end, each with its length (see [`parts`]).
        files: Vec<(std::fs::File, u64)>,
        len: u64,
        mapping: Option<Mapping>,
        /// Its pages are allocated already (its creator need not allocate them before
        /// it maps them, see [`mapping::allocate`]).
        prepared: bool,
    },
}

/// An object being created: writable by this client alone until sealed. Dropped
/// unsealed, it is aborted.
pub struct ObjectBuilder {
    id: ObjectId,
    memory: Option<Unsealed>,
    segment: u64,
    data_size: u64,
    metadata_size: u64,
    client: Option<PlasmaClient>,
}

impl std::fmt::Debug for ObjectBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBuilder")
            .field("id", &self.id)
            .field("data_size", &self.data_size)
            .field("metadata_size", &self.metadata_size)
            .finish()
    }
}

impl ObjectBuilder {
    /// The object's ID.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The data bytes to fill.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffers_mut().0
    }

    /// The metadata bytes to fill.
    pub fn metadata_mut(&mut self) -> &mut [u8] {
        self.buffers_mut().1
    }

    /// Both at once: (data, metadata). A large object's segment is mapped writable for
    /// this (the page tables of a fresh mapping cost about a third of a memcpy; see
    /// [`Self::write_at`] for the way without).
    pub fn buffers_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let split = usize::try_from(self.data_size).unwrap_or(usize::MAX);
        let all = self.whole_mut();
        let split = split.min(all.len());
        all.split_at_mut(split)
    }

    /// The whole object (data, then metadata) to fill; empty when it cannot be mapped.
    fn whole_mut(&mut self) -> &mut [u8] {
        let total = self.data_size + self.metadata_size;
        match self.memory.as_mut() {
            Some(Unsealed::Heap(bytes)) => bytes,
            Some(Unsealed::Segment {
                files,
                len,
                mapping,
                prepared,
            }) => {
                if mapping.is_none() {
                    let size = usize::try_from(*len).unwrap_or(usize::MAX);
                    // The pages are allocated first: one that could not be had later would
                    // be a SIGBUS on the write that touches it.
                    let allocated = if *prepared {
                        Ok(())
                    } else {
                        files
                            .iter()
                            .try_for_each(|(file, part)| mapping::allocate(file, *part))
                    };
                    if allocated.is_ok() {
                        *prepared = true;
                    }
                    let mapped = allocated
                        .map_err(|source| mapping::MapError { size, source })
                        .and_then(|()| {
                            let parts: Vec<_> = files
                                .iter()
                                .map(|(file, part)| {
                                    let part = usize::try_from(*part).unwrap_or(usize::MAX);
                                    (std::os::fd::AsFd::as_fd(file), part)
                                })
                                .collect();
                            Mapping::of_parts(&parts, true, false)
                        });
                    match mapped {
                        Ok(m) => {
                            m.prefault_for_write(0, total);
                            *mapping = Some(m);
                        }
                        Err(e) => {
                            log::warn!(object:% = self.id, error:% = e; "cannot map an object to fill")
                        }
                    }
                }
                match mapping {
                    // SAFETY: this builder's creator is the object's only writer until
                    // the seal, the segment holds the object from offset 0 (checked at
                    // create), and `&mut self` makes this the only live slice of it.
                    Some(m) => unsafe { m.slice_mut(0, total) }.unwrap_or_default(),
                    None => &mut [],
                }
            }
            None => &mut [],
        }
    }

    /// Writes `bytes` at `offset` of the object (its data, then its metadata, as one
    /// range). A large object's bytes go straight into its segment's file (`pwrite`):
    /// one copy, and no page tables to build for a mapping that goes at the seal.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ClientError> {
        let total = self.data_size + self.metadata_size;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= total)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "{} bytes at {offset} are outside object {} of {total} bytes",
                    bytes.len(),
                    self.id
                ))
            })?;
        let written = match self.memory.as_mut() {
            Some(Unsealed::Heap(heap)) => {
                heap[offset as usize..end as usize].copy_from_slice(bytes);
                return Ok(());
            }
            Some(Unsealed::Segment { files, .. }) => {
                let files: Vec<(&std::fs::File, u64)> =
                    files.iter().map(|(file, part)| (file, *part)).collect();
                parts::write_all_at(&files, offset, bytes)
            }
            None => {
                return Err(ClientError::Invalid(
                    "the object was already sealed or aborted".into(),
                ))
            }
        };
        match written {
            Ok(()) => Ok(()),
            // Files of a hugetlbfs mount take no writes: through a mapping instead.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let id = self.id;
                match self.whole_mut().get_mut(offset as usize..end as usize) {
                    Some(target) => {
                        target.copy_from_slice(bytes);
                        Ok(())
                    }
                    None => Err(ClientError::Write(id, e)),
                }
            }
            Err(e) => Err(ClientError::Write(self.id, e)),
        }
    }

    /// Seals the object: immutable and visible to every client from now on.
    pub fn seal(mut self) -> Result<ObjectBuffer, ClientError> {
        let client = self.client.take().ok_or(ClientError::Invalid(
            "the object was already sealed or aborted".into(),
        ))?;
        // The writable mapping of a segment goes before the seal: the store's write seal
        // is refused while one exists.
        let bytes = match self.memory.take() {
            Some(Unsealed::Heap(bytes)) => Some(bytes),
            Some(Unsealed::Segment { .. }) | None => None,
        };
        client.seal_object(
            self.id,
            self.segment,
            (self.data_size, self.metadata_size),
            bytes,
        )
    }

    /// Gives the object up.
    pub fn abort(mut self) -> Result<(), ClientError> {
        match self.client.take() {
            Some(client) => client.abort_object(self.id, self.segment),
            None => Ok(()),
        }
    }
}

impl Drop for ObjectBuilder {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if let Err(e) = client.abort_object(self.id, self.segment) {
                log::debug!(object:% = self.id, error:% = e; "cannot abort a dropped unsealed object");
            }
        }
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Removed now.
    pub deleted: Vec<ObjectId>,
    /// Pinned or unsealed: removed when the last pin goes.
    pub deferred: Vec<ObjectId>,
    /// Not in the store.
    pub not_found: Vec<ObjectId>,
}

/// One object as [`PlasmaClient::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub id: ObjectId,
    pub data_size: u64,
    pub metadata_size: u64,
    pub sealed: bool,
    pub pins: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_store_socket_counts_as_the_store_gone() {
        let dir = std::env::temp_dir().join(format!("rayd-no-store-{}", std::process::id()));
        let missing = Subscription::connect(dir.join("plasma_store")).unwrap_err();
        assert!(missing.is_store_gone(), "{missing}");
        let lost = ClientError::Protocol(ProtocolError::Closed);
        assert!(lost.is_store_gone());
        assert!(!ClientError::Invalid("a bad request".into()).is_store_gone());
    }
}
