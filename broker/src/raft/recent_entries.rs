//! The entries a group appended and has not applied yet, kept in memory.
//!
//! openraft reads every committed entry back from the log store before it applies it. On a
//! partition leader that read sat in the group's serial loop (append, fsync, commit, read
//! back, apply, answer) once per group commit: a hand-off to the blocking pool and back,
//! page faults on the fresh mapping and a CRC pass over every byte just written. The
//! entries are still in memory when they are appended, so the log store keeps them here
//! until the state machine has applied them; a read this cannot answer whole goes to the
//! log as before.
//!
//! Invariant: the entries held are the newest part of the log, with consecutive indexes,
//! and equal to what the log stores for them (a truncation or a reset drops them first).

use std::collections::VecDeque;
use std::sync::Mutex;

use openraft::EntryPayload;

use super::{Command, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Bytes held at most: the entry being applied and the next one, at the largest group
/// commit. Past that the oldest go (they read back from the log), so memory stays bounded
/// however far the state machine falls behind.
pub const RECENT_ENTRIES_BYTES_MAX: usize = 2 * crate::limits::GROUP_COMMIT_BYTES_MAX;
/// Entries held at most, for runs of small ones (blank, membership, controller).
pub const RECENT_ENTRIES_MAX: usize = 1024;
/// What an entry without batches counts for.
const SMALL_ENTRY_BYTES: usize = 64;

/// Recently appended, not yet applied entries of one group.
#[derive(Debug, Default)]
pub struct RecentEntries {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn entry_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(Command::Produce(p)) => p
            .batches
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .max(SMALL_ENTRY_BYTES),
        _ => SMALL_ENTRY_BYTES,
    }
}

impl Held {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&e);
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= entry_bytes(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl RecentEntries {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // The data is a cache: a panic elsewhere mid-update leaves at worst entries that
        // are dropped below, never wrong ones (each update keeps the invariant).
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records entries just written to the log (after the write succeeded).
    pub fn appended(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut held = self.held();
        if held
            .last_index()
            .is_some_and(|last| last + 1 != first.log_id.index)
        {
            // Not the continuation of what is held (an append failed part-way earlier):
            // start over rather than hold a gap.
            held.clear();
        }
        for entry in entries {
            held.bytes += entry_bytes(entry);
            held.entries.push_back(entry.clone());
        }
        while held.bytes > RECENT_ENTRIES_BYTES_MAX || held.entries.len() > RECENT_ENTRIES_MAX {
            held.pop_front();
        }
    }

    /// The entries with indexes in `[start, end)`, at most about `max_bytes` (at least one),
    /// if every one of them is held; `None` sends the caller to the log.
    pub fn get(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let held = self.held();
        let (first, last) = (held.first_index()?, held.last_index()?);
        if start >= end || start < first || end - 1 > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in held.entries.iter().skip(skip) {
            if entry.log_id.index >= end || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += entry_bytes(entry);
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Forgets entries up to and including `index`: applied, or purged from the log.
    pub fn forget_through(&self, index: u64) {
        let mut held = self.held();
        while held.first_index().is_some_and(|i| i <= index) {
            held.pop_front();
        }
    }

    /// Forgets entries from `index` on: the log is about to cut them.
    pub fn forget_from(&self, index: u64) {
        let mut held = self.held();
        while held.last_index().is_some_and(|i| i >= index) {
            held.pop_back();
        }
    }

    /// Forgets everything (the log was reset, or a snapshot replaced the state).
    pub fn clear(&self) {
        self.held().clear();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::{RECENT_ENTRIES_BYTES_MAX, RecentEntries};
    use crate::raft::{Command, ProduceCommand};

    fn entry(index: u64, bytes: usize) -> openraft::Entry<crate::raft::TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Produce(ProduceCommand {
                batches: vec![Bytes::from(vec![0u8; bytes])],
            })),
        }
    }

    fn indexes(entries: Option<Vec<openraft::Entry<crate::raft::TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let recent = RecentEntries::default();
        recent.appended(&[entry(5, 100), entry(6, 100), entry(7, 100)]);
        assert_eq!(indexes(recent.get(5, 8, usize::MAX)), Some(vec![5, 6, 7]));
        assert_eq!(indexes(recent.get(6, 7, usize::MAX)), Some(vec![6]));
        assert_eq!(indexes(recent.get(4, 8, usize::MAX)), None, "starts before");
        assert_eq!(indexes(recent.get(5, 9, usize::MAX)), None, "ends after");
        assert_eq!(indexes(recent.get(5, u64::MAX, usize::MAX)), None);
        assert_eq!(indexes(recent.get(6, 6, usize::MAX)), None, "empty range");
        assert_eq!(
            indexes(recent.get(5, 8, 150)),
            Some(vec![5, 6]),
            "byte limit"
        );
        assert_eq!(indexes(recent.get(5, 8, 0)), Some(vec![5]), "at least one");
    }

    #[test]
    fn forgets_applied_truncated_and_non_consecutive_entries() {
        let recent = RecentEntries::default();
        recent.appended(&[entry(1, 10), entry(2, 10), entry(3, 10), entry(4, 10)]);
        recent.forget_through(2);
        assert_eq!(indexes(recent.get(2, 4, usize::MAX)), None);
        assert_eq!(indexes(recent.get(3, 5, usize::MAX)), Some(vec![3, 4]));
        recent.forget_from(4);
        assert_eq!(indexes(recent.get(3, 5, usize::MAX)), None);
        // The new entry 4 (another term after a truncation) continues the held run.
        recent.appended(&[entry(4, 20)]);
        assert_eq!(indexes(recent.get(3, 5, usize::MAX)), Some(vec![3, 4]));
        // A gap (an append that failed part-way) drops the older run.
        recent.appended(&[entry(9, 10)]);
        assert_eq!(indexes(recent.get(3, 5, usize::MAX)), None);
        assert_eq!(indexes(recent.get(9, 10, usize::MAX)), Some(vec![9]));
        recent.clear();
        assert_eq!(indexes(recent.get(9, 10, usize::MAX)), None);
    }

    #[test]
    fn memory_stays_bounded_when_nothing_is_applied() {
        let recent = RecentEntries::default();
        let size = 1024 * 1024;
        for i in 0..100 {
            recent.appended(&[entry(i, size)]);
        }
        let kept = (RECENT_ENTRIES_BYTES_MAX / size) as u64;
        assert_eq!(indexes(recent.get(99, 100, usize::MAX)), Some(vec![99]));
        assert_eq!(
            indexes(recent.get(100 - kept, 100, 0)),
            Some(vec![100 - kept])
        );
        assert_eq!(indexes(recent.get(99 - kept, 100, 0)), None);
    }
}
