//! The state every task of the daemon shares: the store behind its mutex, and the fan-out
//! of its events to subscribers, waiting gets and the GCS reporter.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rayd_common::id::{NodeId, ObjectId};
use tokio::sync::{broadcast, mpsc};

use crate::memory::{Backing, Mapping};
use crate::prefault;
use crate::store::{Stats, Store, StoreEvent};

/// Events buffered per subscriber before it counts as lagging.
const EVENT_BUFFER: usize = 1 << 16;

/// The daemon's shared state.
#[derive(Debug)]
pub struct State {
    store: Mutex<Store>,
    events: broadcast::Sender<StoreEvent>,
    locations: Option<mpsc::Sender<StoreEvent>>,
    dropped_locations: AtomicU64,
    /// The arena's read-write descriptor (for `fallocate` ahead of demand).
    arena_fd: OwnedFd,
    /// A read-only descriptor of the arena, the one clients get (replies attach it
    /// without the lock).
    pub arena_reader_fd: OwnedFd,
    /// Size of the arena in bytes.
    pub arena_size: u64,
    /// A read-only descriptor of the revocation page, and its size.
    pub revocations_reader_fd: OwnedFd,
    pub revocations_size: u64,
    /// Where segments come from.
    pub backing: Backing,
    /// The daemon's writable mapping of the arena (transfers read and write through it).
    pub arena_map: Arc<Mapping>,
    /// This node.
    pub node_id: NodeId,
    /// `host:port` of this node's object manager.
    pub object_manager_address: String,
    /// Bytes per chunk of object transfers.
    pub chunk_size: u64,
    /// The cluster's gRPC token ([`rayd_common::auth::grpc_token`]): pulls send it, the
    /// object manager requires it. None in an open cluster.
    pub token: Option<http::HeaderValue>,
    /// How pulls reach other object managers (TLS when the cluster has it).
    pub client: rayd_common::auth::ClientAuth,
    pulls: AtomicU64,
    pulled_bytes: AtomicU64,
    /// Wakes the thread that prepares arena memory ahead of demand.
    pub prefault: prefault::Signal,
    /// Pulls by other nodes this object manager is serving now (see [`Self::serving`]).
    serving: AtomicUsize,
}

/// A pull being served, counted in [`State::serving`] while it lives.
pub struct Serving(Arc<State>);

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serving")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
        // The pool's thread may have held back for this transfer.
        self.0.prefault.wake();
    }
}

impl State {
    /// Wraps a store; `locations`, when set, receives every event for the GCS.
    pub fn new(
        store: Store,
        node_id: NodeId,
        object_manager_address: String,
        chunk_size: u64,
        secret: Option<&str>,
        tls: Option<&rayd_common::auth::Tls>,
        locations: Option<mpsc::Sender<StoreEvent>>,
    ) -> std::io::Result<Arc<Self>> {
        let token = secret
            .map(|s| http::HeaderValue::try_from(rayd_common::auth::grpc_token(s)))
            .transpose()
            .map_err(std::io::Error::other)?;
        let (arena, arena_size) = store.arena();
        let arena_fd = arena.try_clone_to_owned()?;
        let arena_reader_fd =
            crate::memory::reopen_read_only(arena).map_err(std::io::Error::other)?;
        let arena_map = store.arena_mapping();
        let revocations_reader_fd = crate::memory::reopen_read_only(store.revocations().fd())
            .map_err(std::io::Error::other)?;
        let revocations_size = store.revocations().size();
        let backing = store.backing().clone();
        Ok(Arc::new(Self {
            store: Mutex::new(store),
            events: broadcast::channel(EVENT_BUFFER).0,
            locations,
            dropped_locations: AtomicU64::new(0),
            arena_fd,
            arena_reader_fd,
            arena_size,
            revocations_reader_fd,
            revocations_size,
            backing,
            arena_map,
            node_id,
            object_manager_address,
            chunk_size,
            token,
            client: rayd_common::auth::ClientAuth::new(secret).with_tls(tls),
            pulls: AtomicU64::new(0),
            pulled_bytes: AtomicU64::new(0),
            prefault: prefault::Signal::default(),
            serving: AtomicUsize::new(0),
        }))
    }

    /// Counts a pull served from here until the guard goes.
    pub fn begin_serving(self: &Arc<Self>) -> Serving {
        self.serving.fetch_add(1, Ordering::Relaxed);
        Serving(Arc::clone(self))
    }

    /// Whether another node is pulling from here now. The pool's thread starts no segment
    /// meanwhile, as during a fill: sending takes a core (checksums, the socket's copy),
    /// which zeros written beside it took from the transfer where nodes share a machine.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed) > 0
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would have left the store half-changed, but
        // every store method keeps its invariants before anything that can panic.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the store, then publishes the events it caused.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, events, dropped) = {
            let mut store = self.lock();
            let result = f(&mut store);
            if store.take_prefault_wanted() {
                self.prefault.wake();
            }
            (result, store.take_events(), store.take_dropped())
        };
        // Segments of objects gone free their pages here, outside the lock.
        drop(dropped);
        for event in events {
            if let Some(locations) = &self.locations {
                if let Err(mpsc::error::TrySendError::Full(_)) = locations.try_send(event.clone()) {
                    let dropped = self.dropped_locations.fetch_add(1, Ordering::Relaxed);
                    if dropped.checked_rem(10_000) == Some(0) {
                        log::warn!(dropped = dropped + 1; "the gcs is behind: object locations are being dropped");
                    }
                }
            }
            // No receivers is fine: nobody waits.
            let _ = self.events.send(event);
        }
        result
    }

    /// Sends the locations of the sealed objects that `pick` chooses to the GCS again
    /// (a shard that held them restarted empty); returns how many.
    pub fn report_again(&self, pick: impl Fn(&ObjectId) -> bool) -> usize {
        let Some(locations) = &self.locations else {
            return 0;
        };
        let rows = self.lock().list();
        let mut sent = 0;
        for row in rows.into_iter().filter(|r| r.sealed && pick(&r.id)) {
            let event = StoreEvent::Sealed {
                id: row.id,
                data_size: row.data_size,
                metadata_size: row.metadata_size,
            };
            if locations.try_send(event).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// The arena's read-write descriptor.
    pub fn arena_fd_borrowed(&self) -> BorrowedFd<'_> {
        self.arena_fd.as_fd()
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Counts a completed pull of `bytes`.
    pub fn count_pull(&self, bytes: u64) {
        self.pulls.fetch_add(1, Ordering::Relaxed);
        self.pulled_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of the completed pulls.
    pub fn pulled_bytes(&self) -> u64 {
        self.pulled_bytes.load(Ordering::Relaxed)
    }

    /// Completed pulls.
    pub fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    /// The store's figures.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }
}
