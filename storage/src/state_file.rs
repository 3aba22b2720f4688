//! Small state files (checkpoints), framed with a version and CRC and replaced atomically:
//! write a temp file, fsync it, rename it over the old one, fsync the directory.

use std::io::ErrorKind;
use std::path::Path;

use crate::error::{Result, StorageError};
use crate::frame::{decode_frame, encode_frame};
use crate::io::{Io, OpenMode};
use crate::limits::STATE_FILE_BYTES_MAX;

const MAGIC: &[u8; 4] = b"SLST";
const VERSION: u8 = 1;
/// Suffix of a state file being written; leftovers are deleted on open.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Which state file a frame holds, so one file's bytes are never read as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StateKind {
    /// The log's recovery checkpoint.
    RecoveryCheckpoint = 1,
    /// The cleaner's checkpoint.
    CleanerCheckpoint = 2,
    /// The broker's Raft state for a group (vote, committed and purged log ids).
    RaftState = 3,
    /// A Raft group's state machine snapshot.
    Snapshot = 4,
    /// Which partition, and which incarnation of it, a broker's partition directory holds.
    PartitionIdentity = 5,
    /// Which node, of which cluster, a data directory belongs to.
    NodeIdentity = 6,
}

/// Durably replaces `dir/name` with a framed `body`.
pub fn write_atomic(
    io: &dyn Io,
    dir: &Path,
    name: &str,
    kind: StateKind,
    body: &[u8],
) -> Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let file = io
        .open(&temp, OpenMode::CreateTruncate)
        .map_err(|e| StorageError::io("create", &temp, e))?;
    file.write_at(0, &encode_frame(MAGIC, VERSION, kind as u8, body))
        .map_err(|e| StorageError::io("write", &temp, e))?;
    file.sync_data()
        .map_err(|e| StorageError::io("fsync", &temp, e))?;
    io.rename(&temp, &path)
        .map_err(|e| StorageError::io("rename", &temp, e))?;
    io.sync_dir(dir)
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

/// Reads `dir/name`: `None` if absent, the body if intact, `Corruption` if not. A state file
/// is only ever replaced by rename, so a damaged one is media corruption, not a torn write.
pub fn read_state(io: &dyn Io, dir: &Path, name: &str, kind: StateKind) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let file = match io.open(&path, OpenMode::Existing) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| StorageError::io("stat", &path, e))?;
    if len > STATE_FILE_BYTES_MAX {
        return Err(StorageError::corruption(&path, 0, "state file too large"));
    }
    let bytes = file
        .read_at(0, len as usize)
        .map_err(|e| StorageError::io("read", &path, e))?;
    decode_frame(&bytes, MAGIC, VERSION, kind as u8)
        .map(|body| Some(body.to_vec()))
        .map_err(|reason| StorageError::corruption(&path, 0, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimIo;

    #[test]
    fn write_then_read_round_trips_and_detects_damage() {
        let io = SimIo::new();
        let dir = Path::new("/d");
        io.create_dir_all(dir).ok();
        assert!(matches!(
            read_state(&io, dir, "s", StateKind::RecoveryCheckpoint),
            Ok(None)
        ));
        write_atomic(&io, dir, "s", StateKind::RecoveryCheckpoint, b"hello").ok();
        let read = read_state(&io, dir, "s", StateKind::RecoveryCheckpoint)
            .ok()
            .flatten();
        assert_eq!(read.as_deref(), Some(&b"hello"[..]));
        assert!(read_state(&io, dir, "s", StateKind::CleanerCheckpoint).is_err());
        io.corrupt(&dir.join("s"), 9, 0x40).ok();
        assert!(matches!(
            read_state(&io, dir, "s", StateKind::RecoveryCheckpoint),
            Err(StorageError::Corruption { .. })
        ));
    }
}
