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
//!   holding the small objects (at most [`ARENA_OBJECT_MAX`] bytes). Only the store
//!   writes it: it maps it writable once, then seals it with `F_SEAL_FUTURE_WRITE`
//!   ([`seal_future_writes`]), after which every new writable mapping, `write` or
//!   `pwrite` of it fails, for every process, the store included, and whatever
//!   descriptor (a reopened `/proc/self/fd/N` too). Clients get a read-only descriptor
//!   and map it read-only; a small object's bytes travel to the store in the message
//!   that creates and seals it, and the store copies them in.
//! - Every larger object is a segment of its own, a large one made of several files end
//!   to end ([`Backing::parts_for`], `rayd_plasma_client::parts`), so that several
//!   threads can write it at once. Its creator gets the descriptors and fills them
//!   (`pwrite`, a thread per file, or through a writable mapping unmapped before the
//!   seal); the seal then adds
//!   `F_SEAL_WRITE` ([`seal_against_writes`]), which the kernel refuses while a
//!   writable mapping exists, so from then on nobody can write it. Readers get
//!   read-only descriptors ([`reopen_read_only`]).
//! - Pages are allocated (`fallocate`) before anyone maps them, never on first touch
//!   through a mapping: the arena's in granules of [`ARENA_RESERVE_GRANULE`], ahead of
//!   demand by a background thread ([`crate::prefault`]) or at the latest when an object
//!   is first placed in one, and never given back (the arena's seal refuses punching
//!   holes); a segment's ahead of demand by the same thread (a pool of segments,
//!   [`crate::pool`], written once with zeros while the store is idle, see
//!   [`Backing::prepare`]), or else by its creator before it maps any of it, or by the
//!   `pwrite`s that fill it. Where memory runs out, the create, the `fallocate` or the
//!   `pwrite` fails with an error instead of a process dying of SIGBUS later. A segment
//!   never grows or shrinks once handed out (memfd seals `F_SEAL_GROW | F_SEAL_SHRINK`),
//!   so a mapped range always stays backed.
//! - Files of `plasma_directory` take no seals: there clients get read-only descriptors
//!   and mappings, but a process of the same user can reopen the file for writing. The
//!   kernel's guarantee holds with the default memfd backing only.
//! - A client may hold a *lease*: a range of the arena in which the store places that
//!   client's small objects, at offsets the client picks, without a reply (see
//!   [`crate::lease`]).
//! - A segment's memory goes back to the system when the store and every client have
//!   closed its descriptor and unmapped it. Arena ranges are reused by the allocator once
//!   their object is deleted, spilled or evicted; an object only ever leaves memory when
//!   no client has it pinned, and clients only read objects they hold a pin on.
//!
//! # Synchronization
//!
//! Bytes of an unsealed object are written by one party alone: the store (small objects,
//! pulls, restores) or the creator of a segment; sealing happens-after those writes (the
//! seal request travels over the same socket after them), and readers receive the
//! object's location only after the seal. So no two parties ever write the same bytes,
//! and readers see complete objects.

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
/// Magic number of tmpfs (and of memfds, which live in an internal tmpfs) in
/// `statfs.f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether `fd` is a file of shared memory (tmpfs, or a memfd) rather than of a disk.
fn is_shared_memory(fd: BorrowedFd<'_>) -> bool {
    nix::sys::statfs::fstatfs(fd).is_ok_and(|stat| {
        // f_type is a long on some targets and an int on others.
        #[allow(clippy::useless_conversion)]
        let kind = i64::from(stat.filesystem_type().0);
        kind == TMPFS_MAGIC
    })
}

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
    #[error("the object's memory is still mapped writable (unmap it before the seal)")]
    StillWritable,
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
    /// [`reserve_range`] before handing them out, or writes it with `pwrite`). Its size
    /// is sealed. Returns the descriptor and the real size.
    pub fn create(&self, size: usize, reserve: bool) -> Result<(OwnedFd, usize), MemoryError> {
        let (fd, size) = self.create_resizable(size, reserve)?;
        let size = self.fix_size(fd.as_fd(), size)?;
        Ok((fd, size))
    }

    /// [`Self::create`] without the size seals: a pool's segment, cut to an object's size
    /// by [`Self::fix_size`] when it is taken.
    pub fn create_resizable(
        &self,
        size: usize,
        reserve: bool,
    ) -> Result<(OwnedFd, usize), MemoryError> {
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
        set_len(fd.as_fd(), size)?;
        // Allocate every page now: a page that cannot be had later would be a SIGBUS in
        // whichever process touches it first.
        if reserve {
            reserve_range(fd.as_fd(), 0, size)?;
        }
        Ok((fd, size))
    }

    /// How many files a segment of `size` bytes is made of: several for a large one
    /// where files take `pwrite` (hugetlbfs files are only mapped, by one thread).
    pub fn parts_for(&self, size: usize) -> usize {
        if self.takes_writes() {
            rayd_plasma_client::parts::count_for(size as u64)
        } else {
            1
        }
    }

    /// The sizes of the files of a segment of `size` bytes (rounded up to the
    /// granularity) made of `count` files.
    fn shares(&self, size: usize, count: usize) -> Vec<usize> {
        let size = round_up(size.max(1), self.granularity());
        rayd_plasma_client::parts::split(size as u64, count)
            .into_iter()
            .map(|share| share as usize)
            .collect()
    }

    /// [`Self::create`] for a whole segment: its files end to end, each with its real size.
    pub fn create_parts(
        &self,
        size: usize,
        reserve: bool,
    ) -> Result<Vec<(OwnedFd, usize)>, MemoryError> {
        self.shares(size, self.parts_for(size))
            .into_iter()
            .map(|share| self.create(share, reserve))
            .collect()
    }

    /// [`Self::prepare`] for a whole segment: its files end to end, each with its size.
    pub fn prepare_parts(
        &self,
        size: usize,
        mut idle: impl FnMut() -> bool,
    ) -> Result<Vec<(OwnedFd, usize)>, MemoryError> {
        self.shares(size, self.parts_for(size))
            .into_iter()
            .map(|share| self.prepare(share, &mut idle))
            .collect()
    }

    /// [`Self::fix_size`] for a pool segment's files: cuts them to hold `size` bytes,
    /// shared as evenly as whole pages allow (files left without a share are dropped),
    /// and returns each with its real size.
    pub fn fix_parts(
        &self,
        fds: Vec<OwnedFd>,
        size: usize,
    ) -> Result<Vec<(OwnedFd, usize)>, MemoryError> {
        let shares = self.shares(size, fds.len());
        fds.into_iter()
            .zip(shares)
            .map(|(fd, share)| {
                let len = self.fix_size(fd.as_fd(), share)?;
                Ok((fd, len))
            })
            .collect()
    }

    /// A pool's segment of at least `size` bytes, made ready for a fill off the hot path:
    /// every page allocated and, in shared memory and while `idle` says so, also written
    /// once (with zeros). Allocating alone leaves two costs to the first write of each
    /// page: a mapping's fault zeroes a page that was only allocated, and a virtual machine
    /// whose host takes back the guest's free memory (free page reporting) faults in the
    /// host on first touch, at about 0.4 GB/s where this was measured (see
    /// `docs/decisions.md`). Writing costs ~40 ms per 100 MB against ~28 ms for
    /// `fallocate` alone, so once `idle` says no (it is asked every [`ZEROS_CHUNK`] bytes),
    /// the rest is only allocated. Elsewhere only `fallocate`: hugetlbfs takes no `write`
    /// (and its `fallocate` zeroes the huge pages), and a `plasma_directory` on a disk
    /// would write the zeros to the disk too.
    pub fn prepare(
        &self,
        size: usize,
        idle: impl FnMut() -> bool,
    ) -> Result<(OwnedFd, usize), MemoryError> {
        let (fd, size) = self.create_resizable(size, false)?;
        let touched = if is_shared_memory(fd.as_fd()) {
            write_zeros(fd.as_fd(), size, idle)?
        } else {
            0
        };
        if touched < size {
            reserve_range(fd.as_fd(), touched, size - touched)?;
        }
        Ok((fd, size))
    }

    /// Cuts a segment made by [`Self::create_resizable`] to `size` bytes (rounded up to
    /// the granularity) and seals its size; returns the real size.
    pub fn fix_size(&self, fd: BorrowedFd<'_>, size: usize) -> Result<usize, MemoryError> {
        let size = round_up(size.max(1), self.granularity());
        set_len(fd, size)?;
        if matches!(self, Backing::Memfd) {
            fcntl(
                fd,
                FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK),
            )
            .map_err(MemoryError::Seal)?;
        }
        Ok(size)
    }
}

/// Sets a segment's length (pages past a new, shorter end are freed).
fn set_len(fd: BorrowedFd<'_>, size: usize) -> Result<(), MemoryError> {
    let len = i64::try_from(size).map_err(|_| MemoryError::Create {
        size,
        source: nix::Error::EFBIG,
    })?;
    nix::unistd::ftruncate(fd, len).map_err(|source| MemoryError::Create { size, source })
}

/// The largest object placed in the arena (copied there by the store); larger ones get
/// segments of their own.
pub const ARENA_OBJECT_MAX: u64 = 16 << 10;

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

/// How many zeros [`Backing::prepare`] writes between two questions to its `idle`.
pub const ZEROS_CHUNK: usize = 1 << 20;

/// Writes zeros over the first `len` bytes of `fd` (allocating its pages, like
/// [`reserve_range`], and touching them) while `go_on` says so; returns how many it wrote.
fn write_zeros(
    fd: BorrowedFd<'_>,
    len: usize,
    mut go_on: impl FnMut() -> bool,
) -> Result<usize, MemoryError> {
    // In .bss: every page of it maps the one zero page, so the source stays in cache.
    static ZEROS: [u8; ZEROS_CHUNK] = [0; ZEROS_CHUNK];
    let failed = |source| MemoryError::Reserve { size: len, source };
    let mut done = 0;
    while done < len && go_on() {
        let n = (len - done).min(ZEROS.len());
        let offset = i64::try_from(done).map_err(|_| failed(nix::Error::EFBIG))?;
        match nix::sys::uio::pwrite(fd, &ZEROS[..n], offset) {
            Ok(0) => return Err(failed(nix::Error::ENOSPC)),
            Ok(written) => done += written,
            Err(nix::Error::EINTR) => {}
            Err(source) => return Err(failed(source)),
        }
    }
    Ok(done)
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

/// Seals a segment against writes, for good (`F_SEAL_WRITE`): from now on no process
/// can map it writable, write it, or make a read-only mapping of it writable. Refused
/// ([`MemoryError::StillWritable`]) while a writable mapping of it exists anywhere.
/// Returns false when the file takes no seals (files of `plasma_directory`).
pub fn seal_against_writes(fd: BorrowedFd<'_>) -> Result<bool, MemoryError> {
    match fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)) {
        Ok(_) => Ok(true),
        Err(nix::Error::EBUSY) => Err(MemoryError::StillWritable),
        Err(nix::Error::EINVAL) => Ok(false),
        Err(e) => Err(MemoryError::Seal(e)),
    }
}

/// Seals the arena against every *new* write (`F_SEAL_FUTURE_WRITE`, Linux 5.1): the
/// writable mappings that exist (the store's) stay writable; new writable mappings,
/// `write`/`pwrite` and hole punching fail for everyone; allocating pages with
/// `fallocate` still works. Returns false when the file takes no seals.
pub fn seal_future_writes(fd: BorrowedFd<'_>) -> Result<bool, MemoryError> {
    let future_write = SealFlag::from_bits_retain(libc::F_SEAL_FUTURE_WRITE);
    match fcntl(fd, FcntlArg::F_ADD_SEALS(future_write)) {
        Ok(_) => Ok(true),
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
    fn a_prepared_segment_is_allocated_and_zeroed_and_only_allocated_once_busy() {
        let size = 2 * ZEROS_CHUNK + 5000;
        let allocated =
            |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_fd()).unwrap().st_blocks as usize * 512;
        let mut asked = 0;
        let (fd, len) = Backing::Memfd
            .prepare(size, || {
                asked += 1;
                true
            })
            .unwrap();
        assert_eq!(asked, 3, "written in chunks: two whole ones and the rest");
        assert!(len >= size);
        assert!(allocated(&fd) >= len, "every page allocated");
        let mut bytes = vec![1u8; len];
        assert_eq!(
            nix::sys::uio::pread(fd.as_fd(), &mut bytes, 0).unwrap(),
            len
        );
        assert!(bytes.iter().all(|&b| b == 0));

        let mut asked = 0;
        let (fd, len) = Backing::Memfd
            .prepare(size, || {
                asked += 1;
                asked < 2
            })
            .unwrap();
        assert_eq!(asked, 2, "asked between chunks, until busy");
        assert!(allocated(&fd) >= len, "the rest allocated all the same");

        // A directory on a disk gets its pages allocated, never zeros written.
        let dir = tempfile::tempdir().unwrap();
        let disk = Backing::Directory {
            path: dir.path().to_path_buf(),
            huge_pages: false,
        };
        if !is_shared_memory(create_file(dir.path(), 4096).unwrap().as_fd()) {
            let (fd, len) = disk.prepare(size, || panic!("no zeros on a disk")).unwrap();
            assert!(allocated(&fd) >= len);
        }
    }

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
    fn a_sealed_memfd_refuses_writes_of_any_kind() {
        let (fd, size) = Backing::Memfd.create(4096, true).unwrap();
        let reader = Mapping::new(
            reopen_read_only(fd.as_fd()).unwrap().as_fd(),
            size,
            false,
            false,
        )
        .unwrap();
        assert!(seal_against_writes(fd.as_fd()).unwrap());
        assert!(Mapping::new(fd.as_fd(), size, true, false).is_err());
        assert_eq!(
            nix::sys::uio::pwrite(fd.as_fd(), b"x", 0),
            Err(nix::Error::EPERM)
        );
        // SAFETY: mprotect of a mapping this test owns; it fails, changing nothing.
        let made_writable = unsafe {
            libc::mprotect(
                reader.as_ptr().cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(made_writable, -1, "a read-only mapping stays read-only");
        let ro = reopen_read_only(fd.as_fd()).unwrap();
        assert!(Mapping::new(ro.as_fd(), size, true, false).is_err());
        assert!(Mapping::new(ro.as_fd(), size, false, false).is_ok());
    }

    #[test]
    fn a_seal_with_a_live_writable_mapping_is_refused() {
        let (fd, size) = Backing::Memfd.create(4096, true).unwrap();
        let writer = Mapping::new(fd.as_fd(), size, true, false).unwrap();
        assert!(matches!(
            seal_against_writes(fd.as_fd()),
            Err(MemoryError::StillWritable)
        ));
        drop(writer);
        assert!(seal_against_writes(fd.as_fd()).unwrap());
    }

    #[test]
    fn a_future_write_seal_keeps_the_writable_mapping_and_fallocate() {
        let (fd, size) = Backing::Memfd.create(1 << 20, false).unwrap();
        let writer = Mapping::new(fd.as_fd(), size, true, false).unwrap();
        assert!(seal_future_writes(fd.as_fd()).unwrap());
        reserve_range(fd.as_fd(), 0, size).unwrap();
        // SAFETY: only this test touches the segment.
        unsafe { writer.slice_mut(0, 3).unwrap().copy_from_slice(b"abc") };
        assert!(Mapping::new(fd.as_fd(), size, true, false).is_err());
        assert_eq!(
            nix::sys::uio::pwrite(fd.as_fd(), b"x", 0),
            Err(nix::Error::EPERM)
        );
        let punched = nix::fcntl::fallocate(
            fd.as_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        );
        assert_eq!(punched, Err(nix::Error::EPERM));
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
