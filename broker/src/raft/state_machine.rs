//! openraft's `RaftStateMachine` for every group. The state machine stores no record data:
//! a group's state (a partition's high watermark and producer table, the controller's
//! metadata) is small, applied from committed entries and snapshotted in the group's own
//! versioned bytes inside a binary envelope (docs/formats/snapshot.md).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
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
    /// Applies one committed command at `log_id`; returns the writer's answer.
    fn apply(&mut self, log_id: LogId, command: &Command) -> CommandResponse;

    /// Called after a run of entries was applied: publish new state to waiters.
    fn applied(&mut self) {}

    /// Appends the state as snapshot bytes, in the group's own versioned format.
    fn snapshot(&self, out: &mut Vec<u8>);

    /// Replaces the state with the bytes of a snapshot that covers the log through `last`.
    fn restore(&mut self, last: Option<LogId>, snapshot: &[u8]) -> Result<(), String>;
}

/// Version of the snapshot file's envelope and of the snapshot's own envelope.
const ENVELOPE_VERSION: u8 = 2;

/// What a snapshot file holds: `version u8 = 2 | meta_len u32 | meta (JSON) | data`.
/// Version 1 (earlier builds) was all JSON, the data an array of numbers.
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn encode(&self) -> Result<Vec<u8>, RaftStorageError> {
        let meta = serde_json::to_vec(&self.meta).map_err(sm_error)?;
        Ok(envelope(&meta, &self.data))
    }

    fn decode(bytes: &[u8]) -> Result<Self, RaftStorageError> {
        if bytes.first() == Some(&b'{') {
            #[derive(Deserialize)]
            struct Legacy {
                meta: SnapshotMeta<NodeId, BasicNode>,
                data: Vec<u8>,
            }
            let legacy: Legacy = serde_json::from_slice(bytes).map_err(sm_error)?;
            return Ok(Self {
                meta: legacy.meta,
                data: legacy.data,
            });
        }
        let (meta, data) = open_envelope(bytes)?;
        Ok(Self {
            meta: serde_json::from_slice(meta).map_err(sm_error)?,
            data: data.to_vec(),
        })
    }
}

/// `version u8 | head_len u32 | head | rest`.
fn envelope(head: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = envelope_head(head, rest.len());
    out.extend_from_slice(rest);
    out
}

/// An [`envelope`] up to its head, with room for `rest_len` more bytes.
fn envelope_head(head: &[u8], rest_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + head.len() + rest_len);
    out.push(ENVELOPE_VERSION);
    // Heads are small JSON (log ids and membership), far below 4 GiB.
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(head);
    out
}

/// The head and rest of an [`envelope`]; a typed error for anything else.
fn open_envelope(bytes: &[u8]) -> Result<(&[u8], &[u8]), RaftStorageError> {
    let version = bytes.first().copied();
    if version != Some(ENVELOPE_VERSION) {
        return Err(sm_error(format!(
            "snapshot envelope version {version:?} is not supported"
        )));
    }
    let len = bytes
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| sm_error("snapshot envelope truncated"))?;
    let head_end = 5usize.saturating_add(len as usize);
    let head = bytes
        .get(5..head_end)
        .ok_or_else(|| sm_error("snapshot envelope truncated"))?;
    let rest = bytes.get(head_end..).unwrap_or_default();
    Ok((head, rest))
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

/// The head of a snapshot's data (what travels to followers); the group state's own bytes
/// follow it in an [`envelope`].
#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
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

    /// Runs `f` with the group state mutably (housekeeping that every replica does on its
    /// own, such as expiring idle producers).
    pub fn with_state_mut<T>(&self, f: impl FnOnce(&mut S) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut a| f(&mut a.state))
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
        body.map(|b| StoredSnapshot::decode(&b)).transpose()
    }

    fn restore(&self, data: &[u8]) -> Result<(), RaftStorageError> {
        let (head, state): (SnapshotHead, std::borrow::Cow<'_, [u8]>) =
            if data.first() == Some(&b'{') {
                // An earlier build's snapshot: `{"last_applied":…,"membership":…,"state":…}`.
                #[derive(Deserialize)]
                struct Legacy {
                    last_applied: Option<LogId>,
                    membership: StoredMembership<NodeId, BasicNode>,
                    state: serde_json::Value,
                }
                let legacy: Legacy = serde_json::from_slice(data).map_err(sm_error)?;
                let state = serde_json::to_vec(&legacy.state).map_err(sm_error)?;
                let head = SnapshotHead {
                    last_applied: legacy.last_applied,
                    membership: legacy.membership,
                };
                (head, state.into())
            } else {
                let (head, state) = open_envelope(data)?;
                (
                    serde_json::from_slice(head).map_err(sm_error)?,
                    state.into(),
                )
            };
        let mut applied = self.lock()?;
        applied
            .state
            .restore(head.last_applied, &state)
            .map_err(sm_error)?;
        applied.last_applied = head.last_applied;
        applied.membership = head.membership;
        applied.state.applied();
        Ok(())
    }

    fn save(&self, stored: &StoredSnapshot) -> Result<(), RaftStorageError> {
        let body = stored.encode()?;
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
            let head = SnapshotHead {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
            };
            let head = serde_json::to_vec(&head).map_err(sm_error)?;
            let mut data = envelope_head(&head, 0);
            applied.state.snapshot(&mut data);
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
        // The file write ends in fsyncs: on the blocking pool, not on an async worker.
        let sm = self.clone();
        let stored = blocking(move || {
            let stored = StoredSnapshot { meta, data };
            sm.save(&stored)?;
            Ok(stored)
        })
        .await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Runs snapshot file work (reads, fsyncs, a log reset) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    crate::blocking::run(f).await.map_err(sm_error)?
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
        let meta = meta.clone();
        let sm = self.clone();
        // Saving fsyncs and restoring may reset the log: both on the blocking pool.
        blocking(move || {
            // Saved first: a crash after it reopens from this snapshot, and the open's
            // restore finishes the log's move to it (a log moved first and a crash before
            // the save would leave a hole between the old snapshot and the log).
            let stored = StoredSnapshot { meta, data };
            sm.save(&stored)?;
            // The log may be reset under the snapshot: nothing held may outlive that.
            sm.recent.clear();
            sm.restore(&stored.data)?;
            let mut applied = sm.lock()?;
            applied.last_applied = stored.meta.last_log_id;
            applied.membership = stored.meta.last_membership.clone();
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let sm = self.clone();
        let stored = blocking(move || sm.read_snapshot()).await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use openraft::testing::log_id;
    use sluice_storage::io::FsIo;
    use sluice_storage::{Batch, Log, LogConfig, RaftPosition};
    use tokio::sync::watch;

    use super::*;
    use crate::partition::producer_state::ProducerTable;
    use crate::partition::snapshot;
    use crate::partition::state::PartitionState;
    use crate::raft::log_store::SharedLog;

    /// A log holding one one-record batch per Raft index in `indexes`, written in `term`
    /// by `leader`.
    fn log_with(dir: &Path, term: u64, leader: u64, indexes: std::ops::RangeInclusive<u64>) {
        let (mut log, _) = Log::open(dir, LogConfig::default()).expect("log");
        for index in indexes {
            let batch = Batch::decode(crate::raft::one_record_batch()).expect("decode");
            log.append(
                &batch,
                RaftPosition {
                    term,
                    leader,
                    index,
                },
            )
            .expect("append");
        }
        log.sync().expect("sync");
        log.checkpoint().expect("checkpoint");
    }

    fn open(dir: &Path) -> (GroupStateMachine<PartitionState>, SharedLog) {
        let (log, _) = Log::open(dir, LogConfig::default()).expect("log");
        let log = Arc::new(RwLock::new(log));
        let (high_watermark, _) = watch::channel(0);
        let sm = GroupStateMachine::open(
            PartitionState::new(Arc::clone(&log), high_watermark),
            Arc::new(FsIo),
            dir,
            Arc::new(RecentEntries::default()),
        )
        .expect("state machine");
        (sm, log)
    }

    /// The leader's snapshot through (term 2, node 1, index 5), whose next offset is 5.
    fn leaders_snapshot() -> (SnapshotMeta<NodeId, BasicNode>, Vec<u8>) {
        let last = Some(log_id(2, 1, 5));
        let head = serde_json::to_vec(&SnapshotHead {
            last_applied: last,
            membership: StoredMembership::default(),
        })
        .expect("head");
        let mut data = envelope_head(&head, 0);
        snapshot::encode(5, &ProducerTable::default(), &mut data);
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::default(),
            snapshot_id: "5-1".into(),
        };
        (meta, data)
    }

    fn offsets(log: &SharedLog) -> (u64, u64) {
        let log = log.read().expect("log");
        (log.log_start_offset(), log.next_offset())
    }

    #[tokio::test]
    async fn a_follower_takes_the_leaders_offsets_from_a_snapshot_and_a_crash_midway_reopens() {
        let (meta, data) = leaders_snapshot();

        // A stale tail from term 1 reaching past the snapshot, with more offsets than the
        // leader gave out: the log restarts at the snapshot's next offset, not its own.
        let stale = tempfile::tempdir().expect("dir");
        log_with(stale.path(), 1, 2, 1..=7);
        let (mut sm, log) = open(stale.path());
        sm.install_snapshot(&meta, Box::new(Cursor::new(data.clone())))
            .await
            .expect("install");
        assert_eq!(offsets(&log), (5, 5), "the leader's next offset");
        drop((sm, log));
        let (_sm, log) = open(stale.path());
        assert_eq!(offsets(&log), (5, 5), "a log reset to the snapshot stays");

        // A crash after the snapshot is saved and before the log moves: the open finishes.
        let crashed = tempfile::tempdir().expect("dir");
        log_with(crashed.path(), 1, 2, 1..=7);
        let (sm, log) = open(crashed.path());
        sm.save(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .expect("save");
        drop((sm, log));
        let (_sm, log) = open(crashed.path());
        assert_eq!(offsets(&log), (5, 5), "reopened at the snapshot");

        // A log holding the snapshot's last entry (same term and leader) is the leader's
        // prefix: nothing is dropped.
        let matching = tempfile::tempdir().expect("dir");
        log_with(matching.path(), 2, 1, 1..=6);
        let (mut sm, log) = open(matching.path());
        sm.install_snapshot(&meta, Box::new(Cursor::new(data)))
            .await
            .expect("install");
        assert_eq!(offsets(&log), (0, 6), "kept");
    }
}
