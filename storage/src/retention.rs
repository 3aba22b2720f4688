//! Retention: deleting the oldest whole sealed segments by age and by total size.

use crate::error::{Result, StorageError};
use crate::log::{Log, remove_segment_files};

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of batches deleted.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub log_start_offset: u64,
}

impl Log {
    /// How many of the oldest segments retention would delete now: sealed segments whose
    /// newest timestamp is older than `retention_ms`, or while the log is larger than
    /// `retention_bytes` without them (Kafka's rule). The active segment is never deleted.
    pub fn retention_candidates(&self) -> usize {
        if !self.config.cleanup_policy.deletes() {
            return 0;
        }
        let now = self.clock.now_ms();
        let mut remaining = self.size_bytes();
        let mut count = 0;
        for segment in self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
        {
            let expired = self
                .config
                .retention_ms
                .is_some_and(|ms| segment.max_timestamp < now.saturating_sub(ms));
            let oversized = self
                .config
                .retention_bytes
                .is_some_and(|max| remaining.saturating_sub(segment.written) >= max);
            if !(expired || oversized) {
                break;
            }
            remaining -= segment.written;
            count += 1;
        }
        count
    }

    /// The Raft index up to which retention would delete now (the last batch of the last
    /// candidate segment): where the broker snapshots and purges (DESIGN §3).
    pub fn retention_raft_index(&self) -> Option<u64> {
        let count = self.retention_candidates();
        count
            .checked_sub(1)
            .and_then(|i| self.segments.get(i))
            .and_then(|s| s.last_raft)
            .map(|r| r.index)
    }

    /// Deletes the segments [`Log::retention_candidates`] names, oldest first, and moves the
    /// log start offset forward. A crash part-way leaves a shorter prefix deleted, never a hole.
    pub fn apply_retention(&mut self) -> Result<RetentionReport> {
        self.check_writable()?;
        let count = self.retention_candidates();
        self.delete_oldest_segments(count)
    }

    /// Deletes the oldest sealed segments whose batches all have Raft indexes at or below
    /// `raft_index`: Raft's purge after a snapshot. Entries after the last deleted segment
    /// stay on disk until their whole segment qualifies.
    pub fn delete_segments_through_raft_index(
        &mut self,
        raft_index: u64,
    ) -> Result<RetentionReport> {
        self.check_writable()?;
        let sealed = self.segments.len().saturating_sub(1);
        let count = self
            .segments
            .iter()
            .take(sealed)
            .take_while(|s| s.last_raft.is_some_and(|r| r.index <= raft_index))
            .count();
        self.delete_oldest_segments(count)
    }

    fn delete_oldest_segments(&mut self, count: usize) -> Result<RetentionReport> {
        if count > 0 {
            self.flush_pending_seals()?;
        }
        let mut report = RetentionReport::default();
        for _ in 0..count {
            let segment = self.segments.remove(0);
            report.segments_deleted += 1;
            report.bytes_deleted += segment.written;
            let file = segment.file_handle();
            remove_segment_files(self.io.as_ref(), &self.dir, segment.base_offset, Some(file))?;
        }
        if count > 0 {
            self.io
                .sync_dir(&self.dir)
                .map_err(|e| StorageError::io("fsync dir", &self.dir, e))?;
        }
        report.log_start_offset = self.log_start_offset();
        Ok(report)
    }
}
