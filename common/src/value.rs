//! How a serialized value is laid out in an object (or in an inline task argument).
//!
//! A value is a pickle (protocol 5) plus the out-of-band buffers it refers to (numpy
//! arrays' memory). The data of an object is:
//!
//! ```text
//! u64 pickle_len | u64 buffer_count | (u64 offset, u64 len) * buffer_count
//! | pickle | padding | buffer 0 | padding | buffer 1 | ...
//! ```
//!
//! all little-endian, offsets from the start of the data, each buffer aligned to 64 bytes so
//! that a reader can hand out views of shared memory that numpy accepts without copying.
//! The object's metadata says what the data is: [`META_PICKLE5`] for values, or
//! [`META_ERROR_PREFIX`] + a kind for errors stored in place of a task's results.

use std::ops::Range;

/// Metadata of a pickled value.
pub const META_PICKLE5: &[u8] = b"PICKLE5";
/// Metadata prefix of an error object: `ERROR:<KIND>`.
pub const META_ERROR_PREFIX: &[u8] = b"ERROR:";
/// Error kind: a task raised; the data is a pickled exception.
pub const ERROR_TASK: &str = "TASK";
/// Error kind: the worker running the task died; the data is a UTF-8 message.
pub const ERROR_WORKER_DIED: &str = "WORKER_DIED";

/// Error kind: the actor died or was killed; the data is a UTF-8 message.
pub const ERROR_ACTOR_DIED: &str = "ACTOR_DIED";
/// Error kind: the object has no copy left (`ObjectLostError`).
pub const ERROR_OBJECT_LOST: &str = "OBJECT_LOST";
/// Error kind: a program freed the object and no copy is left (`ObjectFreedError`).
pub const ERROR_OBJECT_FREED: &str = "OBJECT_FREED";
/// Error kind: the raylet refused the task's spec (e.g. a resource amount that is not a
/// finite, non-negative number).
pub const ERROR_INVALID_TASK: &str = "INVALID_TASK";

/// Alignment of out-of-band buffers inside the data.
pub const BUFFER_ALIGN: usize = 64;

/// Why bytes are not a valid value layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("value of {len} bytes is too short for its header")]
    Truncated { len: usize },
    #[error("value header names {what} {start}..{end} outside its {len} bytes")]
    OutOfBounds {
        what: &'static str,
        start: u64,
        end: u64,
        len: usize,
    },
}

/// Where the parts of a value go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Size of the whole data.
    pub total: usize,
    pub pickle: Range<usize>,
    pub buffers: Vec<Range<usize>>,
}

fn align(n: usize) -> usize {
    n.div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN
}

/// The layout of a pickle of `pickle_len` bytes with buffers of `buffer_lens` bytes.
pub fn layout(pickle_len: usize, buffer_lens: &[usize]) -> Layout {
    let header = 16 + 16 * buffer_lens.len();
    let pickle = header..header + pickle_len;
    let mut end = pickle.end;
    let mut buffers = Vec::with_capacity(buffer_lens.len());
    for len in buffer_lens {
        let start = if *len == 0 { end } else { align(end) };
        buffers.push(start..start + len);
        end = start + len;
    }
    Layout {
        total: end,
        pickle,
        buffers,
    }
}

/// The header of a value laid out as `layout`: what comes before its pickle.
pub fn header(layout: &Layout, pickle_len: usize, buffer_count: usize) -> Vec<u8> {
    let mut header = Vec::with_capacity(layout.pickle.start);
    header.extend_from_slice(&(pickle_len as u64).to_le_bytes());
    header.extend_from_slice(&(buffer_count as u64).to_le_bytes());
    for range in &layout.buffers {
        header.extend_from_slice(&(range.start as u64).to_le_bytes());
        header.extend_from_slice(&(range.len() as u64).to_le_bytes());
    }
    header
}

/// Writes the header, the pickle and the buffers into `dest` (exactly `layout.total`
/// bytes long); padding is left as it is.
pub fn write(dest: &mut [u8], layout: &Layout, pickle: &[u8], buffers: &[&[u8]]) {
    let header = header(layout, pickle.len(), buffers.len());
    dest[..header.len()].copy_from_slice(&header);
    dest[layout.pickle.clone()].copy_from_slice(pickle);
    for (range, buffer) in layout.buffers.iter().zip(buffers) {
        dest[range.clone()].copy_from_slice(buffer);
    }
}

/// Serializes into a new vector (for inline arguments).
pub fn to_vec(pickle: &[u8], buffers: &[&[u8]]) -> Vec<u8> {
    let lens: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
    let layout = layout(pickle.len(), &lens);
    let mut out = vec![0u8; layout.total];
    write(&mut out, &layout, pickle, buffers);
    out
}

fn read_u64(data: &[u8], at: usize) -> Result<u64, ValueError> {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(ValueError::Truncated { len: data.len() })
}

/// Finds the pickle and the buffers in `data`, checking every range against its length.
pub fn parse(data: &[u8]) -> Result<Layout, ValueError> {
    let len = data.len();
    let pickle_len = read_u64(data, 0)?;
    let count = read_u64(data, 8)?;
    let header = count
        .checked_mul(16)
        .and_then(|n| n.checked_add(16))
        .filter(|n| *n <= len as u64)
        .ok_or(ValueError::Truncated { len })?;
    let check = |what, start: u64, size: u64| {
        let end = start.checked_add(size).filter(|e| *e <= len as u64);
        match end {
            Some(end) => Ok(start as usize..end as usize),
            None => Err(ValueError::OutOfBounds {
                what,
                start,
                end: start.saturating_add(size),
                len,
            }),
        }
    };
    let pickle = check("the pickle", header, pickle_len)?;
    let mut buffers = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let start = read_u64(data, 16 + 16 * i)?;
        let size = read_u64(data, 24 + 16 * i)?;
        buffers.push(check("a buffer", start, size)?);
    }
    Ok(Layout {
        total: len,
        pickle,
        buffers,
    })
}

/// The kind of an error object, if `metadata` marks one.
pub fn error_kind(metadata: &[u8]) -> Option<&str> {
    metadata
        .strip_prefix(META_ERROR_PREFIX)
        .and_then(|k| std::str::from_utf8(k).ok())
}

/// The metadata of an error object of `kind`.
pub fn error_metadata(kind: &str) -> Vec<u8> {
    [META_ERROR_PREFIX, kind.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_aligned_buffers() {
        let buffers: [&[u8]; 3] = [&[1, 2, 3], &[], &[9; 100]];
        let data = to_vec(b"pickle!", &buffers);
        let parsed = parse(&data).unwrap();
        assert_eq!(&data[parsed.pickle.clone()], b"pickle!");
        for (range, expected) in parsed.buffers.iter().zip(buffers) {
            assert_eq!(&data[range.clone()], expected);
            if !expected.is_empty() {
                assert_eq!(range.start % BUFFER_ALIGN, 0);
            }
        }
        assert_eq!(parse(&to_vec(b"", &[])).unwrap().buffers.len(), 0);
    }

    #[test]
    fn malformed_layouts_are_refused() {
        assert_eq!(parse(&[1, 2]), Err(ValueError::Truncated { len: 2 }));
        let mut data = to_vec(b"abc", &[&[1; 10]]);
        data[0] = 200;
        assert!(matches!(
            parse(&data),
            Err(ValueError::OutOfBounds {
                what: "the pickle",
                ..
            })
        ));
        let mut data = to_vec(b"abc", &[]);
        data[8] = 255;
        assert!(matches!(parse(&data), Err(ValueError::Truncated { .. })));
        let mut data = to_vec(b"abc", &[&[1; 10]]);
        data[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&data),
            Err(ValueError::OutOfBounds {
                what: "a buffer",
                ..
            })
        ));
    }

    #[test]
    fn error_metadata_round_trips() {
        assert_eq!(
            error_kind(&error_metadata(ERROR_WORKER_DIED)),
            Some(ERROR_WORKER_DIED)
        );
        assert_eq!(error_kind(META_PICKLE5), None);
    }
}
