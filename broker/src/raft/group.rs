//! Starting a Raft group over a log directory, and the registry of this node's groups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::{BasicNode, SnapshotPolicy};
use sluice_storage::canary::{Canary, armed};
use sluice_storage::io::Io;
use sluice_storage::{Log, LogConfig, LogEnv, RecoveryReport};

use super::entry_codec::GroupKind;
use super::first_election;
use super::log_store::{LogStore, SharedLog};
use super::network::{GroupNetwork, PeerChannels};
use super::standing::Standing;
use super::state_machine::{GroupState, GroupStateMachine};
use super::suspect::Suspect;
use super::{GroupId, GroupRaft, NodeId};
use crate::limits;

/// A running group of this node: its Raft handle and its log.
#[derive(Clone)]
pub struct Group {
    /// The group id.
    pub id: GroupId,
    /// The Raft instance.
    pub raft: GroupRaft,
    /// The group's log (the Raft log).
    pub log: SharedLog,
    /// Where its files live.
    pub dir: PathBuf,
    /// How far this replica has fsynced its log.
    pub durable_end: tokio::sync::watch::Receiver<super::log_store::DurableEnd>,
    /// Set while recovery's cut of its log keeps it from voting (`raft::suspect`).
    pub suspect: Option<Arc<Suspect>>,
    /// When the replica stands for election (`raft::standing`).
    pub standing: Arc<Standing>,
}

/// Failure to start a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The log could not be opened or recovered.
    #[error("opening log in {dir}: {source}")]
    Storage {
        /// The group directory.
        dir: PathBuf,
        /// Why.
        source: sluice_storage::StorageError,
    },
    /// openraft refused to start or initialise.
    #[error("starting raft group {group}: {message}")]
    Raft {
        /// The group.
        group: GroupId,
        /// Why.
        message: String,
    },
}

/// When a group snapshots, and how much log it keeps behind a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// A snapshot every this many applied entries.
    pub every_entries: u64,
    /// Entries kept behind a snapshot; `None`: openraft never purges (only retention does).
    pub keep_behind: Option<u64>,
}

impl SnapshotSchedule {
    /// The schedule of a kind of group:
    /// - a partition every `PARTITION_SNAPSHOT_ENTRIES` entries (and by bytes from
    ///   housekeeping), so a restart re-applies only what follows its last snapshot; it
    ///   never purges on its own (its log is the data: only retention purges, DESIGN §3);
    /// - the controller every `CONTROLLER_SNAPSHOT_ENTRIES` entries, its log purged behind
    ///   the snapshot but for `CONTROLLER_LOG_KEEP` entries, for followers a little behind.
    pub fn for_kind(kind: GroupKind) -> Self {
        match kind {
            GroupKind::Partition => Self {
                every_entries: limits::PARTITION_SNAPSHOT_ENTRIES,
                keep_behind: None,
            },
            GroupKind::Controller => Self {
                every_entries: limits::CONTROLLER_SNAPSHOT_ENTRIES,
                keep_behind: Some(limits::CONTROLLER_LOG_KEEP),
            },
        }
    }
}

/// A group's Raft timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout minimum; the maximum is 6/5 of it.
    pub election_timeout_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: limits::RAFT_HEARTBEAT_MS_DEFAULT,
            election_timeout_ms: limits::RAFT_ELECTION_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// Raft timing, and the group's snapshot schedule.
pub fn raft_config(
    timing: RaftTiming,
    snapshots: SnapshotSchedule,
) -> Result<Arc<openraft::Config>, GroupError> {
    let config = openraft::Config {
        cluster_name: "sluice".to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_ms,
        election_timeout_max: timing.election_timeout_ms * 6 / 5 + 1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshots.every_entries),
        // `raft::standing` keeps the election timer, and stands only when it could win.
        enable_elect: false,
        max_in_snapshot_log_to_keep: snapshots.keep_behind.unwrap_or(u64::MAX),
        ..openraft::Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| GroupError::Raft {
            group: 0,
            message: e.to_string(),
        })
}

/// What a group needs to start.
pub struct GroupSpec<'a> {
    /// This node.
    pub node_id: NodeId,
    /// This node's client address, stored in the membership.
    pub node_address: String,
    /// The group id.
    pub group_id: GroupId,
    /// Controller or partition.
    pub kind: GroupKind,
    /// The group's directory (log and Raft state).
    pub dir: &'a Path,
    /// The log's configuration.
    pub log_config: LogConfig,
    /// The file system under the log and the group's state files ([`sluice_storage::io::FsIo`] but in tests).
    pub io: Arc<dyn Io>,
    /// Wall-clock time of the log (segment age, retention, checkpoint pacing).
    pub clock: Arc<dyn sluice_storage::Clock>,
    /// Voters of the group with their raft addresses, for a first start; empty: this node
    /// waits to be added by the group's leader instead.
    pub members: BTreeMap<NodeId, String>,
    /// Whether to stand for election at once after a first start (the preferred leader).
    pub elect: bool,
    /// When it snapshots ([`SnapshotSchedule::for_kind`] but in tests).
    pub snapshots: SnapshotSchedule,
    /// Heartbeat and election timing.
    pub timing: RaftTiming,
}

/// Opens the log (recovering it), builds the log store and state machine, and starts Raft;
/// a group that never ran is initialised with `members`, and a group of one elects itself
/// at once instead of waiting out an election timeout.
pub async fn start_group<S: GroupState>(
    spec: GroupSpec<'_>,
    state: impl FnOnce(SharedLog) -> S,
    peers: Arc<PeerChannels>,
) -> Result<(Group, GroupStateMachine<S>, RecoveryReport), GroupError> {
    let dir = spec.dir.to_path_buf();
    let storage_error = |source| GroupError::Storage {
        dir: dir.clone(),
        source,
    };
    // The log's segments and the group's small state files share the directory (DESIGN §2).
    let log_dir = dir.clone();
    let config = spec.log_config.clone();
    let env = LogEnv {
        io: Arc::clone(&spec.io),
        clock: Arc::clone(&spec.clock),
    };
    let opened = crate::blocking::run(move || Log::open_with(log_dir, config, env))
        .await
        .map_err(|e| GroupError::Raft {
            group: spec.group_id,
            message: e.to_string(),
        })?;
    let (log, report) = opened.map_err(storage_error)?;
    let log: SharedLog = Arc::new(RwLock::new(log));
    let io = Arc::clone(&spec.io);
    let raft_error = |e: &dyn std::fmt::Display| GroupError::Raft {
        group: spec.group_id,
        message: e.to_string(),
    };
    let store = LogStore::open(spec.kind, Arc::clone(&log), Arc::clone(&io), &dir)
        .map_err(|e| raft_error(&e))?;
    let durable_end = store.durable_end();
    // Only a cut: holding back every replica whose log ends past its checkpoint (any crash)
    // also covers a cut on a batch boundary, but it stalled whole-cluster restarts in the
    // simulation (reliability.md, "Known gaps"). The canaries that let a replica with a cut
    // log run as if whole turn this guard off too.
    let cut = report.truncated_bytes > 0
        && !armed(Canary::CutLogVotes)
        && !armed(Canary::TruncateOnCorruption);
    if cut {
        store.forget_leadership().map_err(|e| raft_error(&e))?;
    }
    let sm = GroupStateMachine::open(state(Arc::clone(&log)), io, &dir, store.recent())
        .map_err(|e| raft_error(&e))?;
    let network = GroupNetwork::new(spec.group_id, Arc::clone(&peers));
    let raft = GroupRaft::new(
        spec.node_id,
        raft_config(spec.timing, spec.snapshots)?,
        network,
        store,
        sm.clone(),
    )
    .await
    .map_err(|e| raft_error(&e))?;
    let fresh = !raft.is_initialized().await.map_err(|e| raft_error(&e))?;
    if fresh && !spec.members.is_empty() {
        let members: BTreeMap<NodeId, BasicNode> = spec
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        raft.initialize(members).await.map_err(|e| raft_error(&e))?;
    }
    let standing = Standing::start(
        spec.group_id,
        spec.node_id,
        raft.clone(),
        Arc::clone(&peers),
    );
    let single = spec.members.len() == 1 && spec.members.contains_key(&spec.node_id);
    let election_timeout = std::time::Duration::from_millis(spec.timing.election_timeout_ms);
    if single {
        // A group of one has no one to wait for.
        let _ = raft.trigger().elect().await;
    } else if fresh && !spec.members.is_empty() && spec.kind == GroupKind::Partition {
        // A new partition's preferred leader leads, as placement intended.
        first_election::start(raft.clone(), &standing, spec.elect, election_timeout);
    } else if fresh && spec.elect {
        let _ = raft.trigger().elect().await;
    }
    let others = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id != spec.node_id);
    let suspect = (cut && others).then(|| {
        tracing::warn!(
            node = spec.node_id,
            group = spec.group_id,
            bytes = report.truncated_bytes,
            "recovery cut this replica's log above its checkpoint: it votes again once it has caught up with a leader"
        );
        Suspect::start(
            spec.group_id,
            spec.node_id,
            raft.clone(),
            peers,
            &standing,
            election_timeout,
        )
    });
    Ok((
        Group {
            id: spec.group_id,
            raft,
            log,
            dir,
            durable_end,
            suspect,
            standing,
        },
        sm,
        report,
    ))
}

/// Starts a group of one (node 1) on `io` and waits until it leads: the harness of tests
/// that run a real group over a simulated disk.
#[cfg(test)]
pub async fn start_single_on<S: GroupState>(
    kind: GroupKind,
    dir: &Path,
    log_config: LogConfig,
    io: Arc<dyn Io>,
    state: impl FnOnce(SharedLog) -> S,
) -> (Group, GroupStateMachine<S>) {
    let snapshots = SnapshotSchedule::for_kind(kind);
    start_single_with(kind, dir, log_config, io, snapshots, state).await
}

/// [`start_single_on`] with a snapshot schedule of the test's own.
#[cfg(test)]
pub async fn start_single_with<S: GroupState>(
    kind: GroupKind,
    dir: &Path,
    log_config: LogConfig,
    io: Arc<dyn Io>,
    snapshots: SnapshotSchedule,
    state: impl FnOnce(SharedLog) -> S,
) -> (Group, GroupStateMachine<S>) {
    let spec = GroupSpec {
        node_id: 1,
        node_address: "127.0.0.1:1".into(),
        group_id: 7,
        kind,
        dir,
        log_config,
        io,
        clock: Arc::new(sluice_storage::SystemClock),
        members: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
        elect: true,
        snapshots,
        timing: RaftTiming::default(),
    };
    let (group, sm, _) = start_group(spec, state, Arc::new(PeerChannels::new(None, None)))
        .await
        .expect("group");
    group
        .raft
        .wait(Some(std::time::Duration::from_secs(10)))
        .current_leader(1, "leader")
        .await
        .expect("leader");
    (group, sm)
}

/// This node's running groups by id, for the internal Raft service.
#[derive(Default)]
pub struct GroupRegistry {
    groups: RwLock<BTreeMap<GroupId, Registered>>,
}

/// A registered group's Raft handle, log and suspicion.
pub type Registered = (GroupRaft, SharedLog, Option<Arc<Suspect>>);

impl GroupRegistry {
    /// The ids of the registered groups, in order.
    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Registers a started group.
    pub fn insert(&self, group: &Group) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                group.id,
                (
                    group.raft.clone(),
                    Arc::clone(&group.log),
                    group.suspect.clone(),
                ),
            );
    }

    /// Forgets a group (deleted topic).
    pub fn remove(&self, id: GroupId) -> Option<GroupRaft> {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .map(|(raft, _, _)| raft)
    }

    /// The Raft handle of a group.
    pub fn get(&self, id: GroupId) -> Option<GroupRaft> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|(raft, _, _)| raft.clone())
    }

    /// The Raft handle and the log of a group, and its replica's suspicion while
    /// recovery's cut of its log keeps it from voting freely (`raft::suspect`).
    pub fn get_for_append(&self, id: GroupId) -> Option<Registered> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|(raft, log, suspect)| {
                let suspect = suspect.clone().filter(|s| !s.is_cleared());
                (raft.clone(), Arc::clone(log), suspect)
            })
    }

    /// A group's replica while recovery's cut of its log keeps it from voting freely.
    pub fn suspect(&self, id: GroupId) -> Option<Arc<Suspect>> {
        self.get_for_append(id).and_then(|(_, _, s)| s)
    }
}
