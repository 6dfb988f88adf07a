//! Placement of small objects in the arena: best-fit over a free list of ranges, with
//! neighbours merged on free. Pure bookkeeping over offsets; it never touches memory.

use std::collections::{BTreeMap, BTreeSet};

/// Alignment of every allocation: a cache line, so objects never share one.
pub const ALIGN: u64 = 64;

/// Free ranges of an arena of fixed size.
#[derive(Debug)]
pub struct Allocator {
    size: u64,
    used: u64,
    /// Free ranges by offset -> length.
    by_offset: BTreeMap<u64, u64>,
    /// The same ranges by (length, offset), for best fit.
    by_size: BTreeSet<(u64, u64)>,
}

impl Allocator {
    /// An allocator over `size` bytes, all free.
    pub fn new(size: u64) -> Self {
        let size = size - size % ALIGN;
        let mut allocator = Self {
            size,
            used: 0,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
        };
        if size > 0 {
            allocator.insert_free(0, size);
        }
        allocator
    }

    /// The bytes an allocation of `len` really takes.
    pub fn rounded(len: u64) -> u64 {
        len.max(1).div_ceil(ALIGN) * ALIGN
    }

    /// Bytes in use, alignment included.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Places `len` bytes; returns the offset, or `None` when no free range is large
    /// enough.
    pub fn allocate(&mut self, len: u64) -> Option<u64> {
        let len = Self::rounded(len);
        let &(free_len, offset) = self.by_size.range((len, 0)..).next()?;
        self.remove_free(offset, free_len);
        if free_len > len {
            self.insert_free(offset + len, free_len - len);
        }
        self.used += len;
        Some(offset)
    }

    /// Returns the range `[offset, offset + len)` placed by [`Self::allocate`].
    pub fn free(&mut self, offset: u64, len: u64) {
        let len = Self::rounded(len);
        self.used -= len;
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&prev, &prev_len)) = self.by_offset.range(..offset).next_back() {
            if prev + prev_len == start {
                self.remove_free(prev, prev_len);
                start = prev;
            }
        }
        if let Some(&next_len) = self.by_offset.get(&end) {
            self.remove_free(end, next_len);
            end += next_len;
        }
        self.insert_free(start, end - start);
    }

    fn insert_free(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
    }

    fn remove_free(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut a = Allocator::new(1024);
        let x = a.allocate(1).unwrap();
        let y = a.allocate(100).unwrap();
        let z = a.allocate(64).unwrap();
        assert_eq!([x % ALIGN, y % ALIGN, z % ALIGN], [0, 0, 0]);
        assert!(x + 64 <= y && y + 128 <= z || z + 64 <= x || y + 128 <= x);
        assert_eq!(a.used(), 256);
    }

    #[test]
    fn frees_merge_so_the_whole_arena_is_reusable() {
        let mut a = Allocator::new(640);
        let offsets: Vec<u64> = (0..10).map(|_| a.allocate(64).unwrap()).collect();
        assert_eq!(a.allocate(1), None, "full");
        for &o in offsets.iter().step_by(2) {
            a.free(o, 64);
        }
        assert_eq!(a.allocate(128), None, "fragmented");
        for &o in offsets.iter().skip(1).step_by(2) {
            a.free(o, 64);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.allocate(640), Some(0), "merged back into one range");
    }

    #[test]
    fn best_fit_keeps_large_ranges() {
        let mut a = Allocator::new(64 * 10);
        let small = a.allocate(64).unwrap();
        let _gap = a.allocate(64).unwrap();
        a.free(small, 64);
        // A 64-byte request takes the 64-byte hole, not the big tail.
        assert_eq!(a.allocate(64), Some(small));
        assert!(a.allocate(64 * 8).is_some());
    }
}
