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

use crate::batch::{Batch, RaftPosition};
use crate::checkpoint::CleanerCheckpoint;
use crate::error::{Result, StorageError};
use crate::io::{IoFile, OpenMode};
use crate::limits::CLEANER_KEY_MAP_BYTES_MAX;
use crate::log::Log;
use crate::log::PendingSeal;
use crate::segment::{
    Continuity, Segment, SegmentFile, SegmentParams, header_below, read_below, remove_index_files,
    segment_file_name,
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
        self.dirty_ratio_of(self.cleanable_segments(u64::MAX))
    }

    fn dirty_ratio_of(&self, segments: &[Segment]) -> f64 {
        let total: u64 = segments.iter().map(|s| s.written).sum();
        let dirty: u64 = segments
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

    /// The leading sealed segments whose every offset is below `below`.
    fn cleanable_segments(&self, below: u64) -> &[Segment] {
        let sealed = self
            .segments
            .get(..self.segments.len().saturating_sub(1))
            .unwrap_or_default();
        let n = sealed.iter().take_while(|s| s.next_offset <= below).count();
        sealed.get(..n).unwrap_or_default()
    }

    /// Runs one compaction pass if the policy compacts and the dirty ratio reaches
    /// `min_cleanable_dirty_ratio`: [`Log::plan_compaction`], [`CompactionPlan::prepare`]
    /// and [`Log::install_compaction`] in one go. A caller that shares the log between
    /// threads runs the three itself, holding the log's lock only for the first and last.
    pub fn compact(&mut self) -> Result<CompactionReport> {
        match self.plan_compaction(u64::MAX)? {
            Some(plan) => {
                let prepared = plan.prepare()?;
                self.install_compaction(prepared)
            }
            None => Ok(CompactionReport {
                cleaned_up_to: self.cleaner.cleaned_up_to,
                ..CompactionReport::default()
            }),
        }
    }

    /// What a compaction pass would work on, if one is due: the sealed segments whose
    /// offsets are all below `below` (a replica passes its high watermark, as Kafka
    /// compacts only committed data: a truncation can never take back a record that a
    /// compacted older one was dropped for), as they are now. Cheap (no reads); the plan
    /// holds the segments' files open, so retention deleting one meanwhile frees it only
    /// once the pass is done with it.
    pub fn plan_compaction(&self, below: u64) -> Result<Option<CompactionPlan>> {
        self.check_writable()?;
        let sealed = self.cleanable_segments(below);
        let dirty = self.dirty_ratio_of(sealed);
        if !self.config.cleanup_policy.compacts()
            || sealed.is_empty()
            || dirty == 0.0
            || dirty < self.config.min_cleanable_dirty_ratio
        {
            return Ok(None);
        }
        let segments: Vec<SealedView> = sealed
            .iter()
            .enumerate()
            .map(|(i, segment)| {
                SealedView::of(segment, i.checked_sub(1).and_then(|p| sealed.get(p)))
            })
            .collect();
        let first_dirty = segments
            .iter()
            .position(|s| s.base_offset >= self.cleaner.cleaned_up_to)
            .unwrap_or(segments.len());
        Ok(Some(CompactionPlan {
            io: Arc::clone(&self.io),
            dir: self.dir.clone(),
            segments,
            first_dirty,
            tombstone_cutoff_ms: self
                .clock
                .now_ms()
                .saturating_sub(self.config.delete_retention_ms),
            truncations: self.truncations,
            params: self.params(),
        }))
    }

    /// Swaps in what `prepared` rewrote, for the segments that are still as planned, and
    /// moves the cleaner checkpoint. Segments retention deleted meanwhile are skipped (their
    /// rewrites removed). If the log was truncated since the plan, nothing is installed: a
    /// record may have been dropped for a newer one that the truncation took away.
    pub fn install_compaction(&mut self, prepared: PreparedCompaction) -> Result<CompactionReport> {
        self.check_writable()?;
        // A just-rolled segment's own fsync and index files come before its rewrite's.
        self.flush_pending_seals()?;
        let truncated = self.truncations != prepared.truncations;
        let mut report = prepared.report;
        let mut installs = Vec::new();
        // The checkpoint's own segment is never shortened under it (it has left every
        // sealed segment after the flush above, unless a full disk kept it back).
        let checkpoint = self.checkpoint.current();
        for rewritten in prepared.rewritten {
            let slot = self.segments.iter().position(|s| rewritten.view.is(s));
            let under_checkpoint = checkpoint.segment_base == rewritten.view.base_offset;
            match slot {
                Some(i) if !truncated && !under_checkpoint => installs.push((i, rewritten)),
                _ => {
                    let cleaned = self.dir.join(segment_file_name(
                        rewritten.view.base_offset,
                        SegmentFile::Cleaned,
                    ));
                    self.io
                        .remove_file(&cleaned)
                        .map_err(|e| StorageError::io("remove", &cleaned, e))?;
                }
            }
        }
        let result = self.swap_in(&installs);
        self.fatal_on_error(result)?;
        for (i, rewritten) in installs {
            let mut fresh = rewritten.fresh;
            if let Some(slot) = self.segments.get_mut(i) {
                fresh.created_ms = slot.created_ms;
                // The rewrite's index files are written by the next sync, outside the lock.
                self.pending_seals.push(PendingSeal::of(&self.dir, &fresh));
                *slot = fresh;
            }
            report.segments_rewritten += 1;
            report.records_removed += rewritten.dropped.records;
            report.tombstones_removed += rewritten.dropped.tombstones;
        }
        if truncated {
            report.cleaned_up_to = self.cleaner.cleaned_up_to;
            return Ok(report);
        }
        // Written by the next sync, outside the lock: it only says where the next pass
        // starts, so a crash that keeps an older one costs a pass, never data.
        self.cleaner = CleanerCheckpoint {
            cleaned_up_to: prepared.cleaned_up_to,
        };
        self.cleaner_write_pending = true;
        report.cleaned_up_to = prepared.cleaned_up_to;
        Ok(report)
    }

    /// Replaces the segments at `installs` with their synced `.log.cleaned` copies,
    /// crash-safely with one directory fsync for the whole pass: every rewrite becomes a
    /// `.swap` (committed once that fsync returns: the next open installs it), then each old
    /// file goes and its `.swap` takes its name.
    fn swap_in(&mut self, installs: &[(usize, Rewritten)]) -> Result<()> {
        if installs.is_empty() {
            return Ok(());
        }
        let (io, dir) = (Arc::clone(&self.io), self.dir.clone());
        let name = |base, kind| dir.join(segment_file_name(base, kind));
        for (_, rewritten) in installs {
            let base = rewritten.view.base_offset;
            let (cleaned, swap) = (
                name(base, SegmentFile::Cleaned),
                name(base, SegmentFile::Swap),
            );
            io.rename(&cleaned, &swap)
                .map_err(|e| StorageError::io("rename", &cleaned, e))?;
        }
        io.sync_dir(&dir)
            .map_err(|e| StorageError::io("fsync dir", &dir, e))?;
        for (i, rewritten) in installs {
            let base = rewritten.view.base_offset;
            let (swap, log) = (name(base, SegmentFile::Swap), name(base, SegmentFile::Log));
            remove_index_files(io.as_ref(), &dir, base)?;
            // The old file goes first, and is freed in the background once no reader holds
            // it (unlinking it by renaming over it would free it wherever its last handle
            // drops). A crash between the two renames leaves the `.swap`, which the next
            // open installs.
            if let Some(old) = self.segments.get(*i) {
                io.remove_file_in_background(&log, Some(old.file_handle()))
                    .map_err(|e| StorageError::io("remove", &log, e))?;
            }
            io.rename(&swap, &log)
                .map_err(|e| StorageError::io("rename", &swap, e))?;
        }
        // The renames above need no fsync here: until the directory is synced a crash leaves
        // the `.swap`s, which the next open installs. The next sync syncs it, outside the
        // lock, before anything after it is reported durable.
        self.dir_sync_pending = true;
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

/// A sealed segment as a compaction plan saw it: enough to read it without the log.
#[derive(Debug, Clone)]
struct SealedView {
    base_offset: u64,
    path: std::path::PathBuf,
    file: Arc<dyn IoFile>,
    written: u64,
    next_offset: u64,
    last_raft: Option<RaftPosition>,
    /// The Raft index the segment before it ends at: a rewrite must not start below it.
    previous_raft_index: Option<u64>,
}

impl SealedView {
    fn of(segment: &Segment, previous: Option<&Segment>) -> Self {
        Self {
            base_offset: segment.base_offset,
            path: segment.path.clone(),
            file: segment.file_handle(),
            written: segment.written,
            next_offset: segment.next_offset,
            last_raft: segment.last_raft,
            previous_raft_index: previous.and_then(|p| p.last_raft).map(|r| r.index),
        }
    }

    /// Whether `segment` is still the one seen: sealed, same base, same open file, same
    /// length.
    fn is(&self, segment: &Segment) -> bool {
        segment.sealed
            && segment.base_offset == self.base_offset
            && Arc::ptr_eq(&self.file, &segment.file_handle())
            && segment.written == self.written
    }
}

/// A compaction pass to run without the log's lock ([`Log::plan_compaction`]).
#[derive(Debug)]
pub struct CompactionPlan {
    io: Arc<dyn crate::io::Io>,
    dir: std::path::PathBuf,
    segments: Vec<SealedView>,
    first_dirty: usize,
    tombstone_cutoff_ms: i64,
    truncations: u64,
    params: SegmentParams,
}

/// One segment's synced `.log.cleaned` rewrite, waiting to be swapped in, already scanned
/// into the segment it becomes (so the install does no reading under the log's lock).
#[derive(Debug)]
struct Rewritten {
    view: SealedView,
    dropped: Dropped,
    fresh: Segment,
}

/// The rewrites of a pass, for [`Log::install_compaction`].
#[derive(Debug)]
pub struct PreparedCompaction {
    rewritten: Vec<Rewritten>,
    report: CompactionReport,
    cleaned_up_to: u64,
    truncations: u64,
}

impl CompactionPlan {
    /// Builds the key map over the dirty segments and writes (and syncs) a `.log.cleaned`
    /// rewrite of every segment up to the end of that range that loses records. Reads and
    /// writes only files: the log may take appends, reads and retention meanwhile.
    pub fn prepare(self) -> Result<PreparedCompaction> {
        let (keys, dirty_end) = self.build_key_map()?;
        let rule = CleanRule {
            keys: &keys,
            tombstone_cutoff_ms: self.tombstone_cutoff_ms,
        };
        let mut report = CompactionReport {
            ran: true,
            ..CompactionReport::default()
        };
        let cleaned_up_to = self
            .segments
            .get(dirty_end.saturating_sub(1))
            .map_or(0, |s| s.next_offset);
        let mut rewritten: Vec<Rewritten> = Vec::new();
        let cleaned_path = |base| self.dir.join(segment_file_name(base, SegmentFile::Cleaned));
        for view in self.segments.iter().take(dirty_end) {
            let path = cleaned_path(view.base_offset);
            match rewrite_segment(self.io.as_ref(), view, &path, &rule) {
                Ok((dropped, bytes_after)) => {
                    report.bytes_before += view.written;
                    report.bytes_after += bytes_after;
                    if dropped.records > 0 {
                        match self.load_rewrite(view, &path) {
                            Ok(fresh) => rewritten.push(Rewritten {
                                view: view.clone(),
                                dropped,
                                fresh,
                            }),
                            Err(e) => {
                                for done in rewritten.iter().map(|r| r.view.base_offset) {
                                    let _ = self.io.remove_file(&cleaned_path(done));
                                }
                                let _ = self.io.remove_file(&path);
                                return Err(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    // Nothing of a failed pass stays on disk (recovery would remove it too).
                    for done in rewritten.iter().map(|r| r.view.base_offset) {
                        let _ = self.io.remove_file(&cleaned_path(done));
                    }
                    let _ = self.io.remove_file(&path);
                    return Err(e);
                }
            }
        }
        Ok(PreparedCompaction {
            rewritten,
            report,
            cleaned_up_to,
            truncations: self.truncations,
        })
    }

    /// Opens and scans the rewrite of `view` at `cleaned` as the segment it becomes,
    /// verifying every batch and that it keeps the segment's offset and Raft range.
    fn load_rewrite(&self, view: &SealedView, cleaned: &std::path::Path) -> Result<Segment> {
        let path = self
            .dir
            .join(segment_file_name(view.base_offset, SegmentFile::Log));
        let mut fresh = Segment::open_as(
            self.io.as_ref(),
            cleaned,
            path,
            view.base_offset,
            self.params,
        )?;
        let mut continuity = Continuity {
            next_offset: view.base_offset,
            last_raft_index: view.previous_raft_index,
            entry_open: false,
        };
        let end = fresh.scan(fresh.file_len()?, &mut continuity)?;
        if end.invalid.is_some()
            || fresh.next_offset != view.next_offset
            || fresh.last_raft != view.last_raft
        {
            let reason = end
                .invalid
                .unwrap_or_else(|| "compacted segment changed its offset or Raft range".into());
            return Err(StorageError::corruption(cleaned, end.valid_end, reason));
        }
        fresh.sealed = true;
        Ok(fresh)
    }

    /// The key map over the dirty sealed segments, and the number of leading segments it
    /// covers (fewer than all if the map hit its memory budget).
    fn build_key_map(&self) -> Result<(KeyMap, usize)> {
        let mut keys = KeyMap::default();
        let first_dirty = self.first_dirty;
        let mut end = first_dirty;
        for view in self.segments.iter().skip(first_dirty) {
            if end > first_dirty && keys.bytes_used() >= CLEANER_KEY_MAP_BYTES_MAX {
                break;
            }
            for_each_batch(view, |batch| {
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
        Ok((keys, end.max(first_dirty.min(self.segments.len()))))
    }
}

/// Writes `view` without the records `rule` drops to `cleaned_path`, synced; removes the
/// file again when nothing was dropped. Returns what was dropped and the rewrite's length.
fn rewrite_segment(
    io: &dyn crate::io::Io,
    view: &SealedView,
    cleaned_path: &std::path::Path,
    rule: &CleanRule<'_>,
) -> Result<(Dropped, u64)> {
    let cleaned = io
        .open(cleaned_path, OpenMode::CreateTruncate)
        .map_err(|e| StorageError::io("create", cleaned_path, e))?;
    let mut dropped = Dropped::default();
    let mut written = 0u64;
    for_each_batch(view, |batch| {
        let rewritten = rewrite_batch(batch, rule, &mut dropped)?;
        let bytes = rewritten.as_ref().unwrap_or(batch.as_bytes());
        cleaned
            .write_at(written, bytes)
            .map_err(|e| CleanError::Storage(StorageError::io("write", cleaned_path, e)))?;
        written += bytes.len() as u64;
        Ok(())
    })?;
    if dropped.records == 0 {
        io.remove_file(cleaned_path)
            .map_err(|e| StorageError::io("remove", cleaned_path, e))?;
    } else {
        cleaned
            .sync_data()
            .map_err(|e| StorageError::io("fsync", cleaned_path, e))?;
    }
    Ok((dropped, written))
}

/// Calls `f` with every verified batch of a sealed segment, oldest first.
fn for_each_batch(
    segment: &SealedView,
    mut f: impl FnMut(&Batch) -> std::result::Result<(), CleanError>,
) -> Result<()> {
    let mut position = 0;
    while position < segment.written {
        let (file, path) = (segment.file.as_ref(), segment.path.as_path());
        let header = header_below(file, path, segment.written, position)?;
        let bytes = read_below(
            file,
            path,
            segment.written,
            position,
            header.batch_len() as usize,
        )?;
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
