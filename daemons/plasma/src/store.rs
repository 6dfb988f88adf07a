//! The object table: which objects exist, where their bytes are, who pins them, and which
//! leave memory when it runs short. Synchronous; the server holds it behind one mutex.
//!
//! Memory is one budget, `object_store_memory`, shared by the *arena* (one file of
//! that size, see [`crate::memory`], holding the small objects, placed by
//! [`crate::allocator`] and written by the store alone) and the *segments* of their own
//! that every larger object gets: any mix of objects fills the whole budget, and an
//! object up to the whole store fits an empty one. The arena's pages are allocated
//! (reserved) ahead of demand by a background thread ([`crate::prefault`]) and as
//! objects first land in them, and never given back: a range freed by one object is
//! ready memory for the next. The same thread prepares segments ahead of large creates
//! ([`crate::pool`]), in room the budget has to spare. Every client maps the arena
//! once, read-only.
//!
//! An object is created (pinned by its creator, writable by it alone: a small one in
//! the creator's own memory until the store copies it in, a large one in its segment),
//! then sealed (immutable: the kernel refuses every write from then on) or aborted.
//! Every get pins a sealed object for that client until it
//! releases it; "a process is reading it" means exactly that it holds a pin. Sealed
//! objects without pins sit in an LRU list. A create that does not fit frees memory from
//! the front of that list until it fits: it *spills* the object to disk
//! ([`crate::spill`]; the object stays in the table and a get restores it), and only
//! when the disk takes no more does it *evict* (drop) one, and then only a task result,
//! which its task can rebuild: a `ray.put` object is never dropped. When nothing can go,
//! the create fails with [`StoreError::Full`], naming both limits. Pinned and unsealed
//! objects never leave memory. A deleted object that is pinned goes when its last pin
//! does.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayd_common::id::ObjectId;

use crate::allocator::{Allocator, ALIGN};
use crate::lease::{self, Freed, Leases};
use crate::memory::{self, Backing, Mapping, MemoryError, ARENA_OBJECT_MAX};
use crate::pool::Pool;
use crate::revocations::Revocations;
use crate::segment::Segment;
use crate::spill::{Slot, Spill, SpillError, SpillStats};

pub use crate::lease::ClientId;
pub use crate::protocol::ARENA_SEGMENT;
/// Pulled objects at least this large (in segments whose file takes writes) get no pages
/// up front unless they take a prepared segment from the pool: [`crate::object_manager`]
/// writes them with `pwrite`, which allocates the pages as it goes, and the store's lock
/// is not held while they are zero-filled.
pub const PWRITE_MIN: u64 = 8 << 20;
/// How far past the highest byte handed out so far the arena's pages are reserved ahead
/// of demand (small objects only live there).
pub const PREFAULT_AHEAD: u64 = 64 << 20;
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
    #[error("object store full: no room for object {id} of {size} bytes in object_store_memory ({capacity} bytes): {reason}")]
    Full {
        id: ObjectId,
        size: u64,
        capacity: u64,
        reason: String,
        /// Whether spilling failed for want of disk space (not a disk error, nor nothing
        /// left to spill): a spilled object may then swap places through the heap.
        disk_full: bool,
    },
    #[error(transparent)]
    Spill(#[from] SpillError),
    #[error("object {id}: bytes {offset}..{end} are outside the store's mapping of the arena")]
    OutsideMapping { id: ObjectId, offset: u64, end: u64 },
    #[error("object {id} cannot be restored from disk: {source}")]
    Restore {
        id: ObjectId,
        #[source]
        source: SpillError,
    },
    #[error(
        "no room for a lease of {size} bytes: every object in the arena is pinned or unsealed"
    )]
    NoRoomForLease { size: u64 },
    #[error("this store grants no leases (its arena is too small)")]
    NoLeases,
    #[error("a lease: {0}")]
    LeaseMemory(#[source] MemoryError),
    #[error("object {id} at arena offset {offset} ({size} bytes) is outside the client's leases, or over an object placed in it before")]
    OutsideLease {
        id: ObjectId,
        offset: u64,
        size: u64,
    },
    #[error("object {id}: {reason}")]
    BadPut { id: ObjectId, reason: String },
    #[error("object {id}: {source}")]
    Memory {
        id: ObjectId,
        #[source]
        source: MemoryError,
    },
}

/// Sizes in the store, derived from its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub capacity: u64,
    pub arena_size: u64,
    /// The largest object (the whole store).
    pub small_object_max: u64,
    /// Bytes of one lease (see [`crate::lease`]); 0 when the arena is too small to lend.
    pub lease_size: u64,
    /// The largest object a client puts into its lease.
    pub leased_object_max: u64,
    /// The largest object placed in the arena (larger ones get segments of their own).
    pub arena_object_max: u64,
}

impl Layout {
    /// The arena of a store of `capacity` bytes: all of it, rounded to the backing's
    /// granularity.
    pub fn for_capacity(capacity: u64, granularity: u64) -> Self {
        let arena_size = (capacity - capacity % granularity).max(granularity);
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
            small_object_max: arena_size,
            lease_size,
            leased_object_max: (lease_size / lease::OBJECT_SHARE).min(ARENA_OBJECT_MAX),
            arena_object_max: ARENA_OBJECT_MAX,
        }
    }
}

/// Where a sealed object's bytes are, for a client to reach them.
#[derive(Debug, Clone)]
pub enum Memory {
    /// At this offset of the arena, whose descriptor each client got when it connected.
    Arena(u64),
    /// From offset 0 of a segment of its own, whose descriptor goes with the reply.
    Segment(Arc<Segment>),
}

/// What a client needs to reach an object's bytes.
#[derive(Debug, Clone)]
pub struct ObjectView {
    pub id: ObjectId,
    pub memory: Memory,
    pub data_size: u64,
    pub metadata_size: u64,
}

impl ObjectView {
    /// The segment ID and offset of the first byte.
    pub fn segment_offset(&self) -> (u64, u64) {
        match &self.memory {
            Memory::Arena(offset) => (ARENA_SEGMENT, *offset),
            Memory::Segment(segment) => (segment.id(), 0),
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
        /// A client deleted it (`ray.internal.free`), not the store to make room.
        freed: bool,
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
    /// Arena bytes whose pages are allocated (ready for objects).
    pub reserved_bytes: u64,
    pub spill: SpillStats,
}

/// Whether a delete took effect now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Pinned or unsealed: removed when the last pin goes.
    Deferred,
    NotFound,
}

/// Where an object's bytes are now.
#[derive(Debug)]
enum Place {
    Memory(Memory),
    /// On disk (see [`crate::spill`]).
    Spilled(Slot),
}

#[derive(Debug)]
struct Entry {
    place: Place,
    data_size: u64,
    metadata_size: u64,
    sealed: bool,
    creator: ClientId,
    pins: u32,
    /// Position in the LRU list while sealed, unpinned and in memory.
    lru_tick: Option<u64>,
    delete_pending: bool,
    /// The lease block it was put in (arena objects only).
    lease: Option<u64>,
}

impl Entry {
    fn total(&self) -> u64 {
        self.data_size + self.metadata_size
    }

    fn view(&self, id: ObjectId) -> Option<ObjectView> {
        match &self.place {
            Place::Memory(memory) => Some(ObjectView {
                id,
                memory: memory.clone(),
                data_size: self.data_size,
                metadata_size: self.metadata_size,
            }),
            Place::Spilled(_) => None,
        }
    }

    fn spilled(&self) -> Option<Slot> {
        match self.place {
            Place::Spilled(slot) => Some(slot),
            Place::Memory(_) => None,
        }
    }
}

/// What memory a new object gets.
#[derive(Debug, Clone, Copy)]
enum Want {
    Arena,
    /// A segment of its own: from the pool where one is ready (see [`crate::pool`]),
    /// else a new one, its pages allocated up front when `reserve` is set.
    Segment {
        reserve: bool,
    },
}

#[derive(Debug, Default)]
struct ClientState {
    pins: HashMap<ObjectId, u32>,
    /// Objects the client released but keeps mapped (see [`crate::revocations`]), by the
    /// ID of their segment.
    retained: HashMap<u64, ObjectId>,
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
    reserved_granules: usize,
    /// The end of the highest arena range handed out so far.
    high_water: u64,
    /// Set when more memory is worth preparing ahead of demand.
    prefault_wanted: bool,
    /// Bytes of the segments of objects in memory.
    segment_bytes: u64,
    /// Unsealed objects in segments of their own: fills in progress (a client's or a
    /// pull's), during which the pool starts no segment (see [`Self::filling`]). Shared
    /// so that the pool's thread reads it between chunks without the store's lock.
    filling: Arc<AtomicUsize>,
    next_segment: u64,
    pool: Pool,
    /// Segments of objects gone, to close outside the lock (freeing pages takes time).
    dropped: Vec<Arc<Segment>>,
    objects: HashMap<ObjectId, Entry>,
    lru: BTreeMap<u64, ObjectId>,
    tick: u64,
    next_client: ClientId,
    clients: HashMap<ClientId, ClientState>,
    evictions: u64,
    evicted_bytes: u64,
    events: Vec<StoreEvent>,
    leases: Leases,
    spill: Spill,
    /// While a swap allocates: the objects it spilled (see [`Self::restore_by_swap`]).
    spilled_meanwhile: Option<Vec<ObjectId>>,
    revocations: Revocations,
}

impl Store {
    /// Creates the store, spilling into `spill_dir`. The arena's pages are allocated as
    /// objects first land in them, or ahead of them in the background
    /// ([`Self::prefault_next`]): zero-filling 1 GiB up front took ~420 ms of every
    /// `ray.init()`. The store maps the arena writable, then seals it against every
    /// other writer (see [`crate::memory`]).
    pub fn new(capacity: u64, backing: Backing, spill_dir: PathBuf) -> Result<Self, MemoryError> {
        let layout = Layout::for_capacity(capacity, backing.granularity() as u64);
        let (arena_fd, arena_size) = backing.create(layout.arena_size as usize, false)?;
        let arena_map = Arc::new(Mapping::new(arena_fd.as_fd(), arena_size, true, false)?);
        memory::seal_future_writes(arena_fd.as_fd())?;
        let revocations = Revocations::new(&backing)?;
        Ok(Self {
            backing,
            layout,
            arena_fd,
            arena_map,
            arena: Allocator::new(arena_size as u64),
            arena_reserved: vec![false; arena_size.div_ceil(memory::ARENA_RESERVE_GRANULE)],
            reserved_granules: 0,
            high_water: 0,
            prefault_wanted: true,
            segment_bytes: 0,
            filling: Arc::default(),
            next_segment: ARENA_SEGMENT + 1,
            pool: Pool::for_capacity(layout.capacity),
            dropped: Vec::new(),
            objects: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            next_client: 1,
            clients: HashMap::new(),
            evictions: 0,
            evicted_bytes: 0,
            events: Vec::new(),
            leases: Leases::default(),
            spill: Spill::new(spill_dir),
            spilled_meanwhile: None,
            revocations,
        })
    }

    /// The sizes.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The arena's descriptor and size, sent to every client on connect.
    pub fn arena(&self) -> (BorrowedFd<'_>, u64) {
        (self.arena_fd.as_fd(), self.arena.size())
    }

    /// The revocation page (see [`crate::revocations`]).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Where segments come from.
    pub fn backing(&self) -> &Backing {
        &self.backing
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

    /// Creates an unsealed object in a segment of its own for `client` to fill, pinned by
    /// it, spilling (or evicting) unpinned objects when it does not fit. Its pages are
    /// allocated when it comes from the pool; else the client's writes allocate them
    /// (`pwrite`, which fails with an error where memory runs out), or the client
    /// allocates them before it maps the segment, and the store's lock is not held while
    /// they are zeroed.
    pub fn create(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectView, StoreError> {
        self.create_object(
            client,
            id,
            (data_size, metadata_size),
            Want::Segment { reserve: false },
        )
    }

    /// [`Self::create`] for an object the store fills itself (a pull): a small one in the
    /// arena. One of [`crate::pool::POOL_MIN`] bytes or more takes a prepared segment
    /// from the pool where one is ready (and the pool then prepares its size too, for a
    /// node that pulls objects of one size again and again). Else a segment of at least [`PWRITE_MIN`] bytes (where the
    /// backing takes writes) gets no pages up front: the pull's `pwrite`s allocate them
    /// as they go, failing with an error where memory runs out, and the store's lock is
    /// not held while a large range is zero-filled.
    pub fn create_pulled(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectView, StoreError> {
        let size = data_size.saturating_add(metadata_size);
        let want = if size <= self.layout.arena_object_max {
            Want::Arena
        } else {
            Want::Segment {
                reserve: size < PWRITE_MIN || !self.backing.takes_writes(),
            }
        };
        self.create_object(client, id, (data_size, metadata_size), want)
    }

    fn create_object(
        &mut self,
        client: ClientId,
        id: ObjectId,
        (data_size, metadata_size): (u64, u64),
        want: Want,
    ) -> Result<ObjectView, StoreError> {
        if self.objects.contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        let size = self.checked_size(id, data_size, metadata_size)?;
        let memory = self.allocate(id, size, want)?;
        self.insert_unsealed(client, id, memory.clone(), (data_size, metadata_size), None);
        Ok(ObjectView {
            id,
            memory,
            data_size,
            metadata_size,
        })
    }

    /// Data plus metadata bytes, refused when more than the store holds.
    fn checked_size(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<u64, StoreError> {
        data_size
            .checked_add(metadata_size)
            .filter(|&size| size <= self.arena.size())
            .ok_or(StoreError::TooLarge {
                id,
                size: data_size.saturating_add(metadata_size),
                pool: "store",
                capacity: self.arena.size(),
            })
    }

    /// Enters a new unsealed object, pinned by its creator.
    fn insert_unsealed(
        &mut self,
        client: ClientId,
        id: ObjectId,
        memory: Memory,
        (data_size, metadata_size): (u64, u64),
        lease: Option<u64>,
    ) {
        if matches!(memory, Memory::Segment(_)) {
            self.filling.fetch_add(1, Ordering::Relaxed);
        }
        self.objects.insert(
            id,
            Entry {
                place: Place::Memory(memory),
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

    /// Memory for `size` bytes of object `id`, spilling or evicting unpinned objects until
    /// it fits.
    fn allocate(&mut self, id: ObjectId, size: u64, want: Want) -> Result<Memory, StoreError> {
        let mut spill_error = None;
        loop {
            match self.allocate_free(size, want) {
                Ok(Some(memory)) => return Ok(memory),
                Ok(None) => {}
                Err(source) => return Err(StoreError::Memory { id, source }),
            }
            if !self.free_one(&mut spill_error) {
                let disk_full = matches!(
                    spill_error,
                    Some(StoreError::Spill(SpillError::Full { .. }))
                );
                let reason = match spill_error {
                    Some(e) => format!(
                        "the rest holds pinned or unsealed objects and ray.put objects, which are never dropped, and {e}"
                    ),
                    None => "every object in it is pinned (in use) or unsealed".into(),
                };
                return Err(StoreError::Full {
                    id,
                    size,
                    capacity: self.layout.capacity,
                    reason,
                    disk_full,
                });
            }
        }
    }

    /// Takes the least recently used unpinned object out of memory: spills it, or, once
    /// spilling failed (`spill_error`), evicts the least recently used task result.
    /// False when nothing can go.
    fn free_one(&mut self, spill_error: &mut Option<StoreError>) -> bool {
        if spill_error.is_none() {
            let Some((_, &id)) = self.lru.first_key_value() else {
                return false;
            };
            match self.spill_out(id) {
                Ok(()) => return true,
                Err(e) => {
                    log::warn!(object:% = id, error:% = e; "cannot spill: evicting task results instead");
                    *spill_error = Some(e);
                }
            }
        }
        // Task results can be made again by their task; ray.put objects cannot.
        let Some(id) = self.lru.values().find(|id| !id.is_put()).copied() else {
            return false;
        };
        self.evict(id);
        true
    }

    /// The bytes of a sealed object in memory, through the store's mappings.
    fn mapped(
        &self,
        id: ObjectId,
        memory: &Memory,
        len: u64,
    ) -> Result<(Arc<Mapping>, u64), StoreError> {
        let (map, offset) = match memory {
            Memory::Arena(offset) => (self.arena_map.clone(), *offset),
            Memory::Segment(segment) => (
                segment
                    .read_map()
                    .map_err(|source| StoreError::Memory { id, source })?,
                0,
            ),
        };
        if !map.contains(offset, len) {
            return Err(StoreError::OutsideMapping {
                id,
                offset,
                end: offset + len,
            });
        }
        Ok((map, offset))
    }

    /// Writes an unpinned sealed object to disk and frees its memory.
    fn spill_out(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let Some((memory, total)) = self
            .objects
            .get(&id)
            .and_then(|e| Some((e.view(id)?.memory, e.total())))
        else {
            return Ok(());
        };
        let slot = match &memory {
            // Copied file to file: a mapping of a segment would be new, a fault per page.
            Memory::Segment(segment) => {
                let spill = &mut self.spill;
                segment.with_parts(|parts| spill.write_from(parts, total))?
            }
            Memory::Arena(_) => {
                let (map, offset) = self.mapped(id, &memory, total)?;
                // SAFETY: a sealed object is never written again, and this one is
                // unpinned: no client can get it while the store's lock is held.
                let bytes = unsafe { map.slice(offset, total) }.unwrap_or_default();
                self.spill.write(bytes)?
            }
        };
        log::debug!(object:% = id, bytes = total; "spilled object");
        let entry = self.objects.get_mut(&id).expect("checked above");
        if let Some(tick) = entry.lru_tick.take() {
            self.lru.remove(&tick);
        }
        entry.place = Place::Spilled(slot);
        let lease = entry.lease.take();
        if let Some(spilled) = &mut self.spilled_meanwhile {
            spilled.push(id);
        }
        self.free_memory(memory, total, lease);
        Ok(())
    }

    /// What memory an object of `size` bytes that the store fills itself gets.
    fn want_for(&self, size: u64) -> Want {
        if size <= self.layout.arena_object_max {
            Want::Arena
        } else {
            Want::Segment { reserve: true }
        }
    }

    /// Brings a spilled object back into memory (spilling others to make room).
    fn restore(&mut self, id: ObjectId) -> Result<(), StoreError> {
        let Some(slot) = self.objects.get(&id).and_then(Entry::spilled) else {
            return Ok(());
        };
        let memory = match self.allocate(id, slot.len, self.want_for(slot.len)) {
            Ok(memory) => memory,
            // The disk is full: the object swaps places with others through the heap.
            Err(StoreError::Full {
                disk_full: true, ..
            }) => return self.restore_by_swap(id, slot),
            // Else a ray.put object keeps its disk space: it is never dropped.
            Err(e @ StoreError::Full { .. }) if id.is_put() => {
                return Err(self.put_stays_on_disk(e, slot))
            }
            Err(StoreError::Full { .. }) => return self.restore_by_swap(id, slot),
            Err(e) => return Err(e),
        };
        let read = match &memory {
            // Read file to file, then sealed: no mapping to build.
            Memory::Segment(segment) => {
                let spill = &mut self.spill;
                match segment.with_parts(|parts| spill.read_to(slot, parts)) {
                    Ok(()) => segment
                        .seal()
                        .map(Ok)
                        .map_err(|source| StoreError::Memory { id, source }),
                    Err(e) => Ok(Err(e)),
                }
            }
            Memory::Arena(_) => fill(&self.arena_map, id, &memory, slot.len, |target| {
                self.spill.read(slot, target)
            }),
        };
        match read {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                self.free_memory(memory, slot.len, None);
                return Err(StoreError::Restore { id, source });
            }
            Err(e) => {
                self.free_memory(memory, slot.len, None);
                return Err(e);
            }
        }
        self.spill.free(slot);
        self.restored(id, memory);
        Ok(())
    }

    /// The error of a get of a spilled ray.put object that memory has no room for: both
    /// limits, and that it stays on disk.
    fn put_stays_on_disk(&self, full: StoreError, slot: Slot) -> StoreError {
        let StoreError::Full {
            id,
            size,
            capacity,
            reason,
            disk_full,
        } = full
        else {
            return full;
        };
        StoreError::Full {
            id,
            size,
            capacity,
            disk_full,
            reason: format!(
                "{reason}; the ray.put object stays in the spill directory {} ({} bytes), \
                 whose space is not given up for it since a ray.put object is never dropped",
                self.spill.dir().display(),
                slot.len
            ),
        }
    }

    /// Restores an object whose memory can only be had by spilling others into its own
    /// disk space (the disk is full): it is read into the heap and its disk space freed
    /// first. Should memory still not be had, it goes back to disk, the objects spilled
    /// meanwhile coming back into the memory they left when the disk has no room for it.
    fn restore_by_swap(&mut self, id: ObjectId, slot: Slot) -> Result<(), StoreError> {
        let len = usize::try_from(slot.len).map_err(|_| StoreError::TooLarge {
            id,
            size: slot.len,
            pool: "address space",
            capacity: usize::MAX as u64,
        })?;
        let mut bytes = vec![0u8; len];
        self.spill
            .read(slot, &mut bytes)
            .map_err(|source| StoreError::Restore { id, source })?;
        self.spill.free(slot);
        self.spilled_meanwhile = Some(Vec::new());
        let allocated = self.allocate(id, slot.len, self.want_for(slot.len));
        let mut spilled_meanwhile = self.spilled_meanwhile.take().unwrap_or_default();
        let placed = allocated.and_then(|memory| {
            let copied = fill(&self.arena_map, id, &memory, slot.len, |target| {
                target.copy_from_slice(&bytes);
                Ok::<(), std::convert::Infallible>(())
            });
            match copied {
                Ok(_) => Ok(memory),
                Err(e) => {
                    self.free_memory(memory, slot.len, None);
                    Err(e)
                }
            }
        });
        match placed {
            Ok(memory) => {
                self.restored(id, memory);
                Ok(())
            }
            Err(e) => match self.write_back(&bytes, &mut spilled_meanwhile) {
                Ok(slot) => {
                    if let Some(entry) = self.objects.get_mut(&id) {
                        entry.place = Place::Spilled(slot);
                    }
                    Err(e)
                }
                Err(spill) => {
                    log::error!(object:% = id, error:% = spill; "a spilled object was lost: neither memory nor disk has room for it");
                    // Its memory and disk space are both freed already.
                    if self.objects.remove(&id).is_some() {
                        self.evictions += 1;
                        self.evicted_bytes += slot.len;
                        self.events.push(StoreEvent::Removed { id, freed: false });
                    }
                    Err(e)
                }
            },
        }
    }

    /// Writes a swapped object back to disk; while the disk has no room, brings the objects
    /// spilled meanwhile (most recent first) back into the memory they freed.
    fn write_back(
        &mut self,
        bytes: &[u8],
        spilled_meanwhile: &mut Vec<ObjectId>,
    ) -> Result<Slot, SpillError> {
        loop {
            match self.spill.write(bytes) {
                Ok(slot) => return Ok(slot),
                Err(e) => {
                    let Some(other) = spilled_meanwhile.pop() else {
                        return Err(e);
                    };
                    self.unspill(other);
                }
            }
        }
    }

    /// Brings a spilled, unpinned object back into free memory (spilling nothing), into
    /// the LRU list; logs why when it cannot.
    fn unspill(&mut self, id: ObjectId) {
        let Some(slot) = self.objects.get(&id).and_then(Entry::spilled) else {
            return;
        };
        let memory = match self.allocate_free(slot.len, self.want_for(slot.len)) {
            Ok(Some(memory)) => memory,
            Ok(None) => return,
            Err(e) => {
                log::warn!(object:% = id, error:% = e; "cannot bring a spilled object back");
                return;
            }
        };
        let read = fill(&self.arena_map, id, &memory, slot.len, |target| {
            self.spill.read(slot, target)
        });
        let failed = match read {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            log::warn!(object:% = id, error = e.as_str(); "cannot bring a spilled object back");
            self.free_memory(memory, slot.len, None);
            return;
        }
        self.spill.free(slot);
        self.restored(id, memory);
        self.tick += 1;
        if let Some(entry) = self.objects.get_mut(&id) {
            entry.lru_tick = Some(self.tick);
            self.lru.insert(self.tick, id);
        }
    }

    fn restored(&mut self, id: ObjectId, memory: Memory) {
        log::debug!(object:% = id; "restored object");
        if let Some(entry) = self.objects.get_mut(&id) {
            entry.place = Place::Memory(memory);
        }
    }

    /// Frees the memory of an object of `total` bytes.
    fn free_memory(&mut self, memory: Memory, total: u64, lease: Option<u64>) {
        match (memory, lease) {
            (Memory::Arena(_), Some(block)) => {
                let freed = self.leases.remove(block, Allocator::rounded(total));
                self.free_ranges(freed);
            }
            (Memory::Arena(offset), None) => self.arena.free(offset, total),
            // Its pages go once no client maps it any more, and freeing them is left to
            // whoever holds the lock, after it (see `take_dropped`).
            (Memory::Segment(segment), _) => {
                self.segment_bytes -= segment.size();
                self.revoke(segment.id());
                self.dropped.push(segment);
            }
        }
    }

    /// Bytes of the objects in memory (and of the leases).
    fn objects_bytes(&self) -> u64 {
        self.arena.used() + self.segment_bytes
    }

    /// Places `size` bytes in free room of the budget (spilling nothing), in the arena or
    /// a segment of their own, their pages allocated up front when asked; `None` when
    /// the budget (or the arena) has no room.
    fn allocate_free(&mut self, size: u64, want: Want) -> Result<Option<Memory>, MemoryError> {
        let granularity = self.backing.granularity() as u64;
        match want {
            Want::Arena => {
                let rounded = Allocator::rounded(size);
                if self.objects_bytes() + rounded > self.layout.capacity {
                    return Ok(None);
                }
                self.shed_pool(rounded);
                let Some(offset) = self.allocate_arena(size, true)? else {
                    return Ok(None);
                };
                Ok(Some(Memory::Arena(offset)))
            }
            Want::Segment { reserve } => {
                let rounded = size.max(1).div_ceil(granularity) * granularity;
                if self.objects_bytes() + rounded > self.layout.capacity {
                    return Ok(None);
                }
                self.prefault_wanted = true;
                let taken = self.pool.take(rounded);
                self.shed_pool(rounded);
                let prepared = reserve || taken.is_some();
                let parts = match taken {
                    Some((files, _)) => self.backing.fix_parts(files, size as usize)?,
                    None => self.backing.create_parts(size as usize, reserve)?,
                };
                let parts: Vec<(OwnedFd, u64)> = parts
                    .into_iter()
                    .map(|(fd, len)| (fd, len as u64))
                    .collect();
                let id = self.next_segment;
                self.next_segment += 1;
                let segment = Segment::new(id, parts, prepared);
                self.segment_bytes += segment.size();
                Ok(Some(Memory::Segment(Arc::new(segment))))
            }
        }
    }

    /// Drops prepared segments until `size` more bytes of objects fit the budget beside
    /// them: prepared memory gives way to objects.
    fn shed_pool(&mut self, size: u64) {
        while self.objects_bytes() + self.pool.bytes() + size > self.layout.capacity
            && self.pool.shed()
        {}
    }

    /// Places `size` bytes in free arena room, its pages allocated when `reserve` is set;
    /// `None` when no free range is large enough.
    fn allocate_arena(&mut self, size: u64, reserve: bool) -> Result<Option<u64>, MemoryError> {
        let Some(offset) = self.arena.allocate(size) else {
            return Ok(None);
        };
        if reserve {
            if let Err(e) = self.reserve_arena(offset, size) {
                self.arena.free(offset, size);
                return Err(e);
            }
        }
        let end = offset + Allocator::rounded(size);
        if end > self.high_water {
            self.high_water = end;
            self.prefault_wanted = true;
        }
        Ok(Some(offset))
    }

    /// Grants `client` a new lease (retiring its current one): the arena range it puts
    /// objects of up to `leased_object_max` bytes in.
    pub fn lease(&mut self, client: ClientId) -> Result<(u64, u64), StoreError> {
        let size = self.layout.lease_size;
        if size == 0 {
            return Err(StoreError::NoLeases);
        }
        let freed = self.leases.retire(client);
        self.free_ranges(freed);
        // Leases take free room only, never evicted room, and a quarter of the arena at
        // most: evicting an object in a lease frees nothing until its lease empties.
        if self.leases.total_bytes() + size > self.arena.size() / 4
            || self.objects_bytes() + size > self.layout.capacity
        {
            return Err(StoreError::NoRoomForLease { size });
        }
        let offset = self
            .allocate_arena(size, true)
            .map_err(StoreError::LeaseMemory)?
            .ok_or(StoreError::NoRoomForLease { size })?;
        let freed = self.leases.grant(client, offset, size);
        self.free_ranges(freed);
        Ok((offset, size))
    }

    /// Enters a small object whose bytes came with the request, sealed and pinned by
    /// `client`: the store copies them into the arena, at `lease_offset` in one of the
    /// client's leases or else wherever the allocator places them (spilling others when
    /// need be). An ID that exists already makes the client's copy a shadow (see
    /// [`crate::lease`]).
    pub fn put_small(
        &mut self,
        client: ClientId,
        id: ObjectId,
        (data_size, metadata_size): (u64, u64),
        bytes: &[u8],
        lease_offset: Option<u64>,
    ) -> Result<(), StoreError> {
        let size = data_size.saturating_add(metadata_size);
        if bytes.len() as u64 != size {
            return Err(StoreError::BadPut {
                id,
                reason: format!(
                    "{} bytes came for an object of {data_size} + {metadata_size} bytes",
                    bytes.len()
                ),
            });
        }
        if size > self.layout.arena_object_max {
            return Err(StoreError::BadPut {
                id,
                reason: format!(
                    "{size} bytes are too many to send with the put (at most {})",
                    self.layout.arena_object_max
                ),
            });
        }
        // Placed in the lease first: the client's offsets there only go up.
        let block = match lease_offset {
            Some(offset) => Some(
                self.leases
                    .place(client, offset, Allocator::rounded(size))
                    .filter(|_| offset.is_multiple_of(ALIGN))
                    .ok_or(StoreError::OutsideLease { id, offset, size })?,
            ),
            None => None,
        };
        if let Some(existing) = self.objects.get(&id) {
            // The same client creating an ID twice is its own mistake; a copy of
            // another's object is a duplicate put.
            if (existing.creator == client && !existing.sealed)
                || self.leases.has_shadow(client, id)
            {
                return Err(StoreError::Exists(id));
            }
            log::debug!(object:% = id, client = client; "a put object exists already: the client keeps a private copy");
            self.leases.add_shadow(client, id);
            return Ok(());
        }
        let offset = match (lease_offset, block) {
            (Some(offset), Some(block)) => {
                self.leases.add(block, Allocator::rounded(size));
                offset
            }
            _ => match self.allocate(id, size, Want::Arena)? {
                Memory::Arena(offset) => offset,
                Memory::Segment(_) => unreachable!("the arena was asked for"),
            },
        };
        // SAFETY: the range is this object's alone (allocated just now, or placed in the
        // client's lease after everything before) and no client knows of it yet.
        match unsafe { self.arena_map.slice_mut(offset, size) } {
            Some(target) => target.copy_from_slice(bytes),
            None => {
                self.free_memory(Memory::Arena(offset), size, block);
                return Err(StoreError::OutsideMapping {
                    id,
                    offset,
                    end: offset + size,
                });
            }
        }
        self.insert_unsealed(
            client,
            id,
            Memory::Arena(offset),
            (data_size, metadata_size),
            block,
        );
        self.seal(client, id).map(|_| ())
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
                self.prefault_done(index);
            }
        }
        Ok(())
    }

    /// The next arena granule worth reserving ahead of demand, as (index, offset, len):
    /// granules up to [`PREFAULT_AHEAD`] past the highest byte handed out so far. The
    /// caller reserves it without the store's lock (see [`memory::reserve_range`]) and
    /// then calls [`Self::prefault_done`].
    pub fn prefault_next(&self) -> Option<(usize, usize, usize)> {
        let granule = memory::ARENA_RESERVE_GRANULE;
        let arena_size = self.arena.size();
        let bound = self
            .high_water
            .saturating_add(PREFAULT_AHEAD)
            .min(arena_size) as usize;
        let index = self.arena_reserved.iter().position(|reserved| !reserved)?;
        let start = index * granule;
        (start < bound).then(|| (index, start, granule.min(arena_size as usize - start)))
    }

    /// Marks an arena granule as reserved.
    pub fn prefault_done(&mut self, index: usize) {
        if let Some(reserved) = self.arena_reserved.get_mut(index) {
            if !*reserved {
                *reserved = true;
                self.reserved_granules += 1;
            }
        }
    }

    /// Whether an object is being filled in a segment of its own, by a client or a pull.
    /// The pool starts no segment meanwhile: preparing memory would take a core and
    /// memory bandwidth from the fill, which uses both (a thread per file, see
    /// `rayd_plasma_client::parts`); a create that finds no segment ready has its
    /// creator's writes allocate the pages.
    pub fn filling(&self) -> bool {
        self.filling.load(Ordering::Relaxed) > 0
    }

    /// The count behind [`Self::filling`], to read without the store's lock.
    pub fn fills(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.filling)
    }

    /// A fill ended (sealed, or its object dropped): the pool may prepare again.
    fn fill_ended(&mut self) {
        // Only the store, under its lock, changes the count.
        let before = self.filling.load(Ordering::Relaxed);
        debug_assert!(before > 0, "a fill ended that never began");
        self.filling
            .store(before.saturating_sub(1), Ordering::Relaxed);
        if before <= 1 {
            self.prefault_wanted = true;
        }
    }

    /// The size of the next segment worth preparing for the pool (see [`crate::pool`]),
    /// within the room the budget has to spare. The caller makes it without the store's
    /// lock and hands it to [`Self::pool_add`].
    pub fn pool_wanted(&self) -> Option<u64> {
        let room = self
            .layout
            .capacity
            .saturating_sub(self.objects_bytes() + self.pool.bytes());
        self.pool.wanted(room)
    }

    /// Adds a prepared segment to the pool, unless the budget lost the room meanwhile.
    pub fn pool_add(&mut self, files: Vec<OwnedFd>, size: u64) {
        if self.objects_bytes() + self.pool.bytes() + size <= self.layout.capacity {
            self.pool.add(files, size);
        }
    }

    /// The segments of objects gone since the last call: dropped by the caller after it
    /// let go of the store's lock.
    pub fn take_dropped(&mut self) -> Vec<Arc<Segment>> {
        std::mem::take(&mut self.dropped)
    }

    /// Whether more memory became worth preparing since the last call.
    pub fn take_prefault_wanted(&mut self) -> bool {
        std::mem::take(&mut self.prefault_wanted)
    }

    /// Drops an unpinned sealed object from memory for good (it can be rebuilt).
    fn evict(&mut self, id: ObjectId) {
        if let Some(entry) = self.objects.get(&id) {
            self.evictions += 1;
            self.evicted_bytes += entry.total();
        }
        log::debug!(object:% = id; "evicting object");
        self.remove(id, false);
    }

    /// Drops `id`; `freed` when a client's delete is why.
    fn remove(&mut self, id: ObjectId, freed: bool) {
        let Some(entry) = self.objects.remove(&id) else {
            return;
        };
        if let Some(tick) = entry.lru_tick {
            self.lru.remove(&tick);
        }
        let total = entry.total();
        if !entry.sealed && matches!(entry.place, Place::Memory(Memory::Segment(_))) {
            self.fill_ended();
        }
        match entry.place {
            Place::Spilled(slot) => self.spill.free(slot),
            Place::Memory(memory) => self.free_memory(memory, total, entry.lease),
        }
        if entry.sealed {
            self.events.push(StoreEvent::Removed { id, freed });
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

    /// Seals an object: immutable from now on (a segment is sealed against writes, which
    /// the kernel refuses while a writable mapping of it exists), visible to gets. The
    /// creator keeps its pin.
    pub fn seal(&mut self, client: ClientId, id: ObjectId) -> Result<ObjectView, StoreError> {
        let entry = self.entry_of_creator(client, id)?;
        let view = entry.view(id).ok_or(StoreError::NotFound(id))?;
        if let Memory::Segment(segment) = &view.memory {
            segment
                .seal()
                .map_err(|source| StoreError::Memory { id, source })?;
        }
        entry.sealed = true;
        if matches!(view.memory, Memory::Segment(_)) {
            self.fill_ended();
        }
        self.events.push(StoreEvent::Sealed {
            id,
            data_size: view.data_size,
            metadata_size: view.metadata_size,
        });
        Ok(view)
    }

    /// Drops the client's shadow of `id`; false when it has none.
    fn drop_shadow(&mut self, client: ClientId, id: ObjectId) -> bool {
        self.leases.remove_shadow(client, id)
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

    /// Pins a sealed object for `client` (restoring it from disk when it was spilled);
    /// `None` when it is absent or unsealed, or cannot be restored now (logged).
    pub fn get(&mut self, client: ClientId, id: ObjectId) -> Option<ObjectView> {
        self.try_get(client, id).unwrap_or_else(|e| {
            log::warn!(object:% = id, error:% = e; "cannot get an object");
            None
        })
    }

    /// [`Self::get`], with the reason a spilled object cannot come back.
    pub fn try_get(
        &mut self,
        client: ClientId,
        id: ObjectId,
    ) -> Result<Option<ObjectView>, StoreError> {
        match self.objects.get(&id) {
            // A freed object waiting for its readers to let go is gone for new ones:
            // pinned again and again by them, it would never go.
            Some(entry) if entry.sealed && !entry.delete_pending => {
                if entry.spilled().is_some() {
                    self.restore(id)?;
                }
            }
            _ => return Ok(None),
        }
        let Some(entry) = self.objects.get_mut(&id) else {
            return Ok(None);
        };
        if let Some(tick) = entry.lru_tick.take() {
            self.lru.remove(&tick);
        }
        let Some(view) = entry.view(id) else {
            return Ok(None);
        };
        entry.pins += 1;
        self.pin_for(client, id);
        Ok(Some(view))
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

    /// [`Self::release`] of the client's last pin on `id`, keeping its mapping: the object
    /// is retained by the client while it stays in memory and readable (see
    /// [`crate::revocations`]). Only objects in a segment of their own are retained
    /// (the arena's ranges are reused); one that cannot be (gone, freed, in the arena) is
    /// revoked at once. A client without a pin on it (its `Reuse` came after the object
    /// left memory) is no error: it releases a buffer it read from its old mapping, which
    /// it must not keep (the object may be back in another segment, or rebuilt
    /// differently), so that is revoked too.
    pub fn release_retained(&mut self, client: ClientId, id: ObjectId) -> Result<(), StoreError> {
        match self.release(client, id) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(StoreError::NotPinned(_)) => {
                self.revocations.bump(Revocations::slot(client));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let segment = match self.objects.get(&id) {
            Some(Entry {
                place: Place::Memory(Memory::Segment(segment)),
                sealed: true,
                delete_pending: false,
                ..
            }) => segment.id(),
            _ => {
                self.revocations.bump(Revocations::slot(client));
                return Ok(());
            }
        };
        if let Some(state) = self.clients.get_mut(&client) {
            state.retained.insert(segment, id);
        }
        Ok(())
    }

    /// The client serves a get of `id` from its retained mapping: pinned again, unless
    /// it left memory (or was freed) meanwhile, which the client learns from its
    /// revocation counter.
    pub fn reuse(&mut self, client: ClientId, id: ObjectId) {
        let segment = match self.objects.get(&id) {
            Some(Entry {
                place: Place::Memory(Memory::Segment(segment)),
                delete_pending: false,
                ..
            }) => segment.id(),
            // No segment has this ID: nothing retained matches it.
            _ => ARENA_SEGMENT,
        };
        let retained = self
            .clients
            .get_mut(&client)
            .and_then(|state| state.retained.remove(&segment));
        let Some(entry) = self.objects.get_mut(&id).filter(|_| retained == Some(id)) else {
            // Revoked already (the client was told), or a late reuse: the client's
            // retained view is out of date either way.
            self.revocations.bump(Revocations::slot(client));
            return;
        };
        if let Some(tick) = entry.lru_tick.take() {
            self.lru.remove(&tick);
        }
        entry.pins += 1;
        self.pin_for(client, id);
    }

    /// The client unmapped `id`, which it retained.
    pub fn forget(&mut self, client: ClientId, id: ObjectId) {
        let Some(Entry {
            place: Place::Memory(Memory::Segment(segment)),
            ..
        }) = self.objects.get(&id)
        else {
            return;
        };
        if let Some(state) = self.clients.get_mut(&client) {
            if state.retained.get(&segment.id()) == Some(&id) {
                state.retained.remove(&segment.id());
            }
        }
    }

    /// `segment` leaves memory or readers: the clients that retained it are told.
    fn revoke(&mut self, segment: u64) {
        for (client, state) in &mut self.clients {
            if state.retained.remove(&segment).is_some() {
                self.revocations.bump(Revocations::slot(*client));
            }
        }
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
            let freed = entry.delete_pending;
            self.remove(id, freed);
            return;
        }
        self.tick += 1;
        entry.lru_tick = Some(self.tick);
        self.lru.insert(self.tick, id);
    }

    /// Whether `id` is here and sealed (and not freed, waiting for its readers to go).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects
            .get(id)
            .is_some_and(|e| e.sealed && !e.delete_pending)
    }

    /// Whether `id` was freed while readers held it: it stays until they let go, served
    /// to no one, and does not come back under this ID.
    pub fn freed_in_use(&self, id: &ObjectId) -> bool {
        self.objects
            .get(id)
            .is_some_and(|e| e.sealed && e.delete_pending)
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
            // Gone for new readers now: those that retained it must ask again.
            if let Place::Memory(Memory::Segment(segment)) = &entry.place {
                let segment = segment.id();
                self.revoke(segment);
            }
            return DeleteOutcome::Deferred;
        }
        self.remove(id, true);
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
            used_bytes: self
                .objects_bytes()
                .saturating_sub(self.leases.idle_bytes()),
            objects: self.objects.len() as u64,
            sealed_objects: self.objects.values().filter(|e| e.sealed).count() as u64,
            evictions: self.evictions,
            evicted_bytes: self.evicted_bytes,
            arena_bytes: self.arena.size(),
            arena_used_bytes: self.arena.used(),
            clients: self.clients.len() as u64,
            reserved_bytes: ((self.reserved_granules * memory::ARENA_RESERVE_GRANULE)
                .min(self.arena.size() as usize) as u64)
                + self.pool.bytes(),
            spill: self.spill.stats(),
        }
    }
}

/// Writes `len` bytes of a new object of the store's own (a restore) through `write`,
/// then seals a segment against writes. The outer error is the memory's, the inner
/// one `write`'s.
fn fill<E>(
    arena_map: &Mapping,
    id: ObjectId,
    memory: &Memory,
    len: u64,
    write: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    let outside = || StoreError::OutsideMapping {
        id,
        offset: 0,
        end: len,
    };
    match memory {
        Memory::Arena(offset) => {
            // SAFETY: the range was just allocated and no client knows of it yet.
            let target = unsafe { arena_map.slice_mut(*offset, len) }.ok_or_else(outside)?;
            Ok(write(target))
        }
        Memory::Segment(segment) => {
            let memory_error = |source| StoreError::Memory { id, source };
            let map = segment.write_map().map_err(memory_error)?;
            // SAFETY: the segment was just made and no client knows of it yet.
            let target = unsafe { map.slice_mut(0, len) }.ok_or_else(outside)?;
            let written = write(target);
            // The strict seal needs the writable mapping gone.
            drop(map);
            if written.is_ok() {
                segment.seal().map_err(memory_error)?;
            }
            Ok(written)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    /// A `ray.put` object's ID.
    fn put_id(n: u8) -> ObjectId {
        let mut bytes = [n; 20];
        bytes[16] |= 0x80;
        ObjectId::from_bytes(bytes)
    }

    /// A 64 MiB store and its spill directory.
    fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(64 * MIB, Backing::Memfd, dir.path().join("spill")).unwrap();
        (store, dir)
    }

    fn put(store: &mut Store, client: ClientId, n: u8, size: u64) {
        store.create(client, id(n), size, 0).unwrap();
        store.seal(client, id(n)).unwrap();
        store.release(client, id(n)).unwrap();
    }

    /// Puts a small object of `size` bytes through the arena, as a client without a
    /// lease does.
    fn put_small(store: &mut Store, client: ClientId, id: ObjectId, size: u64) {
        let bytes = vec![7; size as usize];
        store
            .put_small(client, id, (size, 0), &bytes, None)
            .unwrap();
    }

    /// Fills the unsealed object of `view` with `byte`, as its creator would.
    fn fill_view(store: &Store, view: &ObjectView, byte: u8) {
        let len = view.total_size();
        match &view.memory {
            // SAFETY: the creator alone writes its unsealed object.
            Memory::Arena(offset) => unsafe { store.arena_map.slice_mut(*offset, len) }
                .unwrap()
                .fill(byte),
            Memory::Segment(segment) => {
                let map = segment.write_map().unwrap();
                // SAFETY: as above.
                unsafe { map.slice_mut(0, len) }.unwrap().fill(byte);
            }
        }
    }

    /// The bytes of the sealed object of `view`.
    fn read_view(store: &Store, view: &ObjectView) -> Vec<u8> {
        let (map, offset) = store
            .mapped(view.id, &view.memory, view.total_size())
            .unwrap();
        // SAFETY: sealed and pinned.
        unsafe { map.slice(offset, view.total_size()) }
            .unwrap()
            .to_vec()
    }

    /// Pages allocated to a segment.
    fn allocated(segment: &Segment) -> i64 {
        segment
            .dup_fds()
            .unwrap()
            .into_iter()
            .map(|fd| nix::sys::stat::fstat(fd).unwrap().st_blocks * 512)
            .sum()
    }

    /// Has the pool prepare a segment of `size` bytes, as its thread does.
    fn prepare(store: &mut Store, size: u64) {
        let parts = store.backing.prepare_parts(size as usize, || true).unwrap();
        let len = parts.iter().map(|(_, len)| *len as u64).sum();
        store.pool_add(parts.into_iter().map(|(fd, _)| fd).collect(), len);
    }

    #[test]
    fn arena_pages_are_reserved_on_first_use() {
        let (mut store, _dir) = store();
        assert!(store.arena_reserved.iter().all(|reserved| !reserved));
        let client = store.connect();
        put_small(&mut store, client, id(1), 100);
        assert!(store.arena_reserved[0]);
    }

    #[test]
    fn a_large_pulled_object_gets_no_pages_up_front_unless_the_pool_has_them() {
        let (mut store, _dir) = store();
        let client = store.connect();
        let view = store.create_pulled(client, id(1), 16 * MIB, 0).unwrap();
        let Memory::Segment(segment) = &view.memory else {
            panic!("a large object has a segment of its own")
        };
        assert_eq!(allocated(segment), 0);
        let view = store.create_pulled(client, id(2), MIB, 0).unwrap();
        let Memory::Segment(segment) = &view.memory else {
            panic!("a large object has a segment of its own")
        };
        assert_eq!(allocated(segment), MIB as i64, "allocated up front");
        let view = store.create_pulled(client, id(3), 100, 0).unwrap();
        assert!(matches!(view.memory, Memory::Arena(_)), "a small one");
        assert!(store.arena_reserved[0]);

        // The pool prepares the sizes pulled lately, and the next such pull takes one.
        let mut sizes = Vec::new();
        while let Some(size) = store.pool_wanted() {
            prepare(&mut store, size);
            sizes.push(size);
        }
        assert!(sizes.iter().any(|&size| size >= 16 * MIB), "{sizes:?}");
        let view = store.create_pulled(client, id(4), 16 * MIB, 0).unwrap();
        let Memory::Segment(segment) = &view.memory else {
            panic!("a large object has a segment of its own")
        };
        assert!(segment.prepared(), "from the pool");
        assert_eq!(allocated(segment), 16 * MIB as i64);
    }

    #[test]
    fn a_segment_is_sealed_against_writes_once_its_writer_unmapped_it() {
        let (mut store, _dir) = store();
        let client = store.connect();
        let view = store.create(client, id(1), MIB, 0).unwrap();
        let Memory::Segment(segment) = view.memory.clone() else {
            panic!("a segment of its own")
        };
        let writer = segment.write_map().unwrap();
        let err = store.seal(client, id(1)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Memory {
                    source: MemoryError::StillWritable,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!store.contains(&id(1)), "still unsealed");
        drop(writer);
        store.seal(client, id(1)).unwrap();
        assert!(
            segment.write_map().is_err(),
            "no writable mapping after the seal"
        );
        let [reader] = <[_; 1]>::try_from(segment.dup_fds().unwrap()).unwrap();
        assert!(Mapping::new(reader.as_fd(), MIB as usize, true, false).is_err());
        let reopened = nix::fcntl::open(
            format!("/proc/self/fd/{}", reader.as_raw_fd()).as_str(),
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert!(Mapping::new(reopened.as_fd(), MIB as usize, true, false).is_err());
        assert_eq!(
            nix::sys::uio::pwrite(&reopened, b"x", 0),
            Err(nix::Error::EPERM),
            "not even reopened read-write"
        );
    }

    #[test]
    fn the_arena_takes_no_writes_but_the_stores() {
        let (mut store, _dir) = store();
        let client = store.connect();
        let fd = store.arena_fd.as_fd();
        assert_eq!(nix::sys::uio::pwrite(fd, b"x", 0), Err(nix::Error::EPERM));
        assert!(Mapping::new(fd, 4096, true, false).is_err());
        // Pages are still allocated ahead of demand under the seal.
        memory::reserve_range(fd, 0, memory::ARENA_RESERVE_GRANULE).unwrap();
        put_small(&mut store, client, id(1), 100);
        let view = store.get(client, id(1)).unwrap();
        assert_eq!(read_view(&store, &view), vec![7; 100]);
    }

    #[test]
    fn a_large_create_takes_a_prepared_segment_and_prepared_ones_give_way() {
        let (mut store, _dir) = store();
        let c = store.connect();
        assert_eq!(store.pool_wanted(), None);
        put(&mut store, c, 1, 10 * MIB);
        let size = store.pool_wanted().expect("the size asked for lately");
        assert!(size >= 10 * MIB);
        prepare(&mut store, size);
        assert_eq!(store.pool_wanted(), None);
        let view = store.create(c, id(2), 10 * MIB, 0).unwrap();
        let Memory::Segment(segment) = &view.memory else {
            panic!("a segment of its own")
        };
        assert_eq!(segment.size(), 10 * MIB, "cut to the object's size");
        assert_eq!(allocated(segment), 10 * MIB as i64, "its pages were ready");
        assert!(segment.prepared(), "and its creator is told so");
        assert_eq!(store.pool.bytes(), 0);
        // Prepared memory counts against the budget, and objects come first.
        let (fd, len) = store
            .backing
            .create_resizable(20 * MIB as usize, true)
            .unwrap();
        store.pool_add(vec![fd], len as u64);
        assert_eq!(store.pool.bytes(), 20 * MIB);
        store.create(c, id(3), 40 * MIB, 0).unwrap();
        assert_eq!(store.pool.bytes(), 0, "shed for the object");
        assert_eq!(store.stats().spill.objects, 0, "nothing spilled for it");
    }

    #[test]
    fn the_pool_waits_while_an_object_is_filled() {
        let (mut store, _dir) = store();
        let c = store.connect();
        assert!(!store.filling());
        let view = store.create(c, id(1), 10 * MIB, 0).unwrap();
        let Memory::Segment(segment) = &view.memory else {
            panic!("a segment of its own")
        };
        assert!(
            !segment.prepared(),
            "none was ready: its creator allocates the pages"
        );
        assert!(store.filling());
        store.create(c, id(2), 10 * MIB, 0).unwrap();
        store.seal(c, id(1)).unwrap();
        assert!(store.filling(), "one fill is still going on");
        store.take_prefault_wanted();
        store.abort(c, id(2)).unwrap();
        assert!(!store.filling());
        assert!(store.take_prefault_wanted(), "the pool thread is woken");
        // Small objects (the arena) are no fill of a segment.
        put_small(&mut store, c, id(3), 100);
        assert!(!store.filling());
    }

    #[test]
    fn layout_splits_capacity() {
        let layout = Layout::for_capacity(64 * MIB, 4096);
        assert_eq!(layout.arena_size, 64 * MIB);
        assert_eq!(layout.small_object_max, 64 * MIB);
        let big = Layout::for_capacity(100 << 30, 4096);
        assert_eq!(big.arena_size, 100 << 30);
        assert_eq!(big.lease_size, lease::MAX_LEASE);
    }

    #[test]
    fn leased_objects_live_like_others_and_their_lease_goes_when_empty() {
        let (mut store, _dir) = store();
        let (a, b) = (store.connect(), store.connect());
        let lease = store.layout().lease_size;
        assert_eq!(lease, lease::MAX_LEASE);
        let (offset, size) = store.lease(a).unwrap();
        assert_eq!(size, lease);
        assert_eq!(store.stats().used_bytes, 0, "an empty lease holds nothing");
        store
            .put_small(a, id(1), (100, 0), &[1; 100], Some(offset))
            .unwrap();
        assert_eq!(store.stats().used_bytes, 128);
        let view = store.get(b, id(1)).unwrap();
        assert!(matches!(view.memory, Memory::Arena(at) if at == offset));
        assert_eq!(read_view(&store, &view), vec![1; 100]);
        assert!(matches!(
            store.put_small(b, id(2), (10, 0), &[2; 10], Some(offset + 128)),
            Err(StoreError::OutsideLease { .. })
        ));
        assert!(
            matches!(
                store.put_small(a, id(2), (10, 0), &[2; 10], Some(offset)),
                Err(StoreError::OutsideLease { .. })
            ),
            "over the first object"
        );
        assert!(matches!(
            store.put_small(a, id(2), (100, 0), &[2; 100], Some(offset + size - 64)),
            Err(StoreError::OutsideLease { .. })
        ));
        assert!(matches!(
            store.put_small(a, id(2), (100, 0), &[2; 10], Some(offset + 128)),
            Err(StoreError::BadPut { .. })
        ));
        assert_eq!(read_view(&store, &view), vec![1; 100], "unchanged");
        // A new lease retires the first, which stays while its object does.
        let (second, _) = store.lease(a).unwrap();
        assert_ne!(second, offset);
        store.disconnect(a);
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
    fn a_small_copy_of_an_existing_object_stays_private() {
        let (mut store, _dir) = store();
        let (a, b) = (store.connect(), store.connect());
        put_small(&mut store, a, id(1), 100);
        store.release(a, id(1)).unwrap();
        let (offset, _) = store.lease(b).unwrap();
        store
            .put_small(b, id(1), (100, 0), &[9; 100], Some(offset))
            .unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store.list()[0].pins,
            0,
            "the original is not pinned by the copy"
        );
        assert_eq!(store.release(b, id(1)).unwrap(), 0);
        store.disconnect(b);
        assert_eq!(store.stats().arena_used_bytes, 128, "the original alone");
        let view = store.get(a, id(1)).unwrap();
        assert_eq!(
            read_view(&store, &view),
            vec![7; 100],
            "the original's bytes"
        );
    }

    #[test]
    fn a_retained_object_is_revoked_when_it_leaves_memory_or_is_freed() {
        let (mut store, _dir) = store();
        let (a, b) = (store.connect(), store.connect());
        let counter = |store: &Store, client| store.revocations.read(Revocations::slot(client));
        put(&mut store, a, 1, MIB);
        put(&mut store, a, 2, MIB);
        for n in [1, 2] {
            store.get(b, id(n)).unwrap();
            store.release_retained(b, id(n)).unwrap();
        }
        assert_eq!(
            store.list().iter().map(|o| o.pins).sum::<u32>(),
            0,
            "no pins"
        );
        assert_eq!(counter(&store, b), 0);
        // Read again from b's mapping: pinned again, no revocation.
        store.reuse(b, id(1));
        assert_eq!(store.list()[0].pins, 1);
        assert_eq!(counter(&store, b), 0);
        // Freed while b retains it: b is told, a (which retains nothing) is not.
        assert_eq!(store.delete(id(2)), DeleteOutcome::Deleted);
        assert_eq!((counter(&store, b), counter(&store, a)), (1, 0));
        // A late reuse of the freed object is answered with a revocation too.
        store.reuse(b, id(2));
        assert_eq!(counter(&store, b), 2);
        // Spilled while retained.
        store.release_retained(b, id(1)).unwrap();
        store.spill_out(id(1)).unwrap();
        assert_eq!(counter(&store, b), 3);
        // What cannot be retained (an arena object) is revoked at once.
        put_small(&mut store, a, id(3), 100);
        store.get(b, id(3)).unwrap();
        store.release_retained(b, id(3)).unwrap();
        assert_eq!(counter(&store, b), 4);
        assert_eq!(counter(&store, a), 0);
    }

    #[test]
    fn a_buffer_read_after_its_object_left_memory_is_not_retained_again() {
        let (mut store, _dir) = store();
        let (a, b) = (store.connect(), store.connect());
        let counter = |store: &Store| store.revocations.read(Revocations::slot(b));
        put(&mut store, a, 1, MIB);
        store.get(b, id(1)).unwrap();
        store.release_retained(b, id(1)).unwrap();
        // b serves a get from its mapping while the store spills the object: its Reuse
        // comes too late.
        store.spill_out(id(1)).unwrap();
        store.reuse(b, id(1));
        let told = counter(&store);
        assert!(told >= 1);
        // Back in memory, in another segment, for another reader.
        store.get(a, id(1)).unwrap();
        store.release(a, id(1)).unwrap();
        // b's buffer (of the old segment) goes: not retained, told again.
        store.release_retained(b, id(1)).unwrap();
        assert_eq!(counter(&store), told + 1);
        assert!(store.clients[&b].retained.is_empty());
        assert_eq!(store.list()[0].pins, 0);
    }

    #[test]
    fn lifecycle_create_seal_get_release_delete() {
        let (mut store, _dir) = store();
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
        assert!(
            store.get(a, id(1)).is_none(),
            "freed: no new reader gets it"
        );
        assert!(!store.contains(&id(1)));
        store.release(a, id(1)).unwrap();
        assert!(store.exists(&id(1)), "b still pins it");
        store.release(b, id(1)).unwrap();
        assert!(!store.exists(&id(1)), "deleted with its last pin");
        assert_eq!(store.stats().used_bytes, 0);
        let events = store.take_events();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn one_budget_for_every_size() {
        let (mut store, _dir) = store();
        let c = store.connect();
        // An object of nearly the whole store fits an empty store.
        put(&mut store, c, 1, 60 * MIB);
        assert_eq!(store.stats().spill.objects, 0);
        assert!(matches!(
            store.create(c, id(2), 65 * MIB, 0),
            Err(StoreError::TooLarge { .. })
        ));
        store.delete(id(1));
        // Small objects fill all of it before anything leaves memory.
        for n in 1..=64 {
            put(&mut store, c, n, MIB);
        }
        let stats = store.stats();
        assert_eq!((stats.spill.objects, stats.evictions), (0, 0));
        assert_eq!(stats.used_bytes, 64 * MIB);
        put(&mut store, c, 65, MIB);
        assert_eq!(store.stats().spill.objects, 1, "full: the oldest spills");
    }

    #[test]
    fn a_full_store_spills_the_least_recently_used_and_restores_on_get() {
        let (mut store, _dir) = store();
        let c = store.connect();
        for n in 1..=4 {
            let view = store.create(c, put_id(n), 16 * MIB, 0).unwrap();
            fill_view(&store, &view, n);
            store.seal(c, put_id(n)).unwrap();
            store.release(c, put_id(n)).unwrap();
        }
        // Touch 1, pin 2: the LRU order is now 3, 4, 1.
        store.get(c, put_id(1)).unwrap();
        store.release(c, put_id(1)).unwrap();
        store.get(c, put_id(2)).unwrap();
        put(&mut store, c, 5, 16 * MIB);
        assert_eq!(store.stats().spill.objects, 1, "3 went to disk");
        assert!(store.contains(&put_id(3)), "a spilled object is still here");
        store.release(c, put_id(2)).unwrap();
        let view = store.get(c, put_id(3)).unwrap();
        let bytes = read_view(&store, &view);
        assert!(bytes.iter().all(|&b| b == 3), "restored intact");
        let stats = store.stats();
        assert_eq!(stats.evictions, 0);
        assert_eq!(stats.spill.restored_bytes, 16 * MIB);
        assert_eq!(
            stats.spill.written_bytes,
            32 * MIB,
            "3, then 4 to make room"
        );
        assert_eq!(stats.spill.objects, 1);
        // Deleting a spilled object frees its disk space.
        assert_eq!(store.delete(put_id(4)), DeleteOutcome::Deleted);
        assert_eq!(store.stats().spill.bytes, 0);
    }

    #[test]
    fn without_disk_only_task_results_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // A spill directory that cannot be made: every spill fails.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut store = Store::new(64 * MIB, Backing::Memfd, blocker.join("spill")).unwrap();
        let c = store.connect();
        put(&mut store, c, 1, 16 * MIB);
        for n in 2..=4 {
            store.create(c, put_id(n), 16 * MIB, 0).unwrap();
            store.seal(c, put_id(n)).unwrap();
            store.release(c, put_id(n)).unwrap();
        }
        // The task result goes; the puts stay.
        store.create(c, id(5), 16 * MIB, 0).unwrap();
        assert!(!store.exists(&id(1)));
        assert_eq!(store.stats().evictions, 1);
        let err = store.create(c, id(6), 16 * MIB, 0).unwrap_err();
        let StoreError::Full { .. } = &err else {
            panic!("{err}")
        };
        let message = err.to_string();
        assert!(
            message.contains("object_store_memory (67108864 bytes)"),
            "{message}"
        );
        assert!(message.contains("cannot spill to"), "{message}");
        for n in 2..=4 {
            assert!(store.contains(&put_id(n)), "a put is never dropped");
        }
    }

    /// Creates `id` of `size` bytes filled with `byte`, sealed, still pinned by `client`.
    fn filled(store: &mut Store, client: ClientId, id: ObjectId, size: u64, byte: u8) {
        let view = store.create(client, id, size, 0).unwrap();
        fill_view(store, &view, byte);
        store.seal(client, id).unwrap();
    }

    #[test]
    fn a_spilled_put_that_memory_has_no_room_for_stays_on_disk() {
        let (mut store, _dir) = store();
        let c = store.connect();
        filled(&mut store, c, put_id(1), 32 * MIB, 1);
        store.release(c, put_id(1)).unwrap();
        // Two pinned task results fill the store: the put goes to disk.
        filled(&mut store, c, id(2), 32 * MIB, 2);
        filled(&mut store, c, id(3), 32 * MIB, 3);
        assert_eq!(store.stats().spill.objects, 1);
        store.take_events();
        // A disk that fails every write from now on: a put read back into the heap whose
        // disk space was given up could not go back.
        store.spill.refuse_writes();
        let err = store.try_get(c, put_id(1)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Full { .. }), "{message}");
        assert!(
            message.contains("object_store_memory (67108864 bytes)"),
            "{message}"
        );
        assert!(message.contains("spill directory"), "{message}");
        assert!(store.contains(&put_id(1)), "a put is never dropped");
        assert_eq!(store.stats().evictions, 0);
        assert!(store.take_events().is_empty(), "nothing was removed");
        // Once a task result is unpinned it makes room (dropped: the disk takes nothing).
        store.release(c, id(2)).unwrap();
        let view = store.try_get(c, put_id(1)).unwrap().expect("restored");
        let bytes = read_view(&store, &view);
        assert!(bytes.iter().all(|&b| b == 1), "restored intact");
    }

    #[test]
    fn a_full_store_says_so() {
        let (mut store, _dir) = store();
        let c = store.connect();
        for n in 1..=4 {
            store.create(c, id(n), 16 * MIB, 0).unwrap();
            store.seal(c, id(n)).unwrap();
        }
        let err = store.create(c, id(9), 8 * MIB, 0).unwrap_err();
        assert!(
            err.to_string().contains("pinned (in use) or unsealed"),
            "{err}"
        );
        assert!(matches!(
            store.create(c, id(9), 100 * MIB, 0),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn arena_is_prefaulted_ahead_up_to_a_bound() {
        // Larger than PREFAULT_AHEAD, so the bound shows; granules are only marked reserved
        // here (no memory is taken).
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(1 << 30, Backing::Memfd, dir.path().join("spill")).unwrap();
        let granule = memory::ARENA_RESERVE_GRANULE as u64;
        let prefault = |store: &mut Store| {
            let mut count = 0;
            while let Some((index, start, _)) = store.prefault_next() {
                assert!((start as u64) < store.high_water + PREFAULT_AHEAD);
                store.prefault_done(index);
                count += 1;
            }
            count
        };
        assert_eq!(
            prefault(&mut store),
            PREFAULT_AHEAD / granule,
            "stops at the bound"
        );
        assert_eq!(store.stats().reserved_bytes, PREFAULT_AHEAD);
        // An object moves the highest byte handed out: reserving resumes up to the new bound.
        let c = store.connect();
        store.take_prefault_wanted();
        put_small(&mut store, c, id(1), 100);
        assert!(store.take_prefault_wanted());
        let bound = store.high_water + PREFAULT_AHEAD;
        assert!(bound > PREFAULT_AHEAD && bound < 1 << 30);
        assert!(bound.div_ceil(granule) > PREFAULT_AHEAD / granule);
        assert_eq!(
            prefault(&mut store),
            bound.div_ceil(granule) - PREFAULT_AHEAD / granule
        );
        assert_eq!(
            store.stats().reserved_bytes,
            bound.div_ceil(granule) * granule
        );
    }

    #[test]
    fn a_disconnect_aborts_and_unpins() {
        let (mut store, _dir) = store();
        let (a, b) = (store.connect(), store.connect());
        put_small(&mut store, a, id(1), 10);
        store.release(a, id(1)).unwrap();
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
}
