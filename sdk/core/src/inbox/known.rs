//! What has arrived and who waits for it: the state behind the inbox's lock, without I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayd_common::id::ObjectId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_common::recent::RecentSet;

use crate::object::Object;
use crate::InlineCache;

/// Bytes of small objects kept for later `get`s; beyond this the oldest are forgotten (the
/// raylet still has them, or has put them into plasma).
const INLINE_CACHE_BYTES: usize = 64 << 20;
/// Objects this process deleted that are remembered for [`Known::dropped_of`]; beyond this
/// the oldest are forgotten (a `get` of an object deleted long ago needs no second fetch).
const DROPPED_MAX: usize = 65_536;

#[derive(Debug)]
pub(super) struct Known {
    sealed: HashSet<ObjectId>,
    inline: InlineCache,
    /// Results of tasks this process submitted that have not arrived: the raylet sends
    /// them unasked, so no fetch is needed.
    expected: HashSet<ObjectId>,
    /// Objects this process deleted whose removal the store's stream has not announced.
    freed: HashSet<ObjectId>,
    /// Objects this process deleted, until a copy of one is sealed again.
    dropped: RecentSet<ObjectId>,
    /// Objects this process deleted while a reader still held them (the store removes
    /// them when the last lets go, and serves them to no one meanwhile): the error a `get`
    /// of one raises until then.
    freed_in_use: HashMap<ObjectId, Arc<pb::InlineObject>>,
    /// The socket of the store whose event stream ended.
    pub store_closed: Option<String>,
    /// Objects that waiters for all of their IDs block on (how many waiters each): only
    /// their arrival wakes them, not every arrival.
    watched: HashMap<ObjectId, usize>,
    /// Waiters for some of their IDs: every arrival wakes them.
    general: usize,
    /// Counts the wakeups: a waiter that let go of the lock sees whether one came
    /// meanwhile (it would otherwise sleep through it).
    pub wakeups: u64,
}

impl Default for Known {
    fn default() -> Self {
        Self {
            sealed: HashSet::new(),
            inline: InlineCache::new(INLINE_CACHE_BYTES),
            expected: HashSet::new(),
            freed: HashSet::new(),
            dropped: RecentSet::new(DROPPED_MAX),
            freed_in_use: HashMap::new(),
            store_closed: None,
            watched: HashMap::new(),
            general: 0,
            wakeups: 0,
        }
    }
}

impl Known {
    pub fn ready(&self, id: &ObjectId) -> bool {
        self.inline.contains(id) || self.sealed.contains(id) || self.freed_in_use.contains_key(id)
    }

    /// Whether the arrival of `id` concerns a waiter.
    fn awaited(&self, id: &ObjectId) -> bool {
        self.general > 0 || self.watched.contains_key(id)
    }

    /// Whether any thread waits.
    pub fn waiters(&self) -> bool {
        self.general > 0 || !self.watched.is_empty()
    }

    /// Records `id` sealed in the store; true when a waiter wants it.
    pub fn seal(&mut self, id: ObjectId) -> bool {
        self.freed.remove(&id);
        self.dropped.remove(&id);
        self.freed_in_use.remove(&id);
        self.expected.remove(&id);
        self.sealed.insert(id);
        self.awaited(&id)
    }

    /// Forgets `id`: the store announced its removal.
    pub fn delete(&mut self, id: &ObjectId) {
        self.sealed.remove(id);
        self.freed.remove(id);
        // Gone now: a `get` asks the raylet, which finds it freed (or another copy).
        self.freed_in_use.remove(id);
    }

    /// Forgets `id`, which this process just deleted from the store. When `following` the
    /// store's stream, a seal it announces of `id` before the removal is from before
    /// (stale).
    pub fn free(&mut self, id: ObjectId, following: bool) {
        self.sealed.remove(&id);
        if following {
            self.freed.insert(id);
        }
        self.dropped.insert(id);
    }

    /// Undoes [`Self::free`] for `id`, whose removal will not be announced.
    pub fn unfree(&mut self, id: &ObjectId) {
        self.freed.remove(id);
        self.dropped.remove(id);
    }

    /// `id`, freed by this process or another, stays in the store until a reader lets go of it
    /// (it is served to no one meanwhile): until its removal is announced, it is ready
    /// as the error `error` (with `metadata`).
    pub fn freed_in_use(&mut self, id: ObjectId, metadata: Vec<u8>, error: String) {
        self.freed_in_use.insert(
            id,
            Arc::new(pb::InlineObject {
                object_id: id.as_bytes().to_vec().into(),
                data: error.into_bytes().into(),
                metadata: metadata.into(),
            }),
        );
    }

    /// Of `ids`, those this process deleted and that are not here again. The raylet may
    /// have taken a fetch of one for satisfied by its seal from before the delete (its own
    /// news of the store come on another stream than this process's fetch), and then
    /// waits for nothing: a waiter asks it again.
    pub fn dropped_of(&self, ids: &[ObjectId]) -> Vec<ObjectId> {
        if self.dropped.is_empty() {
            return Vec::new();
        }
        ids.iter()
            .filter(|id| self.dropped.contains(id) && !self.ready(id))
            .copied()
            .collect()
    }

    /// Records a seal the store's stream announced; true when a waiter wants it.
    pub fn seal_announced(&mut self, id: ObjectId) -> bool {
        if self.freed.contains(&id) {
            return false;
        }
        self.seal(id)
    }

    /// Records small objects the raylet sent; true when a waiter wants one.
    pub fn insert_inline(&mut self, objects: Vec<pb::InlineObject>) -> bool {
        let mut awaited = false;
        for object in objects {
            let Ok(id) = ObjectId::from_slice(&object.object_id) else {
                continue;
            };
            self.expected.remove(&id);
            awaited |= self.awaited(&id);
            self.inline.insert(id, Arc::new(object));
        }
        awaited
    }

    pub fn expect(&mut self, ids: &[ObjectId]) {
        self.expected.extend(ids.iter().copied());
    }

    /// Fills the empty slots of `found` with the small objects that arrived, and returns
    /// the indices of the others that the store may have: when `seals_seen` (the store is
    /// followed), not the expected results that have not been sealed.
    pub fn take_inline(
        &self,
        ids: &[ObjectId],
        found: &mut [Option<Object>],
        seals_seen: bool,
    ) -> Vec<usize> {
        let mut ask_store = Vec::new();
        for (i, (id, slot)) in ids.iter().zip(found.iter_mut()).enumerate() {
            if slot.is_some() {
                continue;
            }
            match self.inline.get(id).or_else(|| self.freed_in_use.get(id)) {
                Some(object) => *slot = Some(Object::Inline(Arc::clone(object))),
                // An expected result is announced when sealed, once the store is followed.
                None if !seals_seen || self.sealed.contains(id) || !self.expected.contains(id) => {
                    ask_store.push(i)
                }
                None => {}
            }
        }
        ask_store
    }

    /// Of `ids`, those that are neither here nor on their way unasked.
    pub fn to_fetch(&self, ids: &[ObjectId]) -> Vec<ObjectId> {
        ids.iter()
            .filter(|id| !self.ready(id) && !self.expected.contains(id))
            .copied()
            .collect()
    }

    /// Registers a waiter: for `id` alone, or (`None`) for any arrival.
    pub fn watch(&mut self, id: Option<ObjectId>) {
        match id {
            Some(id) => *self.watched.entry(id).or_insert(0) += 1,
            None => self.general += 1,
        }
    }

    /// Undoes one [`Self::watch`].
    pub fn unwatch(&mut self, id: Option<ObjectId>) {
        match id {
            Some(id) => {
                if let Some(count) = self.watched.get_mut(&id) {
                    *count -= 1;
                    if *count == 0 {
                        self.watched.remove(&id);
                    }
                }
            }
            None => self.general -= 1,
        }
    }

    #[cfg(test)]
    pub fn watched(&self, id: &ObjectId) -> bool {
        self.watched.contains_key(id)
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
    fn expected_results_are_not_fetched_and_the_oldest_small_objects_are_forgotten() {
        let mut known = Known::default();
        let first = ObjectId::random();
        known.expect(&[first]);
        assert!(known.to_fetch(&[first]).is_empty());
        // Not sealed yet, and its seal will be seen: the store need not be asked.
        assert!(known.take_inline(&[first], &mut [None], true).is_empty());
        assert_eq!(known.take_inline(&[first], &mut [None], false), vec![0]);
        known.insert_inline(vec![object(first, 10)]);
        let mut found = vec![None];
        assert!(known.take_inline(&[first], &mut found, true).is_empty());
        assert_eq!(found[0].as_ref().map(|o| o.data().len()), Some(10));
        let big = INLINE_CACHE_BYTES / 4;
        for _ in 0..4 {
            known.insert_inline(vec![object(ObjectId::random(), big)]);
        }
        assert_eq!(known.take_inline(&[first], &mut [None], true), vec![0]);
        assert_eq!(known.to_fetch(&[first]), vec![first]);
    }

    #[test]
    fn a_deleted_object_is_asked_for_again_until_a_copy_is_sealed() {
        let mut known = Known::default();
        let (freed, kept, other) = (ObjectId::random(), ObjectId::random(), ObjectId::random());
        known.seal(freed);
        known.free(freed, true);
        known.free(kept, false);
        // The store's stale seal (before the removal) does not make it ready again.
        assert!(!known.seal_announced(freed));
        assert_eq!(known.dropped_of(&[freed, other]), vec![freed]);
        known.delete(&freed);
        assert_eq!(known.dropped_of(&[freed, kept, other]), vec![freed, kept]);
        // A new copy (an error object, or the value put again) ends it.
        assert!(!known.seal_announced(freed));
        assert!(known.ready(&freed));
        known.unfree(&kept);
        assert!(known.dropped_of(&[freed, kept, other]).is_empty());
    }

    #[test]
    fn an_object_freed_while_held_is_its_error_until_its_removal() {
        let mut known = Known::default();
        let id = ObjectId::random();
        known.seal(id);
        known.free(id, true);
        known.freed_in_use(id, b"ERROR:OBJECT_FREED".to_vec(), "freed".into());
        assert!(known.ready(&id));
        let mut found = vec![None];
        assert!(known.take_inline(&[id], &mut found, true).is_empty());
        assert_eq!(
            found[0].as_ref().map(|o| o.data().to_vec()),
            Some(b"freed".to_vec())
        );
        // Removed: the raylet is asked (it finds it freed, or a copy elsewhere).
        known.delete(&id);
        assert!(!known.ready(&id));
        assert_eq!(known.dropped_of(&[id]), vec![id]);
    }

    #[test]
    fn only_a_watched_arrival_or_a_general_waiter_counts_as_awaited() {
        let mut known = Known::default();
        let (watched, other) = (ObjectId::random(), ObjectId::random());
        known.watch(Some(watched));
        assert!(!known.seal(other));
        assert!(known.insert_inline(vec![object(watched, 1)]));
        known.unwatch(Some(watched));
        assert!(!known.waiters());
        known.watch(None);
        assert!(known.seal(ObjectId::random()));
        known.unwatch(None);
        assert!(!known.waiters());
    }
}
