//! A broker node: the controller group, the partitions it hosts, and the shared budgets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use sluice_storage::io::FsIo;
use tokio::sync::{mpsc, watch};

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
}

impl Node {
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
    /// The data dir belongs to another node or cluster.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// No seed registered this node.
    #[error("cannot register with the cluster: {0}")]
    Register(String),
    /// Joining the cluster failed.
    #[error("cannot join the cluster: {0}")]
    Joining(BrokerError),
}

/// What the server builds before the node: the internal service needs the group registry
/// (and a cluster's peers vote) while the node is still starting.
pub struct Wiring {
    /// This node's groups, served by the internal service.
    pub groups: Arc<GroupRegistry>,
    /// Channels to peers.
    pub peers: Arc<PeerChannels>,
    /// The cluster secret and id (a cluster node only).
    pub auth: Option<ClusterAuth>,
    /// The data dir's identity.
    pub identity: NodeIdentity,
    /// This node's raft address (a cluster node only).
    pub raft_address: Option<String>,
}

impl Wiring {
    /// Checks the data dir's identity and builds what the internal service needs.
    pub fn new(config: &BrokerConfig, raft_address: Option<String>) -> Result<Self, NodeError> {
        let cluster_dir = config.data_dir.join(CLUSTER_DIR);
        let identity = NodeIdentity::open_or_create(&cluster_dir, config.node_id)?;
        let auth = config
            .cluster
            .as_ref()
            .map(|c| ClusterAuth::new(Arc::clone(&c.secret), identity.cluster_id));
        Ok(Self {
            groups: Arc::new(GroupRegistry::default()),
            peers: Arc::new(PeerChannels::new(auth.clone())),
            auth,
            identity,
            raft_address,
        })
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
            auth,
            identity,
            raft_address,
        } = wiring;
        let raft_address = raft_address.unwrap_or_default();
        if let Some(auth) = &auth {
            refuse_other_cluster(&peers, &membership::seeds(&config), auth).await?;
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
            io: Arc::new(FsIo),
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
        let voter = members.contains_key(&config.node_id)
            || controller
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == config.node_id);
        if !voter {
            // Not a voter (yet): the controller's leader adds this node once it is
            // registered, and only then does this node hear of a leader.
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
            .map_err(|_| NodeError::NoController(wait))?;
        let broker_budget = ByteBudget::new(config.broker_inflight_bytes);
        let (leader_reports, reports) = mpsc::unbounded_channel();
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
        });
        // Wait for the controller to re-apply its log, so restarts see every topic.
        // Read in its own statement: a watch borrow held across an await blocks the sender.
        let last_log_index = node.controller.raft.metrics().borrow().last_log_index;
        let mut caught_up = node
            .controller
            .raft
            .wait(Some(wait))
            .applied_index_at_least(last_log_index, "controller caught up")
            .await
            .is_ok();
        // Registering goes through the leader; seeing it applied here means this node's
        // metadata is at least as new as that commit.
        node.propose(registration)
            .await
            .map_err(NodeError::Joining)?;
        caught_up &= node.wait_registered().await;
        node.adopt_cluster_id().await?;
        tokio::spawn(report_leaders(Arc::downgrade(&node), reports));
        node.reconcile().await;
        if caught_up {
            node.sweep_leftovers().await;
        }
        node.wait_partitions_serving().await;
        tokio::spawn(Arc::clone(&node).reconcile_forever());
        tokio::spawn(housekeeping::run(Arc::downgrade(&node)));
        tokio::spawn(crate::metrics::run_gauges(Arc::downgrade(&node)));
        if node.auth.is_some() {
            tokio::spawn(membership::run(Arc::downgrade(&node)));
            tokio::spawn(reassignment::run(Arc::downgrade(&node)));
        }
        Ok(node)
    }

    /// Waits (bounded) until this node's registration shows in its own metadata.
    async fn wait_registered(&self) -> bool {
        wait_until(|| {
            self.metadata()
                .nodes
                .get(&self.node_id())
                .is_some_and(|n| n.address == self.address && n.raft_address == self.raft_address)
        })
        .await
    }

    /// Names the cluster if the controller has no id yet, then records the controller's id
    /// in the data dir, refusing to serve another cluster's data.
    async fn adopt_cluster_id(&self) -> Result<(), NodeError> {
        if self.metadata().cluster_id.is_none() {
            let proposed = self
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cluster_id
                .unwrap_or_else(ClusterId::generate);
            self.propose(ControllerCommand::InitCluster {
                cluster_id: proposed.to_string(),
            })
            .await
            .map_err(NodeError::Joining)?;
            wait_until(|| self.metadata().cluster_id.is_some()).await;
        }
        let Some(current) = self
            .metadata()
            .cluster_id
            .as_deref()
            .and_then(ClusterId::parse)
        else {
            return Err(NodeError::Joining(BrokerError::Unavailable(
                "the controller did not name the cluster in time".into(),
            )));
        };
        let dir = self.config.data_dir.join(CLUSTER_DIR);
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .adopt_cluster(&dir, current)?;
        if let Some(auth) = &self.auth {
            auth.set_cluster_id(current);
        }
        Ok(())
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

    /// Channels to peer nodes.
    pub fn peers(&self) -> &PeerChannels {
        &self.peers
    }

    /// The registered nodes that answer a ping now (this node always counts).
    pub async fn alive_nodes(&self) -> BTreeSet<NodeId> {
        let metadata = self.metadata();
        let pings = metadata
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.node_id())
            .map(|(id, n)| async move {
                forward::ping(&self.peers, &n.raft_address)
                    .await
                    .is_some_and(|p| p.node_id == *id)
                    .then_some(*id)
            });
        let mut alive: BTreeSet<NodeId> = futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect();
        alive.insert(self.node_id());
        alive
    }

    /// The controller's voters.
    pub fn controller_voters(&self) -> BTreeSet<NodeId> {
        self.controller
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether this node runs as part of a cluster (it has a raft listener).
    pub fn in_cluster(&self) -> bool {
        self.auth.is_some()
    }

    /// Removes directories of topics and partitions the metadata does not place here:
    /// leftovers of a delete the previous process did not finish. Only with complete
    /// metadata (the controller has applied its whole log).
    async fn sweep_leftovers(&self) {
        let metadata = self.metadata();
        let wanted = self.placed_here(&metadata).map(|(key, _, _)| key).collect();
        let data_dir = self.config.data_dir.clone();
        let swept = tokio::task::spawn_blocking(move || {
            partition_dir::sweep(&data_dir, &wanted, &[CLUSTER_DIR])
        })
        .await;
        match swept {
            Ok(Ok(removed)) => {
                for dir in removed {
                    tracing::warn!(dir = %dir.display(), "removed the directory of a deleted topic or partition");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping leftover directories failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping leftover directories failed"),
        }
    }

    /// The partitions `metadata` places on this node, with their group ids and topics.
    fn placed_here<'m>(
        &self,
        metadata: &'m Metadata,
    ) -> impl Iterator<Item = (PartitionKey, GroupId, &'m TopicMeta)> + 'm {
        let node_id = self.node_id();
        metadata.topics.values().flat_map(move |t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.hosted_by(node_id))
                .map(move |(i, p)| ((t.name.clone(), i as u32), p.group_id, t))
        })
    }

    /// The current metadata.
    pub fn metadata(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata.borrow())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The controller's current leader.
    pub fn controller_leader(&self) -> Option<NodeId> {
        self.controller.raft.metrics().borrow().current_leader
    }

    /// Proposes a metadata change and waits for it to be applied; a node that does not
    /// lead the controller hands it to the leader.
    pub async fn propose(
        &self,
        command: ControllerCommand,
    ) -> Result<ControllerResponse, BrokerError> {
        let (answer, index) = self.propose_forwarded(command, 0).await?;
        // Applied on the leader; this node's own metadata follows (bounded), so what the
        // caller reads here next already shows the change.
        let wait = limits::CONTROLLER_PROPOSE_WAIT;
        let _ = self
            .controller
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "the change applied here")
            .await;
        Ok(answer)
    }

    /// [`Node::propose`] for a command that already passed through `hops` nodes; also
    /// returns the Raft index the change was applied at.
    pub async fn propose_forwarded(
        &self,
        command: ControllerCommand,
        hops: u32,
    ) -> Result<(ControllerResponse, u64), BrokerError> {
        let deadline = tokio::time::Instant::now() + limits::CONTROLLER_PROPOSE_WAIT;
        let mut last = BrokerError::Unavailable("the controller has no leader".into());
        loop {
            let leader = self.controller_leader();
            if leader == Some(self.node_id()) {
                match propose_at(&self.controller, command.clone()).await {
                    // Lost the leadership meanwhile: find the new leader.
                    Err(e @ BrokerError::NotLeader { .. }) => last = e,
                    other => return other,
                }
            } else if let Some(leader) = leader
                && self.in_cluster()
            {
                if hops >= forward::FORWARD_HOPS_MAX {
                    return Err(BrokerError::Unavailable(
                        "the controller leader moved while the change was forwarded".into(),
                    ));
                }
                let address = self.controller_member_address(leader);
                match address {
                    Some(address) => {
                        match forward::forward(&self.peers, &address, &command, hops + 1).await {
                            Ok(answer) => return Ok(answer),
                            Err(e) => last = e,
                        }
                    }
                    None => {
                        last = BrokerError::Unavailable(format!(
                            "no address for controller leader {leader}"
                        ))
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The raft address of controller member `id`.
    fn controller_member_address(&self, id: NodeId) -> Option<String> {
        self.controller
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The effective config of a topic.
    pub fn topic_config(&self, topic: &TopicMeta) -> Result<TopicConfig, BrokerError> {
        TopicConfig::resolve(&self.config.default_log, &topic.configs)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }

    /// The local replica of a partition, or why there is none.
    pub fn partition(&self, topic: &str, index: u32) -> Result<Arc<Partition>, BrokerError> {
        let key = (topic.to_string(), index);
        if let Some(p) = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if let Some(why) = p.storage_failure() {
                return Err(BrokerError::StorageFailed(format!(
                    "{}/{index} is offline: {why}",
                    quote(topic)
                )));
            }
            return Ok(Arc::clone(p));
        }
        let metadata = self.metadata();
        let meta = metadata
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        if index as usize >= meta.partitions.len() {
            return Err(BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition: index,
            });
        }
        if let Some(why) = self.offline_reason(&key) {
            return Err(BrokerError::StorageFailed(format!(
                "{}/{index} is offline: {why}",
                quote(topic)
            )));
        }
        let placed = &meta.partitions[index as usize];
        if !placed.hosted_by(self.node_id()) {
            // Another broker's partition: point the client at its leader.
            if let Some(leader) = placed.leader {
                return Err(BrokerError::NotLeader {
                    what: format!("{}/{index}", quote(topic)),
                    leader_hint: metadata.node_address(leader).map(str::to_string),
                });
            }
            return Err(BrokerError::Unavailable(format!(
                "{}/{index} has no known leader yet",
                quote(topic)
            )));
        }
        Err(BrokerError::Unavailable(format!(
            "{}/{index} is not open on this broker yet",
            quote(topic)
        )))
    }

    /// Why a partition placed here is offline, if it is.
    fn offline_reason(&self, key: &PartitionKey) -> Option<String> {
        self.offline
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Why partition `index` of `topic` is offline on this broker, if it is.
    pub fn partition_offline(&self, topic: &str, index: u32) -> Option<String> {
        let key = (topic.to_string(), index);
        let open = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        match open {
            Some(p) => p.storage_failure().map(str::to_string),
            None => self.offline_reason(&key),
        }
    }

    fn set_offline(&self, key: &PartitionKey, why: Option<String>) {
        let mut offline = self.offline.write().unwrap_or_else(|p| p.into_inner());
        match why {
            Some(why) => {
                offline.insert(key.clone(), why);
            }
            None => {
                offline.remove(key);
            }
        }
    }

    /// Every partition this node hosts.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Waits until every partition of `topic` has a serving leader that the controller
    /// knows of, and the ones hosted here are open.
    pub async fn wait_topic_ready(&self, topic: &str) -> Result<(), BrokerError> {
        let node_id = self.node_id();
        let ready = || {
            let metadata = self.metadata();
            let Some(meta) = metadata.topics.get(topic) else {
                return false;
            };
            meta.partitions.iter().enumerate().all(|(i, p)| {
                p.leader.is_some()
                    && (!p.hosted_by(node_id)
                        || self
                            .partition(topic, i as u32)
                            .is_ok_and(|p| p.leader().is_some()))
            })
        };
        if wait_until(ready).await {
            return Ok(());
        }
        Err(BrokerError::Unavailable(format!(
            "partitions of {topic} did not elect leaders in time"
        )))
    }

    /// Waits (bounded) until every partition opened here has a serving leader, so that once
    /// a restarted broker says it is ready no acknowledged record looks missing.
    async fn wait_partitions_serving(&self) {
        if !wait_until(|| self.partitions().iter().all(|p| p.leader().is_some())).await {
            tracing::warn!(
                "some partitions have no serving leader after {:?}; starting anyway",
                limits::PARTITION_READY_WAIT
            );
        }
    }

    async fn reconcile_forever(self: Arc<Self>) {
        let mut metadata = self.metadata.clone();
        while metadata.changed().await.is_ok() {
            self.reconcile().await;
        }
    }

    /// Opens partitions the metadata places here and closes (and deletes) the ones it no
    /// longer lists.
    pub async fn reconcile(&self) {
        let _guard = self.reconciling.lock().await;
        let metadata = self.metadata();
        let wanted: BTreeMap<PartitionKey, (GroupId, &TopicMeta)> = self
            .placed_here(&metadata)
            .map(|(key, group_id, topic)| (key, (group_id, topic)))
            .collect();
        self.close_unwanted(&wanted).await;
        for (key, (group_id, topic)) in &wanted {
            let existing = self
                .partitions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned();
            match existing {
                Some(p) => {
                    if let Ok(config) = self.topic_config(topic)
                        && config != p.config()
                        && let Err(e) = p.set_config(config)
                    {
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "config change not applied");
                    }
                }
                None => match self.open_partition(key, *group_id, topic).await {
                    Ok(()) => self.set_offline(key, None),
                    Err(e) => {
                        tracing::error!(topic = %key.0, partition = key.1, error = %e, "cannot open partition");
                        if let BrokerError::StorageFailed(why) = e {
                            crate::metrics::partition_offline(&key.0, key.1);
                            self.set_offline(key, Some(why));
                        }
                    }
                },
            }
        }
    }

    async fn close_unwanted(&self, wanted: &BTreeMap<PartitionKey, (GroupId, &TopicMeta)>) {
        let unwanted: Vec<(PartitionKey, Arc<Partition>)> = self
            .partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, p)| wanted.get(*k).is_none_or(|(g, _)| *g != p.group.id))
            .map(|(k, p)| (k.clone(), Arc::clone(p)))
            .collect();
        self.offline
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| wanted.contains_key(k));
        let mut topics = BTreeSet::new();
        for (key, partition) in unwanted {
            partition.shutdown().await;
            self.groups.remove(partition.group.id);
            self.partitions
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            // Segment files go to the background deleter first: unlinking gigabytes at once
            // would stall every other partition's fsyncs (docs/storage.md).
            if let Ok(mut log) = partition.group.log.write()
                && let Err(e) = log.discard_files()
            {
                tracing::warn!(dir = %partition.group.dir.display(), error = %e, "cannot hand segments to the deleter");
            }
            if let Err(e) = partition_dir::remove_partition_dir(&partition.group.dir) {
                tracing::warn!(dir = %partition.group.dir.display(), error = %e, "cannot remove partition data");
            }
            topics.insert(key.0);
        }
        for topic in topics {
            // Removes the topic directory once its last partition is gone.
            let _ = std::fs::remove_dir(self.config.data_dir.join(&topic));
        }
    }

    async fn open_partition(
        &self,
        key: &PartitionKey,
        group_id: GroupId,
        topic: &TopicMeta,
    ) -> Result<(), BrokerError> {
        let config = self.topic_config(topic)?;
        let dir = partition_dir::partition_dir(&self.config.data_dir, &key.0, key.1);
        let identity = PartitionIdentity {
            topic: key.0.clone(),
            partition: key.1,
            group_id,
        };
        let prepare_dir = dir.clone();
        let prepared =
            tokio::task::spawn_blocking(move || partition_dir::prepare(&prepare_dir, &identity))
                .await
                .map_err(|e| BrokerError::Internal(e.to_string()))?
                .map_err(|e| {
                    BrokerError::StorageFailed(format!("preparing {}: {e}", dir.display()))
                })?;
        if let Prepared::ReplacedStale(stale) = &prepared {
            tracing::warn!(topic = %key.0, partition = key.1, ?stale, "removed a deleted incarnation's leftover directory");
        }
        let replicas = topic
            .partitions
            .get(key.1 as usize)
            .map(|p| p.replicas.clone())
            .unwrap_or_default();
        // A replica being added by a reassignment starts empty and uninitialised: the
        // group's leader adds it as a learner and sends it the log.
        let members = if replicas.contains(&self.node_id()) {
            self.group_members(&replicas)?
        } else {
            BTreeMap::new()
        };
        let (high_watermark_tx, high_watermark) = watch::channel(0);
        let spec = GroupSpec {
            node_id: self.node_id(),
            node_address: self.address.clone(),
            group_id,
            kind: GroupKind::Partition,
            dir: &dir,
            log_config: config.log.clone(),
            io: Arc::new(FsIo),
            members,
            elect: replicas.first() == Some(&self.node_id()),
            snapshots: SnapshotSchedule::for_kind(GroupKind::Partition),
            timing: self.config.raft_timing,
        };
        let (group, sm, report) = start_group(
            spec,
            |log| PartitionState::new(log, high_watermark_tx),
            Arc::clone(&self.peers),
        )
        .await
        .map_err(|e| BrokerError::StorageFailed(e.to_string()))?;
        tracing::info!(topic = %key.0, partition = key.1, ?report, "partition log recovered");
        if report.segments_scanned > 0 {
            crate::metrics::recovered();
        }
        self.groups.insert(&group);
        let partition = Partition::new(PartitionParts {
            topic: key.0.clone(),
            index: key.1,
            group,
            sm,
            high_watermark,
            config,
            node_id: self.node_id(),
            budget_bytes: self.config.partition_inflight_bytes,
            cluster: Some(ClusterLink {
                metadata: self.metadata.clone(),
                leader_reports: self.leader_reports.clone(),
            }),
        });
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), Arc::new(partition));
        Ok(())
    }

    /// A partition group's voters with their raft addresses (this node's own address on a
    /// single node, whose groups of one never call out).
    fn group_members(&self, replicas: &[NodeId]) -> Result<BTreeMap<NodeId, String>, BrokerError> {
        if !self.in_cluster() {
            return Ok(replicas
                .iter()
                .map(|r| (*r, self.address.clone()))
                .collect());
        }
        let metadata = self.metadata();
        replicas
            .iter()
            .map(|r| match metadata.nodes.get(r) {
                Some(n) if !n.raft_address.is_empty() => Ok((*r, n.raft_address.clone())),
                _ => Err(BrokerError::Unavailable(format!(
                    "replica node {r} has not registered its address"
                ))),
            })
            .collect()
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

/// Refuses to start when a seed says this node's data belongs to another cluster.
async fn refuse_other_cluster(
    peers: &PeerChannels,
    seeds: &[String],
    auth: &ClusterAuth,
) -> Result<(), NodeError> {
    if auth.cluster_id().is_none() {
        return Ok(());
    }
    for seed in seeds {
        if let Some(why) = forward::refused_as_other_cluster(peers, seed).await {
            return Err(NodeError::Joining(BrokerError::InvalidConfig(format!(
                "{seed} refuses this node: {why}; this data dir belongs to another cluster"
            ))));
        }
    }
    Ok(())
}

/// Proposes the leaderships this node's partitions report, several per controller entry.
async fn report_leaders(node: Weak<Node>, mut reports: mpsc::UnboundedReceiver<LeaderReport>) {
    while let Some(first) = reports.recv().await {
        let mut leaders = vec![first];
        while let Ok(more) = reports.try_recv() {
            leaders.push(more);
        }
        let Some(node) = node.upgrade() else { return };
        for attempt in 0..limits::LEADER_REPORT_ATTEMPTS {
            let metadata = node.metadata();
            leaders.retain(|r| {
                metadata
                    .partition_of_group(r.group_id)
                    .is_some_and(|(_, _, p)| p.leader_term < r.term || p.leader != Some(r.leader))
            });
            if leaders.is_empty() {
                break;
            }
            let command = ControllerCommand::ReportLeaders {
                leaders: leaders.clone(),
            };
            match node.propose(command).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reporting partition leaders failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
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

/// Proposes a metadata change to the controller group `controller` and waits for it to be
/// applied. Log space is reserved first (see `log_room`).
pub async fn propose_to(
    controller: &Group,
    command: ControllerCommand,
) -> Result<ControllerResponse, BrokerError> {
    propose_at(controller, command)
        .await
        .map(|(answer, _)| answer)
}

/// [`propose_to`], also returning the Raft index the change was applied at.
async fn propose_at(
    controller: &Group,
    command: ControllerCommand,
) -> Result<(ControllerResponse, u64), BrokerError> {
    crate::log_room::reserve(&controller.log, limits::CONTROLLER_ENTRY_ROOM_BYTES).await?;
    match controller
        .raft
        .client_write(Command::Controller(command))
        .await
    {
        Ok(response) => match response.data {
            CommandResponse::Controller(r) => Ok((r, response.log_id.index)),
            other => Err(BrokerError::Internal(format!(
                "unexpected controller result {other:?}"
            ))),
        },
        Err(e) => Err(crate::partition::writer::write_error(e)),
    }
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
