//! The fixed 85-byte batch header: broker-assigned fields, header CRC, producer fields.

use bytes::BufMut;

use super::compression::Compression;
use crate::cursor::Cursor;
use crate::error::DecodeError;
use crate::limits::{BATCH_HEADER_LEN, RECORDS_BYTES_MAX};

/// The only batch format version this build writes and reads.
pub const MAGIC_V1: u8 = 1;

/// Byte position of `header_crc`; the CRC covers every header byte except these four.
const HEADER_CRC_AT: usize = 32;
/// Bytes of broker-assigned fields before the CRC: base offset and the Raft log id.
const ASSIGNED_LEN: usize = HEADER_CRC_AT;

const _: () = assert!(ASSIGNED_LEN == 8 + 8 + 8 + 8);
const _: () =
    assert!(BATCH_HEADER_LEN == ASSIGNED_LEN + 4 + 1 + 2 + 4 + 4 + 8 + 8 + 8 + 2 + 4 + 4 + 4);

/// The Raft log id of the entry a batch belongs to. Batches of one entry share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RaftPosition {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Node id of that leader.
    pub leader: u64,
    /// Index of the entry in the Raft log.
    pub index: u64,
}

/// The `attributes` bit field: codec, timestamp type, transactional (reserved), control,
/// and whether more batches of the same Raft entry follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes(u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0b111;
    const LOG_APPEND_TIME: u16 = 1 << 3;
    const TRANSACTIONAL: u16 = 1 << 4;
    const CONTROL: u16 = 1 << 5;
    const ENTRY_CONTINUES: u16 = 1 << 6;
    /// Bits this version defines; anything else set is rejected. Transactions are reserved.
    const KNOWN: u16 =
        Self::COMPRESSION_MASK | Self::LOG_APPEND_TIME | Self::CONTROL | Self::ENTRY_CONTINUES;

    /// Attributes for a data batch with `compression`.
    pub fn new(compression: Compression) -> Self {
        Self(u16::from(compression.code()))
    }

    /// Validates raw bits as read from a header.
    pub fn from_bits(bits: u16) -> Result<Self, DecodeError> {
        if bits & !Self::KNOWN != 0 {
            return Err(DecodeError::ReservedAttributes(bits & !Self::KNOWN));
        }
        let code = (bits & Self::COMPRESSION_MASK) as u8;
        Compression::from_code(code)?;
        debug_assert_eq!(bits & Self::TRANSACTIONAL, 0);
        Ok(Self(bits))
    }

    /// The raw bits.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The codec of the records section.
    pub fn compression(self) -> Compression {
        // from_bits and new only admit known codes.
        Compression::from_code((self.0 & Self::COMPRESSION_MASK) as u8).unwrap_or(Compression::None)
    }

    /// Whether this is a control batch (Raft blank/membership entry): it takes no offsets.
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }

    /// These attributes with the control bit set.
    pub fn with_control(self) -> Self {
        Self(self.0 | Self::CONTROL)
    }

    /// Whether more batches of the same Raft entry follow this one: set by the log on append,
    /// so recovery can tell an entry cut between its batches from a whole one.
    pub fn entry_continues(self) -> bool {
        self.0 & Self::ENTRY_CONTINUES != 0
    }

    /// These attributes with the entry-continues bit set to `continues`.
    pub fn with_entry_continues(self, continues: bool) -> Self {
        if continues {
            Self(self.0 | Self::ENTRY_CONTINUES)
        } else {
            Self(self.0 & !Self::ENTRY_CONTINUES)
        }
    }

    /// Whether timestamps are the broker's append time rather than the producer's.
    pub fn is_log_append_time(self) -> bool {
        self.0 & Self::LOG_APPEND_TIME != 0
    }
}

/// A decoded batch header. Constructed only by decoding verified bytes or by the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record; assigned by the log on append.
    pub base_offset: u64,
    /// Raft log id of the entry; assigned by the partition leader.
    pub raft: RaftPosition,
    /// Format version (`MAGIC_V1`).
    pub magic: u8,
    /// Codec and flags.
    pub attributes: Attributes,
    /// Records in the records section (0 after compaction emptied the batch).
    pub record_count: u32,
    /// Offset of the last record relative to `base_offset`; kept by compaction.
    pub last_offset_delta: u32,
    /// Timestamp of the first record; others are stored as deltas to it.
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or `u64::MAX` when none.
    pub producer_id: u64,
    /// Producer epoch, fencing older instances of the same producer id.
    pub producer_epoch: u16,
    /// Sequence number of the first record for the idempotent producer.
    pub base_sequence: u32,
    /// Length of the records section as stored (compressed if compressed).
    pub records_len: u32,
    /// crc32 of the records section as stored; set by the producer, verified end to end.
    pub records_crc: u32,
}

impl BatchHeader {
    /// Total length of the batch: header plus records section.
    pub fn batch_len(&self) -> u64 {
        BATCH_HEADER_LEN as u64 + u64::from(self.records_len)
    }

    /// How many offsets the batch occupies: none for control batches.
    pub fn offset_count(&self) -> u64 {
        if self.attributes.is_control() {
            0
        } else {
            u64::from(self.last_offset_delta) + 1
        }
    }

    /// The offset after this batch's last offset.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.offset_count()
    }

    /// Encodes the header, computing `header_crc`.
    pub fn encode(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut out = [0u8; BATCH_HEADER_LEN];
        {
            let mut w = &mut out[..];
            w.put_u64_le(self.base_offset);
            w.put_u64_le(self.raft.term);
            w.put_u64_le(self.raft.leader);
            w.put_u64_le(self.raft.index);
            w.put_u32_le(0);
            w.put_u8(self.magic);
            w.put_u16_le(self.attributes.bits());
            w.put_u32_le(self.record_count);
            w.put_u32_le(self.last_offset_delta);
            w.put_i64_le(self.first_timestamp);
            w.put_i64_le(self.max_timestamp);
            w.put_u64_le(self.producer_id);
            w.put_u16_le(self.producer_epoch);
            w.put_u32_le(self.base_sequence);
            w.put_u32_le(self.records_len);
            w.put_u32_le(self.records_crc);
            debug_assert!(w.is_empty());
        }
        write_header_crc(&mut out);
        out
    }

    /// Decodes and verifies a header from the front of `buf` (header CRC, version, fields).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(buf);
        let raw = c.take(BATCH_HEADER_LEN)?;
        let mut c = Cursor::new(raw);
        let base_offset = c.u64()?;
        let raft = RaftPosition {
            term: c.u64()?,
            leader: c.u64()?,
            index: c.u64()?,
        };
        let stored_crc = c.u32()?;
        let computed = header_crc(raw);
        if stored_crc != computed {
            return Err(DecodeError::HeaderCrc {
                stored: stored_crc,
                computed,
            });
        }
        let magic = c.u8()?;
        if magic != MAGIC_V1 {
            return Err(DecodeError::UnsupportedVersion(magic));
        }
        let header = Self {
            base_offset,
            raft,
            magic,
            attributes: Attributes::from_bits(c.u16()?)?,
            record_count: c.u32()?,
            last_offset_delta: c.u32()?,
            first_timestamp: c.i64()?,
            max_timestamp: c.i64()?,
            producer_id: c.u64()?,
            producer_epoch: c.u16()?,
            base_sequence: c.u32()?,
            records_len: c.u32()?,
            records_crc: c.u32()?,
        };
        header.check_fields()?;
        Ok(header)
    }

    fn check_fields(&self) -> Result<(), DecodeError> {
        if self.records_len > RECORDS_BYTES_MAX {
            let (len, max) = (u64::from(self.records_len), u64::from(RECORDS_BYTES_MAX));
            return Err(DecodeError::TooLarge {
                what: "records section",
                len,
                max,
            });
        }
        if self.record_count > self.last_offset_delta.saturating_add(1) {
            return Err(DecodeError::InvalidHeader("more records than offsets"));
        }
        if self.attributes.is_control() && self.record_count == 0 && self.last_offset_delta != 0 {
            return Err(DecodeError::InvalidHeader(
                "control batch with an offset range",
            ));
        }
        if self.base_offset.checked_add(self.offset_count()).is_none() {
            return Err(DecodeError::InvalidHeader("offset range overflows"));
        }
        Ok(())
    }
}

/// Where the log stores a batch: its offset, the Raft entry it belongs to, and whether more
/// batches of that entry follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Log id of the Raft entry.
    pub raft: RaftPosition,
    /// Whether the entry goes on in the next batch (not its last batch).
    pub entry_continues: bool,
}

/// Byte position of `attributes` in the header.
const ATTRIBUTES_AT: usize = HEADER_CRC_AT + 4 + 1;

/// Rewrites the broker-assigned fields of an encoded batch and its header CRC: the offset,
/// the Raft log id, and the entry-continues bit of `attributes`.
///
/// The records section and its CRC stay as the producer wrote them, so integrity stays end
/// to end.
pub fn stamp_assigned_fields(header: &mut [u8; BATCH_HEADER_LEN], placement: Placement) {
    {
        let mut w = &mut header[..ASSIGNED_LEN];
        w.put_u64_le(placement.base_offset);
        w.put_u64_le(placement.raft.term);
        w.put_u64_le(placement.raft.leader);
        w.put_u64_le(placement.raft.index);
    }
    let bits = u16::from_le_bytes([header[ATTRIBUTES_AT], header[ATTRIBUTES_AT + 1]]);
    let bits = Attributes(bits)
        .with_entry_continues(placement.entry_continues)
        .bits();
    header[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&bits.to_le_bytes());
    write_header_crc(header);
}

fn write_header_crc(header: &mut [u8; BATCH_HEADER_LEN]) {
    let crc = header_crc(header);
    let mut w = &mut header[HEADER_CRC_AT..HEADER_CRC_AT + 4];
    w.put_u32_le(crc);
}

/// crc32 over the header with the CRC field itself skipped.
fn header_crc(raw: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(raw.get(..HEADER_CRC_AT).unwrap_or_default());
    hasher.update(
        raw.get(HEADER_CRC_AT + 4..BATCH_HEADER_LEN)
            .unwrap_or_default(),
    );
    hasher.finalize()
}
