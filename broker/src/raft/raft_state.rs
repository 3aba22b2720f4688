//! The durable per-group Raft state kept beside the log: vote, committed and purged log ids.

use std::path::Path;

use openraft::Vote;
use serde::{Deserialize, Serialize};
use sluice_storage::io::Io;
use sluice_storage::state_file::{StateKind, read_state, write_atomic};

use super::{LogId, NodeId};

/// File name inside the group directory.
const RAFT_STATE_FILE: &str = "raft-state";

/// Vote, committed and purged log ids; replaced atomically (temp, fsync, rename, fsync dir).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftState {
    /// The last vote; durable before `save_vote` returns, so a node never votes twice in a term.
    pub vote: Option<Vote<NodeId>>,
    /// A lower bound of the committed log id (saved at most about once a second: a hint).
    pub committed: Option<LogId>,
    /// Entries up to here were purged after a snapshot.
    pub purged: Option<LogId>,
}

impl RaftState {
    /// Reads the state of the group in `dir`; default if there is none yet.
    pub fn read(io: &dyn Io, dir: &Path) -> Result<Self, RaftStateError> {
        match read_state(io, dir, RAFT_STATE_FILE, StateKind::RaftState)? {
            None => Ok(Self::default()),
            Some(body) => Ok(serde_json::from_slice(&body)?),
        }
    }

    /// Writes the state durably.
    pub fn write(&self, io: &dyn Io, dir: &Path) -> Result<(), RaftStateError> {
        let body = serde_json::to_vec(self)?;
        write_atomic(io, dir, RAFT_STATE_FILE, StateKind::RaftState, &body)?;
        Ok(())
    }
}

/// Reading or writing the Raft state file failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftStateError {
    /// The file could not be read or written.
    #[error(transparent)]
    Storage(#[from] sluice_storage::StorageError),
    /// The file's body is not valid JSON of this shape.
    #[error("raft state is not valid: {0}")]
    Format(#[from] serde_json::Error),
}
