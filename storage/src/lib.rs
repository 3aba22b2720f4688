//! Sluice's partition log: CRC-checked record batches in segment files.
//!
//! A [`Log`] is one directory of segments named by base offset. Batches are appended with
//! broker-assigned offsets and Raft positions, made durable by [`Log::sync`], read back as
//! zero-copy [`bytes::Bytes`] slices of memory-mapped files, and recovered after a crash by a
//! CRC scan that truncates a torn tail but refuses to truncate data below the recovery
//! checkpoint. This crate knows nothing of Raft, the network or async runtimes.
//!
//! ```
//! use sluice_storage::batch::NewRecord;
//! use sluice_storage::{Batch, BatchBuilder, Compression, Log, LogConfig, RaftPosition};
//!
//! let dir = tempfile::tempdir()?;
//! let (mut log, _report) = Log::open(dir.path(), LogConfig::default())?;
//! let mut builder = BatchBuilder::new(Compression::Lz4);
//! builder.push(NewRecord { key: Some(b"k"), value: Some(b"v"), timestamp: 0, headers: &[] });
//! let batch = Batch::decode(builder.build()?)?;
//! let info = log.append(&batch, RaftPosition { term: 1, leader: 1, index: 1 })?;
//! log.sync()?; // durable from here
//! let read = log.read(info.base_offset, 1 << 20, log.flushed_offset())?;
//! let records = Batch::decode(read[0].clone())?.records_vec()?;
//! assert_eq!(records[0].value.as_deref(), Some(&b"v"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(clippy::indexing_slicing)]

pub mod batch;
pub mod canary;
mod checkpoint;
pub use checkpoint::recovery_checkpoint;
pub mod cleaner;
mod clock;
mod config;
mod cursor;
mod error;
mod frame;
pub mod fuzzing;
pub mod io;
pub mod limits;
mod log;
mod read;
mod recovery;
mod retention;
mod segment;
pub mod state_file;

pub use batch::{Batch, BatchBuilder, BatchHeader, Compression, RaftPosition, Record};
pub use cleaner::{CompactionPlan, CompactionReport, PreparedCompaction};
pub use clock::{Clock, ManualClock, SystemClock, install_wall_clock};
pub use config::{CleanupPolicy, LogConfig};
pub use error::{DecodeError, StorageError};
pub use log::{AppendInfo, Log, LogEnv, PendingSync};
pub use recovery::RecoveryReport;
pub use retention::RetentionReport;
