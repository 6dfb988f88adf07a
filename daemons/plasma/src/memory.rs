//! Shared memory files and their mappings: the one place that creates, seals and maps
//! the memory that objects live in.
//!
//! # Memory model
//!
//! - Every byte of object memory is a page of a *segment*: a memfd (`memfd_create`), or,
//!   with `plasma_directory`, an unlinked file in that directory (a hugetlbfs mount with
//!   `huge_pages`). The store creates segments; clients receive their descriptors over
//!   the socket (SCM_RIGHTS) and map them with `MAP_SHARED`, so the store and every
//!   client see the same physical pages and nothing is copied between them.
//! - Segment 0 is the *arena*: one file of the store's whole size, created at start,
//!   holding every object. A client maps it once, twice over: writable (to fill objects
//!   it created) and read-only (every slice of a sealed object is handed out from this
//!   view, so a write through it faults). Segments of their own (sized exactly, sealed
//!   with memfd seals) remain in the protocol and the client, but the store no longer
//!   creates them.
//! - Pages are allocated (`fallocate`) before any client may touch them, never on first
//!   touch: the arena's in granules of [`ARENA_RESERVE_GRANULE`], ahead of demand by a
//!   background thread ([`crate::prefault`]) or at the latest when an object is first
//!   placed in one (so a large arena costs nothing at start), and never given back. A
//!   store that cannot get memory fails the create with an error instead of a client
//!   dying of SIGBUS later. A segment never grows or shrinks (memfd seals
//!   `F_SEAL_GROW | F_SEAL_SHRINK`), so a mapped range always stays backed.
//! - Every object is in the arena: sealed objects are protected from readers by their
//!   read-only mapping; a client that creates objects can write the arena and is trusted
//!   not to scribble. ([`seal_against_writes`] and [`reopen_read_only`] are from when a
//!   large object had a memfd of its own; the store no longer makes one.)
//! - A client may hold a *lease*: a range of the arena in which it places its own small
//!   objects (see [`crate::lease`]). The range stays allocated to the lease until the
//!   client has moved on from it and no object in it remains.
//! - A segment's memory goes back to the system when the store and every client have
//!   closed its descriptor and unmapped it. Arena ranges are reused by the allocator once
//!   their object is deleted, spilled or evicted; an object only ever leaves memory when
//!   no client has it pinned, and clients only read objects they hold a pin on.
//!
//! # Synchronization
//!
//! Bytes of an unsealed object are written by its creator alone; sealing happens-after
//! those writes (the seal request travels over the same socket after them), and readers
//! receive the object's location only after the seal. So no two parties ever write the
//! same bytes, and readers see complete objects.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, FallocateFlags, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
// Mappings are the clients' as much as the store's: they live in the client crate.
pub use rayd_plasma_client::mapping::{page_size, MapError, Mapping};

/// Magic number of hugetlbfs in `statfs.f_type`.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Why shared memory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create a {size}-byte shared memory file: {source}")]
    Create {
        size: usize,
        #[source]
        source: nix::Error,
    },
    #[error(
        "cannot reserve {size} bytes of shared memory (is the machine out of memory?): {source}"
    )]
    Reserve {
        size: usize,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("cannot seal a shared memory file: {0}")]
    Seal(#[source] nix::Error),
    #[error("plasma_directory {path} is unusable: {reason}")]
    Directory { path: PathBuf, reason: String },
}

/// Where segments come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memfds (the default).
    Memfd,
    /// Unlinked files in a directory; `huge_pages` when it is a hugetlbfs mount.
    Directory { path: PathBuf, huge_pages: bool },
}

impl Backing {
    /// Whether its files take `write`/`pwrite` (hugetlbfs files are only mapped).
    pub fn takes_writes(&self) -> bool {
        !matches!(
            self,
            Backing::Directory {
                huge_pages: true,
                ..
            }
        )
    }

    /// Checks that the backing can be used, and says why not in terms of the config keys.
    pub fn check(&self) -> Result<(), MemoryError> {
        let Backing::Directory { path, huge_pages } = self else {
            return Ok(());
        };
        let unusable = |reason: String| MemoryError::Directory {
            path: path.clone(),
            reason,
        };
        let stat = nix::sys::statfs::statfs(path.as_path())
            .map_err(|e| unusable(format!("cannot stat it: {e}")))?;
        // f_type is a long on some targets and an int on others.
        #[allow(clippy::useless_conversion)]
        let is_hugetlbfs = i64::from(stat.filesystem_type().0) == HUGETLBFS_MAGIC;
        if *huge_pages && !is_hugetlbfs {
            return Err(unusable(
                "huge_pages is set but it is not a hugetlbfs mount".into(),
            ));
        }
        let probe = create_file(path, self.granularity())
            .map_err(|e| unusable(format!("cannot create a file in it: {e}")))?;
        drop(probe);
        Ok(())
    }

    /// The unit that segment sizes are rounded up to.
    pub fn granularity(&self) -> usize {
        match self {
            Backing::Directory {
                huge_pages: true, ..
            } => huge_page_size(),
            _ => page_size(),
        }
    }

    /// Creates a segment of at least `size` bytes (rounded up to the granularity), with
    /// all its pages allocated when `reserve` is set (else the caller reserves ranges with
    /// [`reserve`] before handing them out). Returns the descriptor and the real size.
    pub fn create(&self, size: usize, reserve: bool) -> Result<(OwnedFd, usize), MemoryError> {
        let size = round_up(size.max(1), self.granularity());
        let fd = match self {
            Backing::Memfd => {
                let name = CString::new("rayd-plasma").unwrap_or_default();
                memfd_create(
                    name.as_c_str(),
                    MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
                )
                .map_err(|source| MemoryError::Create { size, source })?
            }
            Backing::Directory { path, .. } => create_file(path, size)?,
        };
        let len = i64::try_from(size).map_err(|_| MemoryError::Create {
            size,
            source: nix::Error::EFBIG,
        })?;
        nix::unistd::ftruncate(&fd, len).map_err(|source| MemoryError::Create { size, source })?;
        // Allocate every page now: a page that cannot be had later would be a SIGBUS in
        // whichever process touches it first.
        if reserve {
            reserve_range(fd.as_fd(), 0, size)?;
        }
        if matches!(self, Backing::Memfd) {
            fcntl(
                &fd,
                FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK),
            )
            .map_err(MemoryError::Seal)?;
        }
        Ok((fd, size))
    }
}

/// How much of the arena is reserved at once, the first time an object lands in it.
pub const ARENA_RESERVE_GRANULE: usize = 8 << 20;

/// Allocates the pages of `len` bytes at `offset` of a segment (see the module doc).
pub fn reserve_range(fd: BorrowedFd<'_>, offset: usize, len: usize) -> Result<(), MemoryError> {
    let too_big = |_| MemoryError::Reserve {
        size: len,
        source: nix::Error::EFBIG,
    };
    let start = i64::try_from(offset).map_err(too_big)?;
    let count = i64::try_from(len).map_err(too_big)?;
    nix::fcntl::fallocate(fd, FallocateFlags::empty(), start, count)
        .map_err(|source| MemoryError::Reserve { size: len, source })
}

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates and unlinks a file in `dir`, so that it lives only as long as its descriptors.
fn create_file(dir: &Path, size: usize) -> Result<OwnedFd, MemoryError> {
    let name = dir.join(format!(
        "rayd-plasma-{}-{}",
        std::process::id(),
        FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let fd = nix::fcntl::open(
        name.as_path(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|source| MemoryError::Create { size, source })?;
    let _ = nix::unistd::unlink(name.as_path());
    Ok(fd)
}

/// Seals a memfd against writes, for good. Returns whether the strict seal
/// (`F_SEAL_WRITE`) took; `false` means only new writes are refused
/// (`F_SEAL_FUTURE_WRITE`) because a writable mapping still exists somewhere.
pub fn seal_against_writes(fd: BorrowedFd<'_>) -> Result<bool, MemoryError> {
    match fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)) {
        Ok(_) => Ok(true),
        Err(nix::Error::EBUSY) => {
            let future_write = SealFlag::from_bits_retain(libc::F_SEAL_FUTURE_WRITE);
            fcntl(fd, FcntlArg::F_ADD_SEALS(future_write)).map_err(MemoryError::Seal)?;
            Ok(false)
        }
        // Files of plasma_directory take no seals; their readers get read-only descriptors.
        Err(nix::Error::EINVAL) => Ok(false),
        Err(e) => Err(MemoryError::Seal(e)),
    }
}

/// A read-only descriptor of the same file as `fd`, for readers of a sealed object.
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd, MemoryError> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| MemoryError::Create { size: 0, source })
}

/// The default huge page size (2 MiB on x86-64).
pub fn huge_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(2 << 20, |kb| kb * 1024)
}

/// `n` rounded up to a multiple of `unit` (a power of two or any positive number).
pub fn round_up(n: usize, unit: usize) -> usize {
    n.div_ceil(unit).saturating_mul(unit)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_segment_is_shared_between_mappings() {
        let (fd, size) = Backing::Memfd.create(10_000, true).unwrap();
        assert_eq!(size % page_size(), 0);
        let writer = Mapping::new(fd.as_fd(), size, true, false).unwrap();
        let reader = Mapping::new(fd.as_fd(), size, false, false).unwrap();
        // SAFETY: only this test touches the segment.
        unsafe {
            writer.slice_mut(100, 3).unwrap().copy_from_slice(b"abc");
            assert_eq!(reader.slice(100, 3).unwrap(), b"abc");
            assert!(
                reader.slice_mut(0, 1).is_none(),
                "read-only view hands out no &mut"
            );
            assert!(reader.slice(size as u64 - 1, 2).is_none());
        }
    }

    #[test]
    fn a_sealed_memfd_refuses_writable_mappings() {
        let (fd, size) = Backing::Memfd.create(4096, true).unwrap();
        assert!(
            seal_against_writes(fd.as_fd()).unwrap(),
            "no mapping: strict seal"
        );
        assert!(Mapping::new(fd.as_fd(), size, true, false).is_err());
        let ro = reopen_read_only(fd.as_fd()).unwrap();
        assert!(Mapping::new(ro.as_fd(), size, true, false).is_err());
        assert!(Mapping::new(ro.as_fd(), size, false, false).is_ok());
    }

    #[test]
    fn a_seal_with_a_live_writable_mapping_falls_back() {
        let (fd, size) = Backing::Memfd.create(4096, true).unwrap();
        let _writer = Mapping::new(fd.as_fd(), size, true, false).unwrap();
        assert!(!seal_against_writes(fd.as_fd()).unwrap());
        assert!(Mapping::new(fd.as_fd(), size, true, false).is_err());
    }

    #[test]
    fn a_directory_backing_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let backing = Backing::Directory {
            path: dir.path().to_path_buf(),
            huge_pages: false,
        };
        backing.check().unwrap();
        let (fd, size) = backing.create(5000, true).unwrap();
        assert!(Mapping::new(fd.as_fd(), size, true, false).is_ok());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files are unlinked"
        );
        let huge = Backing::Directory {
            path: dir.path().to_path_buf(),
            huge_pages: true,
        };
        let err = huge.check().unwrap_err().to_string();
        assert!(err.contains("not a hugetlbfs mount"), "{err}");
        let missing = Backing::Directory {
            path: dir.path().join("missing"),
            huge_pages: false,
        };
        assert!(missing.check().is_err());
    }
}
