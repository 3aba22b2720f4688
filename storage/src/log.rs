//! `Log`: one partition's ordered sequence of segments, with a single writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::batch::{Batch, BatchHeader, Placement, RaftPosition};
use crate::checkpoint::{CleanerCheckpoint, RecoveryCheckpoint, SharedCheckpoint};
use crate::clock::{Clock, SystemClock};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::io::{FsIo, Io, IoFile};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{
    IndexFiles, Release, Segment, SegmentFile, SegmentParams, encode_index_files,
    remove_index_files, segment_file_name,
};

/// The environment a log runs in: its file system and its clock.
#[derive(Debug, Clone)]
pub struct LogEnv {
    /// File operations (the real file system, or [`crate::io::SimIo`] in tests).
    pub io: Arc<dyn Io>,
    /// Wall-clock time for segment age, retention and tombstone expiry.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogEnv {
    fn default() -> Self {
        Self {
            io: Arc::new(FsIo),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the batch's first record.
    pub base_offset: u64,
    /// Offset the next batch will get.
    pub next_offset: u64,
}

/// A partition log: segments of CRC-checked batches in one directory.
///
/// Single writer (`&mut self`); reads take `&self` and return `Bytes` that stay valid after
/// later appends, rolls, retention and compaction. Appends are not durable until
/// [`Log::sync`] returns; after an fsync error the log refuses writes (see
/// [`StorageError::Failed`]) because the kernel may have dropped the unsynced pages.
#[derive(Debug)]
pub struct Log {
    pub(crate) io: Arc<dyn Io>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Oldest first; never empty; the last one is the active segment.
    pub(crate) segments: Vec<Segment>,
    /// The recovery checkpoint on disk; syncs advance it (see [`LogConfig::checkpoint_interval_ms`]).
    pub(crate) checkpoint: SharedCheckpoint,
    /// When a sync last carried a checkpoint write (clock milliseconds).
    pub(crate) checkpoint_due_from_ms: i64,
    /// Segments sealed by a roll whose fsync and index files the next sync does, outside
    /// the log's lock (oldest first); see [`PendingSeal`].
    pub(crate) pending_seals: Vec<PendingSeal>,
    /// A roll created a segment file whose directory entry the next sync makes durable.
    pub(crate) dir_sync_pending: bool,
    /// The cleaner checkpoint changed and the next sync writes it (outside the lock).
    pub(crate) cleaner_write_pending: bool,
    /// Rolls so far in this process: a sync that began before a roll (one from
    /// `make_room`, by another task, while the sync ran unlocked) leaves that roll's
    /// directory fsync and checkpoint to the next sync.
    pub(crate) rolls: u64,
    pub(crate) cleaner: CleanerCheckpoint,
    pub(crate) flushed_offset: u64,
    /// Suffix truncations so far in this process: a compaction pass planned before one
    /// must not be installed after it.
    pub(crate) truncations: u64,
    pub(crate) failed: bool,
    /// Set once a read finds damage in stored data (a records CRC mismatch in a sealed
    /// segment): shared with the owner, which takes the partition offline.
    pub(crate) corruption: Arc<OnceLock<String>>,
}

impl Log {
    /// Opens (or creates) the log in `dir` on the real file system, recovering from any
    /// crash: see [`RecoveryReport`].
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Self, RecoveryReport)> {
        Self::open_with(dir, config, LogEnv::default())
    }

    /// Opens the log with an explicit file system and clock.
    pub fn open_with(
        dir: impl AsRef<Path>,
        config: LogConfig,
        env: LogEnv,
    ) -> Result<(Self, RecoveryReport)> {
        recover(dir.as_ref(), config, env)
    }

    pub(crate) fn params(&self) -> SegmentParams {
        SegmentParams {
            index_interval_bytes: self.config.index_interval_bytes,
            reserve_bytes: self.config.segment_bytes,
            now_ms: self.clock.now_ms(),
        }
    }

    pub(crate) fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    /// The flag a read sets when it finds stored data damaged, with what it found: the
    /// owner checks it without taking the log's lock.
    pub fn corruption_flag(&self) -> Arc<OnceLock<String>> {
        Arc::clone(&self.corruption)
    }

    /// Records damage found in stored data (by a read of this log, or by the cleaner).
    pub fn mark_corrupt(&self, error: &StorageError) {
        let _ = self.corruption.set(error.to_string());
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration (a topic's configs were altered). Segment size and age
    /// apply from the next roll, retention and compaction settings from the next pass.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base_offset)
    }

    /// Offset the next appended record will get (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// Every offset below this was made durable by a successful sync.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    /// Raft index of the oldest stored batch.
    pub fn first_raft_index(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_raft_index)
    }

    /// Raft log id of the newest stored batch.
    pub fn last_raft_position(&self) -> Option<RaftPosition> {
        self.segments.iter().rev().find_map(|s| s.last_raft)
    }

    /// Bytes of batches stored, over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.written).sum()
    }

    /// Bytes of log after the batches of Raft index `index` (the whole log for `None`):
    /// what a restart would re-read if its state were applied up to `index`.
    pub fn bytes_after_raft_index(&self, index: Option<u64>) -> Result<u64> {
        let Some(index) = index else {
            return Ok(self.size_bytes());
        };
        let mut bytes = 0;
        for segment in self.segments.iter().rev() {
            if segment.last_raft.is_none_or(|last| last.index <= index) {
                if segment.last_raft.is_some() {
                    break;
                }
                continue;
            }
            if segment.first_raft_index.is_some_and(|first| first > index) {
                bytes += segment.written;
                continue;
            }
            bytes += segment.written - segment.position_for_raft_index(index + 1)?;
            break;
        }
        Ok(bytes)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether an fsync error has made the log refuse writes.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.failed {
            Err(StorageError::Failed {
                dir: self.dir.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Marks the log failed if `result` is an error other than `NoSpace`: used around every
    /// operation that fsyncs, because after a failed fsync the page cache may have dropped
    /// data that was never written. `NoSpace` comes only from reserving or creating files
    /// (see [`StorageError::io`]) and leaves everything as it was.
    pub(crate) fn fatal_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, StorageError::NoSpace { .. }))
        {
            self.failed = true;
        }
        result
    }

    /// Appends a verified batch as a whole Raft entry (or as the last batch of one),
    /// assigning the next offset and stamping `raft`.
    ///
    /// `raft.index` must not be below the last batch's (equal: same entry). Raft itself never
    /// leaves holes; the log only refuses to go backwards, because openraft's own storage
    /// test suite appends around holes.
    /// Rolls the active segment first when the batch does not fit or the segment is older
    /// than `segment_ms`. Not durable until [`Log::sync`].
    pub fn append(&mut self, batch: &Batch, raft: RaftPosition) -> Result<AppendInfo> {
        self.append_placed(batch, raft, false)
    }

    /// Appends the batches of one Raft entry, in order, as [`Log::append`] does each. Every
    /// batch but the last is marked as continued, so recovery can cut an entry that lost its
    /// last batches back to a whole one. Returns the offsets of the entry as a whole.
    ///
    /// All or nothing: an error after the entry's first batch (even `NoSpace`) fails the log,
    /// so no other entry can follow the part written; the next open cuts it.
    pub fn append_entry(&mut self, batches: &[Batch], raft: RaftPosition) -> Result<AppendInfo> {
        let base_offset = self.next_offset();
        let mut rest = batches.iter().enumerate().peekable();
        while let Some((i, batch)) = rest.next() {
            let result = self.append_placed(batch, raft, rest.peek().is_some());
            if result.is_err() && i > 0 {
                self.failed = true;
            }
            result?;
        }
        Ok(AppendInfo {
            base_offset,
            next_offset: self.next_offset(),
        })
    }

    fn append_placed(
        &mut self,
        batch: &Batch,
        raft: RaftPosition,
        entry_continues: bool,
    ) -> Result<AppendInfo> {
        self.check_writable()?;
        if let Some(last) = self.last_raft_position()
            && raft.index < last.index
        {
            return Err(StorageError::RaftIndexBackwards {
                last: last.index,
                got: raft.index,
            });
        }
        let base_offset = self.next_offset();
        let header = BatchHeader {
            base_offset,
            raft,
            ..*batch.header()
        };
        if self.should_roll(&header) {
            self.roll()?;
        }
        let reserve = self.config.segment_bytes;
        let placement = Placement {
            base_offset,
            raft,
            entry_continues,
        };
        let result = self.active_mut().append(batch, placement, reserve);
        self.fatal_on_error(result)?;
        let next = self.next_offset();
        self.check(next == header.next_offset(), || {
            format!(
                "after appending offsets {base_offset}..{} the log ends at {next}",
                header.next_offset()
            )
        })?;
        Ok(AppendInfo {
            base_offset,
            next_offset: header.next_offset(),
        })
    }

    /// Fails the log with [`StorageError::Invariant`] unless `holds`: a paired assertion
    /// where data crosses the storage boundary, on in release builds (each is a comparison),
    /// stopping writes rather than building on a broken log.
    pub(crate) fn check(&mut self, holds: bool, what: impl FnOnce() -> String) -> Result<()> {
        if holds {
            return Ok(());
        }
        self.failed = true;
        Err(StorageError::Invariant {
            dir: self.dir.clone(),
            what: what(),
        })
    }

    /// Whether the next `bytes` of appends fit in the active segment's reserved space with no
    /// roll due: then [`Log::make_room`] has nothing to do (an in-memory check, no I/O).
    pub fn has_room(&self, bytes: u64) -> bool {
        let active = self.active();
        let end = active.written.saturating_add(bytes);
        !self.failed && !self.roll_due(end) && end <= active.reserved
    }

    /// Makes sure the next `bytes` of appends cannot fail for a full disk: a caller that
    /// must not fail an append once it has committed to it (the Raft log store) checks
    /// here first, where `NoSpace` is still a clean refusal. Rolls now when the bytes would
    /// not fit in the active segment (or it is due by age), then reserves them in the new
    /// one. Appends of more than one whole segment (only with a tiny `segment_bytes`) may
    /// still roll again, and that roll can still find the disk full.
    pub fn make_room(&mut self, bytes: u64) -> Result<()> {
        self.check_writable()?;
        if self.roll_due(self.active().written.saturating_add(bytes)) {
            self.roll()?;
        }
        let limit = self.config.segment_bytes;
        let active = self.active_mut();
        let end = active.written.saturating_add(bytes);
        active.reserve_for(end, limit)
    }

    /// Whether the active segment must roll before it grows to `end` bytes: past the
    /// segment size, or old enough.
    fn roll_due(&self, end: u64) -> bool {
        let active = self.active();
        end > self.config.segment_bytes
            || self.clock.now_ms().saturating_sub(active.created_ms) >= self.config.segment_ms
    }

    fn should_roll(&self, header: &BatchHeader) -> bool {
        let active = self.active();
        // Segments are named by base offset, so a segment must take at least one offset
        // before the next one starts: a run of control batches (which take none) stays in
        // one segment, beyond `segment_bytes` if need be.
        if active.next_offset == active.base_offset {
            return false;
        }
        self.roll_due(active.written + header.batch_len()) || !active.fits_relative(header)
    }

    /// Makes every appended batch durable (`fdatasync` of the active segment; sealed
    /// segments were synced when they were sealed).
    pub fn sync(&mut self) -> Result<()> {
        let pending = self.begin_sync()?;
        let result = pending.run();
        self.finish_sync(&pending, result)
    }

    /// The synced pages that fall out of the cached tail (`LogConfig::cached_tail_bytes`),
    /// newest segment first. The tail's edge only moves forward, so the walk stops at the
    /// first segment behind the edge that is already released whole: older ones are too
    /// (sealed segments found at open count as released).
    fn releases_behind(&self) -> Vec<Release> {
        let Some(keep) = self.config.cached_tail_bytes else {
            return Vec::new();
        };
        let mut releases = Vec::new();
        let mut newer = 0u64;
        for segment in self.segments.iter().rev() {
            let keep_here = keep.saturating_sub(newer);
            if keep_here == 0 && segment.released >= segment.written {
                break;
            }
            releases.extend(segment.release_behind(keep_here));
            newer = newer.saturating_add(segment.written);
        }
        releases
    }

    /// The segment starting at `base_offset`, if it still exists (newest are searched first).
    fn segment_at_mut(&mut self, base_offset: u64) -> Option<&mut Segment> {
        self.segments
            .iter_mut()
            .rev()
            .find(|s| s.base_offset == base_offset)
    }

    fn mark_released(&mut self, release: &Release) {
        if let Some(segment) = self.segment_at_mut(release.base_offset) {
            segment.released = segment.released.max(release.to);
        }
    }

    /// Starts a sync that runs without the log: the caller releases its lock on the log,
    /// calls [`PendingSync::run`], and hands the result to [`Log::finish_sync`]. Readers are
    /// not blocked for the length of an fsync. Only valid while no other write happens
    /// between the two calls (the Raft log store's single writer guarantees it).
    pub fn begin_sync(&self) -> Result<PendingSync> {
        self.check_writable()?;
        let active = self.active();
        let (file, path) = active.sync_target();
        let mark = (self.clock.now_ms() >= self.checkpoint_due_from_ms).then(|| PendingMark {
            checkpoint: self.checkpoint.clone(),
            at: RecoveryCheckpoint::at(active.base_offset, active.written),
            generation: self.checkpoint.generation(),
        });
        Ok(PendingSync {
            file,
            path,
            upto: self.next_offset(),
            segment_base: active.base_offset,
            segment_written: active.written,
            releases: self.releases_behind(),
            mark,
            seals: self.pending_seals.clone(),
            sync_dir: self.dir_sync_pending,
            cleaner: self.cleaner_write_pending.then_some(self.cleaner),
            rolls: self.rolls,
            io: Arc::clone(&self.io),
            dir: self.dir.clone(),
        })
    }

    /// Completes a sync begun with [`Log::begin_sync`]: on success everything below its
    /// offset is durable; an error fails the log, as any fsync error does.
    pub fn finish_sync(&mut self, pending: &PendingSync, result: Result<()>) -> Result<()> {
        self.fatal_on_error(result)?;
        self.flushed_offset = self.flushed_offset.max(pending.upto);
        if let Some(segment) = self.segment_at_mut(pending.segment_base) {
            segment.mark_synced(pending.segment_written);
        }
        for release in &pending.releases {
            self.mark_released(release);
        }
        self.pending_seals.retain(|s| !s.is_done());
        if pending.cleaner == Some(self.cleaner) {
            self.cleaner_write_pending = false;
        }
        let rolled_since = self.rolls != pending.rolls;
        if pending.sync_dir && !rolled_since {
            self.dir_sync_pending = false;
        }
        if pending.mark.is_some() && !rolled_since {
            let interval = i64::try_from(self.config.checkpoint_interval_ms).unwrap_or(i64::MAX);
            self.checkpoint_due_from_ms = self.clock.now_ms().saturating_add(interval);
        }
        Ok(())
    }

    /// Syncs and writes the recovery checkpoint, so the next open scans only what comes
    /// after this point. Call periodically and on shutdown.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.sync()?;
        let active = self.active();
        let checkpoint = RecoveryCheckpoint::at(active.base_offset, active.written);
        self.advance_checkpoint(checkpoint)
    }

    /// Writes a higher recovery checkpoint. On a full disk the old one stays: it is still
    /// true, only lower, so the next open scans a little more.
    fn advance_checkpoint(&mut self, checkpoint: RecoveryCheckpoint) -> Result<()> {
        debug_assert!(checkpoint >= self.checkpoint.current());
        let generation = self.checkpoint.generation();
        let result = self
            .checkpoint
            .advance(self.io.as_ref(), &self.dir, checkpoint, generation);
        match self.fatal_on_error(result) {
            Ok(_) | Err(StorageError::NoSpace { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Seals the active segment and starts a new one at the next offset; a no-op while the
    /// active segment holds no offsets (empty, or control batches only). The new segment is
    /// reserved first, so a full disk fails with `NoSpace` before anything changes. The
    /// sealed segment is durable, with its index files, once the next [`Log::sync`] (or
    /// [`PendingSync::run`]) returns, before anything after it is.
    pub fn roll(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.active().next_offset == self.active().base_offset {
            return Ok(());
        }
        // Only in-memory work and metadata calls here, under the caller's lock: the fsyncs
        // of a roll (the sealed file, its index files, the directory, the checkpoint) go to
        // the next sync, which runs without the lock, before that sync's own fsync. Nothing
        // after the roll is durable before the sealed segment is.
        let next = Segment::create_unsynced(
            self.io.as_ref(),
            &self.dir,
            self.next_offset(),
            self.params(),
        )?;
        let dir = self.dir.clone();
        let active = self.active_mut();
        let result = active
            .seal_unsynced()
            .map(|()| PendingSeal::of(&dir, active));
        let seal = self.fatal_on_error(result)?;
        self.pending_seals.push(seal);
        self.dir_sync_pending = true;
        self.rolls += 1;
        self.segments.push(next);
        // The next sync moves the checkpoint into the new segment.
        self.checkpoint_due_from_ms = i64::MIN;
        Ok(())
    }

    /// Does the pending seals' work now, under the lock: before retention, compaction, a
    /// truncation or a reset changes the segments they name. A sync running meanwhile
    /// finishes its part first; what it has done is not done again.
    pub(crate) fn flush_pending_seals(&mut self) -> Result<()> {
        if !self.pending_seals.is_empty() || self.dir_sync_pending {
            let result = run_seals(
                self.io.as_ref(),
                &self.dir,
                &self.pending_seals,
                self.dir_sync_pending,
            );
            self.fatal_on_error(result)?;
            self.pending_seals.retain(|s| !s.is_done());
            self.dir_sync_pending = false;
        }
        // Every sealed segment is durable now: the checkpoint leaves them, as a roll's used
        // to, before compaction may shorten one or retention delete one under it.
        let active = RecoveryCheckpoint::at(self.active().base_offset, 0);
        if active > self.checkpoint.current() {
            self.advance_checkpoint(active)?;
        }
        Ok(())
    }

    /// Gives the segment files up for deletion (their partition is being deleted): each is
    /// renamed and freed in the background once no reader holds it, as retention's are.
    /// The log refuses writes from here on; the caller removes the directory.
    pub fn discard_files(&mut self) -> Result<()> {
        self.failed = true;
        for segment in &self.segments {
            let file = segment.file_handle();
            remove_segment_files(self.io.as_ref(), &self.dir, segment.base_offset, Some(file))?;
        }
        Ok(())
    }

    /// Empties the log durably and restarts it at `next_offset`: a Raft follower installing
    /// a snapshot beyond its log. `next_offset` must not be below [`Log::next_offset`], so
    /// offsets never go back. A crash part-way is finished by the next open.
    pub fn reset_to(&mut self, next_offset: u64) -> Result<()> {
        if next_offset < self.next_offset() {
            let (log_start, next) = (self.log_start_offset(), self.next_offset());
            return Err(StorageError::OffsetOutOfRange {
                requested: next_offset,
                log_start,
                next,
            });
        }
        self.reset_unchecked(next_offset)
    }

    /// Empties the log durably and restarts it at `next_offset`, which may lie below the
    /// current end: a Raft follower whose log does not lead up to an installed snapshot
    /// drops it, uncommitted tail included (no reader ever saw offsets past the commit,
    /// and the leader gave those offsets to other records). A crash part-way is finished by
    /// the next open.
    pub fn reset_to_snapshot(&mut self, next_offset: u64) -> Result<()> {
        self.reset_unchecked(next_offset)
    }

    fn reset_unchecked(&mut self, next_offset: u64) -> Result<()> {
        self.check_writable()?;
        self.flush_pending_seals()?;
        let marker = RecoveryCheckpoint {
            segment_base: next_offset,
            position: 0,
            reset: true,
        };
        let result = self.checkpoint.replace(self.io.as_ref(), &self.dir, marker);
        self.fatal_on_error(result)?;
        let doomed: Vec<(u64, Option<Arc<dyn IoFile>>)> = self
            .segments
            .iter()
            .map(|s| (s.base_offset, Some(s.file_handle())))
            .collect();
        let params = self.params();
        let result = reset_segments(self.io.as_ref(), &self.dir, doomed, next_offset, params);
        let fresh = self.fatal_on_error(result)?;
        self.segments = vec![fresh];
        self.checkpoint
            .assume(RecoveryCheckpoint::at(next_offset, 0));
        self.flushed_offset = next_offset;
        self.cleaner.cleaned_up_to = next_offset;
        let (next, start, segments) = (
            self.next_offset(),
            self.log_start_offset(),
            self.segments.len(),
        );
        self.check(
            next == next_offset && start == next_offset && segments == 1,
            || {
                format!(
                    "after a reset to {next_offset}: offsets {start}..{next} in {segments} segments"
                )
            },
        )
    }

    /// Removes every record at or after `from_offset`, durably. Batches are cut whole: the
    /// batch holding `from_offset` goes too. Truncating below `log_start_offset` is an error.
    /// The cut may fall inside a Raft entry: Raft logs cut with [`Log::truncate_raft_suffix`].
    pub fn truncate_suffix(&mut self, from_offset: u64) -> Result<()> {
        self.check_writable()?;
        if from_offset >= self.next_offset() {
            return Ok(());
        }
        let start = self.log_start_offset();
        if from_offset < start {
            return Err(StorageError::OffsetOutOfRange {
                requested: from_offset,
                log_start: start,
                next: self.next_offset(),
            });
        }
        let i = self
            .segments
            .partition_point(|s| s.base_offset <= from_offset)
            .saturating_sub(1);
        let position = self
            .segments
            .get(i)
            .map(|s| s.position_for_offset(from_offset))
            .transpose()?
            .unwrap_or(0);
        self.truncate_at(i, position)?;
        let next = self.next_offset();
        self.check(next <= from_offset && next >= start, || {
            format!("after cutting from offset {from_offset} the log ends at {next}")
        })
    }

    /// Removes every batch whose Raft index is `from_index` or later, durably (Raft's
    /// "delete conflicting suffix").
    pub fn truncate_raft_suffix(&mut self, from_index: u64) -> Result<()> {
        self.check_writable()?;
        let Some(last) = self.last_raft_position() else {
            return Ok(());
        };
        if from_index > last.index {
            return Ok(());
        }
        let i = self.segment_for_raft_index(from_index);
        let position = self
            .segments
            .get(i)
            .map(|s| s.position_for_raft_index(from_index))
            .transpose()?
            .unwrap_or(0);
        self.truncate_at(i, position)?;
        let last = self.last_raft_position().map(|r| r.index);
        self.check(last.is_none_or(|last| last < from_index), || {
            format!("after cutting from Raft index {from_index} the log ends at {last:?}")
        })
    }

    /// Cuts the log's last Raft entry if its last batch says more batches follow: a crash
    /// or damage took the entry's end, and a log must never report a partial entry as its
    /// last. Returns where the cut began (segment file, position) and the bytes cut.
    pub(crate) fn cut_open_last_entry(&mut self) -> Result<Option<(PathBuf, u64, u64)>> {
        let Some(last) = self.last_raft_position() else {
            return Ok(None);
        };
        let first = self.segment_for_raft_index(last.index);
        let Some(segment) = self.segments.get(first) else {
            return Ok(None);
        };
        let start = (
            segment.path.clone(),
            segment.position_for_raft_index(last.index)?,
        );
        let mut tail = None;
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let from = if i == first { start.1 } else { 0 };
            tail = segment.last_header_from(from)?.or(tail);
        }
        if !tail.is_some_and(|h| h.attributes.entry_continues()) {
            return Ok(None);
        }
        let before = self.size_bytes();
        self.truncate_raft_suffix(last.index)?;
        let cut = before.saturating_sub(self.size_bytes());
        Ok(Some((start.0, start.1, cut)))
    }

    /// The first segment holding a batch with Raft index `index` or later. One entry's
    /// batches may straddle a roll, so the segment whose *first* index matches can be late.
    pub(crate) fn segment_for_raft_index(&self, index: u64) -> usize {
        self.segments
            .iter()
            .position(|s| s.last_raft.is_some_and(|last| last.index >= index))
            .unwrap_or(self.segments.len().saturating_sub(1))
    }

    fn truncate_at(&mut self, index: usize, position: u64) -> Result<()> {
        self.flush_pending_seals()?;
        self.truncations += 1;
        let Some(segment) = self.segments.get(index) else {
            return Ok(());
        };
        let cut = RecoveryCheckpoint::at(segment.base_offset, position);
        // Lower the checkpoint first: recovery must never find data missing below it.
        let result = self.checkpoint.lower_to(self.io.as_ref(), &self.dir, cut);
        self.fatal_on_error(result)?;
        let params = self.params();
        let result = self.truncate_segments(index, position, params);
        self.fatal_on_error(result)?;
        self.flushed_offset = self.next_offset();
        self.cleaner.cleaned_up_to = self.cleaner.cleaned_up_to.min(self.next_offset());
        Ok(())
    }

    fn truncate_segments(
        &mut self,
        index: usize,
        position: u64,
        params: SegmentParams,
    ) -> Result<()> {
        let (io, dir) = (Arc::clone(&self.io), self.dir.clone());
        let segment = self
            .segments
            .get_mut(index)
            .expect("index checked by the caller");
        let was_sealed = segment.sealed;
        segment.truncate_to(position, params)?;
        if was_sealed {
            remove_index_files(io.as_ref(), &dir, segment.base_offset)?;
        }
        // Zeroed and synced first, so a crash while removing later segments cannot bring
        // back the data after the cut.
        while self.segments.len() > index + 1 {
            if let Some(later) = self.segments.pop() {
                let file = later.file_handle();
                remove_segment_files(io.as_ref(), &dir, later.base_offset, Some(file))?;
            }
        }
        io.sync_dir(&dir)
            .map_err(|e| StorageError::io("fsync dir", &dir, e))?;
        let limit = self.config.segment_bytes;
        let _ = self.active_mut().reserve_ahead(limit); // a full disk is retried at the next append
        Ok(())
    }
}

/// Replaces the segments `doomed` (base offsets, with their open handles where they have
/// one) with one empty segment at `next_offset`, then writes a plain checkpoint there: the
/// second half of `Log::reset_to`, also run by recovery when it finds a reset marker.
pub(crate) fn reset_segments(
    io: &dyn Io,
    dir: &Path,
    doomed: Vec<(u64, Option<Arc<dyn IoFile>>)>,
    next_offset: u64,
    params: SegmentParams,
) -> Result<Segment> {
    for (base, file) in doomed {
        remove_segment_files(io, dir, base, file)?;
    }
    io.sync_dir(dir)
        .map_err(|e| StorageError::io("fsync dir", dir, e))?;
    let fresh = match Segment::create(io, dir, next_offset, params) {
        Err(StorageError::NoSpace { .. }) => Segment::create(
            io,
            dir,
            next_offset,
            SegmentParams {
                reserve_bytes: 0,
                ..params
            },
        )?,
        other => other?,
    };
    RecoveryCheckpoint::at(next_offset, 0).write(io, dir)?;
    Ok(fresh)
}

/// An fsync of the active segment taken out of the log, so it can run unlocked.
#[derive(Debug)]
pub struct PendingSync {
    file: Arc<dyn crate::io::IoFile>,
    path: PathBuf,
    upto: u64,
    /// The active segment's base offset and written length when the sync began.
    segment_base: u64,
    segment_written: u64,
    /// Pages already synced before this sync that fall out of the cached tail.
    releases: Vec<Release>,
    /// The recovery checkpoint this sync moves up to what it syncs, when one is due.
    mark: Option<PendingMark>,
    /// Segments rolls sealed since the last sync: made durable first.
    seals: Vec<PendingSeal>,
    /// Whether a roll created a file whose directory entry must be made durable.
    sync_dir: bool,
    /// A cleaner checkpoint to write after the fsyncs.
    cleaner: Option<CleanerCheckpoint>,
    /// The log's roll count when the sync began.
    rolls: u64,
    io: Arc<dyn Io>,
    dir: PathBuf,
}

/// A recovery checkpoint to write once a sync's fsync succeeded: what it synced.
#[derive(Debug)]
struct PendingMark {
    checkpoint: SharedCheckpoint,
    at: RecoveryCheckpoint,
    generation: u64,
}

/// A segment a roll sealed in memory (trimmed, read-only to appends) whose file still needs
/// its fsync and whose index files still need writing.
#[derive(Debug, Clone)]
pub(crate) struct PendingSeal {
    file: Arc<dyn IoFile>,
    path: PathBuf,
    index: Arc<IndexFiles>,
    /// Set once the work is done, by a sync or by the log itself (before retention,
    /// compaction or a truncation touches the segment): done once, never after the segment
    /// was replaced, so stale index files never land over a compacted segment's.
    done: Arc<Mutex<bool>>,
}

impl PendingSeal {
    /// The seal of `segment` (trimmed, sealed in memory) still to be made durable.
    pub(crate) fn of(dir: &Path, segment: &Segment) -> Self {
        let (file, path) = segment.sync_target();
        Self {
            file,
            path,
            index: Arc::new(encode_index_files(dir, segment)),
            done: Arc::default(),
        }
    }

    /// Whether the seal's work is done (by a sync or by the log).
    fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fsyncs the sealed file, then writes its index files. The index files are derived
    /// data (a missing or damaged one is rebuilt at open), so failing to write them, on a
    /// full disk say, does not fail the seal: only the fsync can.
    fn run(&self, io: &dyn Io) -> Result<()> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return Ok(());
        }
        if !crate::canary::armed(crate::canary::Canary::AckBeforeFsync) {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("fsync", &self.path, e))?;
        }
        let _ = self.index.write(io);
        *done = true;
        Ok(())
    }
}

/// Makes sealed segments durable, oldest first, then (if a roll created a file) the
/// directory: what a roll used to do under the lock.
fn run_seals(io: &dyn Io, dir: &Path, seals: &[PendingSeal], sync_dir: bool) -> Result<()> {
    for seal in seals {
        seal.run(io)?;
    }
    if sync_dir {
        io.sync_dir(dir)
            .map_err(|e| StorageError::io("fsync dir", dir, e))?;
    }
    Ok(())
}

impl PendingSync {
    /// Makes the segments sealed since the last sync durable (their data, length and index
    /// files, and the directory entry of any new segment), runs the `fdatasync` of the
    /// active segment, then moves the recovery checkpoint up to what it synced (when one is
    /// due), then drops from memory the pages that left the cached tail; pass the result to
    /// [`Log::finish_sync`].
    pub fn run(&self) -> Result<()> {
        run_seals(self.io.as_ref(), &self.dir, &self.seals, self.sync_dir)?;
        if !crate::canary::armed(crate::canary::Canary::AckBeforeFsync) {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("fsync", &self.path, e))?;
        }
        if let Some(mark) = &self.mark {
            // Only after the fsync: the checkpoint never claims bytes the disk may not hold.
            let result =
                mark.checkpoint
                    .advance(self.io.as_ref(), &self.dir, mark.at, mark.generation);
            match result {
                // Without room the old checkpoint stays: still true, only lower.
                Ok(_) | Err(StorageError::NoSpace { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(cleaner) = self.cleaner {
            // Where the next compaction pass starts: a failed write keeps an older value,
            // which costs a pass, never data.
            let _ = cleaner.write(self.io.as_ref(), &self.dir);
        }
        for release in &self.releases {
            release.run();
        }
        Ok(())
    }
}

/// Removes a segment's log file (freed in the background, see [`Io::remove_file_in_background`];
/// `file` is its open handle, `None` only when nothing has mapped it) and index files.
pub(crate) fn remove_segment_files(
    io: &dyn Io,
    dir: &Path,
    base_offset: u64,
    file: Option<Arc<dyn IoFile>>,
) -> Result<()> {
    let path = dir.join(segment_file_name(base_offset, SegmentFile::Log));
    io.remove_file_in_background(&path, file)
        .map_err(|e| StorageError::io("remove", &path, e))?;
    remove_index_files(io, dir, base_offset)
}
