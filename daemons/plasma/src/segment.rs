//! An object's own segment as the store holds it (see [`crate::memory`]): written by one
//! party before its seal, sealed against writes for good at the seal, read by everyone
//! through a read-only descriptor after it. The store keeps one descriptor per segment
//! (read-write until the seal, read-only after it), and hands out duplicates.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::memory::{self, Mapping, MemoryError};

/// A segment of its own, holding one object from offset 0.
#[derive(Debug)]
pub struct Segment {
    id: u64,
    /// Read-write until the seal (for the creator and the store's own writes), read-only
    /// after it (for readers).
    fd: Mutex<OwnedFd>,
    size: u64,
    /// Whether its pages were allocated when it was made (see [`Self::prepared`]).
    prepared: bool,
    /// The store's read-only mapping (spills, transfers), made when first needed.
    map: OnceLock<Arc<Mapping>>,
}

impl Segment {
    /// Wraps a segment of `size` bytes under protocol ID `id`, its pages allocated
    /// already when `prepared`.
    pub fn new(id: u64, fd: OwnedFd, size: u64, prepared: bool) -> Self {
        Self {
            id,
            fd: Mutex::new(fd),
            size,
            prepared,
            map: OnceLock::new(),
        }
    }

    /// Whether its pages were allocated when it was made (a pool segment, or one
    /// reserved at once): its creator's writes then allocate none.
    pub fn prepared(&self) -> bool {
        self.prepared
    }

    /// Its ID in the protocol (never the arena's, never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its length in bytes (what a client maps).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fd(&self) -> MutexGuard<'_, OwnedFd> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A duplicate of its descriptor: read-write before the seal (for the creator and
    /// the store's own writes), read-only after it.
    pub fn dup_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd().try_clone()
    }

    /// Lends its descriptor to `f` (read-write before the seal, read-only after it).
    pub fn with_fd<R>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R) -> R {
        f(self.fd().as_fd())
    }

    /// Seals it against writes for good (refused while a writable mapping of it exists)
    /// and keeps a read-only descriptor in place of the read-write one.
    pub fn seal(&self) -> Result<(), MemoryError> {
        let mut fd = self.fd();
        memory::seal_against_writes(fd.as_fd())?;
        *fd = memory::reopen_read_only(fd.as_fd())?;
        Ok(())
    }

    /// The store's read-only mapping of it.
    pub fn read_map(&self) -> Result<Arc<Mapping>, MemoryError> {
        if let Some(map) = self.map.get() {
            return Ok(map.clone());
        }
        let map = Arc::new(Mapping::new(self.fd().as_fd(), self.len(), false, false)?);
        Ok(self.map.get_or_init(|| map).clone())
    }

    /// A writable mapping for the store's own writes before the seal (dropped before it).
    pub fn write_map(&self) -> Result<Mapping, MemoryError> {
        Ok(Mapping::new(self.fd().as_fd(), self.len(), true, true)?)
    }

    fn len(&self) -> usize {
        usize::try_from(self.size).unwrap_or(usize::MAX)
    }
}
