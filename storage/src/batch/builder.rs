//! `BatchBuilder`: how producers (the client SDK, tests, benchmarks) make batches.

use bytes::{BufMut, Bytes, BytesMut};

use super::compression::{Compression, compress};
use super::header::{Attributes, BatchHeader, MAGIC_V1, RaftPosition};
use super::record::{RecordFields, encode_record};
use crate::error::DecodeError;
use crate::limits::{BATCH_HEADER_LEN, RECORDS_BYTES_MAX};

/// A record to add to a batch. `value: None` is a tombstone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    /// The key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Timestamp in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Application headers as (name, value) pairs.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Producer identity for idempotent batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProducerFields {
    id: u64,
    epoch: u16,
    base_sequence: u32,
}

/// Accumulates records and encodes them as one batch with both CRCs.
///
/// Offsets and Raft fields are left zero: the log assigns them on append.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    control: bool,
    producer: ProducerFields,
    /// Header space (filled by `finish`), then the encoded records.
    buf: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

/// Producer id of a batch written without idempotence (Kafka uses -1).
pub const NO_PRODUCER_ID: u64 = u64::MAX;

impl BatchBuilder {
    /// An empty builder that will compress with `compression`.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            control: false,
            producer: ProducerFields {
                id: NO_PRODUCER_ID,
                epoch: 0,
                base_sequence: 0,
            },
            buf: vec![0; BATCH_HEADER_LEN],
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Marks the batch as an idempotent producer's, with its first sequence number.
    pub fn producer(mut self, id: u64, epoch: u16, base_sequence: u32) -> Self {
        self.producer = ProducerFields {
            id,
            epoch,
            base_sequence,
        };
        self
    }

    /// Sets (or replaces) the idempotent producer fields: a producer assigns sequence numbers
    /// when it sends a batch, and again if it must resend it under a fresh producer id.
    pub fn set_producer(&mut self, id: u64, epoch: u16, base_sequence: u32) {
        self.producer = ProducerFields {
            id,
            epoch,
            base_sequence,
        };
    }

    /// Marks the batch as a control batch: it takes no offsets and consumers skip it.
    pub fn control(mut self) -> Self {
        self.control = true;
        self
    }

    /// Appends a record; its offset delta is its position in the batch.
    pub fn push(&mut self, record: NewRecord<'_>) {
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
        }
        let fields = RecordFields {
            offset_delta: i32::try_from(self.count).unwrap_or(i32::MAX),
            timestamp_delta: record.timestamp.wrapping_sub(self.first_timestamp),
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        encode_record(&mut self.buf, &fields);
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size before compression, header included: what producers compare with
    /// their `batch_bytes`.
    pub fn uncompressed_len(&self) -> usize {
        self.buf.len()
    }

    /// Encodes the batch, leaving the builder as it was. Fails if it is empty (and not a
    /// control batch) or too large.
    pub fn build(&self) -> Result<Bytes, DecodeError> {
        let (header, compressed) = self.seal()?;
        let stored = compressed.as_deref().unwrap_or(self.records());
        let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + stored.len());
        out.put_slice(&header.encode());
        out.put_slice(stored);
        Ok(out.freeze())
    }

    /// Encodes the batch, consuming the builder: uncompressed records are not copied again,
    /// the header goes into the space reserved in front of them.
    pub fn finish(mut self) -> Result<Bytes, DecodeError> {
        let (header, compressed) = self.seal()?;
        match compressed {
            None => {
                // The builder always starts `buf` with the header's length of space.
                if let Some(space) = self.buf.get_mut(..BATCH_HEADER_LEN) {
                    space.copy_from_slice(&header.encode());
                }
                Ok(Bytes::from(self.buf))
            }
            Some(stored) => {
                let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + stored.len());
                out.put_slice(&header.encode());
                out.put_slice(&stored);
                Ok(out.freeze())
            }
        }
    }

    /// The encoded records, after the reserved header space.
    fn records(&self) -> &[u8] {
        self.buf.get(BATCH_HEADER_LEN..).unwrap_or_default()
    }

    /// The header, and the compressed records section unless the batch is uncompressed.
    fn seal(&self) -> Result<(BatchHeader, Option<Vec<u8>>), DecodeError> {
        if self.count == 0 && !self.control {
            return Err(DecodeError::InvalidHeader(
                "a data batch needs at least one record",
            ));
        }
        let compressed = match self.compression {
            Compression::None => None,
            codec => Some(compress(codec, self.records())),
        };
        let stored = compressed.as_deref().unwrap_or(self.records());
        let records_len = u32::try_from(stored.len())
            .ok()
            .filter(|len| *len <= RECORDS_BYTES_MAX);
        let Some(records_len) = records_len else {
            let max = u64::from(RECORDS_BYTES_MAX);
            return Err(DecodeError::TooLarge {
                what: "records section",
                len: stored.len() as u64,
                max,
            });
        };
        let mut attributes = Attributes::new(self.compression);
        if self.control {
            attributes = attributes.with_control();
        }
        let header = BatchHeader {
            base_offset: 0,
            raft: RaftPosition::default(),
            magic: MAGIC_V1,
            attributes,
            record_count: self.count,
            last_offset_delta: self.count.saturating_sub(1),
            first_timestamp: self.first_timestamp,
            max_timestamp: if self.count == 0 {
                self.first_timestamp
            } else {
                self.max_timestamp
            },
            producer_id: self.producer.id,
            producer_epoch: self.producer.epoch,
            base_sequence: self.producer.base_sequence,
            records_len,
            records_crc: crc32fast::hash(stored),
        };
        Ok((header, compressed))
    }
}

/// A copy of an encoded batch under other idempotent producer fields (header CRC
/// recomputed, records untouched): how a producer resends a batch under a fresh producer id.
pub fn with_producer(
    batch: &[u8],
    id: u64,
    epoch: u16,
    base_sequence: u32,
) -> Result<Bytes, DecodeError> {
    let mut header = BatchHeader::decode(batch)?;
    header.producer_id = id;
    header.producer_epoch = epoch;
    header.base_sequence = base_sequence;
    let records = batch.get(BATCH_HEADER_LEN..).unwrap_or_default();
    let mut out = BytesMut::with_capacity(batch.len());
    out.put_slice(&header.encode());
    out.put_slice(records);
    Ok(out.freeze())
}
