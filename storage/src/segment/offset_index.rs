//! The sparse offset index: one entry per `index_interval_bytes` of log, keyed by both the
//! batch's offset and its Raft index (both monotonic), pointing at the batch's position.

use bytes::BufMut;

use crate::cursor::Cursor;
use crate::error::DecodeError;

/// One index entry; 12 bytes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Batch base offset minus the segment's base offset.
    pub(crate) relative_offset: u32,
    /// Batch Raft index minus the segment's first Raft index.
    pub(crate) relative_raft_index: u32,
    /// Byte position of the batch in the segment file.
    pub(crate) position: u32,
}

/// Bytes per encoded entry.
pub(crate) const INDEX_ENTRY_LEN: usize = 12;

/// The in-memory sparse index of one segment. Derived data: rebuilt from the log when
/// missing or inconsistent, never trusted over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<IndexEntry>,
    interval_bytes: u64,
    bytes_since_entry: u64,
}

impl OffsetIndex {
    /// An empty index adding an entry every `interval_bytes`.
    pub(crate) fn new(interval_bytes: u32) -> Self {
        Self {
            entries: Vec::new(),
            interval_bytes: u64::from(interval_bytes),
            bytes_since_entry: 0,
        }
    }

    /// Notes a batch appended at `entry.position`; returns whether an entry was added.
    pub(crate) fn on_append(&mut self, entry: IndexEntry, batch_len: u64) -> bool {
        let add = self.entries.is_empty() || self.bytes_since_entry >= self.interval_bytes;
        if add {
            debug_assert!(self.entries.last().is_none_or(|last| {
                last.position < entry.position
                    && last.relative_offset <= entry.relative_offset
                    && last.relative_raft_index <= entry.relative_raft_index
            }));
            self.entries.push(entry);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += batch_len;
        add
    }

    /// A position at or before the batch holding `relative_offset`.
    pub(crate) fn position_for_offset(&self, relative_offset: u32) -> u32 {
        let n = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        n.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }

    /// A position at or before the first batch whose Raft index is `relative_raft_index`.
    pub(crate) fn position_for_raft_index(&self, relative_raft_index: u32) -> u32 {
        // Strictly less: several batches share one Raft index, and the lookup must land
        // before the first of them.
        let n = self
            .entries
            .partition_point(|e| e.relative_raft_index < relative_raft_index);
        n.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }

    /// Bytes of log between entries.
    pub(crate) fn interval_bytes(&self) -> u32 {
        u32::try_from(self.interval_bytes).unwrap_or(u32::MAX)
    }

    /// The entries, oldest first.
    pub(crate) fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Encodes the entries as the index file body.
    pub(crate) fn encode_entries(&self, out: &mut Vec<u8>) {
        out.reserve(self.entries.len() * INDEX_ENTRY_LEN);
        for e in &self.entries {
            out.put_u32_le(e.relative_offset);
            out.put_u32_le(e.relative_raft_index);
            out.put_u32_le(e.position);
        }
    }

    /// Decodes `count` entries, checking they are monotonic and inside `log_len`.
    pub(crate) fn decode_entries(
        c: &mut Cursor<'_>,
        count: u32,
        interval_bytes: u32,
        log_len: u64,
    ) -> Result<Self, DecodeError> {
        let needed = count as usize * INDEX_ENTRY_LEN;
        if c.remaining() < needed {
            return Err(DecodeError::Truncated {
                needed: needed as u64,
                available: c.remaining() as u64,
            });
        }
        let mut index = Self::new(interval_bytes);
        for _ in 0..count {
            let e = IndexEntry {
                relative_offset: c.u32()?,
                relative_raft_index: c.u32()?,
                position: c.u32()?,
            };
            let monotonic = index.entries.last().is_none_or(|last| {
                last.position < e.position
                    && last.relative_offset <= e.relative_offset
                    && last.relative_raft_index <= e.relative_raft_index
            });
            if !monotonic || u64::from(e.position) >= log_len {
                return Err(DecodeError::InvalidHeader(
                    "index entries not monotonic or beyond the log",
                ));
            }
            index.entries.push(e);
        }
        index.bytes_since_entry = index.interval_bytes;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u32, raft: u32, position: u32) -> IndexEntry {
        IndexEntry {
            relative_offset: offset,
            relative_raft_index: raft,
            position,
        }
    }

    #[test]
    fn lookups_land_at_or_before_the_target() {
        let mut index = OffsetIndex::new(100);
        // Batches of 60 bytes: an entry every second batch.
        for i in 0..10u32 {
            index.on_append(entry(i * 10, i / 2, i * 60), 60);
        }
        assert_eq!(index.entries().len(), 5);
        assert_eq!(index.position_for_offset(0), 0);
        assert_eq!(index.position_for_offset(25), 120);
        assert_eq!(index.position_for_offset(1000), 480);
        // Raft index 2 is shared by batches 4 and 5; the lookup must land before batch 4.
        assert_eq!(index.position_for_raft_index(2), 120);
        let mut bytes = Vec::new();
        index.encode_entries(&mut bytes);
        let decoded = OffsetIndex::decode_entries(&mut Cursor::new(&bytes), 5, 100, 600);
        assert_eq!(
            decoded.map(|d| d.entries().to_vec()),
            Ok(index.entries().to_vec())
        );
        assert!(OffsetIndex::decode_entries(&mut Cursor::new(&bytes), 5, 100, 300).is_err());
    }
}
