//! The plasma client library: what the raylet, the workers and the Python SDK link to
//! reach their node's store. It depends on no part of the store: what both sides share is
//! here, and the store (`rayd-plasma`) depends on it: [`protocol`] (the framing and
//! descriptor passing on the store's socket), [`mapping`] (mappings of shared memory
//! segments) and [`allocator`] (placement in the arena, which clients do in their lease).
//!
//! - [`PlasmaClient`] (blocking) and [`AsyncPlasmaClient`] (the same, for tokio) connect
//!   to the store's socket, receive its memory descriptors and map each segment once.
//! - [`ObjectBuilder`] is an unsealed object its creator fills in place;
//!   [`ObjectBuilder::seal`] makes it an [`ObjectBuffer`]. Small objects are placed in
//!   this client's lease of the arena (the store's `lease` module) without a round trip: the
//!   store learns of them with the next write, and their seal needs no reply, so other
//!   clients see them once the store has read it (their gets wait for that).
//! - [`ObjectBuffer`] is a pinned, sealed object: `data()` and `metadata()` are zero-copy
//!   slices of the shared memory, read-only (writing through them faults). Clones share
//!   one pin; the last drop releases it. A get of an object this client already holds
//!   is answered locally, without a round trip.
//! - [`Subscription`] is the stream of sealed/deleted events (for the raylet).
//!
//! One connection serves one request at a time: a blocking `get` holds it until its
//! objects arrive. Threads that wait on objects concurrently each use their own client.

pub mod allocator;
mod blocking;
pub mod mapping;
mod nonblocking;
pub mod protocol;
mod subscription;

use std::sync::Arc;

use rayd_common::id::ObjectId;
use rayd_common::proto::plasma::v1 as pb;

pub use blocking::PlasmaClient;
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
}

/// A sealed object, pinned in the store while this (or a clone) lives.
pub struct ObjectBuffer {
    id: ObjectId,
    mapping: Arc<Mapping>,
    offset: u64,
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

    /// The data bytes, in shared memory.
    pub fn data(&self) -> &[u8] {
        // SAFETY: the object is sealed (immutable) and pinned while self lives; the
        // range was checked against the mapping when this buffer was made.
        unsafe { self.mapping.slice(self.offset, self.data_size) }.unwrap_or_default()
    }

    /// The metadata bytes, in shared memory, right after the data.
    pub fn metadata(&self) -> &[u8] {
        // SAFETY: as for `data`.
        unsafe {
            self.mapping
                .slice(self.offset + self.data_size, self.metadata_size)
        }
        .unwrap_or_default()
    }

    /// Whether the bytes come from a read-only mapping (always, for sealed objects).
    pub fn is_read_only(&self) -> bool {
        !self.mapping.is_writable()
    }
}

impl Clone for ObjectBuffer {
    fn clone(&self) -> Self {
        self.owner.add_ref(self.id);
        Self {
            id: self.id,
            mapping: self.mapping.clone(),
            offset: self.offset,
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

/// An object being created: writable by this client alone until sealed. Dropped
/// unsealed, it is aborted.
pub struct ObjectBuilder {
    id: ObjectId,
    mapping: Option<Arc<Mapping>>,
    segment: u64,
    offset: u64,
    data_size: u64,
    metadata_size: u64,
    client: Option<PlasmaClient>,
    /// Placed in the client's lease (sealed and aborted without a reply).
    leased: bool,
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
        let Some(m) = self.mapping.as_ref() else {
            return &mut [];
        };
        // SAFETY: this builder's creator is the object's only writer until the seal,
        // and `&mut self` makes this the only live slice of it.
        unsafe { m.slice_mut(self.offset, self.data_size) }.unwrap_or_default()
    }

    /// The metadata bytes to fill.
    pub fn metadata_mut(&mut self) -> &mut [u8] {
        let Some(m) = self.mapping.as_ref() else {
            return &mut [];
        };
        // SAFETY: as for `data_mut`.
        unsafe { m.slice_mut(self.offset + self.data_size, self.metadata_size) }.unwrap_or_default()
    }

    /// Both at once: (data, metadata).
    pub fn buffers_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let Some(m) = self.mapping.as_ref() else {
            return (Default::default(), Default::default());
        };
        // SAFETY: as for `data_mut`; the two ranges do not overlap.
        unsafe {
            (
                m.slice_mut(self.offset, self.data_size).unwrap_or_default(),
                m.slice_mut(self.offset + self.data_size, self.metadata_size)
                    .unwrap_or_default(),
            )
        }
    }

    /// Seals the object: immutable and visible to every client from now on.
    pub fn seal(mut self) -> Result<ObjectBuffer, ClientError> {
        let client = self.client.take().ok_or(ClientError::Invalid(
            "the object was already sealed or aborted".into(),
        ))?;
        let id = self.id;
        // The writable mapping of an own segment must go before the seal: the strict
        // write seal needs it gone.
        drop(self.mapping.take());
        client.seal_object(
            id,
            self.segment,
            self.offset,
            self.data_size,
            self.metadata_size,
            self.leased,
        )
    }

    /// Gives the object up.
    pub fn abort(mut self) -> Result<(), ClientError> {
        match self.client.take() {
            Some(client) => client.abort_object(self.id, self.segment, self.leased),
            None => Ok(()),
        }
    }
}

impl Drop for ObjectBuilder {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if let Err(e) = client.abort_object(self.id, self.segment, self.leased) {
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
