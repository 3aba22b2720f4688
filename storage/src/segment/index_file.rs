//! The `.index` and `.timeindex` files of a sealed segment (`docs/formats/index.md`).
//!
//! The offset index file also carries the segment summary (next offset, Raft range, largest
//! timestamp), so opening a sealed segment needs no scan. Both files are derived data:
//! a missing, damaged or inconsistent one is rebuilt from the log.

use std::path::{Path, PathBuf};

use bytes::BufMut;

use super::{OffsetIndex, Segment, SegmentFile, TimeIndex, segment_file_name};
use crate::batch::RaftPosition;
use crate::cursor::Cursor;
use crate::error::{DecodeError, Result, StorageError};
use crate::frame::{decode_frame, encode_frame};
use crate::io::{Io, OpenMode};
use crate::limits::INDEX_FILE_BYTES_MAX;

const MAGIC: &[u8; 4] = b"SLIX";
const VERSION: u8 = 1;
const KIND_OFFSET: u8 = 1;
const KIND_TIME: u8 = 2;

fn write_file(io: &dyn Io, path: &Path, bytes: &[u8]) -> Result<()> {
    let file = io
        .open(path, OpenMode::CreateTruncate)
        .map_err(|e| StorageError::io("create", path, e))?;
    file.write_at(0, bytes)
        .map_err(|e| StorageError::io("write", path, e))?;
    file.sync_data()
        .map_err(|e| StorageError::io("fsync", path, e))
}

/// Writes both index files of a sealed segment.
pub(crate) fn write_index_files(io: &dyn Io, dir: &Path, segment: &Segment) -> Result<()> {
    encode_index_files(dir, segment).write(io)
}

/// A sealed segment's index files, encoded: written (and fsynced) later, without the log.
#[derive(Debug, Clone)]
pub(crate) struct IndexFiles {
    files: [(PathBuf, Vec<u8>); 2],
}

impl IndexFiles {
    /// Writes and fsyncs both files.
    pub(crate) fn write(&self, io: &dyn Io) -> Result<()> {
        for (path, bytes) in &self.files {
            write_file(io, path, bytes)?;
        }
        Ok(())
    }
}

/// Encodes both index files of a sealed segment.
pub(crate) fn encode_index_files(dir: &Path, segment: &Segment) -> IndexFiles {
    let mut body = Vec::new();
    body.put_u64_le(segment.base_offset);
    body.put_u64_le(segment.written);
    body.put_u64_le(segment.next_offset);
    let raft = segment.last_raft.unwrap_or_default();
    body.put_u8(u8::from(segment.first_raft_index.is_some()));
    body.put_u64_le(segment.first_raft_index.unwrap_or(0));
    body.put_u64_le(raft.term);
    body.put_u64_le(raft.leader);
    body.put_u64_le(raft.index);
    body.put_i64_le(segment.max_timestamp);
    body.put_u64_le(segment.batch_count);
    body.put_u32_le(segment.index.entries().len() as u32);
    segment.index.encode_entries(&mut body);
    let offset_path = dir.join(segment_file_name(
        segment.base_offset,
        SegmentFile::OffsetIndex,
    ));
    let offset = encode_frame(MAGIC, VERSION, KIND_OFFSET, &body);

    let mut body = Vec::new();
    body.put_u64_le(segment.base_offset);
    body.put_u64_le(segment.written);
    body.put_u32_le(segment.time_index.len() as u32);
    segment.time_index.encode_entries(&mut body);
    let time_path = dir.join(segment_file_name(
        segment.base_offset,
        SegmentFile::TimeIndex,
    ));
    let time = encode_frame(MAGIC, VERSION, KIND_TIME, &body);
    IndexFiles {
        files: [(offset_path, offset), (time_path, time)],
    }
}

fn read_file(io: &dyn Io, path: &Path) -> Option<bytes::Bytes> {
    let file = io.open(path, OpenMode::Existing).ok()?;
    let len = file.len().ok().filter(|len| *len <= INDEX_FILE_BYTES_MAX)?;
    file.read_at(0, len as usize).ok()
}

/// Fills a freshly opened sealed segment from its index files; `false` (segment untouched
/// apart from nothing) if they are missing, damaged or do not match the log file.
pub(crate) fn load_index_files(
    io: &dyn Io,
    dir: &Path,
    segment: &mut Segment,
    log_len: u64,
) -> bool {
    let offset_path = dir.join(segment_file_name(
        segment.base_offset,
        SegmentFile::OffsetIndex,
    ));
    let time_path = dir.join(segment_file_name(
        segment.base_offset,
        SegmentFile::TimeIndex,
    ));
    let (Some(offset_bytes), Some(time_bytes)) =
        (read_file(io, &offset_path), read_file(io, &time_path))
    else {
        return false;
    };
    let Ok(offset_body) = decode_frame(&offset_bytes, MAGIC, VERSION, KIND_OFFSET) else {
        return false;
    };
    let Ok(time_body) = decode_frame(&time_bytes, MAGIC, VERSION, KIND_TIME) else {
        return false;
    };
    let interval = segment.index_interval();
    match decode_bodies(
        offset_body,
        time_body,
        segment.base_offset,
        log_len,
        interval,
    ) {
        Ok(loaded) => {
            segment.apply_loaded(loaded);
            true
        }
        Err(_) => false,
    }
}

/// What an intact pair of index files says about a sealed segment.
#[derive(Debug)]
pub(crate) struct LoadedIndex {
    pub(crate) written: u64,
    pub(crate) next_offset: u64,
    pub(crate) first_raft_index: Option<u64>,
    pub(crate) last_raft: Option<RaftPosition>,
    pub(crate) max_timestamp: i64,
    pub(crate) batch_count: u64,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
}

fn decode_bodies(
    offset_body: &[u8],
    time_body: &[u8],
    base: u64,
    log_len: u64,
    interval: u32,
) -> Result<LoadedIndex, DecodeError> {
    let mismatch = DecodeError::InvalidHeader("index does not match its segment");
    let mut c = Cursor::new(offset_body);
    if c.u64()? != base || c.u64()? != log_len {
        return Err(mismatch);
    }
    let next_offset = c.u64()?;
    let has_raft = c.u8()? == 1;
    let first_raft_index = c.u64()?;
    let raft = RaftPosition {
        term: c.u64()?,
        leader: c.u64()?,
        index: c.u64()?,
    };
    let max_timestamp = c.i64()?;
    let batch_count = c.u64()?;
    let count = c.u32()?;
    let index = OffsetIndex::decode_entries(&mut c, count, interval, log_len)?;
    if c.remaining() != 0 || next_offset < base || (batch_count == 0) != (log_len == 0) || !has_raft
    {
        return Err(mismatch);
    }
    let mut t = Cursor::new(time_body);
    if t.u64()? != base || t.u64()? != log_len {
        return Err(mismatch);
    }
    let count = t.u32()?;
    let time_index = TimeIndex::decode_entries(&mut t, count)?;
    if t.remaining() != 0 {
        return Err(mismatch);
    }
    Ok(LoadedIndex {
        written: log_len,
        next_offset,
        first_raft_index: Some(first_raft_index),
        last_raft: Some(raft),
        max_timestamp,
        batch_count,
        index,
        time_index,
    })
}

/// Removes both index files of a segment; absent files are fine.
pub(crate) fn remove_index_files(io: &dyn Io, dir: &Path, base_offset: u64) -> Result<()> {
    for kind in [SegmentFile::OffsetIndex, SegmentFile::TimeIndex] {
        let path = dir.join(segment_file_name(base_offset, kind));
        match io.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove", &path, e)),
        }
    }
    Ok(())
}
