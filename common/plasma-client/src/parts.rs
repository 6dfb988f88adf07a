//! Large segments made of several files ("parts") laid end to end.
//!
//! Writes to one shared-memory file are serialized by its inode lock, whatever the number
//! of threads, and fresh pages cost the writer their allocation: one thread's `pwrite`
//! of 100 MB into a fresh memfd took 34-42 ms on a 2-core VM where a warm memcpy took
//! 17-19 ms. Two files take two threads' writes at once: 100 MB as two 50 MB files, one
//! thread each, took 20-24 ms into fresh pages and 14-15 ms into pages allocated ahead (in
//! C, alternated with the other ways, 5 rounds). So a large segment has one file per
//! thread that fills it, and readers map the files end to end as one range
//! ([`crate::mapping::Mapping::of_parts`]): an object is still one slice to them.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::mapping::page_size;

/// Segments of at least this many bytes are made of several parts (below, a second
/// thread costs more than it saves).
pub const SPLIT_MIN: u64 = 8 << 20;

/// The inner parts of a large segment end on multiples of this, and readers map the
/// parts into a range that starts on one: where the host has shmem huge pages on, each
/// part's huge pages then line up with the range's, as in a mapping of one file.
pub const HUGE_ALIGN: u64 = 2 << 20;

/// Whether this machine has a second CPU to write a second part (asked once).
pub fn has_spare_cpu() -> bool {
    static SPARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SPARE.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How many parts a segment of `size` bytes is made of on this machine.
pub fn count_for(size: u64) -> usize {
    if size >= SPLIT_MIN && has_spare_cpu() {
        2
    } else {
        1
    }
}

/// The sizes of `count` parts that hold `size` bytes end to end: as even as whole pages
/// (whole [`HUGE_ALIGN`] units, from [`SPLIT_MIN`] on) allow, every part but the last a
/// whole number of them.
pub fn split(size: u64, count: usize) -> Vec<u64> {
    let page = page_size() as u64;
    let unit = if size >= SPLIT_MIN {
        HUGE_ALIGN.max(page)
    } else {
        page
    };
    let count = count.max(1) as u64;
    let share = size.div_ceil(count).next_multiple_of(unit);
    let mut sizes = Vec::with_capacity(count as usize);
    let mut left = size;
    for _ in 1..count {
        if left <= share {
            break;
        }
        sizes.push(share);
        left -= share;
    }
    sizes.push(left);
    sizes
}

/// Whether `sizes` can describe a segment of `size` bytes: none empty, every part but
/// the last a whole number of pages, and together exactly `size`.
pub fn valid(sizes: &[u64], size: u64) -> bool {
    let page = page_size() as u64;
    let Some((_, inner)) = sizes.split_last() else {
        return false;
    };
    sizes.iter().all(|&len| len > 0)
        && inner.iter().all(|len| len % page == 0)
        && sizes
            .iter()
            .try_fold(0u64, |sum, &len| sum.checked_add(len))
            == Some(size)
}

/// Where `len` bytes at `offset` of a segment made of parts of `sizes` fall: for each
/// part they touch, its index, the offset in it, and the range of the bytes.
pub fn pieces(sizes: &[u64], offset: u64, len: u64) -> Vec<(usize, u64, Range<usize>)> {
    let end = offset.saturating_add(len);
    let mut pieces = Vec::new();
    let mut start = 0u64;
    for (index, &size) in sizes.iter().enumerate() {
        let (from, to) = (offset.max(start), end.min(start + size));
        if from < to {
            let bytes = (from - offset) as usize..(to - offset) as usize;
            pieces.push((index, from - start, bytes));
        }
        start += size;
    }
    pieces
}

/// Bytes a writer claims at a time: small enough that the writers end close together,
/// large enough that claiming costs nothing.
const CHUNK: u64 = 2 << 20;

/// The chunks of one part's piece of a write not yet claimed: chunk `i` covers file
/// offsets from `at` or the `i`-th multiple of [`CHUNK`] past it, up to the next one.
struct Piece<'a> {
    file: &'a File,
    /// Where the piece starts in the file, and its bytes.
    at: u64,
    bytes: &'a [u8],
    /// `[front, back)`, in chunk indices.
    left: std::sync::Mutex<(u64, u64)>,
}

impl<'a> Piece<'a> {
    fn new(file: &'a File, at: u64, bytes: &'a [u8]) -> Self {
        let end = at + bytes.len() as u64;
        let count = if bytes.is_empty() {
            0
        } else {
            (end - 1) / CHUNK - at / CHUNK + 1
        };
        Self {
            file,
            at,
            bytes,
            left: std::sync::Mutex::new((0, count)),
        }
    }

    fn claim(&self, front: bool) -> Option<u64> {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        (left.0 < left.1).then(|| {
            if front {
                left.0 += 1;
                left.0 - 1
            } else {
                left.1 -= 1;
                left.1
            }
        })
    }

    fn write(&self, i: u64) -> std::io::Result<()> {
        let end = self.at + self.bytes.len() as u64;
        let from = (self.at / CHUNK + i) * CHUNK;
        let (from, to) = (from.max(self.at), (from + CHUNK).min(end));
        let range = (from - self.at) as usize..(to - self.at) as usize;
        self.file.write_all_at(&self.bytes[range], from)
    }
}

/// Writes chunks until none is left: from the front of its own piece first, then from
/// the back of the others' (a writer that started late, or runs slower, leaves its
/// piece to be finished by the others, who take turns with it at that file's lock).
fn write_pieces(pieces: &[Piece<'_>], own: usize) -> std::io::Result<()> {
    if pieces.is_empty() {
        return Ok(());
    }
    let others = (1..pieces.len()).map(|k| (own + k) % pieces.len());
    while let Some(i) = pieces[own].claim(true) {
        pieces[own].write(i)?;
    }
    for other in others {
        while let Some(i) = pieces[other].claim(false) {
            pieces[other].write(i)?;
        }
    }
    Ok(())
}

/// Writes `bytes` at `offset` of the segment made of `files` (each with its size), with
/// `pwrite`: one writer per part touched, this thread and, for a write large enough to
/// pay for them, one more thread per further part; each writer takes over what is left
/// of the others' parts once its own is done. Bytes past the segment's end are an error
/// (nothing is written then).
pub fn write_all_at(files: &[(&File, u64)], offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let sizes: Vec<u64> = files.iter().map(|(_, size)| *size).collect();
    let total: u64 = sizes.iter().sum();
    if offset
        .checked_add(bytes.len() as u64)
        .is_none_or(|end| end > total)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes at {offset} are past the segment's {total} bytes",
                bytes.len()
            ),
        ));
    }
    let pieces: Vec<Piece<'_>> = pieces(&sizes, offset, bytes.len() as u64)
        .into_iter()
        .map(|(index, at, range)| Piece::new(files[index].0, at, &bytes[range]))
        .collect();
    if pieces.len() < 2 || (bytes.len() as u64) < SPLIT_MIN {
        return write_pieces(&pieces, 0);
    }
    std::thread::scope(|scope| {
        let pieces = &pieces;
        // A helper that cannot be started leaves its piece to this thread.
        let helpers: Vec<_> = (1..pieces.len())
            .filter_map(|own| {
                std::thread::Builder::new()
                    .name("plasma-fill".into())
                    .spawn_scoped(scope, move || write_pieces(pieces, own))
                    .ok()
            })
            .collect();
        let mut result = write_pieces(pieces, 0);
        for helper in helpers {
            let helped = helper.join().unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "the thread filling an object panicked",
                ))
            });
            result = result.and(helped);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_pages_but_the_last_and_cover_the_size() {
        let page = page_size() as u64;
        for size in [
            1,
            page - 1,
            page,
            page + 1,
            SPLIT_MIN,
            100_000_000,
            3 * page,
        ] {
            for count in 1..4 {
                let sizes = split(size, count);
                assert!(valid(&sizes, size), "{size} in {count}: {sizes:?}");
                assert!(sizes.len() <= count);
            }
        }
        assert_eq!(split(100 << 20, 2), vec![50 << 20, 50 << 20]);
        let sizes = split(100_000_000, 2);
        assert_eq!(
            sizes[0] % HUGE_ALIGN,
            0,
            "large parts end on huge-page boundaries"
        );
        assert!(valid(&sizes, 100_000_000));
        assert_eq!(split(page + 1, 2), vec![page, 1]);
        assert!(
            !valid(&[page + 1, page], 2 * page + 1),
            "an inner part of a partial page"
        );
        assert!(!valid(&[0, page], page), "an empty part");
        assert!(!valid(&[page, page], page), "a sum that is not the size");
        assert!(!valid(&[], 0));
    }

    #[test]
    fn pieces_of_a_write_follow_the_parts() {
        let sizes = [8, 8, 4];
        assert_eq!(
            pieces(&sizes, 0, 20),
            vec![(0, 0, 0..8), (1, 0, 8..16), (2, 0, 16..20)]
        );
        assert_eq!(pieces(&sizes, 6, 4), vec![(0, 6, 0..2), (1, 0, 2..4)]);
        assert_eq!(pieces(&sizes, 9, 2), vec![(1, 1, 0..2)]);
        assert_eq!(pieces(&sizes, 16, 0), vec![]);
    }

    #[test]
    fn a_write_across_parts_lands_in_each_file_where_the_mapping_shows_it() {
        let page = page_size() as u64;
        let sizes = split(3 * SPLIT_MIN + 3 * page + 5, 2);
        let files: Vec<File> = sizes
            .iter()
            .map(|&size| {
                let file = tempfile::tempfile().unwrap();
                file.set_len(size).unwrap();
                file
            })
            .collect();
        let parts: Vec<(&File, u64)> = files.iter().zip(sizes.iter().copied()).collect();
        let total: u64 = sizes.iter().sum();
        let bytes: Vec<u8> = (0..total - 7).map(|i| (i % 251) as u8).collect();
        write_all_at(&parts, 7, &bytes).unwrap();
        let fds: Vec<_> = files
            .iter()
            .zip(&sizes)
            .map(|(f, &s)| (std::os::fd::AsFd::as_fd(f), s as usize))
            .collect();
        let mapping = crate::mapping::Mapping::of_parts(&fds, false, false).unwrap();
        assert_eq!(
            mapping.as_ptr() as u64 % HUGE_ALIGN,
            0,
            "on a huge-page boundary"
        );
        // SAFETY: nothing writes the files any more.
        let seen = unsafe { mapping.slice(7, total - 7) }.unwrap();
        assert!(seen == &bytes[..], "the mapping shows the bytes written");
        // Uneven pieces (5 bytes in the first part): its writer takes over the other's.
        let again: Vec<u8> = (0..SPLIT_MIN + 5).map(|i| (i % 241) as u8).collect();
        write_all_at(&parts, sizes[0] - 5, &again).unwrap();
        // SAFETY: as above.
        let seen = unsafe { mapping.slice(sizes[0] - 5, again.len() as u64) }.unwrap();
        assert!(seen == &again[..], "the uneven write landed too");
        assert!(
            write_all_at(&parts, total - 1, &[1, 2]).is_err(),
            "past the end"
        );
    }
}
