//! The sparse time index: (largest timestamp so far, batch offset) pairs for finding the
//! first offset at or after a timestamp without scanning the whole segment.

use bytes::BufMut;

use crate::cursor::Cursor;
use crate::error::DecodeError;

/// One time-index entry; 12 bytes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest record timestamp of this batch and every earlier batch in the segment.
    pub(crate) max_timestamp: i64,
    /// Base offset of the batch, relative to the segment.
    pub(crate) relative_offset: u32,
}

/// The in-memory time index of one segment. Derived data, like the offset index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Records `entry` if it raises the largest timestamp seen.
    pub(crate) fn maybe_add(&mut self, entry: TimeEntry) {
        if self
            .entries
            .last()
            .is_none_or(|last| entry.max_timestamp > last.max_timestamp)
        {
            self.entries.push(entry);
        }
    }

    /// A relative offset at or before the first record with a timestamp `>= timestamp`.
    pub(crate) fn offset_at_or_before(&self, timestamp: i64) -> u32 {
        // Every batch up to an entry's batch has timestamps <= that entry's, so the answer
        // lies at or after the last entry still below the target.
        let n = self
            .entries
            .partition_point(|e| e.max_timestamp < timestamp);
        n.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.relative_offset)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Encodes the entries as the time index file body.
    pub(crate) fn encode_entries(&self, out: &mut Vec<u8>) {
        for e in &self.entries {
            out.put_i64_le(e.max_timestamp);
            out.put_u32_le(e.relative_offset);
        }
    }

    /// Decodes `count` entries, checking both columns are monotonic.
    pub(crate) fn decode_entries(c: &mut Cursor<'_>, count: u32) -> Result<Self, DecodeError> {
        if c.remaining() < count as usize * 12 {
            return Err(DecodeError::Truncated {
                needed: u64::from(count) * 12,
                available: c.remaining() as u64,
            });
        }
        let mut index = Self::default();
        for _ in 0..count {
            let e = TimeEntry {
                max_timestamp: c.i64()?,
                relative_offset: c.u32()?,
            };
            if index.entries.last().is_some_and(|l| {
                l.max_timestamp >= e.max_timestamp || l.relative_offset > e.relative_offset
            }) {
                return Err(DecodeError::InvalidHeader("time index not monotonic"));
            }
            index.entries.push(e);
        }
        Ok(index)
    }
}
