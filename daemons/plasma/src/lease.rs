//! Arena leases: ranges of the arena reserved for one client's small objects, so that
//! putting one costs the client no round trip: it picks the object's offset in its lease
//! and sends the bytes in a message that needs no answer; the store checks the offset and
//! copies the bytes in (clients never write the arena). A client's offsets in a lease only
//! go up, so no object can be placed over an earlier one.
//!
//! A lease is a *block* of the arena. Its client has at most one current block; asking
//! for a new one retires the old. The objects in a block count as its *live* ones until
//! they are removed (deleted, evicted, aborted); a block's range goes back to the arena
//! allocator once it is retired and has no live object left. A client that leaves has
//! its current block retired.
//!
//! A client may put an object whose ID exists already (a duplicate put): the store keeps
//! the original, and the client's copy (in its own memory) is a *shadow*, whose release
//! the store takes without a pin. Pure bookkeeping over offsets, like
//! [`crate::allocator`].

use std::collections::{BTreeMap, HashMap, HashSet};

use rayd_common::id::ObjectId;

/// Identifies one connection to the store (or an internal user such as a transfer): the
/// owner of a lease.
pub type ClientId = u64;

/// Largest lease.
pub const MAX_LEASE: u64 = 256 << 10;
/// A client puts objects up to this share of a lease into it.
pub const OBJECT_SHARE: u64 = 16;

/// One lease.
#[derive(Debug)]
struct Block {
    owner: ClientId,
    size: u64,
    live: u32,
    /// Bytes of the live objects, alignment included.
    occupied: u64,
    /// Where the next object may start.
    next: u64,
    retired: bool,
}

/// A range of the arena to give back to the allocator: (offset, length).
pub type Freed = (u64, u64);

/// Every lease of a store, keyed by the block's arena offset.
#[derive(Debug, Default)]
pub struct Leases {
    blocks: BTreeMap<u64, Block>,
    current: HashMap<ClientId, u64>,
    /// Shadows.
    shadows: HashSet<(ClientId, ObjectId)>,
}

impl Leases {
    /// Records `[offset, offset + size)` as `client`'s current lease, retiring the one
    /// before.
    pub fn grant(&mut self, client: ClientId, offset: u64, size: u64) -> Option<Freed> {
        let freed = self.retire(client);
        self.blocks.insert(
            offset,
            Block {
                owner: client,
                size,
                live: 0,
                occupied: 0,
                next: offset,
                retired: false,
            },
        );
        self.current.insert(client, offset);
        freed
    }

    /// Retires `client`'s current lease, if any.
    pub fn retire(&mut self, client: ClientId) -> Option<Freed> {
        let block = self.current.remove(&client)?;
        let entry = self.blocks.get_mut(&block)?;
        entry.retired = true;
        self.free_if_done(block)
    }

    /// Places `[offset, offset + len)` in a lease of `client`: the block, when the range
    /// lies in one and starts at or after everything placed there before.
    pub fn place(&mut self, client: ClientId, offset: u64, len: u64) -> Option<u64> {
        let (&start, block) = self.blocks.range_mut(..=offset).next_back()?;
        let end = offset.checked_add(len)?;
        if block.owner != client || offset < block.next || end > start + block.size {
            return None;
        }
        block.next = end;
        Some(start)
    }

    /// Counts one more live object of `len` bytes in `block`.
    pub fn add(&mut self, block: u64, len: u64) {
        if let Some(entry) = self.blocks.get_mut(&block) {
            entry.live += 1;
            entry.occupied += len;
        }
    }

    /// Counts a live object of `len` bytes in `block` gone.
    pub fn remove(&mut self, block: u64, len: u64) -> Option<Freed> {
        let entry = self.blocks.get_mut(&block)?;
        entry.live = entry.live.saturating_sub(1);
        entry.occupied = entry.occupied.saturating_sub(len);
        self.free_if_done(block)
    }

    /// Records that `client`'s copy of `id` is a shadow.
    pub fn add_shadow(&mut self, client: ClientId, id: ObjectId) {
        self.shadows.insert((client, id));
    }

    /// Whether `client`'s copy of `id` is a shadow.
    pub fn has_shadow(&self, client: ClientId, id: ObjectId) -> bool {
        self.shadows.contains(&(client, id))
    }

    /// Drops `client`'s shadow of `id`; false when it has none.
    pub fn remove_shadow(&mut self, client: ClientId, id: ObjectId) -> bool {
        self.shadows.remove(&(client, id))
    }

    /// Everything `client` holds goes: its shadows and its current lease.
    pub fn disconnect(&mut self, client: ClientId) -> Option<Freed> {
        self.shadows.retain(|(owner, _)| *owner != client);
        self.retire(client)
    }

    /// Bytes of leases that hold no object.
    pub fn idle_bytes(&self) -> u64 {
        self.blocks
            .values()
            .map(|b| b.size.saturating_sub(b.occupied))
            .sum()
    }

    /// Bytes of all leases.
    pub fn total_bytes(&self) -> u64 {
        self.blocks.values().map(|b| b.size).sum()
    }

    fn free_if_done(&mut self, block: u64) -> Option<Freed> {
        let entry = self.blocks.get(&block)?;
        if !entry.retired || entry.live > 0 {
            return None;
        }
        let size = entry.size;
        self.blocks.remove(&block);
        Some((block, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_freed_once_retired_and_empty() {
        let mut leases = Leases::default();
        assert_eq!(leases.grant(1, 0, 1024), None);
        assert_eq!(leases.place(2, 64, 128), None, "another client's lease");
        assert_eq!(leases.place(1, 1000, 64), None, "past the end");
        let block = leases.place(1, 64, 128).unwrap();
        assert_eq!(
            leases.place(1, 128, 64),
            None,
            "over the object placed before"
        );
        assert_eq!(leases.place(1, 0, 64), None, "before it");
        leases.add(block, 128);
        assert_eq!(leases.idle_bytes(), 1024 - 128);
        assert_eq!(leases.retire(1), None, "an object lives in it");
        assert_eq!(leases.remove(block, 128), Some((0, 1024)));
        assert_eq!(leases.idle_bytes(), 0);
    }

    #[test]
    fn shadows_go_when_released_or_the_client_leaves() {
        let mut leases = Leases::default();
        let id = ObjectId::from_bytes([1; 20]);
        leases.grant(1, 4096, 1024);
        leases.add_shadow(1, id);
        assert!(!leases.remove_shadow(2, id), "not that client's");
        assert!(leases.has_shadow(1, id));
        assert_eq!(leases.disconnect(1), Some((4096, 1024)));
        assert!(!leases.has_shadow(1, id));
    }
}
