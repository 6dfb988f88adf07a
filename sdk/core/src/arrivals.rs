//! What this process knows has arrived: objects sealed in the local store (from the store's
//! event stream) and small objects the raylet sent in messages. `get` and `wait` block on
//! one condition variable for both instead of polling.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rayd_common::id::ObjectId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_plasma::client::{EventKind, Subscription};

use crate::object::InlineCache;
use crate::CoreError;

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
}

impl Default for Known {
    fn default() -> Self {
        Self {
            sealed: HashSet::new(),
            inline: InlineCache::new(INLINE_CACHE_BYTES),
            expected: HashSet::new(),
            closed: false,
        }
    }
}

impl Known {
    fn ready(&self, id: &ObjectId) -> bool {
        self.inline.contains(id) || self.sealed.contains(id)
    }
}

/// The objects that arrived, shared by the threads that learn of them and those that wait.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    inner: Arc<(Mutex<Known>, Condvar)>,
    following: OnceLock<()>,
}

impl Arrivals {
    fn known(&self) -> MutexGuard<'_, Known> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to the store at `socket` (once) and follows its events on a thread, so
    /// that whatever is sealed from now on is known here.
    pub fn follow_store(&self, socket: &Path) -> Result<(), CoreError> {
        if self.following.get().is_some() {
            return Ok(());
        }
        let mut subscription = Subscription::connect(socket)?;
        if self.following.set(()).is_err() {
            return Ok(());
        }
        let shared = Arc::clone(&self.inner);
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
                        }
                        Ok(Some(event)) => {
                            known.sealed.remove(&event.id);
                        }
                        Ok(None) => continue,
                        Err(_) => {
                            known.closed = true;
                            changed.notify_all();
                            return;
                        }
                    }
                    changed.notify_all();
                }
            })
            .map_err(CoreError::Runtime)?;
        Ok(())
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
        for object in objects {
            let Ok(id) = ObjectId::from_slice(&object.object_id) else {
                continue;
            };
            known.expected.remove(&id);
            known.inline.insert(id, Arc::new(object));
        }
        self.inner.1.notify_all();
    }

    /// Notes results the raylet will send without being asked.
    pub fn expect(&self, ids: &[ObjectId]) {
        self.known().expected.extend(ids.iter().copied());
    }

    /// The small object `id`, if it arrived (and is still cached).
    pub fn inline(&self, id: &ObjectId) -> Option<Arc<pb::InlineObject>> {
        self.known().inline.get(id).cloned()
    }

    /// Whether the store may have `id` when it did not arrive in a message: it was seen
    /// sealed, or it is not an expected result (those are announced when sealed, once the
    /// store is followed).
    pub fn in_store_maybe(&self, id: &ObjectId) -> bool {
        let known = self.known();
        self.following.get().is_none() || known.sealed.contains(id) || !known.expected.contains(id)
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
    pub fn wait(&self, ids: &[ObjectId], wanted: usize, timeout: Option<Duration>) -> Vec<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (_, changed) = &*self.inner;
        let mut guard = self.known();
        loop {
            let ready: Vec<bool> = ids.iter().map(|id| guard.ready(id)).collect();
            if ready.iter().filter(|r| **r).count() >= wanted || guard.closed {
                return ready;
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return ready,
                },
                None => Duration::from_secs(3600),
            };
            guard = changed
                .wait_timeout(guard, remaining)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: ObjectId, len: usize) -> pb::InlineObject {
        pb::InlineObject {
            object_id: id.as_bytes().to_vec(),
            data: vec![1; len],
            metadata: b"PICKLE5".to_vec(),
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
        assert_eq!(arrivals.inline(&first).map(|o| o.data.len()), Some(10));
        let big = INLINE_CACHE_BYTES / 4;
        for _ in 0..4 {
            arrivals.insert_inline(vec![object(ObjectId::random(), big)]);
        }
        assert!(arrivals.inline(&first).is_none());
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
