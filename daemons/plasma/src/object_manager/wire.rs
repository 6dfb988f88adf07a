//! The `Pull` stream's gRPC messages, encoded and decoded by hand so that a chunk's bytes
//! are never copied in user space: the server sends each payload straight from the
//! object's shared memory, and the puller writes each piece of it into its segment as it
//! arrives. tonic's codec would copy every chunk into a buffer on both ends, and those
//! two copies cost as much as the rest of the transfer (see docs/decisions.md).
//!
//! On the wire this is plain gRPC: each message is the 5-byte prefix (compression flag,
//! big-endian length) and an `ObjectChunk` in protobuf. The encoder writes its fields in
//! the order 1, 2, 3, 5, 4 (the payload last, so it can follow as a buffer of its own);
//! any order is valid protobuf, and the decoder takes any order except the sizes and
//! offset after the payload, which it needs before the payload's first byte.

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use rayd_common::proto::objectmanager::v1::PullRequest;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// The longest varint protobuf allows.
const MAX_VARINT: usize = 10;
/// The longest `PullRequest` a server takes.
pub const MAX_REQUEST: usize = 4 << 10;

/// `ObjectChunk` field numbers.
const DATA_SIZE: u32 = 1;
const METADATA_SIZE: u32 = 2;
const OFFSET: u32 = 3;
const PAYLOAD: u32 = 4;
const CRC32C: u32 = 5;

/// Why bytes on the wire are not a valid `Pull` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("compressed messages are not supported")]
    Compressed,
    #[error("a message of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("a message ends inside field {field}")]
    Truncated { field: u32 },
    #[error("field {field} has wire type {wire}, expected {expected}")]
    WireType {
        field: u32,
        wire: u64,
        expected: u64,
    },
    #[error("unsupported wire type {wire} in field {field}")]
    UnknownWireType { field: u32, wire: u64 },
    #[error("a varint is longer than 10 bytes")]
    Varint,
    #[error("field {field} comes after the payload")]
    AfterPayload { field: u32 },
    #[error("the payload appears twice in one message")]
    TwoPayloads,
    #[error("field {field} does not fit its 32 bits")]
    Overflow { field: u32 },
    #[error("field number 0 is not valid protobuf")]
    FieldZero,
    #[error("the stream ends inside a message")]
    EndsInsideMessage,
    #[error("invalid request: {0}")]
    Request(String),
}

/// The fields of one `ObjectChunk` that come before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkStart {
    pub data_size: u64,
    pub metadata_size: u64,
    /// Offset of the chunk in data || metadata.
    pub offset: u64,
}

/// The prefix and every field of a chunk up to its payload's bytes, which the caller
/// sends next (`payload_len` of them), as they are.
pub fn chunk_head(start: &ChunkStart, crc32c: u32, payload_len: usize) -> Bytes {
    let len = payload_len as u64;
    let mut fields = BytesMut::with_capacity(64);
    for (field, value) in [
        (DATA_SIZE, start.data_size),
        (METADATA_SIZE, start.metadata_size),
        (OFFSET, start.offset),
        (CRC32C, u64::from(crc32c)),
    ] {
        encode_key(field, WireType::Varint, &mut fields);
        encode_varint(value, &mut fields);
    }
    encode_key(PAYLOAD, WireType::LengthDelimited, &mut fields);
    encode_varint(len, &mut fields);
    let message_len = fields.len() as u64 + len;
    let mut head = BytesMut::with_capacity(PREFIX + fields.len());
    head.put_u8(0);
    // A chunk is at most the configured chunk size, far below 4 GiB.
    head.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
    head.put_slice(&fields);
    head.freeze()
}

/// One gRPC message holding `message` (a request, as a client sends it).
pub fn encode_message(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode(&mut buf).expect("the buffer has room");
    buf.freeze()
}

/// The one `PullRequest` in a request body.
pub fn decode_request(mut body: Bytes) -> Result<PullRequest, WireError> {
    if body.len() < PREFIX {
        return Err(WireError::Request(format!(
            "a body of {} bytes holds no message",
            body.len()
        )));
    }
    if body[0] != 0 {
        return Err(WireError::Compressed);
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if len != body.len() {
        return Err(WireError::Request(format!(
            "the message says {len} bytes where the body has {}",
            body.len()
        )));
    }
    PullRequest::decode(body).map_err(|e| WireError::Request(e.to_string()))
}

/// What the decoder found next in a stream of chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A chunk begins (its payload, if any, follows).
    Start(ChunkStart),
    /// The next bytes of the current chunk's payload.
    Payload(Bytes),
    /// The current chunk ends; its CRC-32C, as sent.
    End { crc32c: u32 },
}

/// Where the decoder is inside the current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefix,
    Key,
    Value { field: u32, wire: u64 },
    Payload(usize),
    Skip { field: u32, left: usize },
}

/// Turns the data frames of a `Pull` response, cut anywhere, into [`Piece`]s. Payload
/// pieces share the frames' buffers.
#[derive(Debug)]
pub struct ChunkDecoder {
    limit: usize,
    input: Bytes,
    stage: Stage,
    /// Bytes of a prefix or varint that began in an earlier frame.
    scratch: Vec<u8>,
    /// Bytes of the current message not yet consumed.
    left: usize,
    start: ChunkStart,
    crc32c: u32,
    started: bool,
}

impl ChunkDecoder {
    /// A decoder refusing messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            input: Bytes::new(),
            stage: Stage::Prefix,
            scratch: Vec::with_capacity(MAX_VARINT),
            left: 0,
            start: ChunkStart::default(),
            crc32c: 0,
            started: false,
        }
    }

    /// Adds the next data frame; call only once [`Self::next_piece`] has returned `None`.
    pub fn feed(&mut self, data: Bytes) {
        debug_assert!(self.input.is_empty(), "fed before the last frame was used");
        self.input = data;
    }

    /// Whether the stream may end here (between messages).
    pub fn at_boundary(&self) -> bool {
        self.stage == Stage::Prefix && self.scratch.is_empty() && self.input.is_empty()
    }

    /// The next piece from the frames fed so far, or `None` when it needs another frame.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, WireError> {
        loop {
            match self.stage {
                Stage::Prefix => {
                    if !self.fill_scratch(PREFIX) {
                        return Ok(None);
                    }
                    if self.scratch[0] != 0 {
                        return Err(WireError::Compressed);
                    }
                    let len = u32::from_be_bytes([
                        self.scratch[1],
                        self.scratch[2],
                        self.scratch[3],
                        self.scratch[4],
                    ]) as usize;
                    self.scratch.clear();
                    if len > self.limit {
                        return Err(WireError::TooLarge {
                            len,
                            limit: self.limit,
                        });
                    }
                    self.left = len;
                    self.start = ChunkStart::default();
                    self.crc32c = 0;
                    self.started = false;
                    self.stage = Stage::Key;
                }
                Stage::Key => {
                    if self.left == 0 {
                        if !self.started {
                            // A chunk without payload (an empty object): it starts and
                            // ends here.
                            self.started = true;
                            return Ok(Some(Piece::Start(self.start)));
                        }
                        self.stage = Stage::Prefix;
                        return Ok(Some(Piece::End {
                            crc32c: self.crc32c,
                        }));
                    }
                    let Some(key) = self.varint(0)? else {
                        return Ok(None);
                    };
                    let field = u32::try_from(key >> 3).unwrap_or(u32::MAX);
                    if field == 0 {
                        return Err(WireError::FieldZero);
                    }
                    self.stage = Stage::Value {
                        field,
                        wire: key & 7,
                    };
                }
                Stage::Value { field, wire } => {
                    if let Some(piece) = self.value(field, wire)? {
                        return Ok(Some(piece));
                    }
                    if matches!(self.stage, Stage::Value { .. }) {
                        return Ok(None);
                    }
                }
                Stage::Payload(0) => self.stage = Stage::Key,
                Stage::Payload(left) => {
                    if self.input.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(self.input.len());
                    let piece = self.input.split_to(take);
                    self.left -= take;
                    self.stage = Stage::Payload(left - take);
                    return Ok(Some(Piece::Payload(piece)));
                }
                Stage::Skip { left: 0, .. } => self.stage = Stage::Key,
                Stage::Skip { field, left } => {
                    if self.input.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(self.input.len());
                    self.input.advance(take);
                    self.consume(take, field)?;
                    self.stage = Stage::Skip {
                        field,
                        left: left - take,
                    };
                }
            }
        }
    }

    /// Reads the value of `field`; `Some` when it is the payload's start.
    fn value(&mut self, field: u32, wire: u64) -> Result<Option<Piece>, WireError> {
        let expected = match field {
            DATA_SIZE | METADATA_SIZE | OFFSET | CRC32C => Some(WireType::Varint as u64),
            PAYLOAD => Some(WireType::LengthDelimited as u64),
            _ => None,
        };
        if let Some(expected) = expected.filter(|&e| e != wire) {
            return Err(WireError::WireType {
                field,
                wire,
                expected,
            });
        }
        match wire {
            0 => {
                let Some(value) = self.varint(field)? else {
                    return Ok(None);
                };
                if self.started && field != CRC32C && expected.is_some() {
                    return Err(WireError::AfterPayload { field });
                }
                match field {
                    DATA_SIZE => self.start.data_size = value,
                    METADATA_SIZE => self.start.metadata_size = value,
                    OFFSET => self.start.offset = value,
                    CRC32C => {
                        self.crc32c =
                            u32::try_from(value).map_err(|_| WireError::Overflow { field })?
                    }
                    _ => {}
                }
                self.stage = Stage::Key;
                Ok(None)
            }
            2 => {
                let Some(len) = self.varint(field)? else {
                    return Ok(None);
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > self.left {
                    return Err(WireError::Truncated { field });
                }
                if field != PAYLOAD {
                    self.stage = Stage::Skip { field, left: len };
                    return Ok(None);
                }
                if self.started {
                    return Err(WireError::TwoPayloads);
                }
                self.started = true;
                self.stage = Stage::Payload(len);
                Ok(Some(Piece::Start(self.start)))
            }
            1 => {
                self.stage = Stage::Skip { field, left: 8 };
                Ok(None)
            }
            5 => {
                self.stage = Stage::Skip { field, left: 4 };
                Ok(None)
            }
            _ => Err(WireError::UnknownWireType { field, wire }),
        }
    }

    /// Moves input into `scratch` until it holds `n` bytes; false when the input ran out.
    fn fill_scratch(&mut self, n: usize) -> bool {
        let take = (n - self.scratch.len()).min(self.input.len());
        self.scratch.extend_from_slice(&self.input[..take]);
        self.input.advance(take);
        self.scratch.len() == n
    }

    /// A varint of the current message (part of `field`, or a key for 0), across frames.
    fn varint(&mut self, field: u32) -> Result<Option<u64>, WireError> {
        while let Some(&byte) = self.input.first() {
            self.input.advance(1);
            self.consume(1, field)?;
            self.scratch.push(byte);
            if byte & 0x80 == 0 {
                let value = prost::encoding::decode_varint(&mut self.scratch.as_slice())
                    .map_err(|_| WireError::Varint)?;
                self.scratch.clear();
                return Ok(Some(value));
            }
            if self.scratch.len() == MAX_VARINT {
                return Err(WireError::Varint);
            }
        }
        Ok(None)
    }

    /// Counts `n` bytes of the current message as read.
    fn consume(&mut self, n: usize, field: u32) -> Result<(), WireError> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or(WireError::Truncated { field })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayd_common::proto::objectmanager::v1::ObjectChunk;

    fn prost_message(chunk: &ObjectChunk) -> Vec<u8> {
        encode_message(chunk).to_vec()
    }

    /// Decodes `stream` fed in frames of `cut` bytes: the pieces, payloads joined.
    fn decode(stream: &[u8], cut: usize) -> Result<Vec<Piece>, WireError> {
        let mut decoder = ChunkDecoder::new(1 << 20);
        let mut pieces: Vec<Piece> = Vec::new();
        for frame in stream.chunks(cut.max(1)) {
            decoder.feed(Bytes::copy_from_slice(frame));
            while let Some(piece) = decoder.next_piece()? {
                match (pieces.last_mut(), piece) {
                    (Some(Piece::Payload(joined)), Piece::Payload(more)) => {
                        *joined = [joined.as_ref(), more.as_ref()].concat().into();
                    }
                    (_, piece) => pieces.push(piece),
                }
            }
        }
        if !decoder.at_boundary() {
            return Err(WireError::EndsInsideMessage);
        }
        Ok(pieces)
    }

    fn chunk(offset: u64, payload: &[u8]) -> ObjectChunk {
        ObjectChunk {
            data_size: 1000,
            metadata_size: 7,
            offset,
            payload: Bytes::copy_from_slice(payload),
            crc32c: crc32c::crc32c(payload),
        }
    }

    fn pieces_of(chunk: &ObjectChunk) -> Vec<Piece> {
        let mut pieces = vec![Piece::Start(ChunkStart {
            data_size: chunk.data_size,
            metadata_size: chunk.metadata_size,
            offset: chunk.offset,
        })];
        if !chunk.payload.is_empty() {
            pieces.push(Piece::Payload(chunk.payload.clone()));
        }
        pieces.push(Piece::End {
            crc32c: chunk.crc32c,
        });
        pieces
    }

    #[test]
    fn a_hand_encoded_chunk_is_the_message_prost_decodes() {
        let payload = b"some bytes of an object";
        let start = ChunkStart {
            data_size: 1000,
            metadata_size: 7,
            offset: 300,
        };
        let mut wire = chunk_head(&start, 0xdead_beef, payload.len()).to_vec();
        wire.extend_from_slice(payload);
        let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!((wire[0], len), (0, wire.len() - PREFIX));
        let decoded = ObjectChunk::decode(&wire[PREFIX..]).unwrap();
        assert_eq!(
            decoded,
            ObjectChunk {
                data_size: 1000,
                metadata_size: 7,
                offset: 300,
                payload: Bytes::from_static(payload),
                crc32c: 0xdead_beef,
            }
        );
    }

    #[test]
    fn chunks_decode_however_the_frames_cut_them() {
        // prost's own encoding (the payload before the CRC, zero fields left out), an
        // empty chunk, and the hand encoding, one after another.
        let chunks = [chunk(0, b"first chunk"), chunk(11, b""), chunk(11, b"x")];
        let mut stream: Vec<u8> = chunks.iter().flat_map(prost_message).collect();
        let start = ChunkStart {
            data_size: 1000,
            metadata_size: 7,
            offset: 12,
        };
        stream.extend_from_slice(&chunk_head(&start, 42, 3));
        stream.extend_from_slice(b"end");
        let mut expected: Vec<Piece> = chunks.iter().flat_map(pieces_of).collect();
        expected.extend([
            Piece::Start(start),
            Piece::Payload(Bytes::from_static(b"end")),
            Piece::End { crc32c: 42 },
        ]);
        for cut in 1..=stream.len() {
            assert_eq!(decode(&stream, cut).unwrap(), expected, "frames of {cut}");
        }
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut message = Vec::new();
        encode_key(OFFSET, WireType::Varint, &mut message);
        encode_varint(5, &mut message);
        encode_key(9, WireType::LengthDelimited, &mut message);
        encode_varint(3, &mut message);
        message.extend_from_slice(b"abc");
        encode_key(10, WireType::SixtyFourBit, &mut message);
        message.extend_from_slice(&[0; 8]);
        encode_key(11, WireType::ThirtyTwoBit, &mut message);
        message.extend_from_slice(&[0; 4]);
        let mut stream = vec![0];
        stream.extend_from_slice(&(message.len() as u32).to_be_bytes());
        stream.extend_from_slice(&message);
        for cut in 1..=stream.len() {
            assert_eq!(
                decode(&stream, cut).unwrap(),
                vec![
                    Piece::Start(ChunkStart {
                        offset: 5,
                        ..ChunkStart::default()
                    }),
                    Piece::End { crc32c: 0 }
                ]
            );
        }
    }

    /// A stream holding one message of `fields`.
    fn message(fields: &[u8]) -> Vec<u8> {
        let mut stream = vec![0];
        stream.extend_from_slice(&(fields.len() as u32).to_be_bytes());
        stream.extend_from_slice(fields);
        stream
    }

    #[test]
    fn malformed_streams_are_refused() {
        let good = prost_message(&chunk(0, b"abc"));
        let mut compressed = good.clone();
        compressed[0] = 1;
        assert_eq!(decode(&compressed, 100), Err(WireError::Compressed));
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&huge, 100),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(
            decode(&good[..good.len() - 1], 100),
            Err(WireError::EndsInsideMessage)
        );

        let mut payload_too_long = Vec::new();
        encode_key(PAYLOAD, WireType::LengthDelimited, &mut payload_too_long);
        encode_varint(100, &mut payload_too_long);
        payload_too_long.extend_from_slice(b"short");
        assert_eq!(
            decode(&message(&payload_too_long), 100),
            Err(WireError::Truncated { field: PAYLOAD })
        );

        let mut offset_after_payload = Vec::new();
        encode_key(
            PAYLOAD,
            WireType::LengthDelimited,
            &mut offset_after_payload,
        );
        encode_varint(1, &mut offset_after_payload);
        offset_after_payload.push(b'x');
        encode_key(OFFSET, WireType::Varint, &mut offset_after_payload);
        encode_varint(9, &mut offset_after_payload);
        assert_eq!(
            decode(&message(&offset_after_payload), 100),
            Err(WireError::AfterPayload { field: OFFSET })
        );

        let mut wrong_type = Vec::new();
        encode_key(OFFSET, WireType::LengthDelimited, &mut wrong_type);
        encode_varint(0, &mut wrong_type);
        assert!(matches!(
            decode(&message(&wrong_type), 100),
            Err(WireError::WireType { field: OFFSET, .. })
        ));

        let mut wide_crc = Vec::new();
        encode_key(CRC32C, WireType::Varint, &mut wide_crc);
        encode_varint(1 << 40, &mut wide_crc);
        assert_eq!(
            decode(&message(&wide_crc), 100),
            Err(WireError::Overflow { field: CRC32C })
        );

        let endless_varint = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(decode(&message(&endless_varint), 3), Err(WireError::Varint));

        assert_eq!(
            decode(&message(&[0x00, 0x01]), 100),
            Err(WireError::FieldZero)
        );

        let group = [(7 << 3) | 3];
        assert!(matches!(
            decode(&message(&group), 100),
            Err(WireError::UnknownWireType { field: 7, wire: 3 })
        ));
    }

    #[test]
    fn requests_round_trip_and_bad_bodies_are_refused() {
        let request = PullRequest {
            object_id: vec![7; 20],
            chunk_size: 1 << 20,
            offset: 5,
            length: 9,
        };
        assert_eq!(decode_request(encode_message(&request)).unwrap(), request);
        assert!(decode_request(Bytes::from_static(b"\0\0")).is_err());
        assert_eq!(
            decode_request(Bytes::from_static(b"\x01\0\0\0\0")),
            Err(WireError::Compressed)
        );
        assert!(decode_request(Bytes::from_static(b"\0\0\0\0\x09abc")).is_err());
        assert!(decode_request(Bytes::from_static(b"\0\0\0\0\x02\xff\xff")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The object manager's stream against any bytes in any frames (a fuzz target):
        /// pieces or a clean error, never a panic; the decoder keeps no more than a prefix
        /// or a varint of its own (payloads share the frames), and payloads never exceed
        /// the message limit.
        #[test]
        fn any_stream_decodes_or_fails_cleanly(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cut in 1usize..600,
            limit in 0usize..2048,
        ) {
            let mut decoder = ChunkDecoder::new(limit);
            let mut payload = 0usize;
            'feed: for frame in data.chunks(cut) {
                decoder.feed(Bytes::copy_from_slice(frame));
                loop {
                    match decoder.next_piece() {
                        Ok(Some(Piece::Payload(bytes))) => {
                            payload += bytes.len();
                            proptest::prop_assert!(payload <= limit);
                        }
                        Ok(Some(Piece::Start(_) | Piece::End { .. })) => payload = 0,
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                proptest::prop_assert!(decoder.scratch.len() <= PREFIX.max(MAX_VARINT));
            }
        }
    }
}
