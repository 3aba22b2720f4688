//! The cleaner's map from key to the offset of its newest record in the dirty range.

use std::collections::HashMap;

use bytes::Bytes;

/// Per-entry bookkeeping cost on top of the key bytes, for the memory budget.
const ENTRY_OVERHEAD_BYTES: usize = 48;

/// Key → newest offset, with a memory budget. Keys are `Bytes` slices of the segments.
#[derive(Debug, Default)]
pub(crate) struct KeyMap {
    latest: HashMap<Bytes, u64>,
    bytes_used: usize,
}

impl KeyMap {
    /// Records that `key` was written at `offset` (later offsets replace earlier ones).
    pub(crate) fn insert(&mut self, key: Bytes, offset: u64) {
        let len = key.len();
        match self.latest.insert(key, offset) {
            Some(previous) => debug_assert!(previous < offset, "offsets increase through the log"),
            None => self.bytes_used += len + ENTRY_OVERHEAD_BYTES,
        }
    }

    /// The newest offset of `key` in the dirty range, if it occurs there.
    pub(crate) fn latest(&self, key: &[u8]) -> Option<u64> {
        self.latest.get(key).copied()
    }

    /// Memory used, approximately.
    pub(crate) fn bytes_used(&self) -> usize {
        self.bytes_used
    }
}
