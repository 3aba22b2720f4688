//! The recovery scan: walk a segment's batches from the start, verifying header CRC, length,
//! records CRC and continuity with what came before, and stop at the first bad byte.

use super::Segment;
use crate::batch::{Batch, BatchHeader};
use crate::error::Result;
use crate::limits::BATCH_HEADER_LEN;

/// Bytes read at a time when looking for the end of non-zero data.
const TAIL_CHUNK: u64 = 1 << 20;
/// A chunk of zeros to compare tail chunks against.
static ZEROS: [u8; TAIL_CHUNK as usize] = [0; TAIL_CHUNK as usize];

/// What the next batch of the log must continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Continuity {
    /// The base offset the next batch must have.
    pub(crate) next_offset: u64,
    /// Raft index of the last batch; the next is the same entry or the one after.
    pub(crate) last_raft_index: Option<u64>,
    /// Whether the last batch said more of its entry follow: then the next must be that
    /// entry's (false when unknown, as after a segment loaded through its index files).
    pub(crate) entry_open: bool,
}

impl Continuity {
    /// Why `header` cannot follow, if it cannot.
    pub(crate) fn check(&self, header: &BatchHeader) -> Option<&'static str> {
        if header.base_offset != self.next_offset {
            return Some("base offset does not continue the log");
        }
        let raft_ok = self
            .last_raft_index
            .is_none_or(|last| header.raft.index >= last);
        if !raft_ok {
            return Some("raft index goes backwards");
        }
        let interrupted = self.entry_open && self.last_raft_index != Some(header.raft.index);
        interrupted.then_some("another entry starts before the last one's batches end")
    }

    /// Advances past `header`.
    pub(crate) fn advance(&mut self, header: &BatchHeader) {
        self.next_offset = header.next_offset();
        self.last_raft_index = Some(header.raft.index);
        self.entry_open = header.attributes.entry_continues();
    }
}

/// Where and why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// End of the last valid batch.
    pub(crate) valid_end: u64,
    /// Why the bytes at `valid_end` are not a batch; `None` if they are zeros or the end.
    pub(crate) invalid: Option<String>,
    /// Batches verified.
    pub(crate) batches_checked: u64,
}

impl Segment {
    /// Verifies and ingests batches from position 0 until the first invalid one or the end.
    pub(crate) fn scan(&mut self, file_len: u64, continuity: &mut Continuity) -> Result<ScanEnd> {
        let mut position = 0u64;
        let mut batches_checked = 0;
        let invalid = loop {
            match self.check_batch_at(position, file_len, continuity)? {
                Ok(Some(header)) => {
                    self.ingest(&header, position);
                    continuity.advance(&header);
                    position += header.batch_len();
                    batches_checked += 1;
                }
                Ok(None) => break None,
                Err(reason) => break Some(reason),
            }
        };
        Ok(ScanEnd {
            valid_end: position,
            invalid,
            batches_checked,
        })
    }

    /// The verified header at `position`, `None` at the end or a zeroed header, or why the
    /// bytes there are not a valid next batch.
    fn check_batch_at(
        &self,
        position: u64,
        file_len: u64,
        continuity: &Continuity,
    ) -> Result<std::result::Result<Option<BatchHeader>, String>> {
        let available = file_len.saturating_sub(position);
        if available == 0 {
            return Ok(Ok(None));
        }
        let head = self.read_raw(position, available.min(BATCH_HEADER_LEN as u64) as usize)?;
        if head.iter().all(|b| *b == 0) {
            return Ok(Ok(None));
        }
        let header = match BatchHeader::decode(&head) {
            Ok(header) => header,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if header.batch_len() > available {
            return Ok(Err(format!(
                "batch of {} bytes runs past the end of the file",
                header.batch_len()
            )));
        }
        let bytes = self.read_raw(position, header.batch_len() as usize)?;
        if let Err(e) = Batch::decode(bytes) {
            return Ok(Err(e.to_string()));
        }
        if let Some(reason) = continuity.check(&header) {
            return Ok(Err(reason.to_string()));
        }
        if !self.fits_relative(&header) {
            return Ok(Err(
                "batch overflows the segment's relative index columns".to_string()
            ));
        }
        Ok(Ok(Some(header)))
    }

    /// End of the last non-zero byte in `[from, to)`, or `from` if all are zero.
    pub(crate) fn nonzero_end(&self, from: u64, to: u64) -> Result<u64> {
        let mut end = to;
        while end > from {
            let start = end.saturating_sub(TAIL_CHUNK).max(from);
            let chunk = self.read_raw(start, (end - start) as usize)?;
            // Slice equality is a memcmp: the reserved tail of a 1 GiB segment is checked at
            // memory speed; only a chunk that differs is searched byte by byte.
            if chunk.as_ref() == ZEROS.get(..chunk.len()).unwrap_or_default() {
                end = start;
                continue;
            }
            if let Some(i) = chunk.iter().rposition(|b| *b != 0) {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        Ok(from)
    }
}
