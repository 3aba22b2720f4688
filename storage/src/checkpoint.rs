//! The recovery checkpoint and the cleaner checkpoint: where durable data ends, and where
//! compaction has cleaned up to.

use std::path::Path;

use bytes::BufMut;

use crate::cursor::Cursor;
use crate::error::{Result, StorageError};
use crate::io::Io;
use crate::state_file::{StateKind, read_state, write_atomic};

/// File name of the recovery checkpoint inside a log directory.
pub(crate) const RECOVERY_CHECKPOINT_FILE: &str = "recovery-checkpoint";
/// File name of the cleaner checkpoint inside a log directory.
pub(crate) const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";

/// Everything before byte `position` of segment `segment_base` (and all earlier segments)
/// was fsynced when this was written. Recovery never truncates below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct RecoveryCheckpoint {
    pub(crate) segment_base: u64,
    pub(crate) position: u64,
    /// A `Log::reset_to` is under way: every segment goes, and the log restarts empty at
    /// `segment_base`. Recovery finishes it.
    pub(crate) reset: bool,
}

impl RecoveryCheckpoint {
    /// A checkpoint at byte `position` of segment `segment_base`.
    pub(crate) fn at(segment_base: u64, position: u64) -> Self {
        Self {
            segment_base,
            position,
            reset: false,
        }
    }

    pub(crate) fn write(self, io: &dyn Io, dir: &Path) -> Result<()> {
        let mut body = Vec::with_capacity(16);
        body.put_u64_le(self.segment_base);
        body.put_u64_le(self.position);
        body.put_u8(u8::from(self.reset));
        write_atomic(
            io,
            dir,
            RECOVERY_CHECKPOINT_FILE,
            StateKind::RecoveryCheckpoint,
            &body,
        )
    }

    pub(crate) fn read(io: &dyn Io, dir: &Path) -> Result<Option<Self>> {
        let Some(body) = read_state(
            io,
            dir,
            RECOVERY_CHECKPOINT_FILE,
            StateKind::RecoveryCheckpoint,
        )?
        else {
            return Ok(None);
        };
        let mut c = Cursor::new(&body);
        let bad = |_| StorageError::corruption(dir.join(RECOVERY_CHECKPOINT_FILE), 0, "short body");
        Ok(Some(Self {
            segment_base: c.u64().map_err(bad)?,
            position: c.u64().map_err(bad)?,
            reset: c.u8().map_err(bad)? == 1,
        }))
    }
}

/// Offsets below `cleaned_up_to` have been compacted; the dirty range starts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CleanerCheckpoint {
    pub(crate) cleaned_up_to: u64,
}

impl CleanerCheckpoint {
    pub(crate) fn write(self, io: &dyn Io, dir: &Path) -> Result<()> {
        let body = self.cleaned_up_to.to_le_bytes();
        write_atomic(
            io,
            dir,
            CLEANER_CHECKPOINT_FILE,
            StateKind::CleanerCheckpoint,
            &body,
        )
    }

    pub(crate) fn read(io: &dyn Io, dir: &Path) -> Result<Self> {
        let Some(body) = read_state(
            io,
            dir,
            CLEANER_CHECKPOINT_FILE,
            StateKind::CleanerCheckpoint,
        )?
        else {
            return Ok(Self::default());
        };
        let mut c = Cursor::new(&body);
        let bad = |_| StorageError::corruption(dir.join(CLEANER_CHECKPOINT_FILE), 0, "short body");
        Ok(Self {
            cleaned_up_to: c.u64().map_err(bad)?,
        })
    }
}
