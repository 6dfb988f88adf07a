//! Objects this client released but keeps mapped, to serve a get of them again without a
//! round trip to the store (see the store's `revocations` module for the protocol).
//!
//! Only objects in a segment of their own are retained: their bytes never change and
//! their segment is never reused, so a mapping kept past the object's end in the store
//! still shows the right bytes (its pages live until it is unmapped). The store tells the
//! client that a retained object left memory by bumping the client's counter on the
//! revocation page; the client then forgets everything it retained.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayd_common::id::ObjectId;

use crate::mapping::Mapping;

/// Objects retained at most (most recently released first kept).
pub const MAX_OBJECTS: usize = 16;

/// This client's counter on the store's revocation page.
#[derive(Debug)]
pub struct Counter {
    page: Arc<Mapping>,
    offset: usize,
}

impl Counter {
    /// The counter of `slot` on `page`; `None` when the page does not hold it.
    pub fn new(page: Arc<Mapping>, slot: u32) -> Option<Self> {
        let offset = usize::try_from(slot).ok()? * std::mem::size_of::<u64>();
        page.contains(offset as u64, std::mem::size_of::<u64>() as u64)
            .then_some(Self { page, offset })
    }

    /// Its value now.
    pub fn read(&self) -> u64 {
        // SAFETY: the counter lies inside the mapping (checked in new), which lives as
        // long as self; the offset is a multiple of 8 from a page-aligned start; the
        // store only changes it atomically.
        let counter = unsafe { &*self.page.as_ptr().add(self.offset).cast::<AtomicU64>() };
        counter.load(Ordering::Acquire)
    }
}

/// The retained objects, oldest first, and the counter value they are valid for.
#[derive(Debug, Default)]
pub struct Retained {
    order: VecDeque<(ObjectId, u64)>,
    bytes: u64,
    seen: u64,
}

impl Retained {
    /// Adds `id` of `size` bytes, released just now.
    pub fn add(&mut self, id: ObjectId, size: u64) {
        self.order.push_back((id, size));
        self.bytes += size;
    }

    /// Takes `id` out (it is read again); false when it was not retained.
    pub fn take(&mut self, id: ObjectId) -> bool {
        let Some(index) = self.order.iter().position(|(held, _)| *held == id) else {
            return false;
        };
        if let Some((_, size)) = self.order.remove(index) {
            self.bytes -= size;
        }
        true
    }

    /// The oldest object while more than [`MAX_OBJECTS`] or `max_bytes` are retained.
    pub fn pop_excess(&mut self, max_bytes: u64) -> Option<ObjectId> {
        if self.order.len() <= MAX_OBJECTS && self.bytes <= max_bytes {
            return None;
        }
        let (id, size) = self.order.pop_front()?;
        self.bytes -= size;
        Some(id)
    }

    /// Whether the counter moved since the last call that saw it (everything retained
    /// then has to go); records `now`.
    pub fn revoked(&mut self, now: u64) -> bool {
        std::mem::replace(&mut self.seen, now) != now
    }

    /// Takes every retained object out.
    pub fn drain(&mut self) -> Vec<ObjectId> {
        self.bytes = 0;
        self.order.drain(..).map(|(id, _)| id).collect()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_slice(&[n; 20]).unwrap()
    }

    #[test]
    fn the_oldest_go_first_beyond_the_bounds() {
        let mut retained = Retained::default();
        retained.add(id(1), 60);
        retained.add(id(2), 60);
        assert_eq!(retained.pop_excess(100), Some(id(1)));
        assert_eq!(retained.pop_excess(100), None);
        for n in 0..MAX_OBJECTS as u8 {
            retained.add(id(10 + n), 1);
        }
        assert_eq!(retained.pop_excess(1000), Some(id(2)));
        assert_eq!(retained.pop_excess(1000), None);
        assert!(retained.take(id(10)));
        assert!(!retained.take(id(10)));
        assert_eq!(retained.drain().len(), MAX_OBJECTS - 1);
        assert!(retained.is_empty());
    }

    #[test]
    fn a_moved_counter_is_seen_once() {
        let mut retained = Retained::default();
        assert!(!retained.revoked(0));
        assert!(retained.revoked(3));
        assert!(!retained.revoked(3));
    }
}
