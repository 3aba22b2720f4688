//! Key-based compaction of sealed segments (`cleanup_policy = compact`).
//!
//! A pass builds a key → newest-offset map over the dirty sealed segments (those after the
//! cleaner checkpoint), then rewrites every sealed segment up to the end of that range
//! without superseded records and expired tombstones. Offsets are kept (gaps are allowed),
//! every batch keeps its Raft index, and the active segment is never touched. Each rewrite
//! is crash-safe: `.log.cleaned` is written and synced, renamed to `.log.swap` (the commit
//! point), and renamed over the `.log`; recovery deletes a `.cleaned` and finishes a `.swap`.

mod compact;
mod key_map;

use std::sync::Arc;

use crate::batch::Batch;
use crate::checkpoint::CleanerCheckpoint;
use crate::error::{Result, StorageError};
use crate::io::{IoFile, OpenMode};
use crate::limits::CLEANER_KEY_MAP_BYTES_MAX;
use crate::log::Log;
use crate::segment::{
    Continuity, Segment, SegmentFile, remove_index_files, segment_file_name, write_index_files,
};

use compact::{CleanRule, Dropped, rewrite_batch};
use key_map::KeyMap;

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Whether the pass ran (the policy compacts and the dirty ratio was reached).
    pub ran: bool,
    /// Sealed segments rewritten.
    pub segments_rewritten: usize,
    /// Records dropped, tombstones included.
    pub records_removed: u64,
    /// Tombstones dropped after `delete_retention_ms`.
    pub tombstones_removed: u64,
    /// Bytes of the sealed segments before and after.
    pub bytes_before: u64,
    /// Bytes of the sealed segments after.
    pub bytes_after: u64,
    /// Offsets below this are now clean.
    pub cleaned_up_to: u64,
}

impl Log {
    /// Share of sealed bytes after the cleaner checkpoint.
    pub fn dirty_ratio(&self) -> f64 {
        let sealed = self.sealed_segments();
        let total: u64 = sealed.iter().map(|s| s.written).sum();
        let dirty: u64 = sealed
            .iter()
            .filter(|s| s.base_offset >= self.cleaner.cleaned_up_to)
            .map(|s| s.written)
            .sum();
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    fn sealed_segments(&self) -> &[Segment] {
        self.segments
            .get(..self.segments.len().saturating_sub(1))
            .unwrap_or_default()
    }

    /// Runs one compaction pass if the policy compacts and the dirty ratio reaches
    /// `min_cleanable_dirty_ratio`.
    pub fn compact(&mut self) -> Result<CompactionReport> {
        self.check_writable()?;
        let sealed = self.sealed_segments().len();
        let dirty = self.dirty_ratio();
        if !self.config.cleanup_policy.compacts()
            || sealed == 0
            || dirty == 0.0
            || dirty < self.config.min_cleanable_dirty_ratio
        {
            return Ok(CompactionReport {
                cleaned_up_to: self.cleaner.cleaned_up_to,
                ..CompactionReport::default()
            });
        }
        let (keys, dirty_end) = self.build_key_map(sealed)?;
        let rule = CleanRule {
            keys: &keys,
            tombstone_cutoff_ms: self
                .clock
                .now_ms()
                .saturating_sub(self.config.delete_retention_ms),
        };
        let mut report = CompactionReport {
            ran: true,
            ..CompactionReport::default()
        };
        for i in 0..dirty_end {
            let result = self.clean_segment(i, &rule, &mut report);
            self.fatal_on_error(result)?;
        }
        let cleaned_up_to = self
            .segments
            .get(dirty_end.saturating_sub(1))
            .map_or(0, |s| s.next_offset);
        let checkpoint = CleanerCheckpoint { cleaned_up_to };
        let result = checkpoint.write(self.io.as_ref(), &self.dir);
        self.fatal_on_error(result)?;
        self.cleaner = checkpoint;
        report.cleaned_up_to = cleaned_up_to;
        Ok(report)
    }

    /// The key map over the dirty sealed segments, and the number of leading segments it
    /// covers (fewer than all if the map hit its memory budget).
    fn build_key_map(&self, sealed: usize) -> Result<(KeyMap, usize)> {
        let mut keys = KeyMap::default();
        let first_dirty = self
            .segments
            .iter()
            .position(|s| s.base_offset >= self.cleaner.cleaned_up_to)
            .unwrap_or(sealed);
        let mut end = first_dirty;
        for segment in self.segments.iter().take(sealed).skip(first_dirty) {
            if end > first_dirty && keys.bytes_used() >= CLEANER_KEY_MAP_BYTES_MAX {
                break;
            }
            for_each_batch(segment, |batch| {
                for record in batch.records()? {
                    let record = record?;
                    if let Some(key) = record.key {
                        keys.insert(key, record.offset);
                    }
                }
                Ok(())
            })?;
            end += 1;
        }
        Ok((keys, end.max(first_dirty.min(sealed))))
    }

    fn clean_segment(
        &mut self,
        i: usize,
        rule: &CleanRule<'_>,
        report: &mut CompactionReport,
    ) -> Result<()> {
        let Some(segment) = self.segments.get(i) else {
            return Ok(());
        };
        let base = segment.base_offset;
        let cleaned_path = self.dir.join(segment_file_name(base, SegmentFile::Cleaned));
        let cleaned = self
            .io
            .open(&cleaned_path, OpenMode::CreateTruncate)
            .map_err(|e| StorageError::io("create", &cleaned_path, e))?;
        let mut dropped = Dropped::default();
        let mut written = 0u64;
        let write = |file: &Arc<dyn IoFile>, at: u64, bytes: &[u8]| {
            file.write_at(at, bytes)
                .map_err(|e| StorageError::io("write", &cleaned_path, e))
        };
        for_each_batch(segment, |batch| {
            let rewritten = rewrite_batch(batch, rule, &mut dropped)?;
            let bytes = rewritten.as_ref().unwrap_or(batch.as_bytes());
            write(&cleaned, written, bytes).map_err(CleanError::Storage)?;
            written += bytes.len() as u64;
            Ok(())
        })?;
        report.bytes_before += segment.written;
        report.bytes_after += written;
        if dropped.records == 0 {
            self.io
                .remove_file(&cleaned_path)
                .map_err(|e| StorageError::io("remove", &cleaned_path, e))?;
            return Ok(());
        }
        cleaned
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &cleaned_path, e))?;
        self.swap_in(i)?;
        report.segments_rewritten += 1;
        report.records_removed += dropped.records;
        report.tombstones_removed += dropped.tombstones;
        Ok(())
    }

    /// Replaces segment `i` with its synced `.log.cleaned` copy, crash-safely.
    fn swap_in(&mut self, i: usize) -> Result<()> {
        let (io, dir) = (Arc::clone(&self.io), self.dir.clone());
        let base = self.segments.get(i).map_or(0, |s| s.base_offset);
        let cleaned = dir.join(segment_file_name(base, SegmentFile::Cleaned));
        let swap = dir.join(segment_file_name(base, SegmentFile::Swap));
        let log = dir.join(segment_file_name(base, SegmentFile::Log));
        io.rename(&cleaned, &swap)
            .map_err(|e| StorageError::io("rename", &cleaned, e))?;
        io.sync_dir(&dir)
            .map_err(|e| StorageError::io("fsync dir", &dir, e))?;
        remove_index_files(io.as_ref(), &dir, base)?;
        // The old file goes first, and is freed in the background once no reader holds it
        // (unlinking it by renaming over it would free it wherever its last handle drops).
        // A crash between the two renames leaves the `.swap`, which the next open installs.
        if let Some(old) = self.segments.get(i) {
            io.remove_file_in_background(&log, Some(old.file_handle()))
                .map_err(|e| StorageError::io("remove", &log, e))?;
        }
        io.rename(&swap, &log)
            .map_err(|e| StorageError::io("rename", &swap, e))?;
        io.sync_dir(&dir)
            .map_err(|e| StorageError::io("fsync dir", &dir, e))?;
        self.reload_segment(i)
    }

    /// Re-reads segment `i` from disk after a swap, verifying every batch again.
    fn reload_segment(&mut self, i: usize) -> Result<()> {
        let params = self.params();
        let (previous_next, previous_raft) =
            match i.checked_sub(1).and_then(|p| self.segments.get(p)) {
                Some(p) => (p.next_offset, p.last_raft.map(|r| r.index)),
                None => (self.log_start_offset(), None),
            };
        let Some(old) = self.segments.get(i) else {
            return Ok(());
        };
        let mut fresh =
            Segment::open_unscanned(self.io.as_ref(), &self.dir, old.base_offset, params)?;
        let mut continuity = Continuity {
            next_offset: previous_next,
            last_raft_index: previous_raft,
        };
        let end = fresh.scan(fresh.file_len()?, &mut continuity)?;
        if end.invalid.is_some()
            || fresh.next_offset != old.next_offset
            || fresh.last_raft != old.last_raft
        {
            let reason = end
                .invalid
                .unwrap_or_else(|| "compacted segment changed its offset or Raft range".into());
            return Err(StorageError::corruption(&fresh.path, end.valid_end, reason));
        }
        fresh.sealed = true;
        fresh.created_ms = old.created_ms;
        write_index_files(self.io.as_ref(), &self.dir, &fresh)?;
        if let Some(slot) = self.segments.get_mut(i) {
            *slot = fresh;
        }
        Ok(())
    }
}

/// An error while visiting batches: bad bytes in a segment, or a failed write.
enum CleanError {
    Decode(crate::error::DecodeError),
    Storage(StorageError),
}

impl From<crate::error::DecodeError> for CleanError {
    fn from(e: crate::error::DecodeError) -> Self {
        Self::Decode(e)
    }
}

/// Calls `f` with every verified batch of a segment, oldest first.
fn for_each_batch(
    segment: &Segment,
    mut f: impl FnMut(&Batch) -> std::result::Result<(), CleanError>,
) -> Result<()> {
    let mut position = 0;
    while position < segment.written {
        let header = segment.header_at(position)?;
        let bytes = segment.read(position, header.batch_len() as usize)?;
        let batch = Batch::decode(bytes)
            .map_err(|e| StorageError::corruption(&segment.path, position, e))?;
        match f(&batch) {
            Ok(()) => {}
            Err(CleanError::Decode(e)) => {
                return Err(StorageError::corruption(&segment.path, position, e));
            }
            Err(CleanError::Storage(e)) => return Err(e),
        }
        position += header.batch_len();
    }
    Ok(())
}
