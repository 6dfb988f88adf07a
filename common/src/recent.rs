//! A set that remembers at most a fixed number of entries, forgetting the oldest first:
//! for "recently seen" facts that must not grow without bound.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// A bounded set; entries go oldest-inserted first once there are more than `max`.
#[derive(Debug, Clone)]
pub struct RecentSet<T> {
    max: usize,
    members: HashSet<T>,
    /// Insertion order; entries removed since are skipped when met (so it holds at most
    /// twice `max` before it is trimmed).
    order: VecDeque<T>,
}

impl<T: Copy + Eq + Hash> RecentSet<T> {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            members: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Adds `item` (a member already keeps its place); forgets the oldest beyond the bound.
    pub fn insert(&mut self, item: T) {
        if self.members.insert(item) {
            self.order.push_back(item);
        }
        while self.members.len() > self.max || self.order.len() > 2 * self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.members.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn remove(&mut self, item: &T) {
        self.members.remove(item);
    }

    pub fn contains(&self, item: &T) -> bool {
        self.members.contains(item)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_removed_ones_do_not_count() {
        let mut set = RecentSet::new(3);
        for i in 0..3 {
            set.insert(i);
        }
        set.insert(1); // already there: keeps its place
        set.insert(3);
        assert!(!set.contains(&0), "the oldest went");
        assert!((1..=3).all(|i| set.contains(&i)));
        set.remove(&2);
        set.insert(4);
        assert_eq!(set.len(), 3);
        assert!(set.contains(&1), "a removal made room: nothing else went");
        // Removals and inserts without end keep the order list bounded.
        for i in 10..1000 {
            set.insert(i);
            set.remove(&i);
        }
        assert!(set.order.len() <= 6, "{}", set.order.len());
        assert!(set.len() <= 3);
    }
}
