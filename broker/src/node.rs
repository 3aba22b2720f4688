//! A broker node: the controller group, the partitions it hosts (`partitions`), its place
//! in the cluster (`joining`), metadata changes (`proposals`), and the shared budgets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use sluice_protocol::scram::secret_bytes;
use sluice_protocol::tls::ClientTls;
use sluice_storage::io::{FsIo, Io};
use tokio::sync::{mpsc, watch};

use crate::auth::{ScramServer, SessionKeys};
use crate::cluster::fresh_start::{self, FreshStartError};
use crate::cluster::identity::{ClusterId, IdentityError, NodeIdentity};
use crate::cluster::internal_auth::ClusterAuth;
use crate::cluster::{forward, membership, reassignment};
use crate::config::BrokerConfig;
use crate::controller::{
    CONTROLLER_GROUP, ControllerCommand, ControllerResponse, ControllerState, LeaderReport,
    Metadata, TopicConfig, TopicMeta,
};
use crate::error::{BrokerError, quote};
use crate::flow::produce_budget::ByteBudget;
use crate::partition::state::PartitionState;
use crate::partition::{ClusterLink, Partition, PartitionParts};
use crate::partition_dir::{self, PartitionIdentity, Prepared};
use crate::raft::entry_codec::GroupKind;
use crate::raft::group::{
    Group, GroupError, GroupRegistry, GroupSpec, SnapshotSchedule, start_group,
};
use crate::raft::network::PeerChannels;
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::{Command, CommandResponse, GroupId, NodeId};
use crate::{housekeeping, limits};

mod joining;
mod partitions;
mod proposals;

use joining::refuse_other_cluster;
pub use proposals::propose_to;
use proposals::{recheck_leaders, report_leaders};

/// Directory of internal state inside the data dir; user topics may not start with `__`.
const CLUSTER_DIR: &str = "__cluster";

/// A partition key: topic and partition number.
type PartitionKey = (String, u32);

/// One broker.
pub struct Node {
    /// Effective configuration.
    pub config: BrokerConfig,
    /// The advertised client address: what clients are told to dial for this node.
    pub address: String,
    /// This node's Raft groups, for the internal service.
    pub groups: Arc<GroupRegistry>,
    peers: Arc<PeerChannels>,
    controller: Group,
    metadata: watch::Receiver<Arc<Metadata>>,
    partitions: RwLock<BTreeMap<PartitionKey, Arc<Partition>>>,
    /// Partitions placed here whose storage failed, with why: answered STORAGE_FAILED
    /// (not retriable) instead of "not open yet" until an operator repairs them.
    offline: RwLock<BTreeMap<PartitionKey, String>>,
    reconciling: tokio::sync::Mutex<()>,
    /// Produce bytes in flight across the broker.
    pub broker_budget: ByteBudget,
    /// This node's internal (Raft) address; empty on a single node.
    pub raft_address: String,
    auth: Option<ClusterAuth>,
    identity: std::sync::Mutex<NodeIdentity>,
    leader_reports: mpsc::UnboundedSender<LeaderReport>,
    /// The consumer groups this node coordinates.
    pub coordinator: crate::groups::Coordinator,
    session_keys: SessionKeys,
    scram: ScramServer,
    audit: crate::audit::Audit,
    /// Byte-rate quota buckets of the principals calling this broker.
    pub quotas: crate::flow::quota::Quotas,
    io: Arc<dyn Io>,
    clock: Arc<dyn sluice_storage::Clock>,
}

impl Node {
    /// The controller group's membership as this node knows it.
    pub fn controller_membership(&self) -> openraft::Membership<NodeId, openraft::BasicNode> {
        self.controller
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// The controller group's Raft metrics (term, leader, commit).
    pub fn controller_raft_metrics(&self) -> openraft::RaftMetrics<NodeId, openraft::BasicNode> {
        self.controller.raft.metrics().borrow().clone()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({} at {})", self.config.node_id, self.address)
    }
}

/// Starting the node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is unusable.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// A Raft group failed to start.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The controller elected no leader in time.
    #[error("the controller group elected no leader within {0:?}")]
    NoController(Duration),
    /// The controller group stopped while this node waited for it (a storage failure,
    /// such as an fsync error, stops a Raft group; the log says which).
    #[error("the controller group stopped while starting (a storage failure: see the log)")]
    ControllerStopped,
    /// The data dir belongs to another node or cluster.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// No seed registered this node.
    #[error("cannot register with the cluster: {0}")]
    Register(String),
    /// Joining the cluster failed.
    #[error("cannot join the cluster: {0}")]
    Joining(BrokerError),
    /// An empty data dir may not start as this node (its data is lost), or no peer
    /// confirmed that it may.
    #[error(transparent)]
    FreshStart(#[from] FreshStartError),
    /// A TLS file of the outgoing channels is unusable.
    #[error(transparent)]
    Tls(#[from] sluice_protocol::tls::TlsError),
    /// The OS gave no random bytes for the session keys.
    #[error("cannot make session keys: {0}")]
    Entropy(sluice_protocol::scram::ScramError),
}

/// What the server builds before the node: the internal service needs the group registry
/// (and a cluster's peers vote) while the node is still starting.
pub struct Wiring {
    /// This node's groups, served by the internal service.
    pub groups: Arc<GroupRegistry>,
    /// Channels to peers.
    pub peers: Arc<PeerChannels>,
    /// TLS of calls to peers' internal ports, if on.
    pub raft_tls: Option<Arc<ClientTls>>,
    /// TLS of calls to other brokers' client ports, if on.
    pub client_port_tls: Option<Arc<ClientTls>>,
    /// The cluster secret and id (a cluster node only).
    pub auth: Option<ClusterAuth>,
    /// The data dir's identity.
    pub identity: NodeIdentity,
    /// The identity is new: recorded once the node may start.
    pub identity_new: bool,
    /// The data dir is empty (no identity, no controller log): a cluster node asks its
    /// peers before it starts (`cluster::fresh_start`).
    pub fresh: bool,
    /// This node's raft address (a cluster node only).
    pub raft_address: Option<String>,
    /// Where the internal service finds the node: filled as soon as it exists, so that
    /// peers' forwarded changes are taken while this node is still starting (when a whole
    /// cluster restarts, every other node waits on the controller leader's).
    pub node_slot: crate::raft::service::NodeSlot,
    /// The file system the Raft logs, votes and snapshots live on (the simulation's own
    /// in-memory one under simulation).
    pub io: Arc<dyn Io>,
    /// Wall-clock time of the logs.
    pub clock: Arc<dyn sluice_storage::Clock>,
}

impl Wiring {
    /// Checks the data dir's identity and builds what the internal service needs.
    pub fn new(config: &BrokerConfig, raft_address: Option<String>) -> Result<Self, NodeError> {
        let cluster_dir = config.data_dir.join(CLUSTER_DIR);
        let (identity, identity_new) = NodeIdentity::open(&cluster_dir, config.node_id)?;
        // Under simulation the controller log is on the simulated disk, where a restarted
        // node's identity file (on the real one) still says it is not new.
        let fresh = identity_new && !cluster_dir.join("controller").exists();
        let auth = config
            .cluster
            .as_ref()
            .map(|c| ClusterAuth::new(Arc::clone(&c.secret), identity.cluster_id));
        let raft_tls = config
            .tls
            .raft_port_files()
            .map(ClientTls::load)
            .transpose()?;
        let client_port_tls = config
            .tls
            .client_port_files()
            .map(ClientTls::load)
            .transpose()?;
        Ok(Self {
            groups: Arc::new(GroupRegistry::default()),
            peers: Arc::new(PeerChannels::new(auth.clone(), raft_tls.clone())),
            raft_tls,
            client_port_tls,
            auth,
            identity,
            identity_new,
            fresh,
            raft_address,
            node_slot: Arc::default(),
            io: Arc::new(FsIo),
            clock: Arc::new(sluice_storage::SystemClock),
        })
    }

    /// The same wiring with the logs on `io`.
    pub fn with_io(self, io: Arc<dyn Io>) -> Self {
        Self { io, ..self }
    }
}

impl Node {
    /// Opens the data dir, recovers the controller and every hosted partition, joins the
    /// cluster (registering this node), and starts the background reconciler and
    /// housekeeping.
    pub async fn start(
        config: BrokerConfig,
        address: String,
        wiring: Wiring,
    ) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| NodeError::DataDir(config.data_dir.clone(), e))?;
        let Wiring {
            groups,
            peers,
            raft_tls: _,
            client_port_tls,
            auth,
            identity,
            identity_new,
            fresh,
            raft_address,
            node_slot,
            io,
            clock,
        } = wiring;
        let raft_address = raft_address.unwrap_or_default();
        if let Some(auth) = &auth {
            refuse_other_cluster(&peers, &membership::seeds(&config), auth).await?;
        }
        if identity_new {
            if fresh && auth.is_some() {
                fresh_start::clear(
                    &peers,
                    &membership::seeds(&config),
                    config.node_id,
                    membership::founders(&config),
                    limits::CLUSTER_JOIN_WAIT,
                )
                .await?;
            }
            identity.record(&config.data_dir.join(CLUSTER_DIR))?;
        }
        let (published, metadata) = watch::channel(Arc::new(Metadata::default()));
        let controller_dir = config.data_dir.join(CLUSTER_DIR).join("controller");
        // A cluster's controller membership holds raft addresses (what peers dial).
        let own_raft = if auth.is_some() {
            raft_address.clone()
        } else {
            address.clone()
        };
        let (members, elect) = membership::controller_bootstrap(&config, &own_raft);
        let spec = GroupSpec {
            node_id: config.node_id,
            node_address: own_raft,
            group_id: CONTROLLER_GROUP,
            kind: GroupKind::Controller,
            dir: &controller_dir,
            log_config: sluice_storage::LogConfig {
                segment_bytes: limits::CONTROLLER_SEGMENT_BYTES,
                retention_ms: None,
                ..Default::default()
            },
            io: Arc::clone(&io),
            clock: Arc::clone(&clock),
            members: members.clone(),
            elect,
            snapshots: SnapshotSchedule::for_kind(GroupKind::Controller),
            timing: config.raft_timing,
        };
        let (controller, _sm, report): (Group, GroupStateMachine<ControllerState>, _) =
            start_group(
                spec,
                |_| ControllerState::new(published),
                Arc::clone(&peers),
            )
            .await?;
        tracing::info!(?report, "controller log recovered");
        if report.segments_scanned > 0 {
            crate::metrics::recovered();
        }
        groups.insert(&controller);
        let registration = ControllerCommand::RegisterNode {
            id: config.node_id,
            address: address.clone(),
            raft_address: raft_address.clone(),
        };
        let member = members.contains_key(&config.node_id)
            || controller
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id == config.node_id);
        if !member {
            // Not in the controller group yet: its leader adds this node once it is
            // registered, and only then does this node hear of a leader. A node already in
            // it (a restart) hears from the leader without any seed.
            membership::register_via_seeds(
                &peers,
                &membership::seeds(&config),
                &registration,
                limits::CLUSTER_JOIN_WAIT,
            )
            .await
            .map_err(NodeError::Register)?;
        }
        let wait = limits::CLUSTER_JOIN_WAIT;
        controller
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a controller leader")
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => NodeError::ControllerStopped,
                openraft::metrics::WaitError::Timeout(..) => NodeError::NoController(wait),
            })?;
        let broker_budget = ByteBudget::new(config.broker_inflight_bytes);
        let session_keys = SessionKeys::new(
            config.cluster.as_ref().map(|c| &c.secret[..]),
            secret_bytes().map_err(NodeError::Entropy)?,
        );
        let (leader_reports, reports) = mpsc::unbounded_channel();
        let (audit, audit_queue) = if config.audit {
            let (sender, queue) = crate::audit::writer::queue();
            (crate::audit::Audit::on(config.node_id, sender), Some(queue))
        } else {
            (crate::audit::Audit::off(config.node_id), None)
        };
        let node = Arc::new(Self {
            config,
            address,
            raft_address,
            groups,
            peers,
            auth,
            identity: std::sync::Mutex::new(identity),
            controller,
            metadata,
            partitions: RwLock::new(BTreeMap::new()),
            offline: RwLock::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            broker_budget,
            leader_reports,
            coordinator: crate::groups::Coordinator::new(client_port_tls),
            session_keys,
            scram: ScramServer::new(secret_bytes().map_err(NodeError::Entropy)?),
            audit,
            quotas: crate::flow::quota::Quotas::default(),
            io,
            clock,
        });
        // Wait for the controller to re-apply its log, so restarts see every topic.
        // Read in its own statement: a watch borrow held across an await blocks the sender.
        let last_log_index = node.controller.raft.metrics().borrow().last_log_index;
        // The tail past the commit may be replaced by a leader's shorter log; then its
        // end is the target, or the wait would last until the next controller command
        // (or the timeout: a minute without partitions, simulation seed 199).
        let mut caught_up = node
            .controller
            .raft
            .wait(Some(wait))
            .metrics(
                move |m| {
                    let target = last_log_index.min(m.last_log_index);
                    m.last_applied.map(|a| a.index) >= target
                },
                "controller caught up",
            )
            .await
            .is_ok();
        // Registering goes through the leader; seeing it applied here means this node's
        // metadata is at least as new as that commit.
        let _ = node_slot.set(Arc::downgrade(&node));
        if !node.registered() {
            node.propose(registration)
                .await
                .map_err(NodeError::Joining)?;
        }
        caught_up &= node.wait_registered().await;
        node.adopt_cluster_id().await?;
        tokio::spawn(report_leaders(Arc::downgrade(&node), reports));
        tokio::spawn(recheck_leaders(Arc::downgrade(&node)));
        node.reconcile().await;
        if caught_up {
            node.sweep_leftovers().await;
        }
        node.wait_partitions_serving().await;
        tokio::spawn(Arc::clone(&node).reconcile_forever());
        tokio::spawn(housekeeping::run(Arc::downgrade(&node)));
        tokio::spawn(crate::metrics::run_gauges(Arc::downgrade(&node)));
        tokio::spawn(crate::groups::run(Arc::downgrade(&node)));
        if let Some(queue) = audit_queue {
            tokio::spawn(crate::audit::writer::run(Arc::downgrade(&node), queue));
        }
        if node.auth.is_some() {
            tokio::spawn(membership::run(Arc::downgrade(&node)));
            tokio::spawn(reassignment::run(Arc::downgrade(&node)));
        }
        Ok(node)
    }

    /// The cluster's id, once known.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cluster_id
    }

    /// The controller group's Raft handle.
    pub fn controller_raft(&self) -> &crate::raft::GroupRaft {
        &self.controller.raft
    }

    /// Whether this node runs as part of a cluster (it has a raft listener).
    pub fn in_cluster(&self) -> bool {
        self.auth.is_some()
    }

    /// The keys session tokens are signed and checked with.
    pub fn session_keys(&self) -> &SessionKeys {
        &self.session_keys
    }

    /// The audit trail.
    pub fn audit(&self) -> &crate::audit::Audit {
        &self.audit
    }

    /// The SCRAM exchanges in progress here.
    pub fn scram(&self) -> &ScramServer {
        &self.scram
    }

    /// Whether `principal` is a super-user (`--superuser`).
    pub fn is_superuser(&self, principal: &crate::auth::Principal) -> bool {
        principal.method == crate::auth::AuthMethod::Broker
            || (principal.is_authenticated() && self.config.superusers.contains(&principal.name))
    }

    /// The effective configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The current metadata.
    pub fn metadata(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata.borrow())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Whether this node's controller replica has stopped taking entries (its log failed, as
    /// after an fsync error, or its Raft stopped) until the node restarts: its metadata may
    /// be stale for ever.
    pub fn controller_failed(&self) -> bool {
        let log_failed = self
            .controller
            .log
            .read()
            .map_or(true, |log| log.is_failed());
        log_failed
            || self
                .controller
                .raft
                .metrics()
                .borrow()
                .running_state
                .is_err()
    }

    /// The controller's current leader.
    pub fn controller_leader(&self) -> Option<NodeId> {
        self.controller.raft.metrics().borrow().current_leader
    }

    /// The effective config of a topic.
    pub fn topic_config(&self, topic: &TopicMeta) -> Result<TopicConfig, BrokerError> {
        TopicConfig::resolve(&self.config.default_log, &topic.configs)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }

    /// Stops every group and checkpoints every log.
    pub async fn shutdown(&self) {
        for partition in self.partitions() {
            partition.shutdown().await;
        }
        let _ = self.controller.raft.shutdown().await;
        if let Ok(mut log) = self.controller.log.write()
            && let Err(e) = log.checkpoint()
        {
            tracing::warn!(error = %e, "controller checkpoint at shutdown failed");
        }
    }
}

/// A background job's passes over the node, one per `period`, for as long as the node lives.
pub(crate) struct Passes {
    interval: tokio::time::Interval,
    node: Weak<Node>,
}

impl Passes {
    /// Passes every `period` (a late pass is not made up for).
    pub(crate) fn every(period: Duration, node: Weak<Node>) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval, node }
    }

    /// Waits for the next pass; `None` once the node is gone.
    pub(crate) async fn next(&mut self) -> Option<Arc<Node>> {
        self.interval.tick().await;
        self.node.upgrade()
    }
}

/// Polls `ready` until it holds (true) or `PARTITION_READY_WAIT` passes (false).
async fn wait_until(ready: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limits::PARTITION_READY_WAIT;
    while !ready() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use sluice_storage::LogConfig;
    use sluice_storage::io::SimIo;
    use tokio::sync::watch;

    use super::propose_to;
    use crate::controller::{ControllerCommand, ControllerState, Metadata};
    use crate::error::BrokerError;
    use crate::raft::entry_codec::GroupKind;
    use crate::raft::group::{SnapshotSchedule, start_single_on, start_single_with};

    fn create(name: &str) -> ControllerCommand {
        ControllerCommand::CreateTopic {
            name: name.into(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
            nodes: vec![1],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_controller_snapshots_purges_behind_the_snapshot_and_restarts_from_it() {
        let sim = SimIo::new();
        let dir = Path::new("/disk/__cluster/controller");
        // Tiny segments and a snapshot every 16 entries, so purges free whole segments.
        let log_config = LogConfig {
            segment_bytes: 1024,
            retention_ms: None,
            ..LogConfig::default()
        };
        let schedule = SnapshotSchedule {
            every_entries: 16,
            keep_behind: Some(8),
        };
        let (published, metadata) = watch::channel(Arc::new(Metadata::default()));
        let (controller, _sm) = start_single_with(
            GroupKind::Controller,
            dir,
            log_config.clone(),
            Arc::new(sim.clone()),
            schedule,
            |_| ControllerState::new(published),
        )
        .await;
        for _ in 0..200 {
            propose_to(&controller, ControllerCommand::AllocateProducerId)
                .await
                .expect("a producer id");
        }
        controller
            .raft
            .wait(Some(std::time::Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= 150) && m.purged.is_some(),
                "a snapshot and a purge behind it",
            )
            .await
            .expect("the controller snapshots on its own");
        let first = controller
            .log
            .read()
            .ok()
            .and_then(|l| l.first_raft_index());
        assert!(
            first.is_some_and(|f| f > 100),
            "purged: log starts at {first:?}"
        );
        let next_id = metadata.borrow().next_producer_id;
        let _ = controller.raft.shutdown().await;
        drop(controller);

        let (published, metadata) = watch::channel(Arc::new(Metadata::default()));
        let (controller, _sm) = start_single_with(
            GroupKind::Controller,
            dir,
            log_config,
            Arc::new(sim.clone()),
            schedule,
            |_| ControllerState::new(published),
        )
        .await;
        let applied = controller
            .raft
            .wait(Some(std::time::Duration::from_secs(10)))
            .applied_index_at_least(Some(201), "restart caught up")
            .await;
        assert!(applied.is_ok(), "{applied:?}");
        assert_eq!(
            metadata.borrow().next_producer_id,
            next_id,
            "the snapshot and the entries after it restore the state"
        );
        let _ = controller.raft.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_metadata_changes_and_the_controller_stays_up() {
        let sim = SimIo::new();
        let (published, metadata) = watch::channel(Arc::new(Metadata::default()));
        // Small segments: a few commands fill one, so appends need rolls (new files).
        let log_config = LogConfig {
            segment_bytes: 4096,
            retention_ms: None,
            ..LogConfig::default()
        };
        let (controller, _sm) = start_single_on(
            GroupKind::Controller,
            Path::new("/disk/__cluster/controller"),
            log_config,
            Arc::new(sim.clone()),
            |_| ControllerState::new(published),
        )
        .await;
        propose_to(&controller, create("before"))
            .await
            .expect("room to spare");
        sim.set_space_limit(Some(sim.used_bytes()));
        let mut refused = 0;
        for i in 0..50 {
            match propose_to(&controller, create(&format!("full-{i}"))).await {
                Ok(_) => {}
                Err(BrokerError::NoSpace) => refused += 1,
                Err(e) => panic!("command {i}: a full disk must be NO_SPACE, got {e}"),
            }
        }
        assert!(refused > 0, "the disk never filled");
        sim.set_space_limit(None);
        propose_to(&controller, create("after"))
            .await
            .expect("the controller takes changes again");
        let topics = &metadata.borrow().topics;
        assert!(topics.contains_key("before") && topics.contains_key("after"));
        assert_eq!(
            topics.len(),
            2 + 50 - refused,
            "refused changes left no trace"
        );
        let _ = controller.raft.shutdown().await;
    }
}
