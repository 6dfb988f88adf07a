//! An object's own segment as the store holds it (see [`crate::memory`]): written by one
//! party before its seal, sealed against writes for good at the seal, read by everyone
//! through read-only descriptors after it. A large one is made of several files end to
//! end (see [`rayd_plasma_client::parts`]). The store keeps one descriptor per file
//! (read-write until the seal, read-only after it), and hands out duplicates.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::memory::{self, Mapping, MemoryError};

/// A segment of its own, holding one object from offset 0.
#[derive(Debug)]
pub struct Segment {
    id: u64,
    /// Its files, end to end: read-write until the seal (for the creator and the store's
    /// own writes), read-only after it (for readers).
    fds: Mutex<Vec<OwnedFd>>,
    /// Their lengths, in the same order.
    parts: Vec<u64>,
    size: u64,
    /// Whether its pages were allocated when it was made (see [`Self::prepared`]).
    prepared: bool,
    /// The store's read-only mapping (spills, transfers), made when first needed.
    map: OnceLock<Arc<Mapping>>,
}

impl Segment {
    /// Wraps a segment made of `parts` (files and their lengths, end to end) under
    /// protocol ID `id`, its pages allocated already when `prepared`.
    pub fn new(id: u64, parts: Vec<(OwnedFd, u64)>, prepared: bool) -> Self {
        let (fds, parts): (Vec<OwnedFd>, Vec<u64>) = parts.into_iter().unzip();
        Self {
            id,
            fds: Mutex::new(fds),
            size: parts.iter().sum(),
            parts,
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

    /// The lengths of its files, end to end.
    pub fn parts(&self) -> &[u64] {
        &self.parts
    }

    fn fds(&self) -> MutexGuard<'_, Vec<OwnedFd>> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Duplicates of its descriptors: read-write before the seal (for the creator and
    /// the store's own writes), read-only after it.
    pub fn dup_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.fds().iter().map(OwnedFd::try_clone).collect()
    }

    /// Lends its files, each with its length, to `f` (read-write before the seal,
    /// read-only after it).
    pub fn with_parts<R>(&self, f: impl FnOnce(&[(BorrowedFd<'_>, u64)]) -> R) -> R {
        let fds = self.fds();
        let parts: Vec<_> = fds
            .iter()
            .map(AsFd::as_fd)
            .zip(self.parts.iter().copied())
            .collect();
        f(&parts)
    }

    /// Seals it against writes for good (refused while a writable mapping of it exists)
    /// and keeps read-only descriptors in place of the read-write ones.
    pub fn seal(&self) -> Result<(), MemoryError> {
        let mut fds = self.fds();
        for fd in fds.iter() {
            memory::seal_against_writes(fd.as_fd())?;
        }
        // All swapped or none: a seal tried again needs the writable descriptors (adding
        // a seal through a read-only one is refused).
        let read_only = fds
            .iter()
            .map(|fd| memory::reopen_read_only(fd.as_fd()))
            .collect::<Result<Vec<_>, _>>()?;
        *fds = read_only;
        Ok(())
    }

    /// The store's read-only mapping of it.
    pub fn read_map(&self) -> Result<Arc<Mapping>, MemoryError> {
        if let Some(map) = self.map.get() {
            return Ok(map.clone());
        }
        let map = Arc::new(self.map_parts(false, false)?);
        Ok(self.map.get_or_init(|| map).clone())
    }

    /// A writable mapping for the store's own writes before the seal (dropped before it).
    pub fn write_map(&self) -> Result<Mapping, MemoryError> {
        self.map_parts(true, true)
    }

    fn map_parts(&self, writable: bool, populate: bool) -> Result<Mapping, MemoryError> {
        self.with_parts(|parts| {
            let parts: Vec<_> = parts
                .iter()
                .map(|(fd, len)| (*fd, usize::try_from(*len).unwrap_or(usize::MAX)))
                .collect();
            Ok(Mapping::of_parts(&parts, writable, populate)?)
        })
    }
}
