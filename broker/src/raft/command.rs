//! What a Raft entry carries: a partition's record batches or a controller command.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::controller::{ControllerCommand, ControllerResponse};

/// The application payload of a Raft entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Batches for a partition group: one group commit.
    Produce(ProduceCommand),
    /// A metadata change for the controller group.
    Controller(ControllerCommand),
}

/// The batches of one group commit, in the storage format, verified by the leader.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProduceCommand {
    /// The batches; offsets are assigned when the entry is appended.
    pub batches: Vec<Bytes>,
}

/// What applying an entry returns to the writer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Blank and membership entries answer nothing.
    #[default]
    None,
    /// The base offset of each batch of a `Produce`, in order.
    Produced {
        /// One per batch.
        base_offsets: Vec<u64>,
    },
    /// The controller's answer.
    Controller(ControllerResponse),
}
