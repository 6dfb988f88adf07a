//! The blocking client: one Unix socket connection, its segment mappings and the
//! objects this process holds.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rayd_common::id::{NodeId, ObjectId};
use rayd_common::proto::plasma::v1 as pb;

use crate::allocator::{Allocator, ALIGN};
use crate::mapping::Mapping;
use crate::protocol::{self, FrameReader, Outgoing, ProtocolError};
use crate::protocol::{ARENA_SEGMENT, REVOCATION_SEGMENT};
use crate::retention::{Counter, Retained};
use crate::{
    ClientError, DeleteReport, ObjectBuffer, ObjectBuilder, ObjectEntry, Sealed, Unsealed,
};

use pb::reply::Kind as Rep;
use pb::request::Kind as Req;

/// Small puts made with a reply after a refused lease, before asking for one again.
const LEASE_RETRY_AFTER: u32 = 64;

/// How often the retention thread looks at the revocation counter while this client
/// retains objects: the longest a retained object's pages outlive its end in the store.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A connection to the node's plasma store. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct PlasmaClient {
    inner: Arc<Inner>,
}

/// What a get found ([`PlasmaClient::get_or_freed`]).
#[derive(Debug)]
pub struct Got {
    /// One per ID asked for, in order: the sealed object, or `None` when absent.
    pub objects: Vec<Option<ObjectBuffer>>,
    /// The absent ones that a program freed while a reader held them.
    pub freed: Vec<ObjectId>,
}

impl std::fmt::Debug for PlasmaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlasmaClient")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

struct Inner {
    io: Mutex<Io>,
    tables: Mutex<Tables>,
    node_id: NodeId,
    /// The store's process, as the kernel says (`SO_PEERCRED`), when it could tell.
    store_pid: Option<u32>,
    capacity: u64,
    small_object_max: u64,
    /// Objects up to this size go into this client's lease (0: the store lends none).
    leased_object_max: u64,
    /// Objects up to this size are filled in this client's memory and sent with their
    /// seal; larger ones get a segment of their own.
    arena_object_max: u64,
    /// This client's revocation counter; `None` when the store keeps no page (nothing
    /// is retained then).
    revocations: Option<Counter>,
    /// The thread that forgets retained objects the store revoked while this client
    /// asks nothing (started at the first retained object).
    sweeper: OnceLock<Option<std::thread::Thread>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Its thread waits for objects to watch: it finds the client gone and ends.
        if let Some(Some(thread)) = self.sweeper.get() {
            thread.unpark();
        }
    }
}

impl Inner {
    /// Bytes this client retains at most: a quarter of the store.
    fn retain_max(&self) -> u64 {
        self.capacity / 4
    }

    /// Whether this client keeps `held`'s mapping after its last buffer goes.
    fn retains(&self, held: &Held) -> bool {
        held.segment != ARENA_SEGMENT
            && self.revocations.is_some()
            && held.data_size + held.metadata_size <= self.retain_max()
            && matches!(held.memory, Sealed::Mapped(..))
    }

    /// The retention thread, started when first needed (`None` when it cannot start).
    fn sweeper(&self) -> Option<&std::thread::Thread> {
        self.sweeper.get().and_then(Option::as_ref)
    }

    /// Forgets everything retained when the store revoked any of it since the last look;
    /// true when that left mappings to undo (see [`Self::wake_sweeper`]).
    fn check_revocations(&self, tables: &mut Tables) -> bool {
        let Some(counter) = &self.revocations else {
            return false;
        };
        if !tables.retained.revoked(counter.read()) {
            return false;
        }
        let gone = tables.retained.drain();
        forget(tables, gone);
        !tables.unmap.is_empty()
    }

    /// Has the retention thread unmap what was forgotten.
    fn wake_sweeper(&self) {
        if let Some(thread) = self.sweeper() {
            thread.unpark();
        }
    }
}

/// Takes `ids` (retained objects) out of the tables and tells the store; their mappings
/// go on the retention thread (see [`Tables::unmap`]).
fn forget(tables: &mut Tables, ids: Vec<ObjectId>) {
    if ids.is_empty() {
        return;
    }
    for id in &ids {
        // The store sees the release of an object before it is forgotten (not to be
        // retained: if the object went meanwhile, that would revoke the others).
        if let Some(i) = tables.deferred.iter().position(|d| d == id) {
            tables.deferred.swap_remove(i);
            queue(
                tables,
                Req::Release(pb::Release {
                    object_id: id.as_bytes().to_vec(),
                    retain: false,
                }),
            );
        }
    }
    for id in &ids {
        if let Some(held) = tables.objects.remove(id) {
            let segment = tables.segments.remove(&held.segment);
            tables.unmap.push((held, segment));
        }
    }
    queue(
        tables,
        Req::Forget(pb::Forget {
            object_ids: ids.iter().map(|id| id.as_bytes().to_vec()).collect(),
        }),
    );
}

/// Forgets `id` if it is retained: an object made again here (a lost task result rebuilt)
/// is held anew. True when that left a mapping to undo (see [`Inner::wake_sweeper`]).
fn forget_retained(tables: &mut Tables, id: ObjectId) -> bool {
    if !tables.retained.take(id) {
        return false;
    }
    forget(tables, vec![id]);
    true
}

/// Starts the thread that watches the revocation counter for `inner` while it retains
/// objects, so that an idle client does not keep revoked objects' pages for long; false
/// when it cannot run.
fn start_sweeper(inner: &Arc<Inner>) -> bool {
    inner.sweeper.get_or_init(|| {
        let weak: Weak<Inner> = Arc::downgrade(inner);
        std::thread::Builder::new()
            .name("plasma-retained".into())
            .spawn(move || sweep(weak))
            .map_err(|e| log::debug!("cannot start the retention thread: {e}"))
            .ok()
            .map(|handle| handle.thread().clone())
    });
    inner.sweeper().is_some()
}

fn sweep(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let (idle, unmap) = {
            let mut tables = lock(&inner.tables);
            inner.check_revocations(&mut tables);
            // Deferred releases are of retained objects: while any is left, the thread
            // looks again within SWEEP_EVERY and sends them (flush_if_idle below).
            let idle = tables.retained.is_empty();
            tables.sweeper_parked = idle;
            (idle, std::mem::take(&mut tables.unmap))
        };
        drop(unmap);
        flush_if_idle(&inner, "forgotten objects");
        drop(inner);
        if idle {
            std::thread::park();
        } else {
            std::thread::park_timeout(SWEEP_EVERY);
        }
    }
}

struct Io {
    stream: UnixStream,
    reader: FrameReader,
}

#[derive(Default)]
struct Tables {
    segments: HashMap<u64, SegmentMap>,
    objects: HashMap<ObjectId, Held>,
    /// Frames that need no reply, queued for the next write in this order: releases
    /// whose last buffer went while the connection was busy.
    pending: Vec<u8>,
    /// Retained objects whose release has not gone to the store yet: they go after
    /// `pending`, with the next write or the retention thread's next look, and a get of
    /// one meanwhile takes its release back instead of sending a `Reuse`.
    deferred: Vec<ObjectId>,
    /// The retention thread is parked until woken (nothing was retained when it looked).
    sweeper_parked: bool,
    /// The unused part of this client's current lease.
    lease: Option<LeaseRange>,
    /// Small objects this client is filling and has not sealed or aborted yet.
    unsealed: HashSet<ObjectId>,
    /// After the store refused a lease: small puts made with a reply before asking
    /// again (each ask is a round trip).
    puts_before_asking: u32,
    /// Objects released but kept mapped (their `Held` stays, with no buffer).
    retained: Retained,
    /// Retained objects forgotten, for the retention thread to unmap: closing the last
    /// descriptor of an object the store deleted frees its pages, 12 ms for 200 MB, which
    /// a get or a release must not wait for.
    unmap: Vec<(Held, Option<SegmentMap>)>,
}

/// The unused part of a lease: `[next, end)` of the arena.
struct LeaseRange {
    next: u64,
    end: u64,
}

impl LeaseRange {
    /// Takes `len` bytes (a multiple of the allocator's alignment) off the front.
    fn take(&mut self, len: u64) -> Option<u64> {
        let offset = self.next;
        (self.end - offset >= len).then(|| {
            self.next += len;
            offset
        })
    }
}

struct SegmentMap {
    /// Its files end to end, each with its length (one, unless it is made of parts).
    files: Vec<(OwnedFd, u64)>,
    read_only: Option<Arc<Mapping>>,
}

impl SegmentMap {
    fn read_only(&mut self) -> Result<Arc<Mapping>, ClientError> {
        if let Some(mapping) = &self.read_only {
            return Ok(mapping.clone());
        }
        let parts: Vec<_> = self
            .files
            .iter()
            .map(|(fd, len)| (fd.as_fd(), usize::try_from(*len).unwrap_or(usize::MAX)))
            .collect();
        let mapping = Arc::new(Mapping::of_parts(&parts, false, false)?);
        self.read_only = Some(mapping.clone());
        Ok(mapping)
    }
}

struct Held {
    refs: u32,
    /// Released and kept mapped (see [`crate::retention`]); `refs` is 0.
    retained: bool,
    /// When the store last pinned it for a get served from the kept mapping (`Reuse`):
    /// until [`SWEEP_EVERY`] after, its releases wait for the next write (see
    /// [`Tables::deferred`]).
    reused_at: Option<Instant>,
    segment: u64,
    memory: Sealed,
    data_size: u64,
    metadata_size: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handle buffers use to share and release their pin.
#[derive(Clone)]
pub(super) struct Releaser(Arc<Inner>);

impl Releaser {
    pub(super) fn add_ref(&self, id: ObjectId) {
        if let Some(held) = lock(&self.0.tables).objects.get_mut(&id) {
            held.refs += 1;
        }
    }

    pub(super) fn release(&self, id: ObjectId) {
        {
            let mut tables = lock(&self.0.tables);
            let Some(held) = tables.objects.get_mut(&id) else {
                return;
            };
            // Never below 0: a buffer is made only with a reference counted.
            held.refs = held.refs.saturating_sub(1);
            if held.refs > 0 {
                return;
            }
            if self.0.retains(held) && start_sweeper(&self.0) {
                held.retained = true;
                // An object read again and again from the kept mapping: its release
                // waits for the next write, and a get of it meanwhile takes it back, so
                // neither goes (each message wakes the store, which cost such a get most
                // of its time). Only for SWEEP_EVERY after its last `Reuse`, so that the
                // store sees it unpinned that often and may spill or free it; a first
                // release (after a get from the store) goes at once, like any other.
                let defer = held.reused_at.is_some_and(|at| at.elapsed() < SWEEP_EVERY);
                let size = held.data_size + held.metadata_size;
                tables.retained.add(id, size);
                if defer {
                    tables.deferred.push(id);
                } else {
                    queue(&mut tables, retained_release(id));
                }
                let max = self.0.retain_max();
                let excess: Vec<ObjectId> =
                    std::iter::from_fn(|| tables.retained.pop_excess(max)).collect();
                forget(&mut tables, excess);
                // The retention thread sends a deferred release, and looks again every
                // SWEEP_EVERY while anything is retained; it is woken only when it sleeps
                // for good. What was forgotten here it unmaps at its next look, not now:
                // unmapping takes the process's memory map lock, which would stall the
                // gets that follow (a 1 GB get 15 -> 170-300 µs), and the objects stay in
                // the store whatever their mappings here.
                let wake = std::mem::take(&mut tables.sweeper_parked);
                let send = !tables.pending.is_empty();
                drop(tables);
                if wake {
                    self.0.wake_sweeper();
                }
                if send {
                    flush_if_idle(&self.0, "a release");
                }
                return;
            }
            let segment = held.segment;
            tables.objects.remove(&id);
            if segment != ARENA_SEGMENT {
                // The store forgets that we hold this segment when it sees the release.
                tables.segments.remove(&segment);
            }
            queue(
                &mut tables,
                Req::Release(pb::Release {
                    object_id: id.as_bytes().to_vec(),
                    retain: false,
                }),
            );
        }
        flush_if_idle(&self.0, "a release");
    }
}

/// The release of an object this client keeps mapped.
fn retained_release(id: ObjectId) -> Req {
    Req::Release(pb::Release {
        object_id: id.as_bytes().to_vec(),
        retain: true,
    })
}

/// Everything queued for the store, deferred releases last, for the next write.
fn take_pending(tables: &mut Tables) -> Vec<u8> {
    let mut bytes = std::mem::take(&mut tables.pending);
    for id in std::mem::take(&mut tables.deferred) {
        bytes.extend(protocol::encode_frame(&pb::Request {
            kind: Some(retained_release(id)),
        }));
    }
    bytes
}

/// Queues a request that needs no reply for the next write.
fn queue(tables: &mut Tables, request: Req) {
    tables.pending.extend(protocol::encode_frame(&pb::Request {
        kind: Some(request),
    }));
}

/// Writes the queued frames now unless another thread uses the connection: it sends
/// them before its next request instead.
fn flush_if_idle(inner: &Inner, what: &str) {
    if let Ok(mut io) = inner.io.try_lock() {
        let pending = take_pending(&mut lock(&inner.tables));
        if let Err(e) = io.send(pending, None) {
            log::debug!(error:% = e; "cannot send {what} to the plasma store");
        }
    }
}

impl Io {
    /// Writes the queued frames and, if given, one request.
    fn send(&mut self, mut bytes: Vec<u8>, request: Option<Req>) -> Result<(), ClientError> {
        if let Some(kind) = request {
            bytes.extend(protocol::encode_frame(&pb::Request { kind: Some(kind) }));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        Outgoing::new(bytes, Vec::new())
            .send_blocking(self.stream.as_fd())
            .map_err(|e| ProtocolError::Io(e).into())
    }

    /// Reads one reply and the descriptors that came with it.
    fn receive(&mut self) -> Result<(pb::Reply, Vec<OwnedFd>), ClientError> {
        let body = self.reader.read_frame_blocking(self.stream.as_fd())?;
        let reply: pb::Reply = protocol::decode("reply", &body)?;
        let fds = self
            .reader
            .take_fds(protocol::fds_of(&reply.new_segments))?;
        Ok((reply, fds))
    }
}

impl PlasmaClient {
    /// Connects to the store at `socket`; `name` identifies this client in its log.
    pub fn connect(socket: impl AsRef<Path>, name: &str) -> Result<Self, ClientError> {
        crate::raise_descriptor_limit();
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let store_pid =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .ok()
                .and_then(|c| u32::try_from(c.pid()).ok());
        let mut io = Io {
            stream,
            reader: FrameReader::new(protocol::MAX_REPLY_FRAME),
        };
        io.send(
            Vec::new(),
            Some(Req::Connect(pb::Connect {
                client_name: name.to_string(),
            })),
        )?;
        let (reply, fds) = io.receive()?;
        let mut tables = Tables::default();
        register_segments(&mut tables, &reply.new_segments, fds);
        let connected = match reply.kind {
            Some(Rep::Connected(c)) => c,
            other => return Err(unexpected("connected", other)),
        };
        tables
            .segments
            .get_mut(&ARENA_SEGMENT)
            .ok_or(ClientError::Invalid("the store sent no arena".into()))?
            .read_only()?;
        let node_id = NodeId::from_slice(&connected.node_id)
            .map_err(|e| ClientError::Invalid(format!("node id: {e}")))?;
        let revocations = match tables.segments.remove(&REVOCATION_SEGMENT) {
            Some(mut page) if connected.revocation_segment == REVOCATION_SEGMENT => {
                Counter::new(page.read_only()?, connected.revocation_slot)
            }
            _ => None,
        };
        if let Some(counter) = &revocations {
            tables.retained.revoked(counter.read());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                io: Mutex::new(io),
                tables: Mutex::new(tables),
                node_id,
                store_pid,
                capacity: connected.capacity_bytes,
                small_object_max: connected.small_object_max,
                leased_object_max: connected.leased_object_max.min(connected.lease_size / 2),
                arena_object_max: connected.arena_object_max,
                revocations,
                sweeper: OnceLock::new(),
            }),
        })
    }

    /// The node this store serves.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The pid of the store's process, as the kernel reported it at connect.
    pub fn store_pid(&self) -> Option<u32> {
        self.inner.store_pid
    }

    /// The store's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The largest object the store takes (the whole store).
    pub fn small_object_max(&self) -> u64 {
        self.inner.small_object_max
    }

    /// One request and its reply, after the queued releases.
    fn call(&self, request: Req, expected: &'static str) -> Result<Rep, ClientError> {
        let mut io = lock(&self.inner.io);
        let pending = take_pending(&mut lock(&self.inner.tables));
        io.send(pending, Some(request))?;
        let (reply, fds) = io.receive()?;
        if !fds.is_empty() {
            register_segments(&mut lock(&self.inner.tables), &reply.new_segments, fds);
        }
        match reply.kind {
            Some(Rep::Error(e)) => Err(ClientError::from_reply(e)),
            Some(kind) => Ok(kind),
            None => Err(unexpected(expected, None)),
        }
    }

    /// Creates an object of `data_size` + `metadata_size` bytes to fill.
    /// Fails with [`ClientError::StoreFull`] when nothing can be evicted to make room.
    ///
    /// A small object is filled in this client's memory without a round trip (the store
    /// learns of it at its seal); a larger one gets a segment of its own from the store.
    pub fn create(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectBuilder, ClientError> {
        let total = data_size.saturating_add(metadata_size);
        if total <= self.inner.arena_object_max {
            let mut tables = lock(&self.inner.tables);
            if forget_retained(&mut tables, id) {
                self.inner.wake_sweeper();
            }
            if tables.objects.contains_key(&id) || !tables.unsealed.insert(id) {
                return Err(ClientError::ObjectExists(format!(
                    "object {id} is held by this client"
                )));
            }
            return Ok(ObjectBuilder {
                id,
                memory: Some(Unsealed::Heap(vec![0; total as usize])),
                segment: ARENA_SEGMENT,
                data_size,
                metadata_size,
                client: Some(self.clone()),
            });
        }
        let mut io = lock(&self.inner.io);
        let pending = {
            let mut tables = lock(&self.inner.tables);
            if forget_retained(&mut tables, id) {
                self.inner.wake_sweeper();
            }
            take_pending(&mut tables)
        };
        io.send(
            pending,
            Some(Req::Create(pb::Create {
                object_id: id.as_bytes().to_vec(),
                data_size,
                metadata_size,
            })),
        )?;
        let (reply, fds) = io.receive()?;
        drop(io);
        let (location, prepared) = match reply.kind {
            Some(Rep::Created(pb::Created {
                location: Some(location),
                prepared,
            })) => (location, prepared),
            Some(Rep::Error(e)) => return Err(ClientError::from_reply(e)),
            other => return Err(unexpected("created", other)),
        };
        // The segment's read-write descriptors are the builder's alone; the read-only ones
        // come with the seal.
        let segment = reply
            .new_segments
            .first()
            .filter(|segment| {
                reply.new_segments.len() == 1
                    && segment.id == location.segment
                    && segment.id != ARENA_SEGMENT
                    && location.offset == 0
                    && segment.size >= total
            })
            .ok_or(ClientError::BadLocation(id))?;
        let files = files_of(segment, &mut fds.into_iter());
        if files.is_empty() {
            return Err(ClientError::BadLocation(id));
        }
        Ok(ObjectBuilder {
            id,
            memory: Some(Unsealed::Segment {
                files: files
                    .into_iter()
                    .map(|(fd, len)| (std::fs::File::from(fd), len))
                    .collect(),
                len: segment.size,
                mapping: None,
                prepared,
            }),
            segment: location.segment,
            data_size,
            metadata_size,
            client: Some(self.clone()),
        })
    }

    /// The arena offset in this client's lease for a small object of `len` bytes;
    /// `None` when the store lends no room now (the object then goes with a reply, which
    /// evicts or says the store is full).
    fn lease_offset(&self, len: u64) -> Result<Option<u64>, ClientError> {
        if len > self.inner.leased_object_max {
            return Ok(None);
        }
        let len = Allocator::rounded(len);
        {
            let mut tables = lock(&self.inner.tables);
            if let Some(offset) = tables.lease.as_mut().and_then(|l| l.take(len)) {
                return Ok(Some(offset));
            }
            if tables.puts_before_asking > 0 {
                tables.puts_before_asking -= 1;
                return Ok(None);
            }
        }
        if !self.renew_lease(len)? {
            return Ok(None);
        }
        Ok(lock(&self.inner.tables)
            .lease
            .as_mut()
            .and_then(|l| l.take(len)))
    }

    /// Asks the store for a new lease unless another thread got one with room for `len`
    /// bytes meanwhile; false when the store has no room to lend.
    fn renew_lease(&self, len: u64) -> Result<bool, ClientError> {
        let mut io = lock(&self.inner.io);
        let pending = {
            let mut tables = lock(&self.inner.tables);
            if tables.lease.as_ref().is_some_and(|l| l.end - l.next >= len) {
                return Ok(true);
            }
            // Nothing is put in the old lease from here on, and what was goes out before
            // the request that retires it.
            tables.lease = None;
            take_pending(&mut tables)
        };
        io.send(pending, Some(Req::Lease(pb::Lease {})))?;
        let (reply, fds) = io.receive()?;
        drop(fds);
        let leased = match reply.kind {
            Some(Rep::Leased(leased)) => leased,
            Some(Rep::Error(e)) => {
                let error = ClientError::from_reply(e);
                log::debug!(error:% = error; "no lease: putting objects one by one");
                lock(&self.inner.tables).puts_before_asking = LEASE_RETRY_AFTER;
                return Ok(false);
            }
            other => return Err(unexpected("leased", other)),
        };
        let arena_size = lock(&self.inner.tables)
            .segments
            .get(&ARENA_SEGMENT)
            .map_or(0, |s| s.files.iter().map(|(_, len)| len).sum());
        let inside = leased
            .offset
            .checked_add(leased.size)
            .is_some_and(|end| end <= arena_size);
        if !leased.offset.is_multiple_of(ALIGN) || !inside {
            return Err(ClientError::Invalid(format!(
                "the store lent a range outside the arena: {} bytes at {}",
                leased.size, leased.offset
            )));
        }
        lock(&self.inner.tables).lease = Some(LeaseRange {
            next: leased.offset,
            end: leased.offset + leased.size,
        });
        Ok(true)
    }

    /// Seals an object whose builder has let go of its writable mapping; a small one's
    /// `bytes` go to the store with the seal.
    pub(super) fn seal_object(
        &self,
        id: ObjectId,
        segment: u64,
        (data_size, metadata_size): (u64, u64),
        bytes: Option<Vec<u8>>,
    ) -> Result<ObjectBuffer, ClientError> {
        let memory = match bytes {
            Some(bytes) => self.put_small(id, (data_size, metadata_size), bytes)?,
            None => match self.seal_segment(id, segment) {
                Ok(mapping) => Sealed::Mapped(mapping, 0),
                Err(e) => {
                    // Not left pinned and unsealed in the store until this client leaves.
                    if let Err(abort) = self.abort_object(id, segment) {
                        log::debug!(object:% = id, error:% = abort; "cannot abort an object whose seal failed");
                    }
                    return Err(e);
                }
            },
        };
        let mut tables = lock(&self.inner.tables);
        tables.objects.insert(
            id,
            Held {
                refs: 1,
                retained: false,
                reused_at: None,
                segment,
                memory: memory.clone(),
                data_size,
                metadata_size,
            },
        );
        Ok(ObjectBuffer {
            id,
            memory,
            data_size,
            metadata_size,
            owner: Releaser(self.inner.clone()),
        })
    }

    /// Sends a small object's bytes to the store, which copies them into the arena and
    /// seals the object: into this client's lease without a reply (ordered after
    /// everything this client sent before; others see the object sealed once the store
    /// has read it, and a get of theirs waits for that), else with one.
    fn put_small(
        &self,
        id: ObjectId,
        sizes: (u64, u64),
        bytes: Vec<u8>,
    ) -> Result<Sealed, ClientError> {
        let offset = match self.lease_offset(bytes.len() as u64) {
            Ok(offset) => offset,
            Err(e) => {
                lock(&self.inner.tables).unsealed.remove(&id);
                return Err(e);
            }
        };
        let put = Req::Put(pb::Put {
            object_id: id.as_bytes().to_vec(),
            data_size: sizes.0,
            metadata_size: sizes.1,
            bytes: bytes.clone(),
            leased: offset.is_some(),
            offset: offset.unwrap_or_default(),
        });
        let sent = if offset.is_some() {
            let mut io = lock(&self.inner.io);
            let pending = {
                let mut tables = lock(&self.inner.tables);
                queue(&mut tables, put);
                take_pending(&mut tables)
            };
            io.send(pending, None)
        } else {
            self.call(put, "ack").map(|_| ())
        };
        lock(&self.inner.tables).unsealed.remove(&id);
        sent?;
        Ok(Sealed::Owned(bytes.into()))
    }

    /// Seals an object of a segment of its own, synchronously: once this returns, every
    /// client of the store sees the object sealed. The reply brings a read-only
    /// descriptor of the segment (the builder's writable one and its mapping went).
    fn seal_segment(&self, id: ObjectId, segment: u64) -> Result<Arc<Mapping>, ClientError> {
        self.call(
            Req::Seal(pb::Seal {
                object_id: id.as_bytes().to_vec(),
            }),
            "ack",
        )?;
        lock(&self.inner.tables)
            .segments
            .get_mut(&segment)
            .ok_or(ClientError::BadLocation(id))?
            .read_only()
    }

    pub(super) fn abort_object(&self, id: ObjectId, segment: u64) -> Result<(), ClientError> {
        if segment == ARENA_SEGMENT {
            // A small object: the store never heard of it.
            lock(&self.inner.tables).unsealed.remove(&id);
            return Ok(());
        }
        self.call(
            Req::Abort(pb::Abort {
                object_id: id.as_bytes().to_vec(),
            }),
            "ack",
        )
        .map(|_| ())
    }

    /// Creates, fills and seals an object in one go.
    pub fn put(
        &self,
        id: ObjectId,
        data: &[u8],
        metadata: &[u8],
    ) -> Result<ObjectBuffer, ClientError> {
        let mut builder = self.create(id, data.len() as u64, metadata.len() as u64)?;
        builder.write_at(0, data)?;
        builder.write_at(data.len() as u64, metadata)?;
        builder.seal()
    }

    /// The sealed objects among `ids`, waiting up to `timeout` (forever when `None`) for
    /// those not sealed yet. Absent ones are `None`. Objects this client already holds
    /// are answered without asking the store.
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<ObjectBuffer>>, ClientError> {
        Ok(self.get_or_freed(ids, timeout)?.objects)
    }

    /// [`Self::get`], also naming the absent objects that a program freed while a reader
    /// held them (the store serves them to no one, and a get does not wait for them).
    pub fn get_or_freed(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
    ) -> Result<Got, ClientError> {
        let mut io = lock(&self.inner.io);
        let mut freed = Vec::new();
        let mut result: Vec<Option<ObjectBuffer>> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        let mut asked = HashSet::new();
        let pending = {
            let mut tables = lock(&self.inner.tables);
            if self.inner.check_revocations(&mut tables) {
                self.inner.wake_sweeper();
            }
            for id in ids {
                match self.hold(&mut tables, *id) {
                    Some(buffer) => result.push(Some(buffer)),
                    None => {
                        // The store pins once per ID it returns: ask once per ID.
                        if asked.insert(*id) {
                            missing.push(*id);
                        }
                        result.push(None);
                    }
                }
            }
            take_pending(&mut tables)
        };
        if missing.is_empty() {
            io.send(pending, None)?;
            return Ok(Got {
                objects: result,
                freed,
            });
        }
        // The store takes at most MAX_IDS_PER_REQUEST IDs a request: more go in several,
        // under one deadline.
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pending = Some(pending);
        for chunk in missing.chunks(protocol::MAX_IDS_PER_REQUEST) {
            let timeout_ms = deadline.map_or(-1, |d| {
                // Rounded up: a get never gives up before its timeout.
                let left = d.saturating_duration_since(Instant::now());
                i64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
            });
            io.send(
                pending.take().unwrap_or_default(),
                Some(Req::Get(pb::Get {
                    object_ids: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
                    timeout_ms,
                })),
            )?;
            let (reply, fds) = io.receive()?;
            let mut tables = lock(&self.inner.tables);
            register_segments(&mut tables, &reply.new_segments, fds);
            let objects = match reply.kind {
                Some(Rep::Objects(o)) if o.objects.len() == chunk.len() => o.objects,
                Some(Rep::Error(e)) => return Err(ClientError::from_reply(e)),
                other => return Err(unexpected("objects", other)),
            };
            for (asked_id, object) in chunk.iter().zip(&objects) {
                if object.freed && object.location.is_none() {
                    freed.push(*asked_id);
                }
            }
            for location in objects.into_iter().filter_map(|o| o.location) {
                let id = protocol::object_id(&location.object_id)?;
                if !asked.contains(&id) {
                    return Err(ClientError::BadLocation(id));
                }
                let segment = tables
                    .segments
                    .get_mut(&location.segment)
                    .ok_or(ClientError::BadLocation(id))?;
                let mapping = segment.read_only()?;
                if !mapping.contains(location.offset, location.data_size + location.metadata_size) {
                    return Err(ClientError::BadLocation(id));
                }
                if tables.objects.contains_key(&id) {
                    // Held meanwhile (sealed or got by another thread, or retained): the
                    // entry stays, and the pin the store took for this get goes back.
                    queue(
                        &mut tables,
                        Req::Release(pb::Release {
                            object_id: id.as_bytes().to_vec(),
                            retain: false,
                        }),
                    );
                    continue;
                }
                tables.objects.insert(
                    id,
                    Held {
                        refs: 0,
                        retained: false,
                        reused_at: None,
                        segment: location.segment,
                        memory: Sealed::Mapped(mapping, location.offset),
                        data_size: location.data_size,
                        metadata_size: location.metadata_size,
                    },
                );
            }
        }
        let mut tables = lock(&self.inner.tables);
        for (slot, id) in result.iter_mut().zip(ids) {
            if slot.is_none() {
                *slot = self.hold(&mut tables, *id);
            }
        }
        Ok(Got {
            objects: result,
            freed,
        })
    }

    /// A new buffer of `id` if this client holds it; one read again from its retained
    /// mapping is pinned again by the store (`Reuse`).
    fn hold(&self, tables: &mut Tables, id: ObjectId) -> Option<ObjectBuffer> {
        let held = tables.objects.get_mut(&id)?;
        let reused = std::mem::take(&mut held.retained);
        held.refs += 1;
        let buffer = self.buffer(id, held);
        if reused {
            tables.retained.take(id);
            match tables.deferred.iter().position(|d| *d == id) {
                // The store never saw it released: its pin still stands.
                Some(i) => {
                    tables.deferred.swap_remove(i);
                }
                None => {
                    held.reused_at = Some(Instant::now());
                    queue(
                        tables,
                        Req::Reuse(pb::Reuse {
                            object_id: id.as_bytes().to_vec(),
                        }),
                    );
                }
            }
        }
        Some(buffer)
    }

    /// One object, or `None` when it was not sealed within `timeout`.
    pub fn get_one(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Option<ObjectBuffer>, ClientError> {
        Ok(self.get(&[id], timeout)?.pop().flatten())
    }

    fn buffer(&self, id: ObjectId, held: &Held) -> ObjectBuffer {
        ObjectBuffer {
            id,
            memory: held.memory.clone(),
            data_size: held.data_size,
            metadata_size: held.metadata_size,
            owner: Releaser(self.inner.clone()),
        }
    }

    /// Whether the store has `id` sealed.
    pub fn contains(&self, id: ObjectId) -> Result<bool, ClientError> {
        match self.call(
            Req::Contains(pb::Contains {
                object_id: id.as_bytes().to_vec(),
            }),
            "contains",
        )? {
            Rep::Contains(c) => Ok(c.sealed),
            other => Err(unexpected("contains", Some(other))),
        }
    }

    /// Deletes objects now, or when their last pin goes.
    pub fn delete(&self, ids: &[ObjectId]) -> Result<DeleteReport, ClientError> {
        let mut report = DeleteReport::default();
        let parse = |raw: Vec<Vec<u8>>| -> Result<Vec<ObjectId>, ClientError> {
            raw.iter()
                .map(|b| protocol::object_id(b).map_err(ClientError::from))
                .collect()
        };
        // At most MAX_IDS_PER_REQUEST IDs a request.
        for chunk in ids.chunks(protocol::MAX_IDS_PER_REQUEST) {
            let reply = self.call(
                Req::Delete(pb::Delete {
                    object_ids: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
                    quiet: false,
                }),
                "deleted",
            )?;
            let Rep::Deleted(deleted) = reply else {
                return Err(unexpected("deleted", Some(reply)));
            };
            report.deleted.extend(parse(deleted.deleted)?);
            report.deferred.extend(parse(deleted.deferred)?);
            report.not_found.extend(parse(deleted.not_found)?);
        }
        Ok(report)
    }

    /// Deletes objects without waiting for a reply (their owner's last reference went):
    /// sent now unless another thread uses the connection, else with its next request.
    pub fn delete_quietly(&self, ids: &[ObjectId]) {
        {
            let mut tables = lock(&self.inner.tables);
            for chunk in ids.chunks(protocol::MAX_IDS_PER_REQUEST) {
                queue(
                    &mut tables,
                    Req::Delete(pb::Delete {
                        object_ids: chunk.iter().map(|id| id.as_bytes().to_vec()).collect(),
                        quiet: true,
                    }),
                );
            }
        }
        flush_if_idle(&self.inner, "deletes");
    }

    /// Every object in the store.
    pub fn list(&self) -> Result<Vec<ObjectEntry>, ClientError> {
        let reply = self.call(Req::List(pb::List {}), "listing")?;
        let Rep::Listing(listing) = reply else {
            return Err(unexpected("listing", Some(reply)));
        };
        listing
            .objects
            .into_iter()
            .map(|o| {
                Ok(ObjectEntry {
                    id: protocol::object_id(&o.object_id)?,
                    data_size: o.data_size,
                    metadata_size: o.metadata_size,
                    sealed: o.sealed,
                    pins: o.pins,
                })
            })
            .collect()
    }

    /// The store's figures (what `rayd status` shows).
    pub fn stats(&self) -> Result<pb::StoreStats, ClientError> {
        match self.call(Req::Stats(pb::Stats {}), "stats")? {
            Rep::Stats(stats) => Ok(stats),
            other => Err(unexpected("stats", Some(other))),
        }
    }

    /// Has the store pull `id` from the object manager at `source` (`host:port`);
    /// returns once it is sealed here.
    pub fn pull(&self, id: ObjectId, source: &str) -> Result<(), ClientError> {
        self.call(
            Req::Pull(pb::Pull {
                object_id: id.as_bytes().to_vec(),
                source: source.to_string(),
            }),
            "ack",
        )
        .map(|_| ())
    }

    /// Sends any releases still queued (they also go with the next request).
    pub fn flush(&self) -> Result<(), ClientError> {
        let mut io = lock(&self.inner.io);
        let pending = take_pending(&mut lock(&self.inner.tables));
        io.send(pending, None)
    }
}

/// Keeps the read-only descriptors that came with a reply (mapped when first read).
fn register_segments(tables: &mut Tables, segments: &[pb::Segment], fds: Vec<OwnedFd>) {
    let mut fds = fds.into_iter();
    for segment in segments {
        let files = files_of(segment, &mut fds);
        // A segment whose parts do not add up is left out: its objects' locations then
        // name no segment this client knows, and their gets fail as such.
        if !files.is_empty() {
            let map = SegmentMap {
                files,
                read_only: None,
            };
            tables.segments.insert(segment.id, map);
        }
    }
}

/// The files of `segment`, taken from the reply's descriptors (one per part), each with
/// its length; none when its parts do not describe it.
fn files_of(segment: &pb::Segment, fds: &mut impl Iterator<Item = OwnedFd>) -> Vec<(OwnedFd, u64)> {
    let sizes = if segment.parts.is_empty() {
        vec![segment.size]
    } else {
        segment.parts.clone()
    };
    let files: Vec<(OwnedFd, u64)> = fds
        .by_ref()
        .take(sizes.len())
        .zip(sizes.iter().copied())
        .collect();
    if files.len() < sizes.len() || !crate::parts::valid(&sizes, segment.size) {
        return Vec::new();
    }
    files
}

fn unexpected(expected: &'static str, got: Option<Rep>) -> ClientError {
    let got = match got {
        None => "nothing".to_string(),
        Some(Rep::Error(e)) => return ClientError::from_reply(e),
        Some(other) => format!("{other:?}").chars().take(80).collect(),
    };
    ClientError::Unexpected { expected, got }
}
