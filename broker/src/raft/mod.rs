//! openraft glue: the type configuration, the log store over `sluice_storage::Log`, the
//! state machines, and the network. openraft is used nowhere else in the broker.

pub mod command;
pub mod entry_codec;
pub mod first_election;
pub mod group;
pub mod last_log;
pub mod log_store;
pub mod network;
pub mod raft_state;
pub mod recent_entries;
pub mod runtime;
pub mod service;
pub mod standing;
pub mod state_machine;
pub mod suspect;
pub mod wire;

use std::io::Cursor;

use openraft::{AnyError, StorageError, StorageIOError};

pub use command::{Command, CommandResponse, ProduceCommand};

openraft::declare_raft_types!(
    /// Sluice's Raft types: every group (controller and partitions) shares them.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SluiceRuntime,
);

/// A broker's node id.
pub type NodeId = u64;
/// A Raft group id: 0 is the controller, partitions get ids from the controller.
pub type GroupId = u64;
/// The running Raft instance of one group.
pub type GroupRaft = openraft::Raft<TypeConfig>;
/// openraft's log id with our node id type.
pub type LogId = openraft::LogId<NodeId>;
/// openraft's storage error with our node id type.
pub type RaftStorageError = StorageError<NodeId>;

/// Wraps an error as openraft's "reading the log failed".
pub(crate) fn read_logs_error(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

/// Wraps an error as openraft's "writing the log failed".
pub(crate) fn write_logs_error(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// The Raft position of a log id, as batch headers store it.
pub(crate) fn raft_position(log_id: &LogId) -> sluice_storage::RaftPosition {
    sluice_storage::RaftPosition {
        term: log_id.leader_id.term,
        leader: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

/// The log id a batch header stores.
pub(crate) fn log_id_of(position: sluice_storage::RaftPosition) -> LogId {
    openraft::LogId::new(
        openraft::CommittedLeaderId::new(position.term, position.leader),
        position.index,
    )
}

/// A batch of one record (`v`), for tests of the Raft glue.
#[cfg(test)]
pub(crate) fn one_record_batch() -> bytes::Bytes {
    let mut builder = sluice_storage::BatchBuilder::new(sluice_storage::Compression::None);
    builder.push(sluice_storage::batch::NewRecord {
        key: None,
        value: Some(b"v"),
        timestamp: 1,
        headers: &[],
    });
    builder.build().expect("batch")
}
