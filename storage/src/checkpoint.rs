//! The recovery checkpoint and the cleaner checkpoint: where durable data ends, and where
//! compaction has cleaned up to.

use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// The recovery checkpoint as it stands on disk, shared by the log and a sync running
/// without the log's lock ([`crate::log::PendingSync`]), which advances it right after its
/// fsync. Every write of the file goes through here, under one lock, so a mark computed
/// before a truncation or a reset can never land after it: those bump `lowered`, and a
/// mark taken at an older `lowered` is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedCheckpoint(Arc<Mutex<CheckpointFile>>);

#[derive(Debug, Default)]
struct CheckpointFile {
    /// What the file holds.
    written: RecoveryCheckpoint,
    /// Times the checkpoint was lowered or reset.
    lowered: u64,
}

impl SharedCheckpoint {
    /// A shared checkpoint for a file that holds `written`.
    pub(crate) fn new(written: RecoveryCheckpoint) -> Self {
        Self(Arc::new(Mutex::new(CheckpointFile {
            written,
            lowered: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointFile> {
        // A panic while holding it cannot leave the value half-written (two plain fields).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the file holds.
    pub(crate) fn current(&self) -> RecoveryCheckpoint {
        self.lock().written
    }

    /// How many times it was lowered or reset so far.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().lowered
    }

    /// Writes `checkpoint` if it is higher than the file's and nothing lowered the file
    /// since `generation`; returns whether it wrote.
    pub(crate) fn advance(
        &self,
        io: &dyn Io,
        dir: &Path,
        checkpoint: RecoveryCheckpoint,
        generation: u64,
    ) -> Result<bool> {
        let mut file = self.lock();
        if file.lowered != generation || checkpoint <= file.written {
            return Ok(false);
        }
        checkpoint.write(io, dir)?;
        file.written = checkpoint;
        Ok(true)
    }

    /// Lowers the file to `checkpoint` if it is above it (a truncation is about to cut
    /// there), and drops every mark computed before, which may be above the cut.
    pub(crate) fn lower_to(
        &self,
        io: &dyn Io,
        dir: &Path,
        checkpoint: RecoveryCheckpoint,
    ) -> Result<()> {
        self.overwrite(io, dir, checkpoint, |written| written > checkpoint)
    }

    /// Writes `checkpoint` whatever the file holds (a reset marker), and drops every mark
    /// computed before.
    pub(crate) fn replace(
        &self,
        io: &dyn Io,
        dir: &Path,
        checkpoint: RecoveryCheckpoint,
    ) -> Result<()> {
        self.overwrite(io, dir, checkpoint, |_| true)
    }

    /// Drops every mark computed before, then writes `checkpoint` if `needed` says so of
    /// what the file holds.
    fn overwrite(
        &self,
        io: &dyn Io,
        dir: &Path,
        checkpoint: RecoveryCheckpoint,
        needed: impl FnOnce(RecoveryCheckpoint) -> bool,
    ) -> Result<()> {
        let mut file = self.lock();
        file.lowered += 1;
        if needed(file.written) {
            checkpoint.write(io, dir)?;
            file.written = checkpoint;
        }
        Ok(())
    }

    /// Records that the file's content now means `checkpoint` without rewriting it (a
    /// finished reset: its marker and the fresh log's start say the same).
    pub(crate) fn assume(&self, checkpoint: RecoveryCheckpoint) {
        let mut file = self.lock();
        file.lowered += 1;
        file.written = checkpoint;
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

/// Where the recovery checkpoint of the log in `dir` stands: (segment base offset, byte
/// position). Fault tests aim damage below it, where recovery must refuse, not truncate.
pub fn recovery_checkpoint(io: &dyn Io, dir: &Path) -> Option<(u64, u64)> {
    match RecoveryCheckpoint::read(io, dir) {
        Ok(Some(cp)) if !cp.reset => Some((cp.segment_base, cp.position)),
        _ => None,
    }
}
