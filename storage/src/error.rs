//! The storage layer's error types: one for decoding bytes, one for log operations.

use std::io;
use std::path::PathBuf;

/// Why a byte string is not a valid batch, record or index. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the format requires at this point.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the decoder needed.
        needed: u64,
        /// Bytes that were there.
        available: u64,
    },
    /// The `magic` byte names a format version this build cannot read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The header CRC does not match the header bytes.
    #[error("header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// The records CRC does not match the records section as stored.
    #[error("records CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    RecordsCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the records section.
        computed: u32,
    },
    /// Attribute bits that this version reserves are set.
    #[error("reserved attribute bits set: {0:#06x}")]
    ReservedAttributes(u16),
    /// The compression codec number is not one this build knows.
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    /// A length field exceeds its limit; rejected before any allocation.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// The claimed length.
        len: u64,
        /// The limit from `limits.rs`.
        max: u64,
    },
    /// A header field holds a value the format forbids.
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
    /// A record inside the records section is malformed.
    #[error("malformed record {index}: {reason}")]
    MalformedRecord {
        /// Zero-based record number within the batch.
        index: u32,
        /// What was wrong.
        reason: &'static str,
    },
    /// The compressed records section could not be decompressed.
    #[error("decompression failed: {0}")]
    Decompress(&'static str),
}

/// An error from a log operation. `NoSpace` and `OffsetOutOfRange` are retriable by the
/// caller; `Failed` and `Corruption` are not.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O error on a file of this log.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The error the OS returned.
        source: io::Error,
    },
    /// The disk has no room to reserve a segment or write a file; stored data stays readable.
    #[error("no space left on device for {path}")]
    NoSpace {
        /// The file that could not be grown.
        path: PathBuf,
    },
    /// An earlier fsync failed: the log refuses writes because the page cache may have
    /// dropped data that was never made durable. Reopen the log to recover.
    #[error("log {dir} failed after an fsync error and refuses writes")]
    Failed {
        /// The log directory.
        dir: PathBuf,
    },
    /// Data below the recovery checkpoint (reported durable) is damaged. Never truncated.
    #[error("corruption in {segment} at byte {position}: {reason}")]
    Corruption {
        /// The damaged file.
        segment: PathBuf,
        /// Byte position of the first bad byte range within it.
        position: u64,
        /// What the check found.
        reason: String,
    },
    /// A check where data crosses into or out of storage failed: a bug or bad memory, not
    /// bad input. The log refuses writes from here on, so nothing is built on it.
    #[error("invariant violated in {dir}: {what}")]
    Invariant {
        /// The log directory.
        dir: PathBuf,
        /// Which check, with the values it saw.
        what: String,
    },
    /// A batch handed to `append` is not valid.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] DecodeError),
    /// A requested offset is outside `[log_start_offset, next_offset]`.
    #[error("offset {requested} out of range [{log_start}, {next}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// First offset still stored.
        log_start: u64,
        /// Offset the next append will get.
        next: u64,
    },
    /// An append whose Raft index is below the last stored one.
    #[error("raft index {got} is below the last index {last}")]
    RaftIndexBackwards {
        /// Raft index of the last stored batch.
        last: u64,
        /// Raft index of the batch being appended.
        got: u64,
    },
    /// The configuration breaks a limit or relation.
    #[error("invalid config: {0}")]
    InvalidConfig(&'static str),
}

impl StorageError {
    /// Wraps an I/O error, turning "no space" into [`StorageError::NoSpace`] — except from
    /// an fsync, where ENOSPC means written data was dropped and must stay fatal.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull && !op.starts_with("fsync") {
            StorageError::NoSpace { path }
        } else {
            StorageError::Io { op, path, source }
        }
    }

    /// Builds a corruption error for data the checkpoint says was durable.
    pub(crate) fn corruption(
        segment: impl Into<PathBuf>,
        position: u64,
        reason: impl ToString,
    ) -> Self {
        StorageError::Corruption {
            segment: segment.into(),
            position,
            reason: reason.to_string(),
        }
    }
}

/// Shorthand for results of log operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
