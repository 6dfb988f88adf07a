//! The object table: which objects exist, where their bytes are, who pins them, and which
//! go when memory runs short. Synchronous and free of I/O besides creating segments; the
//! server holds it behind one mutex.
//!
//! Memory is two pools (see [`crate::memory`] for what a segment is):
//! - the *arena*, a quarter of `object_store_memory` (at most 1 GiB), holds objects up to
//!   `small_object_max` (a quarter of the arena) bytes, placed by [`crate::allocator`].
//!   Its pages are allocated once, at start, and every client maps it once: creating
//!   and reading such an object costs no system call besides the request itself;
//! - the rest holds larger objects, one segment each (sealed with memfd seals).
//!
//! An object is created (pinned by its creator, writable by it alone), then sealed
//! (immutable) or aborted. Every get pins a sealed object for that client until it
//! releases it. Sealed objects without pins sit in a per-pool LRU list; a create that does
//! not fit evicts from the front of its pool's list until it fits, and fails with
//! [`StoreError::Full`] when nothing is left to evict. Pinned and unsealed objects are
//! never evicted. A deleted object that is pinned goes when its last pin does.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use rayd_common::id::ObjectId;

use crate::allocator::{Allocator, ALIGN};
use crate::lease::{self, Freed, Leases};
use crate::memory::{self, Backing, Mapping, MemoryError};

pub use crate::lease::ClientId;
pub use crate::protocol::ARENA_SEGMENT;
/// Largest arena.
const MAX_ARENA: u64 = 1 << 30;
/// Smallest lease worth granting.
const MIN_LEASE: u64 = 4 << 10;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} already exists")]
    Exists(ObjectId),
    #[error("object {0} does not exist")]
    NotFound(ObjectId),
    #[error("object {0} is already sealed")]
    AlreadySealed(ObjectId),
    #[error("object {0} is not sealed")]
    NotSealed(ObjectId),
    #[error("object {0} was created by another client")]
    NotCreator(ObjectId),
    #[error("object {0} is not pinned by this client")]
    NotPinned(ObjectId),
    #[error("object {id} of {size} bytes is larger than the {pool} of {capacity} bytes")]
    TooLarge {
        id: ObjectId,
        size: u64,
        pool: &'static str,
        capacity: u64,
    },
    #[error("object store full: no room for object {id} of {size} bytes, and every object in the {pool} is pinned or unsealed")]
    Full {
        id: ObjectId,
        size: u64,
        pool: &'static str,
    },
    #[error(
        "no room for a lease of {size} bytes: every object in the arena is pinned or unsealed"
    )]
    NoRoomForLease { size: u64 },
    #[error("this store grants no leases (its arena is too small)")]
    NoLeases,
    #[error("a lease: {0}")]
    LeaseMemory(#[source] MemoryError),
    #[error("object {id} at arena offset {offset} ({size} bytes) is outside the client's leases")]
    OutsideLease {
        id: ObjectId,
        offset: u64,
        size: u64,
    },
    #[error("object {id}: {source}")]
    Memory {
        id: ObjectId,
        #[source]
        source: MemoryError,
    },
}

/// Sizes of the store's pools, derived from its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub capacity: u64,
    pub arena_size: u64,
    pub small_object_max: u64,
    /// Bytes of one lease (see [`crate::lease`]); 0 when the arena is too small to lend.
    pub lease_size: u64,
    /// The largest object a client places in its lease itself.
    pub leased_object_max: u64,
}

impl Layout {
    /// Splits `capacity` into the arena and the pool of large objects.
    pub fn for_capacity(capacity: u64, granularity: u64) -> Self {
        let arena = (capacity / 4).min(MAX_ARENA);
        let arena_size = (arena - arena % granularity).max(granularity).min(capacity);
        // A lease takes at most 1/64 of the arena, so that leases held by many clients
        // leave most of it to the allocator.
        let lease = (arena_size / 64).min(lease::MAX_LEASE);
        let lease_size = if lease >= MIN_LEASE {
            lease - lease % ALIGN
        } else {
            0
        };
        Self {
            capacity,
            arena_size,
            small_object_max: arena_size / 4,
            lease_size,
            leased_object_max: lease_size / lease::OBJECT_SHARE,
        }
    }
}

/// The own segment of a large object.
#[derive(Debug)]
pub struct OwnSegment {
    /// Segment ID, unique for the store's life.
    pub id: u64,
    /// Read-write descriptor, handed to the creator.
    pub fd: OwnedFd,
    /// Bytes, rounded up to the backing's granularity.
    pub size: u64,
    /// Whether it may be written with `pwrite` (else only through a mapping).
    pub takes_writes: bool,
    read_only: OnceLock<OwnedFd>,
}

impl OwnSegment {
    /// The descriptor for a client: read-only once the object is sealed.
    pub fn fd_for_client(&self) -> BorrowedFd<'_> {
        self.read_only
            .get()
            .map_or_else(|| self.fd.as_fd(), |fd| fd.as_fd())
    }
}

/// Where an object's bytes are.
#[derive(Debug, Clone)]
pub enum Placement {
    Arena { offset: u64 },
    Own(Arc<OwnSegment>),
}

/// What a client needs to reach an object's bytes.
#[derive(Debug, Clone)]
pub struct ObjectView {
    pub id: ObjectId,
    pub placement: Placement,
    pub data_size: u64,
    pub metadata_size: u64,
}

impl ObjectView {
    /// The segment ID and offset of the first byte.
    pub fn segment_offset(&self) -> (u64, u64) {
        match &self.placement {
            Placement::Arena { offset } => (ARENA_SEGMENT, *offset),
            Placement::Own(segment) => (segment.id, 0),
        }
    }

    /// Data plus metadata bytes.
    pub fn total_size(&self) -> u64 {
        self.data_size + self.metadata_size
    }
}

/// A change other parties hear about (subscribers, the GCS object table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    Sealed {
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    },
    Removed {
        id: ObjectId,
        evicted: bool,
    },
}

/// One row of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    pub id: ObjectId,
    pub data_size: u64,
    pub metadata_size: u64,
    pub sealed: bool,
    pub pins: u32,
}

/// The store's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub objects: u64,
    pub sealed_objects: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub arena_bytes: u64,
    pub arena_used_bytes: u64,
    pub clients: u64,
}

/// Whether a delete took effect now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Pinned or unsealed: removed when the last pin goes.
    Deferred,
    NotFound,
}

#[derive(Debug)]
struct Entry {
    placement: Placement,
    data_size: u64,
    metadata_size: u64,
    sealed: bool,
    creator: ClientId,
    pins: u32,
    /// Position in its pool's LRU list while sealed and unpinned.
    lru_tick: Option<u64>,
    delete_pending: bool,
    /// The lease block it was placed in by its creator (arena objects only).
    lease: Option<u64>,
}

impl Entry {
    fn total(&self) -> u64 {
        self.data_size + self.metadata_size
    }

    fn is_small(&self) -> bool {
        matches!(self.placement, Placement::Arena { .. })
    }
}

#[derive(Debug, Default)]
struct ClientState {
    pins: HashMap<ObjectId, u32>,
}

/// The object table of one node.
#[derive(Debug)]
pub struct Store {
    backing: Backing,
    layout: Layout,
    arena_fd: OwnedFd,
    arena_map: Arc<Mapping>,
    arena: Allocator,
    /// Which granules of the arena have their pages allocated (see `memory`).
    arena_reserved: Vec<bool>,
    large_capacity: u64,
    large_used: u64,
    objects: HashMap<ObjectId, Entry>,
    lru_small: BTreeMap<u64, ObjectId>,
    lru_large: BTreeMap<u64, ObjectId>,
    tick: u64,
    next_segment: u64,
    next_client: ClientId,
    clients: HashMap<ClientId, ClientState>,
    evictions: u64,
    evicted_bytes: u64,
    events: Vec<StoreEvent>,
    leases: Leases,
}

impl Store {
    /// Creates the store. The arena's pages are allocated as objects first land in them:
    /// zero-filling 1 GiB up front took ~420 ms of every `ray.init()`.
    pub fn new(capacity: u64, backing: Backing) -> Result<Self, MemoryError> {
        let layout = Layout::for_capacity(capacity, backing.granularity() as u64);
        let (arena_fd, arena_size) = backing.create(layout.arena_size as usize, false)?;
        let arena_map = Arc::new(Mapping::new(arena_fd.as_fd(), arena_size, true, false)?);
        Ok(Self {
            backing,
            layout,
            arena_fd,
            arena_map,
            arena: Allocator::new(arena_size as u64),
            arena_reserved: vec![false; arena_size.div_ceil(memory::ARENA_RESERVE_GRANULE)],
            large_capacity: capacity.saturating_sub(arena_size as u64),
            large_used: 0,
            objects: HashMap::new(),
            lru_small: BTreeMap::new(),
            lru_large: BTreeMap::new(),
            tick: 0,
            next_segment: ARENA_SEGMENT + 1,
            next_client: 1,
            clients: HashMap::new(),
            evictions: 0,
            evicted_bytes: 0,
            events: Vec::new(),
            leases: Leases::default(),
        })
    }

    /// The pool sizes.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The arena's descriptor and size, sent to every client on connect.
    pub fn arena(&self) -> (BorrowedFd<'_>, u64) {
        (self.arena_fd.as_fd(), self.arena.size())
    }

    /// The store's own writable mapping of the arena.
    pub fn arena_mapping(&self) -> Arc<Mapping> {
        self.arena_map.clone()
    }

    /// Registers a client; its pins and creates are undone by [`Self::disconnect`].
    pub fn connect(&mut self) -> ClientId {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, ClientState::default());
        id
    }

    /// Takes the events that happened since the last call.
    pub fn take_events(&mut self) -> Vec<StoreEvent> {
        std::mem::take(&mut self.events)
    }

    /// Creates an unsealed object, pinned by `client`, evicting unpinned objects when it
    /// does not fit.
    pub fn create(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectView, StoreError> {
        self.create_object(client, id, data_size, metadata_size, true)
    }

    /// [`Self::create`] for an object the store fills itself with `pwrite` (a pull): a
    /// large one's own segment gets no pages up front (unless its backing takes no
    /// writes); the writes allocate them, in parallel, and fail with an error where memory
    /// runs out (no mapping, no SIGBUS).
    pub fn create_pulled(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectView, StoreError> {
        self.create_object(client, id, data_size, metadata_size, false)
    }

    fn create_object(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
        reserve_pages: bool,
    ) -> Result<ObjectView, StoreError> {
        if self.objects.contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        let size = data_size
            .checked_add(metadata_size)
            .ok_or(StoreError::TooLarge {
                id,
                size: u64::MAX,
                pool: "store",
                capacity: self.layout.capacity,
            })?;
        let placement = if size <= self.layout.small_object_max {
            Placement::Arena {
                offset: self.place_small(id, size)?,
            }
        } else {
            Placement::Own(self.place_large(id, size, reserve_pages)?)
        };
        self.insert_unsealed(
            client,
            id,
            placement.clone(),
            (data_size, metadata_size),
            None,
        );
        Ok(ObjectView {
            id,
            placement,
            data_size,
            metadata_size,
        })
    }

    /// Enters a new unsealed object, pinned by its creator.
    fn insert_unsealed(
        &mut self,
        client: ClientId,
        id: ObjectId,
        placement: Placement,
        (data_size, metadata_size): (u64, u64),
        lease: Option<u64>,
    ) {
        self.objects.insert(
            id,
            Entry {
                placement,
                data_size,
                metadata_size,
                sealed: false,
                creator: client,
                pins: 1,
                lru_tick: None,
                delete_pending: false,
                lease,
            },
        );
        self.pin_for(client, id);
    }

    fn pin_for(&mut self, client: ClientId, id: ObjectId) {
        *self
            .clients
            .entry(client)
            .or_default()
            .pins
            .entry(id)
            .or_default() += 1;
    }

    fn place_small(&mut self, id: ObjectId, size: u64) -> Result<u64, StoreError> {
        match self.allocate_small(size) {
            Ok(Some(offset)) => Ok(offset),
            Ok(None) => Err(StoreError::Full {
                id,
                size,
                pool: "arena",
            }),
            Err(source) => Err(StoreError::Memory { id, source }),
        }
    }

    /// Places `size` bytes in the arena, evicting unpinned objects until they fit; `None`
    /// when nothing is left to evict.
    fn allocate_small(&mut self, size: u64) -> Result<Option<u64>, MemoryError> {
        loop {
            if let Some(offset) = self.allocate_free(size)? {
                return Ok(Some(offset));
            }
            if !self.evict_one(true) {
                return Ok(None);
            }
        }
    }

    /// Places `size` bytes in free arena room, its pages allocated; `None` when no free
    /// range is large enough.
    fn allocate_free(&mut self, size: u64) -> Result<Option<u64>, MemoryError> {
        let Some(offset) = self.arena.allocate(size) else {
            return Ok(None);
        };
        if let Err(e) = self.reserve_arena(offset, size) {
            self.arena.free(offset, size);
            return Err(e);
        }
        Ok(Some(offset))
    }

    /// Grants `client` a new lease (retiring its current one): the arena range it places
    /// objects of up to `leased_object_max` bytes in itself.
    pub fn lease(&mut self, client: ClientId) -> Result<(u64, u64), StoreError> {
        let size = self.layout.lease_size;
        if size == 0 {
            return Err(StoreError::NoLeases);
        }
        let freed = self.leases.retire(client);
        self.free_ranges(freed);
        // Leases take free room only, never evicted room, and a quarter of the arena at
        // most: evicting an object in a lease frees nothing until its lease empties.
        if self.leases.total_bytes() + size > self.arena.size() / 4 {
            return Err(StoreError::NoRoomForLease { size });
        }
        let offset = self
            .allocate_free(size)
            .map_err(StoreError::LeaseMemory)?
            .ok_or(StoreError::NoRoomForLease { size })?;
        let freed = self.leases.grant(client, offset, size);
        self.free_ranges(freed);
        Ok((offset, size))
    }

    /// Registers an unsealed object `client` placed at `offset` in one of its leases, as
    /// [`Self::create`] would have. An ID that exists already makes the client's bytes a
    /// shadow (see [`crate::lease`]).
    pub fn create_leased(
        &mut self,
        client: ClientId,
        id: ObjectId,
        offset: u64,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<(), StoreError> {
        let size = data_size.saturating_add(metadata_size);
        let block = self
            .leases
            .block_of(client, offset, Allocator::rounded(size))
            .filter(|_| offset.is_multiple_of(ALIGN))
            .ok_or(StoreError::OutsideLease { id, offset, size })?;
        if let Some(existing) = self.objects.get(&id) {
            // The same client creating an ID twice (or a copy twice) is its own mistake;
            // a copy of another's object is a duplicate put.
            if (existing.creator == client && !existing.sealed)
                || self.leases.has_shadow(client, id)
            {
                return Err(StoreError::Exists(id));
            }
            log::debug!(object:% = id, client = client; "a leased object exists already: the client keeps a private copy");
            self.leases
                .add_shadow(client, id, block, Allocator::rounded(size));
            return Ok(());
        }
        self.leases.add(block, Allocator::rounded(size));
        self.insert_unsealed(
            client,
            id,
            Placement::Arena { offset },
            (data_size, metadata_size),
            Some(block),
        );
        Ok(())
    }

    fn free_ranges(&mut self, ranges: impl IntoIterator<Item = Freed>) {
        for (offset, len) in ranges {
            self.arena.free(offset, len);
        }
    }

    /// Allocates the pages of the arena granules that `offset..offset + size` touches and
    /// that are not allocated yet, before any client learns of the range.
    fn reserve_arena(&mut self, offset: u64, size: u64) -> Result<(), MemoryError> {
        let granule = memory::ARENA_RESERVE_GRANULE;
        let arena_size = self.arena.size() as usize;
        let first = offset as usize / granule;
        let last = (offset + size.max(1) - 1) as usize / granule;
        for index in first..=last.min(self.arena_reserved.len().saturating_sub(1)) {
            if !self.arena_reserved[index] {
                let start = index * granule;
                memory::reserve_range(
                    self.arena_fd.as_fd(),
                    start,
                    granule.min(arena_size - start),
                )?;
                self.arena_reserved[index] = true;
            }
        }
        Ok(())
    }

    fn place_large(
        &mut self,
        id: ObjectId,
        size: u64,
        reserve_pages: bool,
    ) -> Result<Arc<OwnSegment>, StoreError> {
        let granularity = self.backing.granularity() as u64;
        let rounded = size.div_ceil(granularity).saturating_mul(granularity);
        if rounded > self.large_capacity {
            return Err(StoreError::TooLarge {
                id,
                size,
                pool: "pool of large objects",
                capacity: self.large_capacity,
            });
        }
        while self.large_used + rounded > self.large_capacity {
            if !self.evict_one(false) {
                return Err(StoreError::Full {
                    id,
                    size,
                    pool: "pool of large objects",
                });
            }
        }
        let len = usize::try_from(size).map_err(|_| StoreError::TooLarge {
            id,
            size,
            pool: "address space",
            capacity: usize::MAX as u64,
        })?;
        let takes_writes = self.backing.takes_writes();
        let (fd, real) = self
            .backing
            .create(len, reserve_pages || !takes_writes)
            .map_err(|source| StoreError::Memory { id, source })?;
        let segment = Arc::new(OwnSegment {
            id: self.next_segment,
            fd,
            size: real as u64,
            takes_writes,
            read_only: OnceLock::new(),
        });
        self.next_segment += 1;
        self.large_used += segment.size;
        Ok(segment)
    }

    /// Evicts the least recently used unpinned sealed object of a pool; false when there
    /// is none.
    fn evict_one(&mut self, small: bool) -> bool {
        let lru = if small {
            &mut self.lru_small
        } else {
            &mut self.lru_large
        };
        let Some((_, id)) = lru.pop_first() else {
            return false;
        };
        if let Some(entry) = self.objects.get_mut(&id) {
            entry.lru_tick = None;
            self.evictions += 1;
            self.evicted_bytes += entry.total();
        }
        log::debug!(object:% = id; "evicting object");
        self.remove(id, true);
        true
    }

    fn remove(&mut self, id: ObjectId, evicted: bool) {
        let Some(entry) = self.objects.remove(&id) else {
            return;
        };
        if let Some(tick) = entry.lru_tick {
            if entry.is_small() {
                self.lru_small.remove(&tick);
            } else {
                self.lru_large.remove(&tick);
            }
        }
        match (&entry.placement, entry.lease) {
            (Placement::Arena { .. }, Some(block)) => {
                let freed = self.leases.remove(block, Allocator::rounded(entry.total()));
                self.free_ranges(freed);
            }
            (Placement::Arena { offset }, None) => self.arena.free(*offset, entry.total()),
            (Placement::Own(segment), _) => self.large_used -= segment.size,
        }
        if entry.sealed {
            self.events.push(StoreEvent::Removed { id, evicted });
        }
    }

    fn entry_of_creator(
        &mut self,
        client: ClientId,
        id: ObjectId,
    ) -> Result<&mut Entry, StoreError> {
        let entry = self.objects.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        if entry.sealed {
            return Err(StoreError::AlreadySealed(id));
        }
        if entry.creator != client {
            return Err(StoreError::NotCreator(id));
        }
        Ok(entry)
    }

    /// Seals an object: immutable from now on, visible to gets. The creator keeps its pin.
    pub fn seal(&mut self, client: ClientId, id: ObjectId) -> Result<ObjectView, StoreError> {
        let entry = self.entry_of_creator(client, id)?;
        if let Placement::Own(segment) = &entry.placement {
            // Neither step may fail the seal: the object is complete and its creator has
            // moved on. Without them, readers still get read-only mappings.
            match memory::seal_against_writes(segment.fd.as_fd()) {
                Ok(true) => {}
                Ok(false) => {
                    log::debug!(object:% = id; "a writable mapping remains: only new writes are sealed off")
                }
                Err(e) => log::warn!(object:% = id, error:% = e; "cannot seal an object's memory"),
            }
            match memory::reopen_read_only(segment.fd.as_fd()) {
                Ok(read_only) => {
                    let _ = segment.read_only.set(read_only);
                }
                Err(e) => {
                    log::warn!(object:% = id, error:% = e; "cannot open an object's memory read-only")
                }
            }
        }
        entry.sealed = true;
        let view = ObjectView {
            id,
            placement: entry.placement.clone(),
            data_size: entry.data_size,
            metadata_size: entry.metadata_size,
        };
        self.events.push(StoreEvent::Sealed {
            id,
            data_size: view.data_size,
            metadata_size: view.metadata_size,
        });
        Ok(view)
    }

    /// Seals an object placed in a lease; a shadow (see [`crate::lease`]) stays as it is.
    pub fn seal_leased(&mut self, client: ClientId, id: ObjectId) -> Result<(), StoreError> {
        if self.leases.has_shadow(client, id) {
            return Ok(());
        }
        self.seal(client, id).map(|_| ())
    }

    /// Drops the client's shadow of `id`; false when it has none.
    fn drop_shadow(&mut self, client: ClientId, id: ObjectId) -> bool {
        match self.leases.remove_shadow(client, id) {
            Some(freed) => {
                self.free_ranges(freed);
                true
            }
            None => false,
        }
    }

    /// Drops an unsealed object its creator gives up on.
    pub fn abort(&mut self, client: ClientId, id: ObjectId) -> Result<(), StoreError> {
        if self.drop_shadow(client, id) {
            return Ok(());
        }
        self.entry_of_creator(client, id)?;
        if let Some(state) = self.clients.get_mut(&client) {
            state.pins.remove(&id);
        }
        self.remove(id, false);
        Ok(())
    }

    /// Pins a sealed object for `client`; `None` when it is absent or unsealed.
    pub fn get(&mut self, client: ClientId, id: ObjectId) -> Option<ObjectView> {
        let entry = self.objects.get_mut(&id)?;
        if !entry.sealed {
            return None;
        }
        if let Some(tick) = entry.lru_tick.take() {
            if entry.is_small() {
                self.lru_small.remove(&tick);
            } else {
                self.lru_large.remove(&tick);
            }
        }
        entry.pins += 1;
        *self
            .clients
            .entry(client)
            .or_default()
            .pins
            .entry(id)
            .or_default() += 1;
        Some(ObjectView {
            id,
            placement: entry.placement.clone(),
            data_size: entry.data_size,
            metadata_size: entry.metadata_size,
        })
    }

    /// Drops one pin of `client` on `id`. Returns how many pins the client still holds.
    pub fn release(&mut self, client: ClientId, id: ObjectId) -> Result<u32, StoreError> {
        if self.drop_shadow(client, id) {
            return Ok(0);
        }
        let pins = self
            .clients
            .get_mut(&client)
            .and_then(|state| state.pins.get_mut(&id))
            .ok_or(StoreError::NotPinned(id))?;
        *pins -= 1;
        let left = *pins;
        if left == 0 {
            if let Some(state) = self.clients.get_mut(&client) {
                state.pins.remove(&id);
            }
        }
        if self.objects.get(&id).is_some_and(|e| !e.sealed) {
            // Releasing an unsealed object is giving it up.
            self.remove(id, false);
            return Ok(left);
        }
        self.unpin(id, 1);
        Ok(left)
    }

    fn unpin(&mut self, id: ObjectId, count: u32) {
        let Some(entry) = self.objects.get_mut(&id) else {
            return;
        };
        entry.pins = entry.pins.saturating_sub(count);
        if entry.pins > 0 {
            return;
        }
        if entry.delete_pending || !entry.sealed {
            self.remove(id, false);
            return;
        }
        self.tick += 1;
        entry.lru_tick = Some(self.tick);
        if entry.is_small() {
            self.lru_small.insert(self.tick, id);
        } else {
            self.lru_large.insert(self.tick, id);
        }
    }

    /// Whether `id` is here and sealed.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.get(id).is_some_and(|e| e.sealed)
    }

    /// Whether `id` is here, sealed or not.
    pub fn exists(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    /// Deletes an object now, or when its last pin goes.
    pub fn delete(&mut self, id: ObjectId) -> DeleteOutcome {
        let Some(entry) = self.objects.get_mut(&id) else {
            return DeleteOutcome::NotFound;
        };
        if entry.pins > 0 || !entry.sealed {
            entry.delete_pending = true;
            return DeleteOutcome::Deferred;
        }
        self.remove(id, false);
        DeleteOutcome::Deleted
    }

    /// Undoes everything `client` holds: its unsealed objects are aborted, its pins
    /// released.
    pub fn disconnect(&mut self, client: ClientId) {
        let Some(state) = self.clients.remove(&client) else {
            return;
        };
        for (id, count) in state.pins {
            let unsealed_own = self
                .objects
                .get(&id)
                .is_some_and(|e| !e.sealed && e.creator == client);
            if unsealed_own {
                log::info!(object:% = id, client = client; "aborting an object its client left unsealed");
                self.remove(id, false);
            } else {
                self.unpin(id, count);
            }
        }
        let freed = self.leases.disconnect(client);
        self.free_ranges(freed);
    }

    /// Removes every object, pinned or not: the store is stopping.
    pub fn clear(&mut self) {
        let ids: Vec<ObjectId> = self.objects.keys().copied().collect();
        for id in ids {
            self.remove(id, false);
        }
    }

    /// Every object, sealed or not.
    pub fn list(&self) -> Vec<ObjectSummary> {
        let mut rows: Vec<ObjectSummary> = self
            .objects
            .iter()
            .map(|(id, e)| ObjectSummary {
                id: *id,
                data_size: e.data_size,
                metadata_size: e.metadata_size,
                sealed: e.sealed,
                pins: e.pins,
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// The store's figures.
    pub fn stats(&self) -> Stats {
        Stats {
            capacity_bytes: self.layout.capacity,
            // Leased room that holds no object yet counts as free here (arena_used_bytes
            // has it).
            used_bytes: self.arena.used().saturating_sub(self.leases.idle_bytes())
                + self.large_used,
            objects: self.objects.len() as u64,
            sealed_objects: self.objects.values().filter(|e| e.sealed).count() as u64,
            evictions: self.evictions,
            evicted_bytes: self.evicted_bytes,
            arena_bytes: self.arena.size(),
            arena_used_bytes: self.arena.used(),
            clients: self.clients.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    fn store() -> Store {
        // 64 MiB: a 16 MiB arena (objects up to 4 MiB) and 48 MiB for large objects.
        Store::new(64 * MIB, Backing::Memfd).unwrap()
    }

    fn put(store: &mut Store, client: ClientId, n: u8, size: u64) {
        store.create(client, id(n), size, 0).unwrap();
        store.seal(client, id(n)).unwrap();
        store.release(client, id(n)).unwrap();
    }

    #[test]
    fn arena_pages_are_reserved_on_first_use() {
        let mut store = store();
        assert!(store.arena_reserved.iter().all(|reserved| !reserved));
        let client = store.connect();
        store.create(client, id(1), 100, 0).unwrap();
        assert!(store.arena_reserved[0]);
    }

    #[test]
    fn layout_splits_capacity() {
        let layout = Layout::for_capacity(64 * MIB, 4096);
        assert_eq!(layout.arena_size, 16 * MIB);
        assert_eq!(layout.small_object_max, 4 * MIB);
        let big = Layout::for_capacity(100 << 30, 4096);
        assert_eq!(big.arena_size, MAX_ARENA);
    }

    #[test]
    fn leased_objects_live_like_others_and_their_lease_goes_when_empty() {
        let mut store = store();
        let (a, b) = (store.connect(), store.connect());
        let lease = store.layout().lease_size;
        assert_eq!(lease, lease::MAX_LEASE);
        let (offset, size) = store.lease(a).unwrap();
        assert_eq!(size, lease);
        assert_eq!(store.stats().used_bytes, 0, "an empty lease holds nothing");
        store.create_leased(a, id(1), offset, 100, 0).unwrap();
        assert!(store.get(b, id(1)).is_none(), "unsealed");
        store.seal_leased(a, id(1)).unwrap();
        assert_eq!(store.stats().used_bytes, 128);
        let view = store.get(b, id(1)).unwrap();
        assert!(matches!(view.placement, Placement::Arena { offset: o } if o == offset));
        assert!(matches!(
            store.create_leased(b, id(2), offset + 128, 10, 0),
            Err(StoreError::OutsideLease { .. })
        ));
        assert!(matches!(
            store.create_leased(a, id(2), offset + size - 64, 100, 0),
            Err(StoreError::OutsideLease { .. })
        ));
        // A new lease retires the first, which stays while its object does.
        let (second, _) = store.lease(a).unwrap();
        assert_ne!(second, offset);
        store.create_leased(a, id(3), second, 64, 0).unwrap();
        store.disconnect(a);
        assert!(!store.exists(&id(3)), "unsealed: aborted with its client");
        assert_eq!(
            store.stats().arena_used_bytes,
            lease,
            "the first lease remains"
        );
        store.release(b, id(1)).unwrap();
        assert_eq!(store.delete(id(1)), DeleteOutcome::Deleted);
        let stats = store.stats();
        assert_eq!((stats.used_bytes, stats.arena_used_bytes), (0, 0));
    }

    #[test]
    fn a_leased_copy_of_an_existing_object_stays_private() {
        let mut store = store();
        let (a, b) = (store.connect(), store.connect());
        put(&mut store, a, 1, 100);
        let (offset, _) = store.lease(b).unwrap();
        store.create_leased(b, id(1), offset, 100, 0).unwrap();
        store.seal_leased(b, id(1)).unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store.list()[0].pins,
            0,
            "the original is not pinned by the copy"
        );
        assert_eq!(store.release(b, id(1)).unwrap(), 0);
        store.disconnect(b);
        assert_eq!(store.stats().arena_used_bytes, 128, "the original alone");
    }

    #[test]
    fn lifecycle_create_seal_get_release_delete() {
        let mut store = store();
        let (a, b) = (store.connect(), store.connect());
        store.create(a, id(1), 100, 10).unwrap();
        assert!(
            store.get(b, id(1)).is_none(),
            "unsealed objects are invisible"
        );
        assert!(matches!(
            store.seal(b, id(1)),
            Err(StoreError::NotCreator(_))
        ));
        store.seal(a, id(1)).unwrap();
        assert!(matches!(
            store.create(b, id(1), 1, 0),
            Err(StoreError::Exists(_))
        ));
        let view = store.get(b, id(1)).unwrap();
        assert_eq!((view.data_size, view.metadata_size), (100, 10));
        assert_eq!(store.delete(id(1)), DeleteOutcome::Deferred);
        store.release(a, id(1)).unwrap();
        assert!(store.contains(&id(1)), "b still pins it");
        store.release(b, id(1)).unwrap();
        assert!(!store.exists(&id(1)), "deleted with its last pin");
        assert_eq!(store.stats().used_bytes, 0);
        let events = store.take_events();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn eviction_is_lru_and_spares_pinned_objects() {
        let mut store = store();
        let c = store.connect();
        // Six 8 MiB objects fill the 48 MiB pool.
        for n in 1..=6 {
            put(&mut store, c, n, 8 * MIB);
        }
        // Touch 1, pin 2: the LRU order is now 3, 4, 5, 6, 1.
        store.get(c, id(1)).unwrap();
        store.release(c, id(1)).unwrap();
        store.get(c, id(2)).unwrap();
        put(&mut store, c, 7, 8 * MIB);
        assert!(!store.exists(&id(3)), "least recently used goes first");
        assert!(store.exists(&id(1)) && store.exists(&id(2)));
        put(&mut store, c, 8, 16 * MIB);
        assert!(!store.exists(&id(4)) && !store.exists(&id(5)));
        assert_eq!(store.stats().evictions, 3);
    }

    #[test]
    fn a_full_store_says_so() {
        let mut store = store();
        let c = store.connect();
        for n in 1..=6 {
            store.create(c, id(n), 8 * MIB, 0).unwrap();
            store.seal(c, id(n)).unwrap();
        }
        let err = store.create(c, id(9), 8 * MIB, 0).unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(matches!(
            store.create(c, id(9), 100 * MIB, 0),
            Err(StoreError::TooLarge { .. })
        ));
        // Small objects: fill the arena with pinned ones.
        let mut n = 10u8;
        loop {
            match store.create(c, id(n), MIB, 0) {
                Ok(_) => n += 1,
                Err(StoreError::Full { pool, .. }) => {
                    assert_eq!(pool, "arena");
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_disconnect_aborts_and_unpins() {
        let mut store = store();
        let (a, b) = (store.connect(), store.connect());
        put(&mut store, a, 1, 10);
        store.get(b, id(1)).unwrap();
        store.create(b, id(2), 2 * MIB, 0).unwrap();
        store.create(b, id(3), 10, 0).unwrap();
        store.disconnect(b);
        assert!(!store.exists(&id(2)) && !store.exists(&id(3)));
        let row = &store.list()[0];
        assert_eq!((row.id, row.pins), (id(1), 0));
        assert_eq!(store.stats().used_bytes, 64);
        assert_eq!(store.stats().clients, 1);
    }

    #[test]
    fn a_sealed_large_object_hands_out_read_only_descriptors() {
        let mut store = store();
        let c = store.connect();
        let view = store.create(c, id(1), 8 * MIB, 0).unwrap();
        let Placement::Own(segment) = view.placement else {
            panic!("large objects get their own segment")
        };
        store.seal(c, id(1)).unwrap();
        let fd = segment.fd_for_client();
        assert!(Mapping::new(fd, 8 * MIB as usize, true, false).is_err());
        assert!(Mapping::new(fd, 8 * MIB as usize, false, false).is_ok());
    }
}
