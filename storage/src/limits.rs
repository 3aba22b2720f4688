//! Every hard limit and default of the storage layer, each with the reason it exists.

/// Length of the fixed batch header in bytes (DESIGN §2, `docs/formats/batch.md`).
pub const BATCH_HEADER_LEN: usize = 85;

/// Largest records section a batch may claim. Checked before any allocation so a hostile
/// length field cannot make the decoder reserve gigabytes; also keeps a batch well inside one
/// segment's `u32` positions.
pub const RECORDS_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Largest records section after decompression. Bounds a compression bomb to this much memory.
pub const DECOMPRESSED_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Smallest accepted `segment_bytes`: a segment must hold at least a few batch headers.
pub const SEGMENT_BYTES_MIN: u64 = 1024;

/// Largest accepted `segment_bytes`. Index positions are `u32`, and an oversized batch may
/// share a segment with up to `segment_bytes` of others, so both must fit below `u32::MAX`.
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Default segment size, as Kafka's `log.segment.bytes`.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Default maximum segment age before a roll (7 days, as Kafka's `log.roll.ms`).
pub const SEGMENT_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;

/// Default bytes of log between two sparse index entries (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// Default time retention (7 days, as Kafka's `retention.ms`).
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;

/// Default time a tombstone survives compaction (1 day, Kafka's `delete.retention.ms`).
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;

/// Default share of dirty bytes that makes a compacted log worth cleaning.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

/// Memory the cleaner's key map may use per run; the dirty range shrinks to fit
/// (Kafka's `log.cleaner.dedupe.buffer.size`).
pub const CLEANER_KEY_MAP_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Largest state file read back: checkpoints are tens of bytes, Raft snapshots of small
/// state machines (producer tables, topic metadata) a few MiB at most.
pub const STATE_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Largest index file read back, rejected before reading: one entry per 1 KiB of a 2 GiB
/// segment is far below this.
pub const INDEX_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

const _: () = assert!(
    SEGMENT_BYTES_MAX + RECORDS_BYTES_MAX as u64 + BATCH_HEADER_LEN as u64 <= u32::MAX as u64
);
const _: () = assert!(SEGMENT_BYTES_MIN >= 4 * BATCH_HEADER_LEN as u64);
/// The active segment's disk space is reserved (`fallocate`) this much at a time, up to
/// `segment_bytes`: a full disk is still a clean error before any write, and recovery, which
/// reads the reserved tail to tell zeros from a torn write, reads at most this much of it.
pub const RESERVE_STEP_BYTES: u64 = 64 * 1024 * 1024;

/// Synced bytes at a log's tail kept in the page cache by default (`LogConfig`): about a
/// second of a partition's peak write rate here, so tailing consumers read from memory.
pub const CACHED_TAIL_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Pages behind the cached tail are released in steps of at least this.
pub const RELEASE_STEP_BYTES: u64 = 1024 * 1024;

/// Appended bytes are written, and their writeback started, in pieces of this size, so the
/// disk works on a group commit while the rest of it is still being copied in and its fsync
/// waits only for the last piece. On one partition at a fixed 400-440k records/s this took
/// runs meeting the 10 ms p99 goal from 2 of 16 to 17 of 18 (docs/benchmarks.md).
pub const WRITEBACK_STEP_BYTES: u64 = 128 * 1024;

const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(DECOMPRESSED_BYTES_MAX >= RECORDS_BYTES_MAX as usize);

/// Bytes a deleted segment file shrinks by per step in the background deleter. Freeing a
/// whole 1 GiB file at once stalled concurrent fsyncs 50-75 ms on the disks we measure on;
/// 8 MiB steps kept them under ~4 ms (32 MiB steps: ~8 ms).
pub const DELETE_STEP_BYTES: u64 = 8 * 1024 * 1024;

/// Pause between two shrink steps: gives other writers' fsyncs the device between trims,
/// and still deletes ~1 GiB/s, faster than a partition is written.
pub const DELETE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Default for `LogConfig::checkpoint_interval_ms`: a checkpoint write is two small fsyncs
/// and a rename, so once a second costs little even on a busy partition, and after a crash
/// only bytes synced in the last second (and anything unsynced) count as a possibly torn tail.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 1000;
