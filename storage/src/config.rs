//! Per-log configuration, with Kafka's names and defaults.

use crate::error::{Result, StorageError};
use crate::limits;

/// What happens to old data: deleted by retention, compacted by key, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Whole segments are deleted by `retention_ms` / `retention_bytes`.
    #[default]
    Delete,
    /// Sealed segments keep only the newest record per key.
    Compact,
    /// Both of the above.
    CompactAndDelete,
}

impl CleanupPolicy {
    /// Whether retention deletes segments under this policy.
    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactAndDelete)
    }

    /// Whether the cleaner compacts under this policy.
    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactAndDelete)
    }
}

/// Configuration of one partition log. Validated by [`LogConfig::validate`] on open.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Target segment size; the active segment is reserved towards it with `fallocate`, a
    /// step (`limits::RESERVE_STEP_BYTES`) at a time.
    pub segment_bytes: u64,
    /// A non-empty active segment older than this rolls on the next append.
    pub segment_ms: i64,
    /// Bytes of log between two sparse offset-index entries.
    pub index_interval_bytes: u32,
    /// Sealed segments whose newest timestamp is older than this are deleted; `None` keeps all.
    pub retention_ms: Option<i64>,
    /// Oldest sealed segments are deleted while the log exceeds this; `None` keeps all.
    pub retention_bytes: Option<u64>,
    /// Delete, compact, or both.
    pub cleanup_policy: CleanupPolicy,
    /// Tombstones younger than this survive compaction so consumers can see deletes.
    pub delete_retention_ms: i64,
    /// Compaction runs only when dirty bytes are at least this share of sealed bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// Synced bytes at the log's tail kept in the page cache; older pages are dropped from
    /// memory after each sync, so new writes reuse them. `None` leaves it all to the kernel.
    pub cached_tail_bytes: Option<u64>,
    /// A sync moves the recovery checkpoint up to what it synced at most this often. Damage
    /// below the checkpoint is refused at open as corruption, never cut as a torn tail, so
    /// this bounds how much acknowledged data a bad sector after a crash can take with it.
    /// 0: every sync.
    pub checkpoint_interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segment_ms: limits::SEGMENT_MS_DEFAULT,
            index_interval_bytes: limits::INDEX_INTERVAL_BYTES_DEFAULT,
            retention_ms: Some(limits::RETENTION_MS_DEFAULT),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: limits::DELETE_RETENTION_MS_DEFAULT,
            min_cleanable_dirty_ratio: limits::MIN_CLEANABLE_DIRTY_RATIO_DEFAULT,
            cached_tail_bytes: Some(limits::CACHED_TAIL_BYTES_DEFAULT),
            checkpoint_interval_ms: limits::CHECKPOINT_INTERVAL_MS_DEFAULT,
        }
    }
}

impl LogConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        let fail = |why| Err(StorageError::InvalidConfig(why));
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return fail("segment_bytes must be between 1 KiB and 2 GiB");
        }
        if self.segment_ms <= 0 {
            return fail("segment_ms must be positive");
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive");
        }
        if self.retention_ms.is_some_and(|ms| ms < 0) {
            return fail("retention_ms must not be negative");
        }
        if self.delete_retention_ms < 0 {
            return fail("delete_retention_ms must not be negative");
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return fail("min_cleanable_dirty_ratio must be between 0 and 1");
        }
        Ok(())
    }
}
