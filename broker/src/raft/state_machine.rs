//! openraft's `RaftStateMachine` for every group. The state machine stores no record data:
//! a group's state (a partition's high watermark and producer table, the controller's
//! metadata) is small, applied from committed entries and snapshotted as JSON.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_storage::io::Io;
use sluice_storage::state_file::{StateKind, read_state, write_atomic};

use super::recent_entries::RecentEntries;
use super::{Command, CommandResponse, LogId, NodeId, RaftStorageError, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// File name of a group's snapshot inside its directory.
const SNAPSHOT_FILE: &str = "snapshot";

/// The state of one kind of group: what applying a command does to it.
pub trait GroupState: Send + Sync + 'static {
    /// The serialisable form the snapshot holds.
    type Snapshot: Serialize + DeserializeOwned + Send;

    /// Applies one committed command at `log_id`; returns the writer's answer.
    fn apply(&mut self, log_id: LogId, command: &Command) -> CommandResponse;

    /// Called after a run of entries was applied: publish new state to waiters.
    fn applied(&mut self) {}

    /// The state as a snapshot.
    fn snapshot(&self) -> Self::Snapshot;

    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: Self::Snapshot) -> Result<(), String>;
}

/// What a snapshot file holds.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The part of the state machine openraft needs beside the group state.
#[derive(Debug)]
struct Applied<S> {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: S,
    snapshot_seq: u64,
}

/// The state machine of one group. Cloning shares it (the clone is the snapshot builder).
#[derive(Debug)]
pub struct GroupStateMachine<S> {
    inner: Arc<Mutex<Applied<S>>>,
    io: Arc<dyn Io>,
    dir: PathBuf,
    /// The log store's not-yet-applied entries: forgotten here once applied.
    recent: Arc<RecentEntries>,
}

impl<S> Clone for GroupStateMachine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            io: Arc::clone(&self.io),
            dir: self.dir.clone(),
            recent: Arc::clone(&self.recent),
        }
    }
}

fn sm_error(e: impl ToString) -> RaftStorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody<T> {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: T,
}

impl<S: GroupState> GroupStateMachine<S> {
    /// A state machine starting from `state`, or from the snapshot saved in `dir` if any;
    /// `recent` is its log store's ([`super::log_store::LogStore::recent`]).
    pub fn open(
        state: S,
        io: Arc<dyn Io>,
        dir: &Path,
        recent: Arc<RecentEntries>,
    ) -> Result<Self, RaftStorageError> {
        let sm = Self {
            inner: Arc::new(Mutex::new(Applied {
                last_applied: None,
                membership: StoredMembership::default(),
                state,
                snapshot_seq: 0,
            })),
            io,
            dir: dir.to_path_buf(),
            recent,
        };
        if let Some(stored) = sm.read_snapshot()? {
            sm.restore(&stored.data)?;
        }
        Ok(sm)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Applied<S>>, RaftStorageError> {
        self.inner
            .lock()
            .map_err(|_| sm_error("state machine lock poisoned"))
    }

    /// Runs `f` with the group state (for reads by the broker).
    pub fn with_state<T>(&self, f: impl FnOnce(&S) -> T) -> Option<T> {
        self.inner.lock().ok().map(|a| f(&a.state))
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, RaftStorageError> {
        let body = read_state(
            self.io.as_ref(),
            &self.dir,
            SNAPSHOT_FILE,
            StateKind::Snapshot,
        )
        .map_err(sm_error)?;
        body.map(|b| serde_json::from_slice(&b).map_err(sm_error))
            .transpose()
    }

    fn restore(&self, data: &[u8]) -> Result<(), RaftStorageError> {
        let body: SnapshotBody<S::Snapshot> = serde_json::from_slice(data).map_err(sm_error)?;
        let mut applied = self.lock()?;
        applied.state.restore(body.state).map_err(sm_error)?;
        applied.last_applied = body.last_applied;
        applied.membership = body.membership;
        applied.state.applied();
        Ok(())
    }

    fn save(&self, stored: &StoredSnapshot) -> Result<(), RaftStorageError> {
        let body = serde_json::to_vec(stored).map_err(sm_error)?;
        write_atomic(
            self.io.as_ref(),
            &self.dir,
            SNAPSHOT_FILE,
            StateKind::Snapshot,
            &body,
        )
        .map_err(sm_error)
    }
}

impl<S: GroupState> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (meta, data) = {
            let mut applied = self.lock()?;
            applied.snapshot_seq += 1;
            let body = SnapshotBody {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                state: applied.state.snapshot(),
            };
            let data = serde_json::to_vec(&body).map_err(sm_error)?;
            let snapshot_id = format!(
                "{}-{}",
                applied.last_applied.map_or(0, |l| l.index),
                applied.snapshot_seq
            );
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        self.save(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<S: GroupState> RaftStateMachine<TypeConfig> for GroupStateMachine<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), RaftStorageError> {
        let applied = self.lock()?;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.lock()?;
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::None,
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResponse::None
                }
                EntryPayload::Normal(command) => applied.state.apply(entry.log_id, command),
            };
            responses.push(response);
        }
        applied.state.applied();
        if let Some(last) = applied.last_applied {
            self.recent.forget_through(last.index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        // The log may be reset under the snapshot: nothing held may outlive that.
        self.recent.clear();
        self.restore(&data)?;
        {
            let mut applied = self.lock()?;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        self.save(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        Ok(self.read_snapshot()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
