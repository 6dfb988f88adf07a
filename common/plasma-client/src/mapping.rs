//! Mappings of the store's shared memory segments, as the store and its clients hold them.
//!
//! The memory model (what a segment is, who writes what when) is the store's, described in
//! `rayd-plasma`'s `memory` module; the rules that matter to a mapping's user are on
//! [`Mapping::slice`] and [`Mapping::slice_mut`]: bytes are read only once sealed (or by
//! their one writer), and written only by the creator of an unsealed object.

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A segment could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {size} bytes of shared memory: {source}")]
pub struct MapError {
    /// Bytes asked for.
    pub size: usize,
    #[source]
    pub source: nix::Error,
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Allocates every page of the segment file `file`, `len` bytes long, before it is
/// mapped writable: a page that could not be had later would be a SIGBUS on the write
/// that touches it, where this fails cleanly.
pub fn allocate(file: &std::fs::File, len: u64) -> nix::Result<()> {
    let len = i64::try_from(len).map_err(|_| nix::Error::EFBIG)?;
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
}

/// A `MAP_SHARED` mapping of a whole segment, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; moving it between
// threads moves nothing but the address. Concurrent access rules are those of the module
// doc (one writer per unsealed object, readers only after the seal).
unsafe impl Send for Mapping {}
// SAFETY: as for Send; `&Mapping` only exposes raw pointers and read-only slices.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, writable or read-only. `populate` builds
    /// the page tables at once (cheaper than a fault per page for memory about to be
    /// written whole).
    pub fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
        populate: bool,
    ) -> Result<Self, MapError> {
        let size = NonZeroUsize::new(len).ok_or(MapError {
            size: len,
            source: nix::Error::EINVAL,
        })?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        let mut flags = MapFlags::MAP_SHARED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        // SAFETY: a fresh mapping at an address the kernel picks aliases no Rust object;
        // the file is never shrunk (sealed, or owned by the store that never truncates),
        // so every mapped page stays backed for the mapping's life.
        let ptr = unsafe { mmap(None, size, prot, flags, fd, 0) }
            .map_err(|source| MapError { size: len, source })?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    /// Maps the files of a segment made of parts (see [`crate::parts`]) end to end, as one
    /// range: each part at the offset where the ones before it end. Every part but the
    /// last must be a whole number of pages long.
    pub fn of_parts(
        parts: &[(BorrowedFd<'_>, usize)],
        writable: bool,
        populate: bool,
    ) -> Result<Self, MapError> {
        if let [(fd, len)] = parts {
            return Self::new(*fd, *len, writable, populate);
        }
        let total = parts
            .iter()
            .try_fold(0usize, |sum, (_, len)| sum.checked_add(*len));
        let page = page_size();
        let invalid = |size| MapError {
            size,
            source: nix::Error::EINVAL,
        };
        // Aligned for huge pages where the range is large enough to hold one (see
        // `parts::HUGE_ALIGN`): the range reserved has room to be moved up to a boundary.
        let len = total.ok_or(invalid(usize::MAX))?;
        let align = if len >= crate::parts::HUGE_ALIGN as usize {
            (crate::parts::HUGE_ALIGN as usize).max(page)
        } else {
            page
        };
        let Some(size) = len
            .checked_add(align)
            .and_then(|reserved| NonZeroUsize::new(reserved - page))
            .filter(|_| len > 0)
        else {
            return Err(invalid(len));
        };
        if parts.is_empty()
            || parts[..parts.len() - 1]
                .iter()
                .any(|(_, len)| *len == 0 || len % page != 0)
        {
            return Err(invalid(len));
        }
        // The range is reserved first (no access, no memory), then each part replaces its
        // share of it: nothing else can be mapped in between.
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases nothing.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|source| MapError { size: len, source })?;
        // The reservation's slack before the aligned start and past the range's last page
        // goes back at once.
        let start = (base.as_ptr() as usize).next_multiple_of(align);
        let end = start + len.next_multiple_of(page);
        let reserved_end = base.as_ptr() as usize + size.get().next_multiple_of(page);
        for (from, to) in [(base.as_ptr() as usize, start), (end, reserved_end)] {
            if let (Some(at), true) = (NonNull::new(from as *mut libc::c_void), to > from) {
                // SAFETY: the slack lies inside the reservation just made, which nothing
                // else refers to.
                let _ = unsafe { munmap(at, to - from) };
            }
        }
        let mapping = Self {
            ptr: NonNull::new(start as *mut u8).ok_or(invalid(len))?,
            len,
            writable,
        };
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        let mut flags = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        let mut at = 0;
        for (fd, part_len) in parts {
            let Some(part_size) = NonZeroUsize::new(*part_len) else {
                return Err(invalid(len));
            };
            let address = NonZeroUsize::new(mapping.ptr.as_ptr() as usize + at);
            // SAFETY: the target lies inside the range reserved above, which this value
            // owns and no Rust object aliases; the file is never shrunk while mapped (as
            // in `new`).
            unsafe { mmap(address, part_size, prot, flags, *fd, 0) }
                .map_err(|source| MapError { size: len, source })?;
            at += part_len;
        }
        Ok(mapping)
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether writes through this mapping are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Builds the page tables of `[offset, offset + len)` for writing in one system
    /// call (instead of a fault per page); a hint, so failures are ignored.
    pub fn prefault_for_write(&self, offset: u64, len: u64) {
        let _ = self.populate_for_write(offset, len);
    }

    /// Faults in the pages of `[offset, offset + len)` for writing, or says why not (a
    /// page the file cannot have, where memory ran out, is an error here rather than a
    /// SIGBUS on the write that would touch it).
    pub fn populate_for_write(&self, offset: u64, len: u64) -> Result<(), nix::Error> {
        if !self.writable || !self.contains(offset, len) {
            return Err(nix::Error::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let page = page_size() as u64;
        let start = offset - offset % page;
        let end = (offset + len).min(self.len as u64);
        // SAFETY: the range lies inside this mapping (checked above); MADV_POPULATE_WRITE
        // only faults pages in, as writing them would, and changes no contents.
        let rc = unsafe {
            libc::madvise(
                self.as_ptr().add(start as usize).cast(),
                (end - start) as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(nix::Error::last())
        }
    }

    /// Whether `[offset, offset + len)` lies inside the mapping.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.len as u64)
    }

    /// The bytes at `[offset, offset + len)`, or `None` when outside.
    ///
    /// # Safety
    /// No one may write these bytes while the slice lives: the range must be a sealed
    /// object (or one only the caller writes), pinned for the slice's life.
    pub unsafe fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if !self.contains(offset, len) {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above); the caller guarantees
        // no concurrent writer.
        Some(unsafe {
            std::slice::from_raw_parts(self.as_ptr().add(offset as usize), len as usize)
        })
    }

    /// The bytes at `[offset, offset + len)` to write, or `None` when outside or the
    /// mapping is read-only.
    ///
    /// # Safety
    /// The caller must be the only one accessing these bytes while the slice lives
    /// (the creator of an unsealed object).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: u64, len: u64) -> Option<&mut [u8]> {
        if !self.writable || !self.contains(offset, len) {
            return None;
        }
        // SAFETY: inside a writable mapping (checked above); the caller guarantees
        // exclusive access to the range.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.as_ptr().add(offset as usize), len as usize)
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and slices borrowed from the
        // mapping cannot outlive it.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            log::warn!(error:% = e; "cannot unmap shared memory");
        }
    }
}
