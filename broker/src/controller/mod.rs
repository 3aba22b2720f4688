//! The controller: Raft group 0, holding topics, partition assignments, topic configs and
//! the producer-id counter. Its state machine is small and snapshotted as JSON.

mod topic_config;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use topic_config::{PRODUCER_ID_EXPIRATION_MS_DEFAULT, TopicConfig, TopicConfigError};

use crate::cluster::placement::Load;
use crate::raft::state_machine::GroupState;
use crate::raft::{Command, CommandResponse, GroupId, LogId, NodeId};

/// The controller's Raft group id.
pub const CONTROLLER_GROUP: GroupId = 0;

/// A metadata change, proposed through the controller group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerCommand {
    /// Creates a topic with its partitions placed on `replicas`.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Number of partitions.
        partitions: u32,
        /// Replicas per partition.
        replication_factor: u32,
        /// Explicitly set configs (validated before proposing).
        configs: BTreeMap<String, String>,
        /// Nodes to place replicas on.
        nodes: Vec<NodeId>,
    },
    /// Deletes a topic; its partitions' data is removed by each hosting broker.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Sets and removes explicit configs.
    AlterTopicConfig {
        /// Topic name.
        name: String,
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to remove (back to defaults).
        delete: Vec<String>,
    },
    /// Grows a topic to `count` partitions.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total.
        count: u32,
        /// Nodes to place new replicas on.
        nodes: Vec<NodeId>,
    },
    /// Hands out the next idempotent producer id.
    AllocateProducerId,
    /// Registers a node, or updates its addresses.
    RegisterNode {
        /// Its id.
        id: NodeId,
        /// Its advertised client address.
        address: String,
        /// Its internal (Raft) address.
        raft_address: String,
    },
    /// Names the cluster; only the first one applied counts.
    InitCluster {
        /// 32 hex digits.
        cluster_id: String,
    },
    /// Starts moving a partition to `replicas` (its leader carries it out by Raft
    /// membership changes, then completes it).
    ReassignPartition {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The replicas wanted.
        replicas: Vec<NodeId>,
    },
    /// The partition's group now has exactly `replicas` as voters.
    CompleteReassignment {
        /// The partition's group.
        group_id: GroupId,
        /// Its replicas now.
        replicas: Vec<NodeId>,
    },
    /// The node takes no new replicas, and leaves the controller's voters.
    DecommissionNode {
        /// The node.
        id: NodeId,
    },
    /// Partitions' replicas lead their groups (each applied unless a later term is known).
    ReportLeaders {
        /// The leaderships.
        leaders: Vec<LeaderReport>,
    },
    /// Creates a SCRAM user or replaces its credential.
    UpsertUser {
        /// The user's name.
        name: String,
        /// What the server keeps of its password.
        credential: UserCredential,
    },
    /// Removes a user (its sessions end).
    DeleteUser {
        /// The user's name.
        name: String,
    },
    /// Adds access control entries (present ones stay once).
    CreateAcls {
        /// The entries.
        acls: Vec<crate::authz::Acl>,
    },
    /// Removes exactly these access control entries.
    DeleteAcls {
        /// The entries.
        acls: Vec<crate::authz::Acl>,
    },
    /// Sets a principal's byte-rate quotas (replacing any it had).
    SetQuota {
        /// `User:NAME`.
        principal: String,
        /// Its rates.
        limits: crate::flow::quota::QuotaLimits,
    },
    /// Removes a principal's quotas: the broker's defaults apply again.
    DeleteQuota {
        /// `User:NAME`.
        principal: String,
    },
    /// Creates the first user, only while there is none (every founder may propose it).
    BootstrapUser {
        /// The user's name.
        name: String,
        /// What the server keeps of its password.
        credential: UserCredential,
    },
}

/// A user's SCRAM-SHA-256 credential: never the password itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCredential {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl UserCredential {
    /// The SCRAM form, if the keys have the right lengths.
    pub fn scram(&self) -> Option<sluice_protocol::scram::Credential> {
        Some(sluice_protocol::scram::Credential {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.as_slice().try_into().ok()?,
            server_key: self.server_key.as_slice().try_into().ok()?,
        })
    }
}

/// A node leads a partition's group in a term, and serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderReport {
    /// The partition's group.
    pub group_id: GroupId,
    /// The leading node.
    pub leader: NodeId,
    /// Its Raft term.
    pub term: u64,
}

/// The controller's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// Done.
    Ok,
    /// A freshly allocated producer id.
    ProducerId(u64),
    /// Refused by the state machine (a race the pre-check could not see).
    Refused {
        /// Stable reason string (sluice_protocol::Reason).
        reason: String,
        /// Human sentence.
        message: String,
    },
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// The partition's Raft group id, unique for the cluster's lifetime.
    pub group_id: GroupId,
    /// Nodes holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The leader last reported by the group, if any.
    #[serde(default)]
    pub leader: Option<NodeId>,
    /// The Raft term of that report.
    #[serde(default)]
    pub leader_term: u64,
    /// Replicas a reassignment in progress moves the partition to.
    #[serde(default)]
    pub target_replicas: Option<Vec<NodeId>>,
}

impl PartitionMeta {
    /// Whether `node` holds (or is being given) a replica.
    pub fn hosted_by(&self, node: NodeId) -> bool {
        self.replicas.contains(&node)
            || self
                .target_replicas
                .as_ref()
                .is_some_and(|t| t.contains(&node))
    }
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Its advertised client address.
    pub address: String,
    /// Its internal (Raft) address.
    pub raft_address: String,
    /// Decommissioned: no new replicas, no controller vote.
    #[serde(default)]
    pub decommissioned: bool,
}

/// A topic as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Explicitly set configs; defaults fill the rest.
    pub configs: BTreeMap<String, String>,
    /// Partitions in order.
    pub partitions: Vec<PartitionMeta>,
}

/// Everything the controller holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Next partition group id to hand out (0 is the controller).
    pub next_group_id: GroupId,
    /// Next producer id to hand out.
    pub next_producer_id: u64,
    /// Registered nodes by id.
    #[serde(default)]
    pub nodes: BTreeMap<NodeId, NodeMeta>,
    /// The cluster's id (32 hex digits), once named.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// SCRAM users by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserCredential>,
    /// Access control entries.
    #[serde(default)]
    pub acls: std::collections::BTreeSet<crate::authz::Acl>,
    /// Byte-rate quotas by principal (`User:NAME`), over the broker's defaults.
    #[serde(default)]
    pub quotas: BTreeMap<String, crate::flow::quota::QuotaLimits>,
}

impl Metadata {
    fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        rf: u32,
        configs: &BTreeMap<String, String>,
        nodes: &[NodeId],
    ) -> ControllerResponse {
        if self.topics.contains_key(name) {
            return refused("TOPIC_EXISTS", format!("topic {name} already exists"));
        }
        let topic = TopicMeta {
            name: name.to_string(),
            replication_factor: rf,
            configs: configs.clone(),
            partitions: Vec::new(),
        };
        self.topics.insert(name.to_string(), topic);
        self.grow(name, partitions, nodes)
    }

    fn grow(&mut self, name: &str, count: u32, nodes: &[NodeId]) -> ControllerResponse {
        let mut next_group = self.next_group_id.max(1);
        let Some(topic) = self.topics.get_mut(name) else {
            return refused("UNKNOWN_TOPIC", format!("topic {name} does not exist"));
        };
        if (count as usize) < topic.partitions.len() {
            return refused(
                "INVALID_CONFIG",
                format!(
                    "topic {name} has {} partitions; it cannot shrink",
                    topic.partitions.len()
                ),
            );
        }
        let rf = topic.replication_factor as usize;
        let mut added = Vec::new();
        let mut load = Load::of(
            self.topics
                .values()
                .flat_map(|t| t.partitions.iter().map(|p| p.replicas.as_slice())),
        );
        let have = self.topics.get(name).map_or(0, |t| t.partitions.len());
        for p in have..count as usize {
            added.push(PartitionMeta {
                group_id: next_group,
                replicas: load.place(nodes, rf.min(nodes.len()), p),
                leader: None,
                leader_term: 0,
                target_replicas: None,
            });
            next_group += 1;
        }
        if let Some(topic) = self.topics.get_mut(name) {
            topic.partitions.extend(added);
        }
        self.next_group_id = next_group;
        ControllerResponse::Ok
    }

    fn reassign(&mut self, topic: &str, partition: u32, replicas: &[NodeId]) -> ControllerResponse {
        let unknown = replicas.iter().find(|r| !self.nodes.contains_key(r));
        if let Some(r) = unknown {
            return refused("INVALID_CONFIG", format!("node {r} is not registered"));
        }
        let Some(meta) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
        else {
            return refused(
                "UNKNOWN_PARTITION",
                format!("{topic} has no partition {partition}"),
            );
        };
        if meta.target_replicas.is_some() {
            return refused(
                "INVALID_CONFIG",
                format!("{topic}/{partition} is being reassigned already"),
            );
        }
        if meta.replicas != replicas {
            meta.target_replicas = Some(replicas.to_vec());
        }
        ControllerResponse::Ok
    }

    fn report_leader(&mut self, group_id: GroupId, leader: NodeId, term: u64) {
        let partition = self
            .topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
            .find(|p| p.group_id == group_id);
        // A replica being added by a reassignment may lead during the joint phase.
        if let Some(p) = partition
            && term >= p.leader_term
            && p.hosted_by(leader)
        {
            p.leader = Some(leader);
            p.leader_term = term;
        }
    }

    /// The client address of node `id`, if registered.
    pub fn node_address(&self, id: NodeId) -> Option<&str> {
        self.nodes.get(&id).map(|n| n.address.as_str())
    }

    /// The partition with group id `group_id`, with its topic name and number.
    pub fn partition_of_group(&self, group_id: GroupId) -> Option<(&str, u32, &PartitionMeta)> {
        self.topics.values().find_map(|t| {
            t.partitions
                .iter()
                .position(|p| p.group_id == group_id)
                .map(|i| (t.name.as_str(), i as u32, &t.partitions[i]))
        })
    }

    fn apply(&mut self, command: &ControllerCommand) -> ControllerResponse {
        match command {
            ControllerCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                nodes,
            } => self.create_topic(name, *partitions, *replication_factor, configs, nodes),
            ControllerCommand::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => ControllerResponse::Ok,
                None => refused("UNKNOWN_TOPIC", format!("topic {name} does not exist")),
            },
            ControllerCommand::AlterTopicConfig { name, set, delete } => {
                match self.topics.get_mut(name) {
                    Some(topic) => {
                        for key in delete {
                            topic.configs.remove(key);
                        }
                        topic
                            .configs
                            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                        ControllerResponse::Ok
                    }
                    None => refused("UNKNOWN_TOPIC", format!("topic {name} does not exist")),
                }
            }
            ControllerCommand::AddPartitions { name, count, nodes } => {
                self.grow(name, *count, nodes)
            }
            ControllerCommand::AllocateProducerId => {
                let id = self.next_producer_id;
                self.next_producer_id += 1;
                ControllerResponse::ProducerId(id)
            }
            ControllerCommand::RegisterNode {
                id,
                address,
                raft_address,
            } => {
                let decommissioned = self.nodes.get(id).is_some_and(|n| n.decommissioned);
                self.nodes.insert(
                    *id,
                    NodeMeta {
                        address: address.clone(),
                        raft_address: raft_address.clone(),
                        decommissioned,
                    },
                );
                ControllerResponse::Ok
            }
            ControllerCommand::ReassignPartition {
                topic,
                partition,
                replicas,
            } => self.reassign(topic, *partition, replicas),
            ControllerCommand::CompleteReassignment { group_id, replicas } => {
                let found = self
                    .topics
                    .values_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                    .find(|p| p.group_id == *group_id);
                if let Some(p) = found
                    && p.target_replicas.as_ref() == Some(replicas)
                {
                    p.replicas = replicas.clone();
                    p.target_replicas = None;
                    if p.leader.is_some_and(|l| !replicas.contains(&l)) {
                        p.leader = None;
                    }
                }
                ControllerResponse::Ok
            }
            ControllerCommand::DecommissionNode { id } => match self.nodes.get_mut(id) {
                Some(node) => {
                    node.decommissioned = true;
                    ControllerResponse::Ok
                }
                None => refused("INVALID_CONFIG", format!("node {id} is not registered")),
            },
            ControllerCommand::InitCluster { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                }
                ControllerResponse::Ok
            }
            ControllerCommand::ReportLeaders { leaders } => {
                for r in leaders {
                    self.report_leader(r.group_id, r.leader, r.term);
                }
                ControllerResponse::Ok
            }
            ControllerCommand::UpsertUser { name, credential } => {
                self.users.insert(name.clone(), credential.clone());
                ControllerResponse::Ok
            }
            ControllerCommand::DeleteUser { name } => match self.users.remove(name) {
                Some(_) => ControllerResponse::Ok,
                None => refused("UNKNOWN_USER", format!("user {name} does not exist")),
            },
            ControllerCommand::CreateAcls { acls } => {
                self.acls.extend(acls.iter().cloned());
                ControllerResponse::Ok
            }
            ControllerCommand::DeleteAcls { acls } => {
                for acl in acls {
                    self.acls.remove(acl);
                }
                ControllerResponse::Ok
            }
            ControllerCommand::SetQuota { principal, limits } => {
                self.quotas.insert(principal.clone(), *limits);
                ControllerResponse::Ok
            }
            ControllerCommand::DeleteQuota { principal } => match self.quotas.remove(principal) {
                Some(_) => ControllerResponse::Ok,
                None => refused(
                    "UNKNOWN_QUOTA",
                    format!("{principal} has no quota of its own"),
                ),
            },
            ControllerCommand::BootstrapUser { name, credential } => {
                if !self.users.is_empty() {
                    return refused("USERS_EXIST", "the cluster has users already".into());
                }
                self.users.insert(name.clone(), credential.clone());
                ControllerResponse::Ok
            }
        }
    }
}

fn refused(reason: &str, message: String) -> ControllerResponse {
    ControllerResponse::Refused {
        reason: reason.to_string(),
        message,
    }
}

/// The controller group's state: the metadata, published to the broker on every change.
#[derive(Debug)]
pub struct ControllerState {
    metadata: Metadata,
    published: watch::Sender<Arc<Metadata>>,
}

impl ControllerState {
    /// Empty metadata, published through `published`.
    pub fn new(published: watch::Sender<Arc<Metadata>>) -> Self {
        Self {
            metadata: Metadata::default(),
            published,
        }
    }
}

impl GroupState for ControllerState {
    fn apply(&mut self, _log_id: LogId, command: &Command) -> CommandResponse {
        match command {
            Command::Controller(c) => CommandResponse::Controller(self.metadata.apply(c)),
            Command::Produce(_) => CommandResponse::None,
        }
    }

    fn applied(&mut self) {
        let changed = **self.published.borrow() != self.metadata;
        if changed {
            self.published.send_replace(Arc::new(self.metadata.clone()));
        }
    }

    /// The metadata as JSON: small (topics and assignments), and its schema evolves by
    /// serde defaults.
    fn snapshot(&self, out: &mut Vec<u8>) {
        // Serialising plain maps, strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &self.metadata);
    }

    fn restore(&mut self, _last: Option<LogId>, snapshot: &[u8]) -> Result<(), String> {
        self.metadata = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}
