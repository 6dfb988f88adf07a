//! Small objects held in memory instead of plasma: the size limit under which a result
//! travels in messages, and the bounded cache that drivers and the raylet keep them in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::id::ObjectId;
use crate::proto::raylet::v1 as pb;

/// Largest result (data + metadata) that a worker sends in its `TaskDone` message instead
/// of storing it in plasma: one message replaces a store round trip and the reader's
/// mapping, which is what costs for small values.
pub const INLINE_RESULT_MAX: usize = 100 * 1024;

/// Small objects kept in memory up to a number of bytes, oldest forgotten first: a driver's
/// results that arrived, and the raylet's results not in plasma.
#[derive(Debug)]
pub struct InlineCache {
    objects: HashMap<ObjectId, Arc<pb::InlineObject>>,
    /// Insertion order, for forgetting the oldest; may name objects removed since.
    order: VecDeque<ObjectId>,
    bytes: usize,
    limit: usize,
}

fn size(object: &pb::InlineObject) -> usize {
    object.data.len() + object.metadata.len()
}

impl InlineCache {
    pub fn new(limit: usize) -> Self {
        Self {
            objects: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn get(&self, id: &ObjectId) -> Option<&Arc<pb::InlineObject>> {
        self.objects.get(id)
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    pub fn remove(&mut self, id: &ObjectId) -> Option<Arc<pb::InlineObject>> {
        let object = self.objects.remove(id)?;
        self.bytes -= size(&object);
        Some(object)
    }

    /// Keeps `object` (replacing one with the same ID) and returns those forgotten to stay
    /// within the limit, oldest first.
    pub fn insert(
        &mut self,
        id: ObjectId,
        object: Arc<pb::InlineObject>,
    ) -> Vec<(ObjectId, Arc<pb::InlineObject>)> {
        self.bytes += size(&object);
        match self.objects.insert(id, object) {
            Some(old) => self.bytes -= size(&old),
            None => self.order.push_back(id),
        }
        let mut forgotten = Vec::new();
        while self.bytes > self.limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(object) = self.remove(&oldest) {
                forgotten.push((oldest, object));
            }
        }
        if self.order.len() > 2 * self.objects.len() + 1024 {
            let objects = &self.objects;
            self.order.retain(|id| objects.contains_key(id));
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(len: usize) -> Arc<pb::InlineObject> {
        Arc::new(pb::InlineObject {
            data: vec![0; len].into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_oldest_are_forgotten_beyond_the_limit() {
        let mut cache = InlineCache::new(100);
        let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::random()).collect();
        assert!(cache.insert(ids[0], object(40)).is_empty());
        assert!(cache.insert(ids[1], object(40)).is_empty());
        let forgotten = cache.insert(ids[2], object(40));
        assert_eq!(
            forgotten.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![ids[0]]
        );
        assert!(!cache.contains(&ids[0]) && cache.contains(&ids[1]) && cache.contains(&ids[2]));
        // Replacing keeps the count of bytes right.
        assert!(cache.insert(ids[2], object(10)).is_empty());
        assert_eq!(cache.remove(&ids[1]).map(|o| o.data.len()), Some(40));
        assert!(cache.insert(ids[0], object(90)).is_empty());
    }
}
