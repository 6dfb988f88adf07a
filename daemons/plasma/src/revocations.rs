//! The revocation page: one shared page of counters through which the store tells clients,
//! without a message, that objects they retained have left memory.
//!
//! A client that released its last buffer of an object in a segment of its own may keep
//! its read-only mapping ("retain" it, `Release.retain`) and serve a later get of it
//! without a round trip to the store: a repeated `ray.get` of a 100 MB array cost a
//! request, a descriptor passed, a mapping made and unmade (~80 µs), and costs a look at
//! this page. The client holds no pin meanwhile, so the store spills and deletes as if it
//! were not there; when an object some client retains leaves memory (or is freed while
//! others read it), the store bumps that client's counter, and the client, seeing it move,
//! unmaps everything it retained and asks the store again. A segment is never reused for
//! other bytes, so a client that looked just before a bump still reads the right bytes.
//!
//! Clients map the page read-only (sealed against every other writer, like the arena).
//! Counters are per client slot (`client % SLOTS`): two clients sharing one only see
//! each other's bumps, which cost a round trip, never a wrong answer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::memory::{self, Backing, Mapping, MemoryError};

/// Counters on the page.
pub const SLOTS: u64 = 512;

const PAGE: usize = (SLOTS as usize) * std::mem::size_of::<u64>();

/// The page, as the store holds it.
#[derive(Debug)]
pub struct Revocations {
    fd: OwnedFd,
    map: Mapping,
}

impl Revocations {
    /// A page of zeroed counters from `backing`, writable by the store alone.
    pub fn new(backing: &Backing) -> Result<Self, MemoryError> {
        let (fd, size) = backing.create(PAGE, true)?;
        let map = Mapping::new(fd.as_fd(), size, true, true)?;
        memory::seal_future_writes(fd.as_fd())?;
        Ok(Self { fd, map })
    }

    /// Its descriptor (read-write: clients get a read-only reopening of it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size of the page in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The slot of client `client`.
    pub fn slot(client: u64) -> u32 {
        (client % SLOTS) as u32
    }

    /// Bumps the counter of `slot`.
    pub fn bump(&self, slot: u32) {
        self.counter(slot).fetch_add(1, Ordering::Release);
    }

    /// The counter of `slot` now.
    pub fn read(&self, slot: u32) -> u64 {
        self.counter(slot).load(Ordering::Acquire)
    }

    fn counter(&self, slot: u32) -> &AtomicU64 {
        let index = (u64::from(slot) % SLOTS) as usize;
        // SAFETY: the page is PAGE bytes, page-aligned (so 8-byte aligned), mapped for
        // the store's life; index < SLOTS keeps the counter inside it. Clients only read
        // it, and every access here is atomic.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>().add(index) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_reads_the_counters_the_store_bumps_and_cannot_write_them() {
        let page = Revocations::new(&Backing::Memfd).unwrap();
        let reader = memory::reopen_read_only(page.fd()).unwrap();
        let view = Mapping::new(reader.as_fd(), PAGE, false, false).unwrap();
        page.bump(Revocations::slot(3));
        page.bump(Revocations::slot(3 + SLOTS));
        // SAFETY: the slot lies inside the page; the read is atomic.
        let seen = unsafe { &*view.as_ptr().cast::<AtomicU64>().add(3) }.load(Ordering::Acquire);
        assert_eq!(seen, 2);
        assert_eq!(page.read(4), 0);
        assert!(
            Mapping::new(page.fd(), PAGE, true, false).is_err(),
            "a second writer"
        );
    }
}
