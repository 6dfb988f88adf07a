//! Small results held in the raylet's memory instead of plasma, and who waits for objects
//! that are not local yet.
//!
//! A result of at most `INLINE_RESULT_MAX` comes in the worker's `TaskDone`; the raylet
//! keeps it (up to [`INLINE_STORE_BYTES`], the oldest put into plasma beyond that), sends
//! it to the driver that submitted the task and inlines it into tasks that take it. A
//! connection that fetched an object before it was local is remembered here until it is.

use std::collections::HashMap;
use std::sync::Arc;

use rayd_common::id::ObjectId;
use rayd_common::inline::InlineCache;
use rayd_common::proto::raylet::v1 as pb;

use super::ConnId;

/// Bytes of small results kept in memory; beyond this the oldest are put into plasma.
pub const INLINE_STORE_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct InlineResults {
    memory: InlineCache,
    /// Objects that connections fetched before they were local.
    interest: HashMap<ObjectId, Vec<ConnId>>,
}

impl InlineResults {
    pub fn new(limit: usize) -> Self {
        Self {
            memory: InlineCache::new(limit),
            interest: HashMap::new(),
        }
    }

    pub fn get(&self, id: &ObjectId) -> Option<&Arc<pb::InlineObject>> {
        self.memory.get(id)
    }

    pub fn remove(&mut self, id: &ObjectId) -> Option<Arc<pb::InlineObject>> {
        self.memory.remove(id)
    }

    /// Keeps `object`; returns those pushed out to make room (for plasma).
    pub fn insert(
        &mut self,
        id: ObjectId,
        object: Arc<pb::InlineObject>,
    ) -> Vec<(ObjectId, Arc<pb::InlineObject>)> {
        self.memory.insert(id, object)
    }

    /// `conn` waits for `id`.
    pub fn add_interest(&mut self, id: ObjectId, conn: ConnId) {
        let waiting = self.interest.entry(id).or_default();
        if !waiting.contains(&conn) {
            waiting.push(conn);
        }
    }

    /// Who waited for `id` (they are forgotten).
    pub fn take_interest(&mut self, id: &ObjectId) -> Vec<ConnId> {
        self.interest.remove(id).unwrap_or_default()
    }

    /// A connection went away: what it fetched is nobody's business any more.
    pub fn forget(&mut self, conn: ConnId) {
        self.interest.retain(|_, waiting| {
            waiting.retain(|c| *c != conn);
            !waiting.is_empty()
        });
    }
}
