//! Spilling: sealed objects that no client pins leave memory for a file on local disk
//! when the store's budget is full, and come back on the next `get`.
//!
//! One file per store, created (and unlinked at once) in `object_spilling_directory` the
//! first time an object spills: nothing is left behind however the store ends. Objects
//! are appended one after the other, each in one large write, starting on a page
//! boundary; a restored or deleted object's range is given back to the file system
//! with a hole (`FALLOC_FL_PUNCH_HOLE`), and the file is emptied whenever no object is
//! left in it. The store calls these functions under its lock, so a spill or restore
//! holds up other clients for the time of its write or read.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::FallocateFlags;

/// Magic number of tmpfs in `statfs.f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Spilled objects start on multiples of this, so that holes free whole blocks.
const SLOT_ALIGN: u64 = 4096;
/// The buffer of a copy between descriptors where the kernel copies none itself.
const COPY_BUFFER: usize = 4 << 20;

/// Why an object could not be spilled.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("the spill directory {path} is full ({free} bytes free, {wanted} wanted)")]
    Full {
        path: PathBuf,
        free: u64,
        wanted: u64,
    },
    #[error("cannot spill to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where one object's bytes are in the spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub len: u64,
}

/// The store's figures about spilling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Objects on disk now.
    pub objects: u64,
    /// Bytes on disk now.
    pub bytes: u64,
    /// Bytes written since the store started.
    pub written_bytes: u64,
    /// Bytes read back since the store started.
    pub restored_bytes: u64,
}

/// The spill file of one store.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    file: Option<File>,
    /// Where the next object goes.
    end: u64,
    stats: SpillStats,
}

impl Spill {
    /// Spills into `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            file: None,
            end: 0,
            stats: SpillStats::default(),
        }
    }

    /// The spill directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The figures.
    pub fn stats(&self) -> SpillStats {
        self.stats
    }

    fn io_error(&self, source: io::Error) -> SpillError {
        SpillError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    fn file(&mut self) -> Result<&File, SpillError> {
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| self.io_error(e))?;
            let file = tempfile::tempfile_in(&self.dir).map_err(|e| self.io_error(e))?;
            // f_type is a long on some targets and an int on others.
            #[allow(clippy::useless_conversion)]
            let in_memory = nix::sys::statfs::fstatfs(file.as_fd())
                .is_ok_and(|s| i64::from(s.filesystem_type().0) == TMPFS_MAGIC);
            if in_memory {
                log::warn!(directory:% = self.dir.display(); "the spill directory is a tmpfs: spilled objects still take memory (set object_spilling_directory to a directory on disk)");
            }
            self.file = Some(file);
        }
        Ok(self.file.as_ref().expect("just set"))
    }

    /// Bytes the file system of the spill file has free, when it says.
    fn free_bytes(file: &File) -> Option<u64> {
        let stat = nix::sys::statvfs::fstatvfs(file.as_fd()).ok()?;
        #[allow(clippy::useless_conversion)]
        Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
    }

    /// Writes `bytes` to the end of the file in one go.
    pub fn write(&mut self, bytes: &[u8]) -> Result<Slot, SpillError> {
        self.append(bytes.len() as u64, |file, offset| {
            file.write_all_at(bytes, offset)
        })
    }

    /// Writes the first `len` bytes of an object's own segment, made of the files `from`
    /// end to end (each with its length), to the end of the file, without mapping them:
    /// a fresh mapping costs a page fault per page.
    pub fn write_from(
        &mut self,
        from: &[(BorrowedFd<'_>, u64)],
        len: u64,
    ) -> Result<Slot, SpillError> {
        self.append(len, |file, offset| {
            for_each_piece(from, len, |part, at, within, n| {
                copy_range(part, at, file.as_fd(), offset + within, n)
            })
        })
    }

    /// Appends `len` bytes that `copy` writes at the offset it is given.
    fn append(
        &mut self,
        len: u64,
        copy: impl FnOnce(&File, u64) -> io::Result<()>,
    ) -> Result<Slot, SpillError> {
        let offset = self.end;
        let dir = self.dir.clone();
        let file = self.file()?;
        // Counting on ENOSPC alone would write (and then punch out) up to a whole object
        // for every object that does not fit.
        if let Some(free) = Self::free_bytes(file) {
            if free < len {
                return Err(SpillError::Full {
                    path: dir,
                    free,
                    wanted: len,
                });
            }
        }
        if let Err(source) = copy(file, offset) {
            // Whatever part of it was written goes again.
            let _ = punch(file, offset, len);
            return Err(if source.raw_os_error() == Some(libc::ENOSPC) {
                SpillError::Full {
                    path: dir,
                    free: Self::free_bytes(file).unwrap_or(0),
                    wanted: len,
                }
            } else {
                SpillError::Io { path: dir, source }
            });
        }
        self.end = (offset + len).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        self.stats.objects += 1;
        self.stats.bytes += len;
        self.stats.written_bytes += len;
        Ok(Slot { offset, len })
    }

    /// Reads the object in `slot` into the file `into` (an object's own segment, not yet
    /// sealed) from its start, without mapping it.
    pub fn read_to(
        &mut self,
        slot: Slot,
        into: &[(BorrowedFd<'_>, u64)],
    ) -> Result<(), SpillError> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| self.io_error(io::Error::other("no spill file")))?;
        for_each_piece(into, slot.len, |part, at, within, n| {
            copy_range(file.as_fd(), slot.offset + within, part, at, n)
        })
        .map_err(|e| self.io_error(e))?;
        self.stats.restored_bytes += slot.len;
        Ok(())
    }

    /// Reads the object in `slot` into `into` (exactly its length).
    pub fn read(&mut self, slot: Slot, into: &mut [u8]) -> Result<(), SpillError> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| self.io_error(io::Error::other("no spill file")))?;
        file.read_exact_at(into, slot.offset)
            .map_err(|e| self.io_error(e))?;
        self.stats.restored_bytes += slot.len;
        Ok(())
    }

    /// Gives the slot's disk space back.
    pub fn free(&mut self, slot: Slot) {
        self.stats.objects = self.stats.objects.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(slot.len);
        let Some(file) = &self.file else {
            return;
        };
        if self.stats.objects == 0 {
            // Empty: start over at the front.
            if let Err(e) = file.set_len(0) {
                log::warn!(error:% = e; "cannot empty the spill file");
            }
            self.end = 0;
        } else if let Err(e) = punch(file, slot.offset, slot.len) {
            log::warn!(error:% = e; "cannot free a spilled object's disk space");
        }
    }
}

#[cfg(test)]
impl Spill {
    /// Tests: from now on the spill file takes reads only, as a failing disk would.
    pub fn refuse_writes(&mut self) {
        use std::os::fd::AsRawFd;
        let file = self.file.as_ref().expect("a spill file");
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        self.file = Some(File::open(path).expect("the spill file, read-only"));
    }
}

/// Calls `f` for each file of a segment made of `parts` (end to end) that holds some of
/// its first `len` bytes: the file, the offset in it, the offset in the object, and how
/// many bytes.
fn for_each_piece(
    parts: &[(BorrowedFd<'_>, u64)],
    len: u64,
    mut f: impl FnMut(BorrowedFd<'_>, u64, u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    let sizes: Vec<u64> = parts.iter().map(|(_, size)| *size).collect();
    let size: u64 = sizes.iter().sum();
    if size < len {
        return Err(io::Error::other(format!(
            "{len} bytes do not fit a segment of {size} bytes"
        )));
    }
    for (index, at, bytes) in rayd_plasma_client::parts::pieces(&sizes, 0, len) {
        f(parts[index].0, at, bytes.start as u64, bytes.len() as u64)?;
    }
    Ok(())
}

/// Copies `len` bytes from `from` at `from_offset` to `to` at `to_offset`: in the kernel
/// (`copy_file_range`) where it can, else through one reused buffer.
fn copy_range(
    from: BorrowedFd<'_>,
    from_offset: u64,
    to: BorrowedFd<'_>,
    to_offset: u64,
    len: u64,
) -> io::Result<()> {
    let too_big = || io::Error::from_raw_os_error(libc::EFBIG);
    let (mut src, mut dst) = (
        i64::try_from(from_offset).map_err(|_| too_big())?,
        i64::try_from(to_offset).map_err(|_| too_big())?,
    );
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open for the call; the offsets are ours.
        let copied = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut src,
                to.as_raw_fd(),
                &mut dst,
                chunk,
                0,
            )
        };
        match copied {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n if n > 0 => left -= n as u64,
            _ => {
                let error = io::Error::last_os_error();
                return match error.raw_os_error() {
                    // Between file systems (a memfd and a disk), or not offered here.
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        if left == len =>
                    {
                        copy_buffered(from, from_offset, to, to_offset, len)
                    }
                    _ => Err(error),
                };
            }
        }
    }
    Ok(())
}

fn copy_buffered(
    from: BorrowedFd<'_>,
    mut from_offset: u64,
    to: BorrowedFd<'_>,
    mut to_offset: u64,
    len: u64,
) -> io::Result<()> {
    let chunk = usize::try_from(len).map_or(COPY_BUFFER, |len| len.min(COPY_BUFFER));
    let mut buffer = vec![0u8; chunk];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk, |left| left.min(chunk));
        let read = nix::sys::uio::pread(from, &mut buffer[..n], from_offset as i64)?;
        if read == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut written = 0;
        while written < read {
            written += nix::sys::uio::pwrite(
                to,
                &buffer[written..read],
                (to_offset + written as u64) as i64,
            )?;
        }
        from_offset += read as u64;
        to_offset += read as u64;
        left -= read as u64;
    }
    Ok(())
}

/// Frees the blocks of `[offset, offset + len)` in `file`, keeping its size.
fn punch(file: &File, offset: u64, len: u64) -> nix::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(nix::Error::EFBIG);
    };
    nix::fcntl::fallocate(
        file.as_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_goes_to_disk_and_back_without_a_mapping() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path().join("spill"));
        spill.write(&[1u8; 100]).unwrap();
        // More than one buffer's worth, and not a multiple of it.
        let len = COPY_BUFFER as u64 * 2 + 12_345;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // A segment of two files, the first a whole number of pages.
        let sizes = rayd_plasma_client::parts::split(len, 2);
        assert_eq!(sizes.len(), 2);
        let files = || {
            sizes
                .iter()
                .map(|&size| {
                    let (fd, _) = crate::memory::Backing::Memfd
                        .create(size as usize, true)
                        .unwrap();
                    (fd, size)
                })
                .collect::<Vec<_>>()
        };
        fn lent(files: &[(std::os::fd::OwnedFd, u64)]) -> Vec<(BorrowedFd<'_>, u64)> {
            files.iter().map(|(fd, size)| (fd.as_fd(), *size)).collect()
        }
        let segment = files();
        nix::sys::uio::pwrite(segment[0].0.as_fd(), &bytes[..sizes[0] as usize], 0).unwrap();
        nix::sys::uio::pwrite(segment[1].0.as_fd(), &bytes[sizes[0] as usize..], 0).unwrap();
        let slot = spill.write_from(&lent(&segment), len).unwrap();
        assert_eq!(slot.len, len);
        assert_eq!(slot.offset, SLOT_ALIGN);
        let mut back = vec![0u8; len as usize];
        spill.read(slot, &mut back).unwrap();
        assert!(back == bytes, "written as it was");
        let restored = files();
        spill.read_to(slot, &lent(&restored)).unwrap();
        let mut back = vec![0u8; len as usize];
        nix::sys::uio::pread(restored[0].0.as_fd(), &mut back[..sizes[0] as usize], 0).unwrap();
        nix::sys::uio::pread(restored[1].0.as_fd(), &mut back[sizes[0] as usize..], 0).unwrap();
        assert!(back == bytes, "read back as it was");
        assert_eq!(spill.stats().restored_bytes, 2 * len);
    }

    #[test]
    fn objects_round_trip_and_their_space_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path().join("spill"));
        let a: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let b = vec![7u8; 5000];
        let slot_a = spill.write(&a).unwrap();
        let slot_b = spill.write(&b).unwrap();
        assert_eq!(slot_b.offset % SLOT_ALIGN, 0);
        assert!(slot_b.offset >= slot_a.len);
        assert_eq!(spill.stats().bytes, 15_000);
        assert_eq!(
            std::fs::read_dir(dir.path().join("spill")).unwrap().count(),
            0,
            "the file is unlinked"
        );
        let mut back = vec![0u8; b.len()];
        spill.read(slot_b, &mut back).unwrap();
        assert_eq!(back, b);
        spill.free(slot_b);
        let mut back = vec![0u8; a.len()];
        spill.read(slot_a, &mut back).unwrap();
        assert_eq!(back, a);
        spill.free(slot_a);
        let stats = spill.stats();
        assert_eq!((stats.objects, stats.bytes), (0, 0));
        assert_eq!(stats.written_bytes, 15_000);
        assert_eq!(stats.restored_bytes, 15_000);
        assert_eq!(
            spill.write(&b).unwrap().offset,
            0,
            "an empty file starts over"
        );
    }
}
