//! Rewriting one batch without the records the key map has superseded.

use bytes::{BufMut, Bytes, BytesMut};

use super::key_map::KeyMap;
use crate::batch::{Batch, BatchHeader, Record, RecordFields, compress, encode_record};
use crate::error::DecodeError;
use crate::limits::BATCH_HEADER_LEN;

/// Which records a cleaning pass drops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CleanRule<'a> {
    pub(crate) keys: &'a KeyMap,
    /// Tombstones with timestamps below this are dropped once they are the newest record.
    pub(crate) tombstone_cutoff_ms: i64,
}

/// Counts of what a rewrite dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) records: u64,
    pub(crate) tombstones: u64,
}

impl CleanRule<'_> {
    /// Whether `record` survives, and if not, whether it was a tombstone.
    fn keeps(&self, record: &Record) -> (bool, bool) {
        let Some(key) = &record.key else {
            return (true, false);
        };
        let superseded = self
            .keys
            .latest(key)
            .is_some_and(|latest| latest > record.offset);
        if superseded {
            return (false, record.value.is_none());
        }
        let expired_tombstone =
            record.value.is_none() && record.timestamp < self.tombstone_cutoff_ms;
        (!expired_tombstone, expired_tombstone)
    }
}

/// The batch without dropped records, or `None` if nothing was dropped (the caller copies
/// the original bytes). An emptied batch keeps its header with `record_count = 0`, its
/// offset range and Raft index, so offsets and Raft indexes stay contiguous.
pub(crate) fn rewrite_batch(
    batch: &Batch,
    rule: &CleanRule<'_>,
    dropped: &mut Dropped,
) -> Result<Option<Bytes>, DecodeError> {
    let header = batch.header();
    if header.record_count == 0 || header.attributes.is_control() {
        return Ok(None);
    }
    let records = batch.records_vec()?;
    let mut kept = Vec::with_capacity(records.len());
    for record in records {
        match rule.keeps(&record) {
            (true, _) => kept.push(record),
            (false, tombstone) => {
                dropped.records += 1;
                dropped.tombstones += u64::from(tombstone);
            }
        }
    }
    if kept.len() == header.record_count as usize {
        return Ok(None);
    }
    Ok(Some(encode_kept(header, &kept)))
}

fn encode_kept(header: &BatchHeader, kept: &[Record]) -> Bytes {
    let mut encoded = Vec::new();
    for record in kept {
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|h| (h.key.as_ref(), h.value.as_deref()))
            .collect();
        let fields = RecordFields {
            offset_delta: i32::try_from(record.offset - header.base_offset).unwrap_or(i32::MAX),
            timestamp_delta: record.timestamp.wrapping_sub(header.first_timestamp),
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
        };
        encode_record(&mut encoded, &fields);
    }
    let stored = compress(header.attributes.compression(), &encoded);
    let rewritten = BatchHeader {
        record_count: kept.len() as u32,
        records_len: stored.len() as u32,
        records_crc: crc32fast::hash(&stored),
        ..*header
    };
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + stored.len());
    out.put_slice(&rewritten.encode());
    out.put_slice(&stored);
    out.freeze()
}
