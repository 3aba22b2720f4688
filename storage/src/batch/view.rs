//! `Batch`: a verified, zero-copy view of one encoded batch, and its record iterator.

use bytes::Bytes;

use super::compression::decompress;
use super::header::BatchHeader;
use super::record::{Record, RecordContext, decode_record};
use crate::error::DecodeError;
use crate::limits::{BATCH_HEADER_LEN, DECOMPRESSED_BYTES_MAX};

/// One encoded batch whose header CRC and records CRC have been verified.
///
/// Holding a `Batch` is proof the bytes passed both CRCs. Cloning is cheap (`Bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Decodes exactly one batch that fills `bytes`, verifying both CRCs.
    pub fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        let batch = Self::decode_first(&bytes)?;
        if batch.bytes.len() != bytes.len() {
            return Err(DecodeError::InvalidHeader("bytes after the batch"));
        }
        Ok(batch)
    }

    /// Decodes the first batch at the front of `bytes`; the rest is left for the caller.
    pub fn decode_first(bytes: &Bytes) -> Result<Self, DecodeError> {
        let header = BatchHeader::decode(bytes)?;
        let len = header.batch_len();
        if (bytes.len() as u64) < len {
            return Err(DecodeError::Truncated {
                needed: len,
                available: bytes.len() as u64,
            });
        }
        let bytes = bytes.slice(..len as usize);
        let computed = crc32fast::hash(bytes.get(BATCH_HEADER_LEN..).unwrap_or_default());
        if computed != header.records_crc {
            return Err(DecodeError::RecordsCrc {
                stored: header.records_crc,
                computed,
            });
        }
        Ok(Self { header, bytes })
    }

    /// The verified header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole encoded batch.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the batch holds no records (control or compacted-empty).
    pub fn is_empty(&self) -> bool {
        self.header.record_count == 0
    }

    /// The records section as stored (compressed if the batch is compressed).
    pub fn stored_records(&self) -> Bytes {
        self.bytes.slice(BATCH_HEADER_LEN..)
    }

    /// Iterates the records, decompressing first if needed (bounded by
    /// `DECOMPRESSED_BYTES_MAX`). Each item is a record or the first decoding error.
    pub fn records(&self) -> Result<RecordIter, DecodeError> {
        let codec = self.header.attributes.compression();
        let records = decompress(codec, &self.stored_records(), DECOMPRESSED_BYTES_MAX)?;
        if self.header.record_count as usize > records.len() {
            return Err(DecodeError::InvalidHeader(
                "record count exceeds records section",
            ));
        }
        Ok(RecordIter {
            records,
            position: 0,
            next_index: 0,
            header: self.header,
            last_delta: None,
            failed: false,
        })
    }

    /// Decodes all records, or the first error.
    pub fn records_vec(&self) -> Result<Vec<Record>, DecodeError> {
        self.records()?.collect()
    }
}

/// Iterator over a batch's records. Yields exactly `record_count` records, then checks that
/// nothing trails them; stops after the first error.
#[derive(Debug)]
pub struct RecordIter {
    records: Bytes,
    position: usize,
    next_index: u32,
    header: BatchHeader,
    last_delta: Option<u64>,
    failed: bool,
}

impl RecordIter {
    fn next_record(&mut self) -> Result<Record, DecodeError> {
        let ctx = RecordContext {
            records: &self.records,
            base_offset: self.header.base_offset,
            first_timestamp: self.header.first_timestamp,
            last_offset_delta: self.header.last_offset_delta,
        };
        let (record, end) = decode_record(&ctx, self.position, self.next_index)?;
        let delta = record.offset - self.header.base_offset;
        if self.last_delta.is_some_and(|last| delta <= last) {
            return Err(DecodeError::MalformedRecord {
                index: self.next_index,
                reason: "offset deltas not increasing",
            });
        }
        self.last_delta = Some(delta);
        self.position = end;
        self.next_index += 1;
        Ok(record)
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.next_index == self.header.record_count {
            if self.position == self.records.len() {
                return None;
            }
            self.failed = true;
            return Some(Err(DecodeError::InvalidHeader(
                "bytes after the last record",
            )));
        }
        let item = self.next_record();
        self.failed = item.is_err();
        Some(item)
    }
}
