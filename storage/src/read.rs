//! Reading a log: by offset (consumers), by Raft index (replication), by timestamp.

use bytes::Bytes;

use crate::batch::{Batch, BatchHeader};
use crate::error::{Result, StorageError};
use crate::io::DIRECT_READ_BYTES_MAX;
use crate::limits::BATCH_HEADER_LEN;
use crate::log::Log;
use crate::segment::Segment;

impl Log {
    /// Whole batches starting with the one that holds `from_offset`, up to `max_bytes`
    /// (at least one batch when any is available, so a large batch never blocks a reader),
    /// stopping before any batch that reaches `upper_bound` (the high watermark).
    ///
    /// Returns slices of the memory-mapped segments: no record bytes are copied.
    pub fn read(&self, from_offset: u64, max_bytes: usize, upper_bound: u64) -> Result<Vec<Bytes>> {
        let (start, next) = (self.log_start_offset(), self.next_offset());
        if from_offset < start || from_offset > next {
            return Err(StorageError::OffsetOutOfRange {
                requested: from_offset,
                log_start: start,
                next,
            });
        }
        let upper = upper_bound.min(next);
        if from_offset >= upper {
            return Ok(Vec::new());
        }
        let first = self
            .segments
            .partition_point(|s| s.base_offset <= from_offset)
            .saturating_sub(1);
        let mut reader = BatchCollector::new(max_bytes, false);
        reader.stop_offset = Some(upper);
        // Without a cached tail the kernel caches what it likes, readers included.
        reader.uncached = self.config.cached_tail_bytes.is_some();
        // The collector finds the batch from the index's entry on: the headers it passes
        // come from its uncached window, where a header read through the mapping would
        // fault in a whole readahead window of a released range.
        reader.skip_below = Some(from_offset);
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let position = if i == first {
                segment.indexed_position_for_offset(from_offset)
            } else {
                0
            };
            let more = reader.collect(segment, position, |h| {
                h.next_offset() <= upper && (h.offset_count() > 0 || h.base_offset < upper)
            })?;
            if !more {
                break;
            }
        }
        Ok(reader.batches)
    }

    /// Whether a read from `offset` starts in a range released from memory, so it goes to
    /// the disk (past the page cache): callers run such reads off their async workers.
    pub fn reads_from_disk(&self, offset: u64) -> bool {
        let first = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        self.config.cached_tail_bytes.is_some()
            && self.segments.get(first).is_some_and(|segment| {
                segment.indexed_position_for_offset(offset) < segment.released
            })
    }

    /// Whole batches from the first with Raft index `from_index`, up to `max_bytes`, never
    /// splitting one Raft entry, stopping before index `upper_index` (exclusive).
    ///
    /// Every batch's records CRC is checked; a mismatch is `Corruption` and marks the log
    /// corrupt ([`Log::corruption_flag`]).
    pub fn read_raft(
        &self,
        from_index: u64,
        max_bytes: usize,
        upper_index: u64,
    ) -> Result<Vec<Bytes>> {
        let result = self.read_raft_unmarked(from_index, max_bytes, upper_index);
        if let Err(e @ StorageError::Corruption { .. }) = &result {
            self.mark_corrupt(e);
        }
        result
    }

    fn read_raft_unmarked(
        &self,
        from_index: u64,
        max_bytes: usize,
        upper_index: u64,
    ) -> Result<Vec<Bytes>> {
        let first_index = self.first_raft_index();
        let last = self.last_raft_position().map(|r| r.index);
        if first_index.is_none_or(|first| from_index < first)
            || last.is_none_or(|last| from_index > last)
        {
            let (log_start, next) = (first_index.unwrap_or(0), last.map_or(0, |l| l + 1));
            if from_index == next {
                return Ok(Vec::new());
            }
            return Err(StorageError::OffsetOutOfRange {
                requested: from_index,
                log_start,
                next,
            });
        }
        let first = self.segment_for_raft_index(from_index);
        let mut reader = BatchCollector::new(max_bytes, true);
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let position = if i == first {
                segment.position_for_raft_index(from_index)?
            } else {
                0
            };
            if !reader.collect(segment, position, |h| h.raft.index < upper_index)? {
                break;
            }
        }
        Ok(reader.batches)
    }

    /// The first offset whose record timestamp is at least `timestamp`, as Kafka's
    /// `ListOffsets` by time; `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        for segment in &self.segments {
            if segment.max_timestamp < timestamp {
                continue;
            }
            let relative = segment.time_index.offset_at_or_before(timestamp);
            let mut position =
                segment.position_for_offset(segment.base_offset + u64::from(relative))?;
            while position < segment.written {
                let header = segment.header_at(position)?;
                if header.max_timestamp >= timestamp
                    && header.record_count > 0
                    && !header.attributes.is_control()
                    && let Some(offset) =
                        first_record_at_or_after(segment, position, &header, timestamp)?
                {
                    return Ok(Some(offset));
                }
                position += header.batch_len();
            }
        }
        Ok(None)
    }
}

fn first_record_at_or_after(
    segment: &Segment,
    position: u64,
    header: &BatchHeader,
    timestamp: i64,
) -> Result<Option<u64>> {
    let bytes = segment.read(position, header.batch_len() as usize)?;
    let corrupt = |e| StorageError::corruption(&segment.path, position, e);
    let batch = Batch::decode(bytes).map_err(corrupt)?;
    for record in batch.records().map_err(corrupt)? {
        let record = record.map_err(corrupt)?;
        if record.timestamp >= timestamp {
            return Ok(Some(record.offset));
        }
    }
    Ok(None)
}

/// Whether the batch of `header` holds nothing at or after `offset` (as
/// `Segment::position_for_offset` passes batches over).
fn ends_at_or_below(header: &BatchHeader, offset: u64) -> bool {
    header.next_offset() <= offset && !(header.offset_count() == 0 && header.base_offset > offset)
}

/// Gathers whole batches across segments under a byte budget.
struct BatchCollector {
    batches: Vec<Bytes>,
    bytes: usize,
    max_bytes: usize,
    last_raft_index: Option<u64>,
    /// Raft reads take every batch of an entry or none; consumer reads keep the budget.
    whole_entries: bool,
    /// Offset reads end once a collected batch reaches this, without reading the next
    /// header: bytes at and above the bound may be unsynced or gone after an fsync error.
    stop_offset: Option<u64>,
    next_offset: Option<u64>,
    /// Released ranges are read past the page cache ([`IoFile::read_uncached`]).
    uncached: bool,
    /// Batches wholly below this offset are passed over, uncounted.
    skip_below: Option<u64>,
    /// The last uncached read: its segment's base offset, its position, its bytes.
    window: Option<(u64, u64, Bytes)>,
}

impl BatchCollector {
    fn new(max_bytes: usize, whole_entries: bool) -> Self {
        Self {
            batches: Vec::new(),
            bytes: 0,
            max_bytes,
            last_raft_index: None,
            whole_entries,
            stop_offset: None,
            next_offset: None,
            uncached: false,
            skip_below: None,
            window: None,
        }
    }

    /// `len` bytes at `position` of `segment`: from the uncached window when the range was
    /// released from memory (reading a new window if needed), else from the mapping. The
    /// window never reaches past `released`, which is below `written`.
    fn bytes_at(&mut self, segment: &Segment, position: u64, len: usize) -> Result<Bytes> {
        if let Some(bytes) = self.in_window(segment, position, len) {
            return Ok(bytes);
        }
        if self.uncached
            && len <= DIRECT_READ_BYTES_MAX
            && let Some(bytes) = segment.read_uncached(position, len)?
        {
            // The rest of the read window comes along: the headers and batches after this
            // one are read from it.
            self.window = Some((segment.base_offset, position, bytes));
            if let Some(bytes) = self.in_window(segment, position, len) {
                return Ok(bytes);
            }
        }
        segment.read(position, len)
    }

    fn in_window(&self, segment: &Segment, position: u64, len: usize) -> Option<Bytes> {
        let (base, start, bytes) = self.window.as_ref()?;
        if *base != segment.base_offset || position < *start {
            return None;
        }
        let from = usize::try_from(position - start).ok()?;
        let to = from.checked_add(len)?;
        (to <= bytes.len()).then(|| bytes.slice(from..to))
    }

    /// The verified header of the batch at `position` of `segment`.
    fn header_at(&mut self, segment: &Segment, position: u64) -> Result<BatchHeader> {
        let bytes = self.bytes_at(segment, position, BATCH_HEADER_LEN)?;
        BatchHeader::decode(&bytes)
            .map_err(|e| StorageError::corruption(&segment.path, position, e))
    }

    /// Adds batches of `segment` from `position` while `admit` accepts them and the budget
    /// allows; returns whether the next segment should be read too.
    fn collect(
        &mut self,
        segment: &Segment,
        mut position: u64,
        admit: impl Fn(&BatchHeader) -> bool,
    ) -> Result<bool> {
        while position < segment.written {
            if let (Some(stop), Some(next)) = (self.stop_offset, self.next_offset)
                && next >= stop
            {
                return Ok(false);
            }
            let header = self.header_at(segment, position)?;
            let len = header.batch_len() as usize;
            if self
                .skip_below
                .is_some_and(|from| ends_at_or_below(&header, from))
            {
                position += len as u64;
                continue;
            }
            let same_entry = self.whole_entries && self.last_raft_index == Some(header.raft.index);
            let over_budget = !self.batches.is_empty() && self.bytes + len > self.max_bytes;
            if !admit(&header) || (over_budget && !same_entry) {
                return Ok(false);
            }
            if self
                .last_raft_index
                .is_some_and(|last| header.raft.index < last)
            {
                return Err(StorageError::corruption(
                    &segment.path,
                    position,
                    format!(
                        "Raft index {} read after {:?}: the log goes backwards",
                        header.raft.index, self.last_raft_index
                    ),
                ));
            }
            let bytes = self.bytes_at(segment, position, len)?;
            if self.whole_entries {
                // Raft reads feed replication and the state machine: a sealed segment is
                // trusted at open through its index files, so its batches are checked here
                // before a flipped bit travels to a follower or stops the group.
                let records = bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
                let computed = crc32fast::hash(records);
                if computed != header.records_crc {
                    return Err(StorageError::corruption(
                        &segment.path,
                        position,
                        format!(
                            "records CRC mismatch (stored {:#010x}, computed {computed:#010x}) in the batch at offset {}",
                            header.records_crc, header.base_offset
                        ),
                    ));
                }
            }
            self.batches.push(bytes);
            self.bytes += len;
            self.last_raft_index = Some(header.raft.index);
            self.next_offset = Some(header.next_offset());
            position += len as u64;
        }
        Ok(true)
    }
}
