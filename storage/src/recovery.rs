//! Opening a log after a clean or unclean shutdown (`docs/formats/recovery.md`).
//!
//! Segments wholly below the recovery checkpoint are trusted through their index files (or
//! rescanned strictly if those are missing). The segment holding the checkpoint and any
//! after it are scanned batch by batch: the first bad batch *after* the checkpoint and
//! everything behind it is a torn tail and is cut; a bad batch *below* it is corruption of
//! data that was reported durable, and opening fails rather than lose it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::canary::{self, Canary};
use crate::checkpoint::{CleanerCheckpoint, RecoveryCheckpoint, SharedCheckpoint};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::io::DELETED_SUFFIX;
use crate::io::Io;
use crate::log::{Log, LogEnv, remove_segment_files, reset_segments};
use crate::segment::{
    Continuity, Segment, SegmentFile, SegmentParams, load_index_files, parse_segment_file_name,
    remove_index_files, segment_file_name, write_index_files,
};
use crate::state_file::TEMP_SUFFIX;

/// What opening a log found and did. Logged by the broker on every start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Segments whose batches were read and CRC-checked.
    pub segments_scanned: usize,
    /// Batches whose CRCs were verified.
    pub batches_checked: u64,
    /// Index file pairs rebuilt from the log because they were missing or inconsistent.
    pub indexes_rebuilt: usize,
    /// Non-zero bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Where the torn tail started and why it was cut: (segment file, position, reason).
    pub truncated_at: Option<(PathBuf, u64, String)>,
    /// Whole segments removed because they came after a torn tail.
    pub segments_removed: usize,
    /// Leftover temporary files removed (`.tmp`, `.log.cleaned`, orphan indexes).
    pub leftovers_removed: usize,
    /// Compaction swaps (`.log.swap`) completed.
    pub swaps_completed: usize,
    /// Whether a recovery checkpoint was found (without one every segment is a tail).
    pub had_checkpoint: bool,
}

/// Opens the log in `dir`, repairing what a crash left behind.
pub(crate) fn recover(dir: &Path, config: LogConfig, env: LogEnv) -> Result<(Log, RecoveryReport)> {
    config.validate()?;
    let io = env.io.as_ref();
    io.create_dir_all(dir)
        .map_err(|e| StorageError::io("create dir", dir, e))?;
    let mut report = RecoveryReport::default();
    let bases = tidy_directory(io, dir, &mut report)?;
    let checkpoint = RecoveryCheckpoint::read(io, dir)?;
    report.had_checkpoint = checkpoint.is_some();
    let params = SegmentParams {
        index_interval_bytes: config.index_interval_bytes,
        reserve_bytes: config.segment_bytes,
        now_ms: env.clock.now_ms(),
    };
    if let Some(marker) = checkpoint.filter(|cp| cp.reset) {
        report.segments_removed += bases.len();
        // Nothing of this process has mapped them yet.
        let doomed = bases.iter().map(|base| (*base, None)).collect();
        let fresh = reset_segments(io, dir, doomed, marker.segment_base, params)?;
        return finish_open(
            dir,
            config,
            env,
            vec![fresh],
            RecoveryCheckpoint::at(marker.segment_base, 0),
            report,
        );
    }
    let mut scan = SegmentsScan {
        io,
        dir,
        params,
        checkpoint,
        report: &mut report,
        segments: Vec::new(),
    };
    scan.load(&bases)?;
    let mut segments = scan.segments;
    report.indexes_rebuilt += finish_segments(io, dir, &mut segments, params)?;
    // The broken recovery a canary stands for believes the shorter log (a checkpoint it
    // does not reach would trip the log's own invariant instead of the tests).
    let forget = canary::armed(Canary::TruncateOnCorruption) || canary::armed(Canary::CutLogVotes);
    let checkpoint = if forget { None } else { checkpoint };
    finish_open(
        dir,
        config,
        env,
        segments,
        checkpoint.unwrap_or_default(),
        report,
    )
}

/// Builds the `Log` from recovered segments and writes a fresh checkpoint.
fn finish_open(
    dir: &Path,
    config: LogConfig,
    env: LogEnv,
    segments: Vec<Segment>,
    checkpoint: RecoveryCheckpoint,
    mut report: RecoveryReport,
) -> Result<(Log, RecoveryReport)> {
    let mut cleaner = CleanerCheckpoint::read(env.io.as_ref(), dir)?;
    let mut log = Log {
        io: Arc::clone(&env.io),
        clock: env.clock,
        dir: dir.to_path_buf(),
        config,
        segments,
        checkpoint: SharedCheckpoint::new(checkpoint),
        checkpoint_due_from_ms: 0,
        pending_seals: Vec::new(),
        // Recovery may have found segment files whose directory entries a crash left
        // unsynced: the first sync makes sure.
        dir_sync_pending: true,
        rolls: 0,
        cleaner_write_pending: false,
        cleaner,
        flushed_offset: 0,
        truncations: 0,
        failed: false,
        corruption: Arc::default(),
    };
    if let Some((path, position, bytes)) = log.cut_open_last_entry()? {
        report.truncated_bytes += bytes;
        let reason = "the last Raft entry lost its last batches".to_string();
        report.truncated_at = Some((path, position, reason));
    }
    cleaner.cleaned_up_to = cleaner.cleaned_up_to.min(log.next_offset());
    log.cleaner = cleaner;
    // What was scanned may sit only in the page cache (the process died, the machine did
    // not): sync it before a new checkpoint claims it durable.
    log.checkpoint()?;
    report.segments = log.segments.len();
    Ok((log, report))
}

/// Removes leftovers of interrupted writes, completes compaction swaps, and returns the
/// base offsets of the segments, oldest first.
fn tidy_directory(io: &dyn Io, dir: &Path, report: &mut RecoveryReport) -> Result<Vec<u64>> {
    let names = io
        .list_dir(dir)
        .map_err(|e| StorageError::io("list", dir, e))?;
    let mut logs = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    for name in &names {
        let path = dir.join(name);
        let remove = |report: &mut RecoveryReport| -> Result<()> {
            io.remove_file(&path)
                .map_err(|e| StorageError::io("remove", &path, e))?;
            report.leftovers_removed += 1;
            Ok(())
        };
        if name.ends_with(TEMP_SUFFIX) {
            remove(report)?;
            continue;
        }
        if name.ends_with(DELETED_SUFFIX) {
            // A deletion the previous process did not finish; nothing has it mapped.
            io.remove_file_in_background(&path, None)
                .map_err(|e| StorageError::io("remove", &path, e))?;
            report.leftovers_removed += 1;
            continue;
        }
        match parse_segment_file_name(name) {
            Some((_, SegmentFile::Cleaned)) => remove(report)?,
            Some((base, SegmentFile::Swap)) => {
                // A `.swap` file is a complete, synced compacted segment: finish the swap.
                remove_index_files(io, dir, base)?;
                let target = dir.join(segment_file_name(base, SegmentFile::Log));
                io.rename(&path, &target)
                    .map_err(|e| StorageError::io("rename", &path, e))?;
                report.swaps_completed += 1;
                logs.insert(base);
            }
            Some((base, SegmentFile::Log)) => {
                logs.insert(base);
            }
            Some((base, SegmentFile::OffsetIndex | SegmentFile::TimeIndex)) => {
                indexes.insert(base);
            }
            None => {}
        }
    }
    for base in indexes.difference(&logs) {
        remove_index_files(io, dir, *base)?;
        report.leftovers_removed += 1;
    }
    if report.swaps_completed > 0 || report.leftovers_removed > 0 {
        io.sync_dir(dir)
            .map_err(|e| StorageError::io("fsync dir", dir, e))?;
    }
    Ok(logs.into_iter().collect())
}

/// The state of the segment-by-segment part of recovery.
struct SegmentsScan<'a> {
    io: &'a dyn Io,
    dir: &'a Path,
    params: SegmentParams,
    checkpoint: Option<RecoveryCheckpoint>,
    report: &'a mut RecoveryReport,
    segments: Vec<Segment>,
}

impl SegmentsScan<'_> {
    fn load(&mut self, bases: &[u64]) -> Result<()> {
        let mut continuity: Option<Continuity> = None;
        for (i, base) in bases.iter().copied().enumerate() {
            let c = continuity.get_or_insert(Continuity {
                next_offset: base,
                last_raft_index: None,
                entry_open: false,
            });
            let durable_end = self.durable_end(base);
            if c.next_offset != base {
                if durable_end > 0 && !canary::armed(Canary::CutLogVotes) {
                    let path = self.dir.join(segment_file_name(base, SegmentFile::Log));
                    return Err(StorageError::corruption(
                        path,
                        0,
                        "segment does not continue the previous one",
                    ));
                }
                self.remove_rest(bases.get(i..).unwrap_or_default())?;
                return Ok(());
            }
            let cut = self.load_segment(base, durable_end, c)?;
            if cut {
                self.remove_rest(bases.get(i + 1..).unwrap_or_default())?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// How many bytes of segment `base` the checkpoint vouches for (`u64::MAX`: all).
    fn durable_end(&self, base: u64) -> u64 {
        match self.checkpoint {
            Some(cp) if base < cp.segment_base => u64::MAX,
            Some(cp) if base == cp.segment_base => cp.position,
            _ => 0,
        }
    }

    /// Loads one segment; returns whether its tail was cut (so later segments must go).
    fn load_segment(&mut self, base: u64, durable_end: u64, c: &mut Continuity) -> Result<bool> {
        let mut segment = Segment::open_unscanned(self.io, self.dir, base, self.params)?;
        let file_len = segment.file_len()?;
        if durable_end == u64::MAX && load_index_files(self.io, self.dir, &mut segment, file_len) {
            let first_ok = c
                .last_raft_index
                .is_none_or(|last| segment.first_raft_index.is_some_and(|first| first >= last));
            if !first_ok {
                return Err(StorageError::corruption(
                    &segment.path,
                    0,
                    "raft index goes backwards",
                ));
            }
            c.next_offset = segment.next_offset;
            c.last_raft_index = segment.last_raft.map(|r| r.index);
            c.entry_open = false;
            self.segments.push(segment);
            return Ok(false);
        }
        self.report.segments_scanned += 1;
        let end = segment.scan(file_len, c)?;
        self.report.batches_checked += end.batches_checked;
        let garbage_end = segment.nonzero_end(end.valid_end, file_len)?;
        let damaged = end.invalid.is_some() || garbage_end > end.valid_end;
        let cut_short = durable_end != u64::MAX && file_len < durable_end;
        let truncate_anyway = damaged
            && (canary::armed(Canary::TruncateOnCorruption)
                || (cut_short && canary::armed(Canary::CutLogVotes)));
        if damaged && end.valid_end < durable_end && !truncate_anyway {
            let reason = end
                .invalid
                .unwrap_or_else(|| "unexpected bytes after the last batch".into());
            return Err(StorageError::corruption(
                &segment.path,
                end.valid_end,
                format!("{reason} (the batch at offset {})", c.next_offset),
            ));
        }
        let accept_cut = truncate_anyway || canary::armed(Canary::CutLogVotes);
        if end.valid_end < durable_end && durable_end != u64::MAX && !accept_cut {
            return Err(StorageError::corruption(
                &segment.path,
                end.valid_end,
                format!("durable batches are missing from offset {}", c.next_offset),
            ));
        }
        if damaged {
            segment.zero_fill(end.valid_end, garbage_end)?;
            segment.sync()?;
            self.report.truncated_bytes += garbage_end - end.valid_end;
            let reason = end
                .invalid
                .unwrap_or_else(|| "bytes after a zeroed header".into());
            self.report.truncated_at = Some((segment.path.clone(), end.valid_end, reason));
        }
        self.segments.push(segment);
        Ok(damaged)
    }

    /// Removes segments that come after a torn tail: they cannot hold durable data, because
    /// a segment is synced before the next one is created.
    fn remove_rest(&mut self, bases: &[u64]) -> Result<()> {
        for base in bases {
            remove_segment_files(self.io, self.dir, *base, None)?;
            self.report.segments_removed += 1;
        }
        if !bases.is_empty() {
            self.io
                .sync_dir(self.dir)
                .map_err(|e| StorageError::io("fsync dir", self.dir, e))?;
        }
        Ok(())
    }
}

/// Seals every segment but the last, makes the last one the active segment, and creates a
/// first segment for an empty log. Returns how many index file pairs it rebuilt.
fn finish_segments(
    io: &dyn Io,
    dir: &Path,
    segments: &mut Vec<Segment>,
    params: SegmentParams,
) -> Result<usize> {
    let count = segments.len();
    let mut rebuilt = 0;
    for segment in segments.iter_mut().take(count.saturating_sub(1)) {
        if !segment.sealed {
            segment.seal()?;
            write_index_files(io, dir, segment)?;
            rebuilt += 1;
        }
    }
    match segments.last_mut() {
        Some(active) => {
            if active.sealed {
                // Appends will change it; a stale index must not survive a later crash.
                remove_index_files(io, dir, active.base_offset)?;
                active.sealed = false;
            }
            // A full disk must not stop the log opening: the next append retries.
            let _ = active.reserve_ahead(params.reserve_bytes);
        }
        None => segments.push(create_first_segment(io, dir, params)?),
    }
    Ok(rebuilt)
}

fn create_first_segment(io: &dyn Io, dir: &Path, params: SegmentParams) -> Result<Segment> {
    match Segment::create(io, dir, 0, params) {
        Err(StorageError::NoSpace { .. }) => Segment::create(
            io,
            dir,
            0,
            SegmentParams {
                reserve_bytes: 0,
                ..params
            },
        ),
        other => other,
    }
}
