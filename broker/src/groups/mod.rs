//! Consumer groups (DESIGN §6): the coordinator of a group is the leader of partition
//! `crc32(group) % n` of `__consumer_offsets`; it keeps that partition's groups in memory
//! (`shard`), rebuilt from the partition's log whenever this node becomes its leader.
//! Committed offsets are records of that partition (`offset_record`), written acks=all;
//! membership is soft state: after the coordinator moves, members rejoin.

pub mod assignor;
pub mod group;
pub mod offset_record;
pub mod partition_offsets;
pub mod shard;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tonic::transport::Channel;

use crate::controller::{ControllerCommand, ControllerResponse, Metadata};
use crate::error::{BrokerError, quote};
use crate::limits::GROUP_NAME_LEN_MAX;
use crate::node::{Node, Passes};
use crate::raft::NodeId;
use shard::Shard;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How often the coordinator looks for leadership changes of its offsets partitions and
/// expels silent members.
const COORDINATOR_PASS: Duration = Duration::from_millis(100);

/// How often group gauges (lag, members) are refreshed.
const GAUGE_PASS: Duration = Duration::from_secs(5);

/// The `__consumer_offsets` partition of `group` (CRC-32 of its UTF-8 bytes, mod `n`).
pub fn partition_for(group: &str, n: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % n.max(1)
}

/// Refuses names that are empty, too long or hold control characters.
pub fn validate_group_name(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > GROUP_NAME_LEN_MAX || group.chars().any(char::is_control) {
        return Err(BrokerError::InvalidRequest(format!(
            "group name {} must be 1 to {GROUP_NAME_LEN_MAX} bytes without control characters",
            quote(group)
        )));
    }
    Ok(())
}

/// A NOT_LEADER of the group's offsets partition, as clients of groups see it.
pub fn not_coordinator(group: &str, e: BrokerError) -> BrokerError {
    match e {
        BrokerError::NotLeader { leader_hint, .. } => BrokerError::NotCoordinator {
            group: group.to_string(),
            coordinator_hint: leader_hint,
        },
        other => other,
    }
}

/// The user topics and their partition counts: what subscriptions match against.
pub fn user_topics(metadata: &Metadata) -> BTreeMap<String, u32> {
    metadata
        .topics
        .values()
        .filter(|t| !t.name.starts_with("__"))
        .map(|t| (t.name.clone(), t.partitions.len() as u32))
        .collect()
}

/// This node's coordinator role: the offsets partitions it leads, loaded.
#[derive(Default)]
pub struct Coordinator {
    /// TLS of calls to other brokers' client ports, if on.
    tls: Option<Arc<sluice_protocol::tls::ClientTls>>,
    shards: std::sync::Mutex<BTreeMap<u32, Arc<Shard>>>,
    /// Client channels to other brokers, for their partitions' offsets.
    channels: std::sync::Mutex<HashMap<String, Channel>>,
    /// Set while a gauge pass runs: a slow one is not stacked on.
    publishing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Held while a shard loads: a request and the background pass never load one twice.
    loading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coordinator")
    }
}

impl Coordinator {
    /// A coordinator whose calls to other brokers use `tls`.
    pub fn new(tls: Option<Arc<sluice_protocol::tls::ClientTls>>) -> Self {
        Self {
            tls,
            ..Self::default()
        }
    }

    /// The loaded shard of offsets partition `index`, if this node leads it.
    pub fn shard(&self, index: u32) -> Option<Arc<Shard>> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .cloned()
    }

    /// Every loaded shard.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The shard of offsets partition `index` for this leadership of it, loading it from
    /// the partition's log if it is not loaded yet (or was loaded in an earlier term).
    pub async fn ensure_loaded(
        &self,
        index: u32,
        partition: &Arc<crate::partition::Partition>,
    ) -> Result<Arc<Shard>, BrokerError> {
        let term = shard::leader_term(partition);
        if let Some(s) = self.shard(index).filter(|s| s.term == term) {
            return Ok(s);
        }
        let _loading = self.loading.lock().await;
        // Read again under the lock: another caller may have loaded a newer leadership
        // meanwhile, which must not be replaced by a load for the term read before.
        let term = shard::leader_term(partition);
        if !partition.is_leader() {
            return Err(BrokerError::Unavailable(format!(
                "{OFFSETS_TOPIC}/{index} lost its leader while its groups were to load"
            )));
        }
        if let Some(s) = self.shard(index).filter(|s| s.term >= term) {
            return Ok(s);
        }
        self.set(index, None);
        let shard = Arc::new(Shard::load(index, term, Arc::clone(partition)).await?);
        // Leadership may have moved on while loading: only a still-current load is kept.
        if !partition.is_leader() || shard::leader_term(partition) != term {
            return Err(BrokerError::Unavailable(format!(
                "{OFFSETS_TOPIC}/{index} changed leaders while its groups loaded"
            )));
        }
        let groups = shard.group_count().await;
        tracing::info!(
            partition = index,
            term,
            groups,
            "coordinating the groups of {OFFSETS_TOPIC}/{index}"
        );
        self.set(index, Some(Arc::clone(&shard)));
        Ok(shard)
    }

    fn set(&self, index: u32, shard: Option<Arc<Shard>>) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        match shard {
            Some(s) => {
                shards.insert(index, s);
            }
            None => {
                shards.remove(&index);
            }
        }
    }

    /// A channel to a broker's client address.
    pub fn channel(&self, address: &str) -> Result<Channel, BrokerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| BrokerError::Internal(format!("bad broker address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(sluice_protocol::transport::keepalive().0)
            .keep_alive_timeout(sluice_protocol::transport::keepalive().1)
            .keep_alive_while_idle(true);
        let channel = sluice_protocol::transport::connect_lazy(channel, self.tls.clone());
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

impl Node {
    /// The number of `__consumer_offsets` partitions, creating the topic on first use
    /// (compacted, replication factor min(3, live nodes)).
    pub async fn offsets_topic(&self) -> Result<u32, BrokerError> {
        if let Some(t) = self.metadata().topics.get(OFFSETS_TOPIC) {
            return Ok(t.partitions.len() as u32);
        }
        let nodes = self.placement_nodes(1).await?;
        let replication_factor = nodes.len().min(3) as u32;
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            // Small segments, so compaction (which skips the active one) keeps it small.
            ("segment.bytes".to_string(), (64u64 << 20).to_string()),
        ]);
        let command = ControllerCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: self.config.offsets_topic_partitions,
            replication_factor,
            configs,
            nodes,
        };
        match self.propose(command).await? {
            ControllerResponse::Refused { reason, message } if reason != "TOPIC_EXISTS" => {
                return Err(BrokerError::Internal(format!(
                    "creating {OFFSETS_TOPIC}: {message}"
                )));
            }
            ControllerResponse::Refused { .. } => {}
            _ => tracing::info!(topic = OFFSETS_TOPIC, "created the committed offsets topic"),
        }
        self.reconcile().await;
        self.wait_topic_ready(OFFSETS_TOPIC).await?;
        self.metadata()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| BrokerError::Unavailable(format!("{OFFSETS_TOPIC} is being created")))
    }

    /// Where `group`'s coordinator is: node id, client address, offsets partition.
    pub async fn find_coordinator(
        &self,
        group: &str,
    ) -> Result<(NodeId, String, u32), BrokerError> {
        validate_group_name(group)?;
        let n = self.offsets_topic().await?;
        let index = partition_for(group, n);
        let metadata = self.metadata();
        let leader = match self.partition(OFFSETS_TOPIC, index) {
            Ok(p) => p.leader(),
            Err(_) => None,
        }
        .or_else(|| {
            metadata
                .topics
                .get(OFFSETS_TOPIC)
                .and_then(|t| t.partitions.get(index as usize))
                .and_then(|p| p.leader)
        });
        let Some(leader) = leader else {
            return Err(BrokerError::Unavailable(format!(
                "the coordinator of group {} ({OFFSETS_TOPIC}/{index}) has no leader yet",
                quote(group)
            )));
        };
        let address = metadata
            .node_address(leader)
            .map(str::to_string)
            .ok_or_else(|| {
                BrokerError::Unavailable(format!("node {leader}'s address is not known yet"))
            })?;
        Ok((leader, address, index))
    }

    /// The shard coordinating `group`, if this node coordinates it: otherwise
    /// `NOT_COORDINATOR` with the coordinator's address, or `UNAVAILABLE` while it loads.
    pub async fn group_shard(&self, group: &str) -> Result<Arc<Shard>, BrokerError> {
        validate_group_name(group)?;
        let n = self.offsets_topic().await?;
        let index = partition_for(group, n);
        let partition = self
            .partition(OFFSETS_TOPIC, index)
            .map_err(|e| not_coordinator(group, e))?;
        partition
            .require_leader()
            .map_err(|e| not_coordinator(group, e))?;
        self.coordinator.ensure_loaded(index, &partition).await
    }
}

/// Follows this node's leadership of the offsets partitions (loading a shard when it
/// becomes leader, dropping it when it stops), expels silent members, and refreshes the
/// group gauges. Runs for as long as the node lives.
pub async fn run(node: Weak<Node>) {
    let mut passes = Passes::every(COORDINATOR_PASS, node);
    let mut last_gauges = Instant::now();
    while let Some(node) = passes.next().await {
        let metadata = node.metadata();
        let count = metadata
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as u32);
        for index in 0..count {
            let leading = node
                .partition(OFFSETS_TOPIC, index)
                .ok()
                .filter(|p| p.is_leader());
            let Some(partition) = leading else {
                if node.coordinator.shard(index).is_some() {
                    tracing::info!(partition = index, "no longer coordinating its groups");
                    node.coordinator.set(index, None);
                }
                continue;
            };
            if let Err(e) = node.coordinator.ensure_loaded(index, &partition).await {
                tracing::warn!(partition = index, error = %e, "loading groups failed; trying again");
            }
        }
        let topics = user_topics(&metadata);
        for shard in node.coordinator.shards() {
            shard.expire(&topics, Instant::now()).await;
        }
        let publishing = Arc::clone(&node.coordinator.publishing);
        if last_gauges.elapsed() >= GAUGE_PASS
            && !publishing.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            last_gauges = Instant::now();
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                shard::publish_gauges(&node).await;
                publishing.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }
}
