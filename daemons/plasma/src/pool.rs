//! Segments prepared ahead of demand: a few files whose pages are allocated (and, made
//! while the store was idle, written once) already, so that a large create takes one and
//! cuts it to size instead of waiting for the kernel to provide fresh pages (a sealed
//! segment cannot be reused: its memory goes with it). The
//! background thread of [`crate::prefault`] makes them, one at a time, in the sizes of the
//! latest large creates (in a large store, one or two of [`POOL_START`] before any), as long
//! as the budget has room; a create that needs the room sheds them first. Pure
//! bookkeeping; the store holds it under its lock.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

/// Objects from this size on take segments from the pool (smaller ones cost little to
/// make on the spot).
pub const POOL_MIN: u64 = 1 << 20;
/// Pool segments are made in multiples of this, at least (see [`size_class`]).
const GRANULE: u64 = 64 << 10;
/// How many of the latest large creates the pool prepares for.
const RECENT: usize = 2;
/// Most bytes the pool holds.
pub const POOL_MAX: u64 = 256 << 20;
/// The size the pool prepares from the start, before any large create: the first large
/// put of a session then finds memory ready too. Only for stores of at least
/// [`START_MIN_CAPACITY`] bytes, where it is a small part of the budget.
pub const POOL_START: u64 = 128 << 20;
/// See [`POOL_START`].
pub const START_MIN_CAPACITY: u64 = 1 << 30;
/// Stores of at least this many bytes prepare two segments of [`POOL_START`] from the
/// start, so that two large puts back to back find memory ready.
pub const START_TWO_CAPACITY: u64 = 4 << 30;

/// The prepared segments.
#[derive(Debug, Default)]
pub struct Pool {
    /// Segments (their files) and their sizes.
    entries: Vec<(Vec<OwnedFd>, u64)>,
    bytes: u64,
    /// Sizes (rounded up to the granule) of the latest large creates.
    recent: VecDeque<u64>,
    /// `recent` holds only [`POOL_START`], no create's size: the first create replaces it.
    seeded: bool,
}

impl Pool {
    /// An empty pool for a store of `capacity` bytes, which prepares [`POOL_START`]
    /// bytes ahead of the first large create where the store is large enough.
    pub fn for_capacity(capacity: u64) -> Self {
        let mut pool = Self::default();
        if capacity >= START_MIN_CAPACITY {
            pool.recent.push_back(POOL_START);
            pool.seeded = true;
        }
        if capacity >= START_TWO_CAPACITY {
            pool.recent.push_back(POOL_START);
        }
        pool
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes the smallest segment of at least `size` bytes and at most twice that (a
    /// small object cutting a large segment would waste the work that prepared it and
    /// leave the next large create without one), and notes the size as one to prepare
    /// for.
    pub fn take(&mut self, size: u64) -> Option<(Vec<OwnedFd>, u64)> {
        if size < POOL_MIN {
            return None;
        }
        if std::mem::take(&mut self.seeded) {
            self.recent.clear();
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(size_class(size));
        let index = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (_, len))| *len >= size && *len / 2 <= size)
            .min_by_key(|(_, (_, len))| *len)
            .map(|(i, _)| i)?;
        let entry = self.entries.swap_remove(index);
        self.bytes -= entry.1;
        Some(entry)
    }

    /// The size of the next segment worth preparing, given `room` bytes left in the
    /// budget: one of each recent size for each time it was asked for lately.
    pub fn wanted(&self, room: u64) -> Option<u64> {
        let mut recent: Vec<u64> = self.recent.iter().copied().collect();
        recent.sort_unstable();
        let mut have: Vec<u64> = self.entries.iter().map(|(_, len)| *len).collect();
        have.sort_unstable();
        // A size asked for more often than prepared.
        let mut have = have.into_iter().peekable();
        for size in recent {
            while have.next_if(|&len| len < size).is_some() {}
            if have.next_if_eq(&size).is_none() {
                return (size <= room && self.bytes + size <= POOL_MAX).then_some(size);
            }
        }
        None
    }

    /// Adds a prepared segment of `size` bytes (its files, end to end).
    pub fn add(&mut self, files: Vec<OwnedFd>, size: u64) {
        self.entries.push((files, size));
        self.bytes += size;
    }

    /// Drops the largest segment (its memory goes back to the system); false when empty.
    pub fn shed(&mut self) -> bool {
        let Some(index) = self
            .entries
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, len))| *len)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let (_, len) = self.entries.swap_remove(index);
        self.bytes -= len;
        true
    }
}

/// The size a segment for an object of `size` bytes is prepared in: rounded up by at
/// most about 1/32, so that objects of nearly one size share one class and a taken
/// segment is cut by little (the pages cut off were zeroed for nothing).
fn size_class(size: u64) -> u64 {
    let unit = (size.next_power_of_two() / 32).max(GRANULE);
    size.div_ceil(unit) * unit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Vec<OwnedFd> {
        vec![OwnedFd::from(tempfile::tempfile().unwrap())]
    }

    #[test]
    fn a_large_store_prepares_a_segment_before_any_create() {
        assert_eq!(
            Pool::for_capacity(START_MIN_CAPACITY - 1).wanted(u64::MAX),
            None
        );
        let mut pool = Pool::for_capacity(START_MIN_CAPACITY);
        assert_eq!(pool.wanted(u64::MAX), Some(POOL_START));
        pool.add(fd(), POOL_START);
        assert_eq!(pool.wanted(u64::MAX), None);
        let (_, len) = pool.take(100 << 20).unwrap();
        assert_eq!(len, POOL_START, "a smaller create takes it (and cuts it)");
        assert_eq!(pool.wanted(u64::MAX), Some(100 << 20), "then its own size");
        pool.add(fd(), 100 << 20);
        assert_eq!(pool.wanted(u64::MAX), None, "and no other");
    }

    #[test]
    fn a_store_of_four_gib_prepares_two_segments_before_any_create() {
        let mut pool = Pool::for_capacity(START_TWO_CAPACITY);
        assert_eq!(pool.wanted(u64::MAX), Some(POOL_START));
        pool.add(fd(), POOL_START);
        assert_eq!(pool.wanted(u64::MAX), Some(POOL_START));
        pool.add(fd(), POOL_START);
        assert_eq!(pool.wanted(u64::MAX), None);
        // Two puts back to back each find one.
        assert!(pool.take(100 << 20).is_some());
        assert!(pool.take(100 << 20).is_some());
        // Room in the budget still bounds it.
        assert_eq!(
            Pool::for_capacity(START_TWO_CAPACITY).wanted(POOL_START - 1),
            None
        );
    }

    #[test]
    fn the_pool_prepares_the_sizes_asked_for_lately() {
        let mut pool = Pool::default();
        assert_eq!(pool.wanted(u64::MAX), None, "nothing asked for yet");
        assert!(
            pool.take(100 << 10).is_none(),
            "small ones are made on the spot"
        );
        assert_eq!(pool.wanted(u64::MAX), None);
        assert!(pool.take(100_000_000).is_none());
        let size = size_class(100_000_000);
        assert!(size >= 100_000_000 && size - 100_000_000 < 100_000_000 / 32);
        assert_eq!(size_class((1 << 20) + 200), (1 << 20) + (64 << 10));
        assert_eq!(pool.wanted(u64::MAX), Some(size));
        assert_eq!(pool.wanted(size - 1), None, "no room in the budget");
        pool.add(fd(), size);
        assert_eq!(pool.wanted(u64::MAX), None, "one per create");
        let (_, len) = pool.take(99_000_000).unwrap();
        assert_eq!((len, pool.bytes()), (size, 0));
        assert_eq!(pool.wanted(u64::MAX), Some(size), "asked for twice now");
        pool.add(fd(), size);
        pool.add(fd(), 4 << 20);
        assert!(pool.take(200_000_000).is_none(), "none large enough");
        assert!(
            pool.take((2 << 20) - 1).is_none(),
            "none small enough: a 4 MiB segment is not cut for under 2 MiB"
        );
        assert!(pool.take(2 << 20).is_some());
        pool.add(fd(), 4 << 20);
        assert!(pool.shed());
        assert_eq!(pool.bytes(), 4 << 20, "the largest went first");
    }
}
