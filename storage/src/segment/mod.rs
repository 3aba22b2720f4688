//! One segment: a log file of batches starting at `base_offset`, with its sparse indexes
//! held in memory and written beside it when the segment is sealed.

mod file_name;
mod index_file;
mod offset_index;
mod scan;
mod time_index;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{Batch, BatchHeader, Placement, RaftPosition, stamp_assigned_fields};
use crate::error::{Result, StorageError};
use crate::io::{Io, IoFile, OpenMode};
use crate::limits::{
    BATCH_HEADER_LEN, RELEASE_STEP_BYTES, RESERVE_STEP_BYTES, WRITEBACK_STEP_BYTES,
};

pub(crate) use file_name::{SegmentFile, parse_segment_file_name, segment_file_name};
pub(crate) use offset_index::{IndexEntry, OffsetIndex};
pub(crate) use scan::Continuity;
pub(crate) use time_index::{TimeEntry, TimeIndex};

/// Zero-fill writes go out in chunks of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// Writeback is started on whole pages only: a partly written page would be written again.
const WRITEBACK_ALIGN: u64 = 4096;

/// Synced pages of one segment to drop from memory ([`crate::io::IoFile::release`]).
#[derive(Debug)]
pub(crate) struct Release {
    pub(crate) base_offset: u64,
    file: Arc<dyn IoFile>,
    from: u64,
    pub(crate) to: u64,
}

impl Release {
    /// Drops the pages; a hint, so failures are ignored.
    pub(crate) fn run(&self) {
        let _ = self.file.release(self.from, self.to - self.from);
    }
}

/// A segment of a partition log.
///
/// `written` bytes are valid batches; beyond them the file is reserved zeros (active
/// segment) or nothing (sealed). Not durable until [`Segment::sync`]; single writer.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    pub(crate) path: PathBuf,
    file: Arc<dyn IoFile>,
    /// Length of the valid batches.
    pub(crate) written: u64,
    /// Offset after the last batch (the base offset while empty).
    pub(crate) next_offset: u64,
    pub(crate) first_raft_index: Option<u64>,
    pub(crate) last_raft: Option<RaftPosition>,
    /// Largest record timestamp in the segment; `i64::MIN` while empty.
    pub(crate) max_timestamp: i64,
    pub(crate) batch_count: u64,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    pub(crate) sealed: bool,
    /// Wall-clock time this process created or reopened the segment; drives `segment_ms`.
    pub(crate) created_ms: i64,
    /// Bytes reserved on disk; appends beyond it reserve more first. Only
    /// [`Segment::reserve`] raises it, after the reservation succeeded.
    pub(crate) reserved: u64,
    /// Pages below this have been released from memory.
    pub(crate) released: u64,
    /// Writeback of the bytes below this has been started ([`IoFile::start_writeback`]).
    writeback_started: u64,
}

/// How a new or reopened segment is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentParams {
    pub(crate) index_interval_bytes: u32,
    pub(crate) reserve_bytes: u64,
    pub(crate) now_ms: i64,
}

impl Segment {
    fn empty(
        base_offset: u64,
        path: PathBuf,
        file: Arc<dyn IoFile>,
        params: SegmentParams,
    ) -> Self {
        Self {
            base_offset,
            path,
            file,
            written: 0,
            next_offset: base_offset,
            first_raft_index: None,
            last_raft: None,
            max_timestamp: i64::MIN,
            batch_count: 0,
            index: OffsetIndex::new(params.index_interval_bytes),
            time_index: TimeIndex::default(),
            sealed: false,
            created_ms: params.now_ms,
            reserved: 0,
            released: 0,
            writeback_started: 0,
        }
    }

    /// Creates a new empty segment file reserved to `reserve_bytes`, and makes its
    /// directory entry durable. On a full disk the file is removed and `NoSpace` returned.
    pub(crate) fn create(
        io: &dyn Io,
        dir: &Path,
        base_offset: u64,
        params: SegmentParams,
    ) -> Result<Self> {
        let segment = Self::create_unsynced(io, dir, base_offset, params)?;
        io.sync_dir(dir)
            .map_err(|e| StorageError::io("fsync dir", dir, e))?;
        Ok(segment)
    }

    /// [`Segment::create`] without the directory fsync: the caller syncs the directory
    /// before anything in the segment is reported durable.
    pub(crate) fn create_unsynced(
        io: &dyn Io,
        dir: &Path,
        base_offset: u64,
        params: SegmentParams,
    ) -> Result<Self> {
        let path = dir.join(segment_file_name(base_offset, SegmentFile::Log));
        let file = io
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| StorageError::io("create", &path, e))?;
        let first_step = params.reserve_bytes.min(RESERVE_STEP_BYTES);
        if let Err(e) = file.allocate(first_step) {
            let _ = io.remove_file(&path);
            return Err(StorageError::io("fallocate", &path, e));
        }
        let mut segment = Self::empty(base_offset, path, file, params);
        segment.reserved = first_step;
        Ok(segment)
    }

    /// Opens the file at `open_path` as the segment that will be named `path` (a compacted
    /// rewrite, before it is renamed into place), with nothing known about it yet.
    pub(crate) fn open_as(
        io: &dyn Io,
        open_path: &Path,
        path: PathBuf,
        base_offset: u64,
        params: SegmentParams,
    ) -> Result<Self> {
        let file = io
            .open(open_path, OpenMode::Existing)
            .map_err(|e| StorageError::io("open", open_path, e))?;
        let mut segment = Self::empty(base_offset, path, file, params);
        segment.reserved = segment.file_len()?;
        Ok(segment)
    }

    /// Opens an existing segment file with nothing known about it yet (recovery fills it).
    pub(crate) fn open_unscanned(
        io: &dyn Io,
        dir: &Path,
        base_offset: u64,
        params: SegmentParams,
    ) -> Result<Self> {
        let path = dir.join(segment_file_name(base_offset, SegmentFile::Log));
        let file = io
            .open(&path, OpenMode::Existing)
            .map_err(|e| StorageError::io("open", &path, e))?;
        let mut segment = Self::empty(base_offset, path, file, params);
        segment.reserved = segment.file_len()?;
        Ok(segment)
    }

    /// Length of the file on disk, reserved space included.
    pub(crate) fn file_len(&self) -> Result<u64> {
        self.file
            .len()
            .map_err(|e| StorageError::io("stat", &self.path, e))
    }

    /// Whether a batch with this header can go into this segment: its offsets and Raft
    /// index must stay within the `u32` relative columns of the index.
    pub(crate) fn fits_relative(&self, header: &BatchHeader) -> bool {
        let offsets_fit = header.next_offset() - self.base_offset <= u64::from(u32::MAX);
        let raft_fits = self
            .first_raft_index
            .is_none_or(|first| header.raft.index - first <= u64::from(u32::MAX));
        offsets_fit && raft_fits && self.written + header.batch_len() <= u64::from(u32::MAX)
    }

    /// Updates the summary and indexes for a verified batch at `position`.
    pub(crate) fn ingest(&mut self, header: &BatchHeader, position: u64) {
        assert_eq!(
            position, self.written,
            "batches are contiguous in a segment"
        );
        assert!(
            header.base_offset >= self.next_offset,
            "offsets never go backwards"
        );
        let first_raft = *self.first_raft_index.get_or_insert(header.raft.index);
        let relative_offset = (header.base_offset - self.base_offset) as u32;
        let entry = IndexEntry {
            relative_offset,
            relative_raft_index: (header.raft.index - first_raft) as u32,
            position: position as u32,
        };
        let indexed = self.index.on_append(entry, header.batch_len());
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if indexed {
            self.time_index.maybe_add(TimeEntry {
                max_timestamp: self.max_timestamp,
                relative_offset,
            });
        }
        self.next_offset = header.next_offset();
        self.last_raft = Some(header.raft);
        self.batch_count += 1;
        self.written = position + header.batch_len();
    }

    /// Writes `batch` at its placement (offset, Raft entry); returns its position.
    pub(crate) fn append(
        &mut self,
        batch: &Batch,
        placement: Placement,
        reserve_bytes: u64,
    ) -> Result<u64> {
        debug_assert!(!self.sealed);
        let bytes = batch.as_bytes();
        let mut header_bytes = [0u8; BATCH_HEADER_LEN];
        header_bytes.copy_from_slice(
            bytes
                .get(..BATCH_HEADER_LEN)
                .unwrap_or(&[0; BATCH_HEADER_LEN]),
        );
        stamp_assigned_fields(&mut header_bytes, placement);
        let position = self.written;
        let end = position + bytes.len() as u64;
        self.reserve_for(end, reserve_bytes)?;
        let records = bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
        self.write_in_pieces(position, &header_bytes, records)?;
        let header = BatchHeader {
            base_offset: placement.base_offset,
            raft: placement.raft,
            attributes: (batch.header().attributes).with_entry_continues(placement.entry_continues),
            ..*batch.header()
        };
        self.ingest(&header, position);
        // Paired with the stamping above: the header as it now reads back from the file
        // (CRC included) is the one the indexes were just told about.
        let back = self.header_at(position)?;
        if back != header {
            return Err(StorageError::corruption(
                &self.path,
                position,
                format!(
                    "the header read back after an append differs: wrote {header:?}, read {back:?}"
                ),
            ));
        }
        Ok(position)
    }

    /// Writes `head` and `body` at `position`, starting writeback behind each piece of
    /// `WRITEBACK_STEP_BYTES`.
    fn write_in_pieces(&mut self, position: u64, head: &[u8], body: &[u8]) -> Result<()> {
        let step = WRITEBACK_STEP_BYTES as usize;
        let (first, mut rest) = body.split_at(body.len().min(step));
        self.file
            .write_pair_at(position, head, first)
            .map_err(|e| StorageError::io("write", &self.path, e))?;
        let mut at = position + (head.len() + first.len()) as u64;
        self.start_writeback_below(at);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rest.len().min(step));
            self.file
                .write_at(at, piece)
                .map_err(|e| StorageError::io("write", &self.path, e))?;
            at += piece.len() as u64;
            rest = tail;
            self.start_writeback_below(at);
        }
        Ok(())
    }

    /// Starts writeback of the whole pages below `end` neither started nor synced, once
    /// there are `WRITEBACK_STEP_BYTES` of them. A hint: a failure is left for the fsync.
    fn start_writeback_below(&mut self, end: u64) {
        let to = end / WRITEBACK_ALIGN * WRITEBACK_ALIGN;
        let from = self.writeback_started.min(to);
        if to - from >= WRITEBACK_STEP_BYTES {
            let _ = self.file.start_writeback(from, to - from);
            self.writeback_started = to;
        }
    }

    /// Notes that the bytes below `end` are synced: their pages are clean, so writeback is
    /// started only for what comes after. Without this, a round smaller than a step would
    /// start writeback of pages the previous fsync already wrote, and not of its own.
    pub(crate) fn mark_synced(&mut self, end: u64) {
        let clean = end.min(self.written) / WRITEBACK_ALIGN * WRITEBACK_ALIGN;
        self.writeback_started = self.writeback_started.max(clean);
    }

    /// Makes sure `end` bytes are reserved, reserving whole steps of `RESERVE_STEP_BYTES`
    /// up to `limit` (the segment size) at a time.
    pub(crate) fn reserve_for(&mut self, end: u64, limit: u64) -> Result<()> {
        if end <= self.reserved {
            return Ok(());
        }
        let stepped = end
            .div_ceil(RESERVE_STEP_BYTES)
            .saturating_mul(RESERVE_STEP_BYTES);
        self.reserve(stepped.min(limit).max(end))
    }

    /// Makes sure the step the next append starts in is reserved.
    pub(crate) fn reserve_ahead(&mut self, limit: u64) -> Result<()> {
        self.reserve_for(self.written + 1, limit)
    }

    /// Makes sure `len` bytes are reserved (a full disk is `NoSpace`, nothing written).
    pub(crate) fn reserve(&mut self, len: u64) -> Result<()> {
        if len > self.reserved {
            self.file
                .allocate(len)
                .map_err(|e| StorageError::io("fallocate", &self.path, e))?;
            self.reserved = len;
        }
        Ok(())
    }

    /// What to drop from memory so that only the last `keep` written bytes stay cached;
    /// `None` while that is less than a release step. The caller runs it after a sync that
    /// covers every written byte.
    pub(crate) fn release_behind(&self, keep: u64) -> Option<Release> {
        let to = self.written.saturating_sub(keep);
        // A sealed segment's tail goes in one piece; an active one in whole steps.
        let step = if self.sealed && to == self.written {
            1
        } else {
            RELEASE_STEP_BYTES
        };
        (to >= self.released.saturating_add(step)).then(|| Release {
            base_offset: self.base_offset,
            file: Arc::clone(&self.file),
            from: self.released,
            to,
        })
    }

    /// `fdatasync`s the file.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &self.path, e))
    }

    /// The file and path an unlocked sync of this segment needs.
    /// The segment's open file, for deleting it once no reader is left.
    pub(crate) fn file_handle(&self) -> Arc<dyn IoFile> {
        Arc::clone(&self.file)
    }

    pub(crate) fn sync_target(&self) -> (Arc<dyn IoFile>, PathBuf) {
        (Arc::clone(&self.file), self.path.clone())
    }

    /// Cuts the reserved tail, makes the segment durable and read-only.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.seal_unsynced()?;
        self.sync()
    }

    /// [`Segment::seal`] without the fsync: the caller syncs the file (its new length and
    /// its last batches) before anything after it is reported durable.
    pub(crate) fn seal_unsynced(&mut self) -> Result<()> {
        self.file
            .set_len(self.written)
            .map_err(|e| StorageError::io("truncate", &self.path, e))?;
        self.reserved = self.written;
        self.sealed = true;
        Ok(())
    }

    /// Reads and verifies the header of the batch at `position` (below `written`).
    pub(crate) fn header_at(&self, position: u64) -> Result<BatchHeader> {
        header_below(self.file.as_ref(), &self.path, self.written, position)
    }

    /// `len` bytes at `position`: a slice of the mapping on real files.
    pub(crate) fn read(&self, position: u64, len: usize) -> Result<Bytes> {
        read_below(self.file.as_ref(), &self.path, self.written, position, len)
    }

    /// At least `len` bytes at `position` of the released range, and the rest of their read
    /// window within it, read past the page cache; `None` when the range is not released or
    /// the file cannot be read that way.
    pub(crate) fn read_uncached(&self, position: u64, len: usize) -> Result<Option<Bytes>> {
        let limit = self.released.min(self.written);
        if position.saturating_add(len as u64) > limit {
            return Ok(None);
        }
        self.file
            .read_uncached(position, len, limit)
            .map_err(|e| StorageError::io("read", &self.path, e))
    }

    /// Reads a range of a file that may hold anything (recovery): no bound by `written`.
    pub(crate) fn read_raw(&self, position: u64, len: usize) -> Result<Bytes> {
        self.file
            .read_at(position, len)
            .map_err(|e| StorageError::io("read", &self.path, e))
    }

    /// Position of the first batch whose offsets reach past `offset` (or `written`).
    pub(crate) fn position_for_offset(&self, offset: u64) -> Result<u64> {
        let mut position = self.indexed_position_for_offset(offset);
        while position < self.written {
            let header = self.header_at(position)?;
            if header.next_offset() > offset
                || (header.offset_count() == 0 && header.base_offset > offset)
            {
                break;
            }
            position += header.batch_len();
        }
        Ok(position)
    }

    /// The position of the indexed batch boundary at or before the batch holding `offset`,
    /// from the sparse index alone (no header read).
    pub(crate) fn indexed_position_for_offset(&self, offset: u64) -> u64 {
        let relative = u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        u64::from(self.index.position_for_offset(relative))
    }

    /// Position of the first batch whose Raft index is at least `raft_index` (or `written`).
    pub(crate) fn position_for_raft_index(&self, raft_index: u64) -> Result<u64> {
        let first = self.first_raft_index.unwrap_or(raft_index);
        let relative = u32::try_from(raft_index.saturating_sub(first)).unwrap_or(u32::MAX);
        let mut position = u64::from(self.index.position_for_raft_index(relative));
        while position < self.written {
            let header = self.header_at(position)?;
            if header.raft.index >= raft_index {
                break;
            }
            position += header.batch_len();
        }
        Ok(position)
    }

    /// The header of the segment's last batch at or after `position` (a batch boundary).
    pub(crate) fn last_header_from(&self, mut position: u64) -> Result<Option<BatchHeader>> {
        let mut last = None;
        while position < self.written {
            let header = self.header_at(position)?;
            position += header.batch_len();
            last = Some(header);
        }
        Ok(last)
    }

    /// Durably cuts the segment at `position` (a batch boundary): zero-fills the cut bytes so
    /// no stale batch can ever be read back or re-linked by recovery, then re-derives the
    /// summary from the batches that remain.
    pub(crate) fn truncate_to(&mut self, position: u64, params: SegmentParams) -> Result<()> {
        assert!(position <= self.written);
        // Bytes kept from reads past the page cache would outlive the rewrite.
        self.file.forget_uncached();
        self.zero_fill(position, self.written)?;
        self.sync()?;
        let old_written = self.written;
        self.sealed = false;
        self.rescan_headers(position, params)?;
        debug_assert!(self.written <= old_written);
        Ok(())
    }

    /// Writes zeros over `[from, to)`.
    pub(crate) fn zero_fill(&self, from: u64, to: u64) -> Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min((to.saturating_sub(from)) as usize)];
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZERO_CHUNK as u64) as usize;
            self.file
                .write_at(at, zeros.get(..n).unwrap_or_default())
                .map_err(|e| StorageError::io("write", &self.path, e))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Rebuilds summary and indexes from the headers of the batches in `[0, end)`.
    fn rescan_headers(&mut self, end: u64, params: SegmentParams) -> Result<()> {
        let mut fresh = Self::empty(
            self.base_offset,
            self.path.clone(),
            Arc::clone(&self.file),
            params,
        );
        fresh.reserved = self.reserved;
        fresh.created_ms = self.created_ms;
        fresh.writeback_started = self.writeback_started.min(end);
        let mut position = 0;
        while position < end {
            let header = self.header_at(position)?;
            fresh.ingest(&header, position);
            position += header.batch_len();
        }
        *self = fresh;
        Ok(())
    }
}

impl Segment {
    /// The index interval this segment was opened with.
    pub(crate) fn index_interval(&self) -> u32 {
        self.index.interval_bytes()
    }

    /// Takes the summary of a sealed segment from its index files.
    pub(crate) fn apply_loaded(&mut self, loaded: index_file::LoadedIndex) {
        self.written = loaded.written;
        self.next_offset = loaded.next_offset;
        self.first_raft_index = loaded.first_raft_index;
        self.last_raft = loaded.last_raft;
        self.max_timestamp = loaded.max_timestamp;
        self.batch_count = loaded.batch_count;
        self.index = loaded.index;
        self.time_index = loaded.time_index;
        self.sealed = true;
        self.reserved = loaded.written;
        // Not in this process's cache: nothing to release.
        self.released = loaded.written;
    }
}

pub(crate) use index_file::{
    IndexFiles, encode_index_files, load_index_files, remove_index_files, write_index_files,
};

/// `len` bytes at `position` of the segment file at `path`, whose valid batches end at
/// `written`: a slice of the mapping on real files. Also used by the cleaner, which reads
/// sealed segments without the log.
pub(crate) fn read_below(
    file: &dyn IoFile,
    path: &Path,
    written: u64,
    position: u64,
    len: usize,
) -> Result<Bytes> {
    if position + len as u64 > written {
        return Err(StorageError::corruption(
            path,
            position,
            "batch extends beyond the written end",
        ));
    }
    file.read_at(position, len)
        .map_err(|e| StorageError::io("read", path, e))
}

/// Reads and verifies the header of the batch at `position`, below `written`.
pub(crate) fn header_below(
    file: &dyn IoFile,
    path: &Path,
    written: u64,
    position: u64,
) -> Result<BatchHeader> {
    let bytes = read_below(file, path, written, position, BATCH_HEADER_LEN)?;
    BatchHeader::decode(&bytes).map_err(|e| StorageError::corruption(path, position, e))
}
