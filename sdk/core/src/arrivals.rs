//! What this process knows has arrived: objects sealed in the local store (from the store's
//! event stream) and small objects the raylet sent in messages. `get` and `wait` block on
//! one condition variable for both instead of polling.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rayd_common::id::ObjectId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_plasma_client::{EventKind, Subscription};

use crate::inbox::Inbox;
use crate::object::Object;
use crate::CoreError;
use crate::InlineCache;

/// The longest a waiter reads the raylet's socket before looking at its objects again.
const READ_SLICE: Duration = Duration::from_millis(100);

/// Bytes of small objects kept for later `get`s; beyond this the oldest are forgotten (the
/// raylet still has them, or has put them into plasma).
const INLINE_CACHE_BYTES: usize = 64 << 20;

#[derive(Debug)]
struct Known {
    sealed: HashSet<ObjectId>,
    inline: InlineCache,
    /// Results of tasks this process submitted that have not arrived: the raylet sends
    /// them unasked, so no fetch is needed.
    expected: HashSet<ObjectId>,
    /// The store's event stream ended.
    closed: bool,
    /// Objects that waiters for all of their IDs block on (how many waiters each): only
    /// their arrival wakes them, not every arrival.
    watched: HashMap<ObjectId, usize>,
    /// Waiters for some of their IDs: every arrival wakes them.
    general: usize,
    /// Counts the wakeups: a waiter that let go of the lock sees whether one came
    /// meanwhile (it would otherwise sleep through it).
    wakeups: u64,
}

impl Default for Known {
    fn default() -> Self {
        Self {
            sealed: HashSet::new(),
            inline: InlineCache::new(INLINE_CACHE_BYTES),
            expected: HashSet::new(),
            closed: false,
            watched: HashMap::new(),
            general: 0,
            wakeups: 0,
        }
    }
}

impl Known {
    fn ready(&self, id: &ObjectId) -> bool {
        self.inline.contains(id) || self.sealed.contains(id)
    }

    /// Whether the arrival of `id` concerns a waiter.
    fn awaited(&self, id: &ObjectId) -> bool {
        self.general > 0 || self.watched.contains_key(id)
    }
}

/// The objects that arrived, shared by the threads that learn of them and those that wait.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    inner: Arc<(Mutex<Known>, Condvar)>,
    following: OnceLock<()>,
    /// Drivers: the raylet's messages, read by the waiting thread itself.
    inbox: Arc<OnceLock<Arc<Inbox>>>,
}

impl Arrivals {
    fn known(&self) -> MutexGuard<'_, Known> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drivers: waits read the raylet's messages from `inbox` themselves.
    pub fn set_inbox(&self, inbox: Arc<Inbox>) {
        let _ = self.inbox.set(inbox);
    }

    /// Wakes every waiter to look again (the inbox's reader changed or closed).
    pub fn wake_all(&self) {
        self.known().wakeups += 1;
        self.inner.1.notify_all();
    }

    /// Subscribes to the store at `socket` (once) and follows its events on a thread, so
    /// that whatever is sealed from now on is known here. True when this call started it:
    /// objects sealed before are known to the store only.
    pub fn follow_store(&self, socket: &Path) -> Result<bool, CoreError> {
        if self.following.get().is_some() {
            return Ok(false);
        }
        let mut subscription = Subscription::connect(socket)?;
        if self.following.set(()).is_err() {
            return Ok(false);
        }
        let shared = Arc::clone(&self.inner);
        let inbox = Arc::clone(&self.inbox);
        // A waiter may be reading the raylet's socket rather than waiting on the condvar.
        let wake = move |changed: &Condvar| {
            changed.notify_all();
            if let Some(inbox) = inbox.get() {
                inbox.wake_reader();
            }
        };
        std::thread::Builder::new()
            .name("rayd-sealed".into())
            .spawn(move || {
                let (known, changed) = &*shared;
                loop {
                    let event = subscription.next(None);
                    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        Ok(Some(event)) if event.kind == EventKind::Sealed => {
                            known.expected.remove(&event.id);
                            known.sealed.insert(event.id);
                            if known.awaited(&event.id) {
                                known.wakeups += 1;
                                wake(changed);
                            }
                        }
                        Ok(Some(event)) => {
                            known.sealed.remove(&event.id);
                        }
                        Ok(None) => continue,
                        Err(_) => {
                            known.closed = true;
                            known.wakeups += 1;
                            wake(changed);
                            return;
                        }
                    }
                }
            })
            .map_err(CoreError::Runtime)?;
        Ok(true)
    }

    /// Marks an object found sealed by asking the store directly (sealed before following).
    pub fn insert_sealed(&self, id: ObjectId) {
        let mut known = self.known();
        known.expected.remove(&id);
        known.sealed.insert(id);
    }

    /// Records small objects the raylet sent, and wakes whoever waits.
    pub fn insert_inline(&self, objects: Vec<pb::InlineObject>) {
        let mut known = self.known();
        let mut wake = false;
        for object in objects {
            let Ok(id) = ObjectId::from_slice(&object.object_id) else {
                continue;
            };
            known.expected.remove(&id);
            wake |= known.awaited(&id);
            known.inline.insert(id, Arc::new(object));
        }
        if wake {
            known.wakeups += 1;
            self.inner.1.notify_all();
        }
    }

    /// Notes results the raylet will send without being asked.
    pub fn expect(&self, ids: &[ObjectId]) {
        self.known().expected.extend(ids.iter().copied());
    }

    /// Fills the empty slots of `found` with the small objects that arrived, and returns
    /// the indices of the others that the store may have: all of them when `ask_all`.
    pub fn take_inline(
        &self,
        ids: &[ObjectId],
        found: &mut [Option<Object>],
        ask_all: bool,
    ) -> Vec<usize> {
        let known = self.known();
        let following = self.following.get().is_some() && !ask_all;
        let mut ask_store = Vec::new();
        for (i, (id, slot)) in ids.iter().zip(found.iter_mut()).enumerate() {
            if slot.is_some() {
                continue;
            }
            match known.inline.get(id) {
                Some(object) => *slot = Some(Object::Inline(Arc::clone(object))),
                // An expected result is announced when sealed, once the store is followed.
                None if !following || known.sealed.contains(id) || !known.expected.contains(id) => {
                    ask_store.push(i)
                }
                None => {}
            }
        }
        ask_store
    }

    /// Of `ids`, those that are neither here nor on their way unasked: what to fetch.
    pub fn to_fetch(&self, ids: &[ObjectId]) -> Vec<ObjectId> {
        let known = self.known();
        ids.iter()
            .filter(|id| !known.ready(id) && !known.expected.contains(id))
            .copied()
            .collect()
    }

    /// Waits until at least `wanted` of `ids` arrived or `timeout` passes; returns which did.
    ///
    /// Waiting for all of them costs one pass over `ids` in all: a cursor moves past those
    /// that arrived, and only the arrival of the one at the cursor wakes the waiter.
    pub fn wait(&self, ids: &[ObjectId], wanted: usize, timeout: Option<Duration>) -> Vec<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (_, changed) = &*self.inner;
        let all = wanted >= ids.len();
        let mut cursor = 0;
        let mut guard = self.known();
        loop {
            if all {
                while cursor < ids.len() && guard.ready(&ids[cursor]) {
                    cursor += 1;
                }
                if cursor == ids.len() || guard.closed {
                    break;
                }
            } else if ids.iter().filter(|id| guard.ready(id)).count() >= wanted || guard.closed {
                break;
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => Duration::from_secs(3600),
            };
            let watched = all.then(|| ids[cursor]);
            match watched {
                Some(id) => *guard.watched.entry(id).or_insert(0) += 1,
                None => guard.general += 1,
            }
            let mut read = false;
            let mut woken = false;
            if let Some(inbox) = self.inbox.get() {
                let wakeups = guard.wakeups;
                drop(guard);
                read = inbox.read_as_waiter(remaining.min(READ_SLICE));
                guard = self.known();
                woken = guard.wakeups != wakeups;
            }
            if !read && !woken {
                guard = changed
                    .wait_timeout(guard, remaining)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            match watched {
                Some(id) => {
                    if let Some(count) = guard.watched.get_mut(&id) {
                        *count -= 1;
                        if *count == 0 {
                            guard.watched.remove(&id);
                        }
                    }
                }
                None => guard.general -= 1,
            }
            // Others that wait may take over reading the socket now.
            if read && (guard.general > 0 || !guard.watched.is_empty()) {
                guard.wakeups += 1;
                changed.notify_all();
            }
        }
        ids.iter().map(|id| guard.ready(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: ObjectId, len: usize) -> pb::InlineObject {
        pb::InlineObject {
            object_id: id.as_bytes().to_vec().into(),
            data: vec![1; len].into(),
            metadata: b"PICKLE5".to_vec().into(),
        }
    }

    #[test]
    fn inline_objects_wake_waiters_and_the_oldest_are_forgotten_beyond_the_cache() {
        let arrivals = Arc::new(Arrivals::default());
        let first = ObjectId::random();
        arrivals.expect(&[first]);
        assert!(arrivals.to_fetch(&[first]).is_empty());
        let sender = Arc::clone(&arrivals);
        let thread = std::thread::spawn(move || sender.insert_inline(vec![object(first, 10)]));
        assert_eq!(
            arrivals.wait(&[first], 1, Some(Duration::from_secs(10))),
            vec![true]
        );
        thread.join().expect("sender");
        let mut found = vec![None];
        assert!(arrivals.take_inline(&[first], &mut found, false).is_empty());
        assert_eq!(found[0].as_ref().map(|o| o.data().len()), Some(10));
        let big = INLINE_CACHE_BYTES / 4;
        for _ in 0..4 {
            arrivals.insert_inline(vec![object(ObjectId::random(), big)]);
        }
        let mut found = vec![None];
        assert_eq!(arrivals.take_inline(&[first], &mut found, false), vec![0]);
        assert_eq!(arrivals.to_fetch(&[first]), vec![first]);
    }

    #[test]
    fn a_wait_for_what_never_comes_ends_at_its_timeout() {
        let arrivals = Arrivals::default();
        let started = Instant::now();
        let ready = arrivals.wait(&[ObjectId::random()], 1, Some(Duration::from_millis(50)));
        assert_eq!(ready, vec![false]);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
