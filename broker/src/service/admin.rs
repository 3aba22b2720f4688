//! `sluice.v1.Admin`: topics, partitions and the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::v1::admin_server::Admin;
use sluice_protocol::v1::{
    AddPartitionsRequest, AlterTopicConfigRequest, ClusterDescription, CreateTopicRequest,
    CreateTopicResponse, DecommissionNodeRequest, DecommissionNodeResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeClusterRequest, DescribeTopicRequest, ListTopicsRequest,
    ListTopicsResponse, NodeDescription, PartitionDescription, ReassignPartitionRequest,
    TopicDescription,
};
use tonic::{Request, Response, Status};

use crate::authz::{Caller, Operation, ResourceType, authorize, permits};
use crate::controller::{ControllerCommand, ControllerResponse, TopicConfig, TopicMeta};
use crate::error::{BrokerError, quote};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_LEN_MAX};
use crate::node::Node;

/// Serves `sluice.v1.Admin`.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn describe(&self, topic: &TopicMeta) -> TopicDescription {
        let configs = self
            .node
            .topic_config(topic)
            .map(|c| c.describe().into_iter().collect())
            .unwrap_or_default();
        let metadata = self.node.metadata();
        let partitions = topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, meta)| {
                let local = self.node.partition(&topic.name, i as u32).ok();
                // This node's own view where it hosts a replica (none while its own
                // leadership does not serve yet: it may have restarted and not re-applied
                // its log), else the controller's.
                let (leader, leader_term) = match &local {
                    Some(p) => p.leader_and_term(),
                    None => meta.leader.map(|l| (l, meta.leader_term)),
                }
                .unwrap_or_default();
                let in_sync_replicas = local
                    .as_ref()
                    .map(|p| p.in_sync_replicas())
                    .unwrap_or_default();
                let error = self
                    .node
                    .partition_offline(&topic.name, i as u32)
                    .unwrap_or_default();
                let status = if error.is_empty() {
                    "online"
                } else {
                    "offline"
                };
                let (log_start_offset, high_watermark, size_bytes) = local
                    .as_ref()
                    .and_then(|p| p.offsets().ok())
                    .unwrap_or_default();
                PartitionDescription {
                    partition: i as u32,
                    leader,
                    leader_term,
                    leader_address: metadata.node_address(leader).unwrap_or_default().into(),
                    in_sync_replicas,
                    target_replicas: meta.target_replicas.clone().unwrap_or_default(),
                    replicas: meta.replicas.clone(),
                    log_start_offset,
                    high_watermark,
                    size_bytes,
                    status: status.into(),
                    error,
                }
            })
            .collect();
        TopicDescription {
            name: topic.name.clone(),
            replication_factor: topic.replication_factor,
            configs,
            partitions,
        }
    }

    /// Checks the caller of `request` against the rule of Admin method `method`.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &str,
        resource: &str,
    ) -> Result<(), Status> {
        let path = format!("/sluice.v1.Admin/{method}");
        Ok(authorize(
            &self.node,
            &Caller::of(request),
            &path,
            resource,
        )?)
    }

    /// The topics `caller` may describe, described (Kafka's Metadata hides the others).
    fn describable(&self, caller: &Caller) -> Vec<TopicDescription> {
        self.node
            .metadata()
            .topics
            .values()
            .filter(|t| {
                permits(
                    &self.node,
                    &caller.principal,
                    caller.host,
                    Operation::Describe,
                    ResourceType::Topic,
                    &t.name,
                )
            })
            .map(|t| self.describe(t))
            .collect()
    }

    fn topic(&self, name: &str) -> Result<TopicMeta, BrokerError> {
        self.node
            .metadata()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    async fn placement_nodes(&self, replication_factor: u32) -> Result<Vec<u64>, BrokerError> {
        self.node.placement_nodes(replication_factor).await
    }

    /// Applies `command`, then records it in the audit trail (durably, before the answer)
    /// as `operation` on `resource`.
    async fn propose(
        &self,
        context: &crate::audit::Context,
        operation: &str,
        resource: &str,
        command: ControllerCommand,
    ) -> Result<(), BrokerError> {
        let result = self.apply(command).await;
        self.node
            .audit()
            .admin(context, operation, resource, result)
            .await
    }

    /// Applies `command` (part of an operation audited as a whole).
    async fn apply(&self, command: ControllerCommand) -> Result<(), BrokerError> {
        match self.node.propose(command).await? {
            ControllerResponse::Ok | ControllerResponse::ProducerId(_) => Ok(()),
            ControllerResponse::Refused { reason, message } => Err(match reason.as_str() {
                "TOPIC_EXISTS" => BrokerError::TopicExists(message),
                "UNKNOWN_TOPIC" => BrokerError::UnknownTopic(message),
                "UNKNOWN_PARTITION" => BrokerError::InvalidRequest(message),
                _ => BrokerError::InvalidConfig(message),
            }),
        }
    }
}

/// Kafka's topic name rules; names starting with `__` are reserved for the broker.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let legal = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > TOPIC_NAME_LEN_MAX || name == "." || name == ".." || !legal {
        return Err(BrokerError::InvalidRequest(format!(
            "topic name {} must be 1 to {TOPIC_NAME_LEN_MAX} of [a-zA-Z0-9._-] and not . or ..",
            quote(name)
        )));
    }
    if name.starts_with("__") {
        return Err(BrokerError::InvalidRequest(format!(
            "topic names starting with __ are reserved: {}",
            quote(name)
        )));
    }
    Ok(())
}

/// Refuses changes to the broker's internal topics (`__consumer_offsets`, `__audit`): only
/// the broker writes, grows or deletes them, whoever asks (super-users too).
fn refuse_internal(name: &str, what: &str) -> Result<(), BrokerError> {
    if name.starts_with("__") {
        return Err(BrokerError::PermissionDenied(format!(
            "{} is an internal topic: no API may have it {what}",
            quote(name)
        )));
    }
    Ok(())
}

fn validate_partition_count(count: u32) -> Result<(), BrokerError> {
    if count == 0 || count > PARTITIONS_PER_TOPIC_MAX {
        return Err(BrokerError::InvalidConfig(format!(
            "partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}, got {count}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        self.authorize(&request, "CreateTopic", &request.get_ref().name)?;
        let context = crate::audit::Context::of(&request);
        let r = request.into_inner();
        validate_topic_name(&r.name)?;
        validate_partition_count(r.partitions)?;
        let replication_factor = r.replication_factor.max(1);
        let nodes = self.placement_nodes(replication_factor).await?;
        let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
        TopicConfig::resolve(&self.node.config.default_log, &configs)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        if self.node.metadata().topics.contains_key(&r.name) {
            return Err(BrokerError::TopicExists(r.name).into());
        }
        let command = ControllerCommand::CreateTopic {
            name: r.name.clone(),
            partitions: r.partitions,
            replication_factor,
            configs,
            nodes,
        };
        self.propose(
            &context,
            "topic.create",
            &format!("topic:{}", r.name),
            command,
        )
        .await?;
        self.node.reconcile().await;
        self.node.wait_topic_ready(&r.name).await?;
        Ok(Response::new(CreateTopicResponse {
            topic: Some(self.describe(&self.topic(&r.name)?)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        self.authorize(&request, "DeleteTopic", &request.get_ref().name)?;
        let context = crate::audit::Context::of(&request);
        let name = request.into_inner().name;
        let refused = refuse_internal(&name, "deleted").and_then(|()| self.topic(&name).map(drop));
        let resource = format!("topic:{name}");
        if let Err(e) = refused {
            let audit = self.node.audit();
            return Err(audit
                .refused(&context, "topic.delete", &resource, e)
                .await
                .into());
        }
        self.propose(
            &context,
            "topic.delete",
            &resource,
            ControllerCommand::DeleteTopic { name: name.clone() },
        )
        .await?;
        self.node.reconcile().await;
        // The reconciler closed the partitions and removed their data.
        let gone = self.node.partitions().iter().all(|p| p.topic != name);
        if !gone {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        // Only the topics the caller may describe (rule: filtered).
        let topics = self.describable(&Caller::of(&request));
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        self.authorize(&request, "DescribeTopic", &request.get_ref().name)?;
        let topic = self.topic(&request.into_inner().name)?;
        Ok(Response::new(self.describe(&topic)))
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        self.authorize(&request, "AlterTopicConfig", &request.get_ref().name)?;
        let context = crate::audit::Context::of(&request);
        let r = request.into_inner();
        if let Err(e) = refuse_internal(&r.name, "reconfigured") {
            let (audit, resource) = (self.node.audit(), format!("topic:{}", r.name));
            return Err(audit
                .refused(&context, "topic.alter_config", &resource, e)
                .await
                .into());
        }
        let topic = self.topic(&r.name)?;
        let mut merged = topic.configs.clone();
        for key in &r.delete {
            merged.remove(key);
        }
        let set: BTreeMap<String, String> = r.set.into_iter().collect();
        merged.extend(set.clone());
        TopicConfig::resolve(&self.node.config.default_log, &merged)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let what = format!("topic:{} set {set:?} delete {:?}", r.name, r.delete);
        self.propose(
            &context,
            "topic.alter_config",
            &what,
            ControllerCommand::AlterTopicConfig {
                name: r.name.clone(),
                set,
                delete: r.delete,
            },
        )
        .await?;
        self.node.reconcile().await;
        Ok(Response::new(self.describe(&self.topic(&r.name)?)))
    }

    async fn add_partitions(
        &self,
        request: Request<AddPartitionsRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        self.authorize(&request, "AddPartitions", &request.get_ref().name)?;
        let context = crate::audit::Context::of(&request);
        let r = request.into_inner();
        if let Err(e) = refuse_internal(&r.name, "grown") {
            let (audit, resource) = (self.node.audit(), format!("topic:{}", r.name));
            let e = audit
                .refused(&context, "topic.add_partitions", &resource, e)
                .await;
            return Err(e.into());
        }
        let topic = self.topic(&r.name)?;
        validate_partition_count(r.count)?;
        if (r.count as usize) <= topic.partitions.len() {
            return Err(BrokerError::InvalidConfig(format!(
                "topic {} already has {} partitions; the new count must be larger",
                quote(&r.name),
                topic.partitions.len()
            ))
            .into());
        }
        let nodes = self.placement_nodes(topic.replication_factor).await?;
        self.propose(
            &context,
            "topic.add_partitions",
            &format!("topic:{} to {}", r.name, r.count),
            ControllerCommand::AddPartitions {
                name: r.name.clone(),
                count: r.count,
                nodes,
            },
        )
        .await?;
        self.node.reconcile().await;
        self.node.wait_topic_ready(&r.name).await?;
        Ok(Response::new(self.describe(&self.topic(&r.name)?)))
    }

    async fn reassign_partition(
        &self,
        request: Request<ReassignPartitionRequest>,
    ) -> Result<Response<TopicDescription>, Status> {
        self.authorize(&request, "ReassignPartition", "")?;
        let context = crate::audit::Context::of(&request);
        let r = request.into_inner();
        let topic = self.topic(&r.topic)?;
        if r.partition as usize >= topic.partitions.len() {
            return Err(BrokerError::UnknownPartition {
                topic: r.topic,
                partition: r.partition,
            }
            .into());
        }
        let distinct: BTreeSet<u64> = r.replicas.iter().copied().collect();
        if r.replicas.is_empty() || distinct.len() != r.replicas.len() {
            return Err(BrokerError::InvalidRequest(
                "replicas must be one or more distinct node ids".into(),
            )
            .into());
        }
        let usable = self.placement_nodes(1).await?;
        if let Some(id) = r.replicas.iter().find(|id| !usable.contains(id)) {
            return Err(BrokerError::InvalidConfig(format!(
                "node {id} is not a live, registered node that takes replicas"
            ))
            .into());
        }
        self.propose(
            &context,
            "partition.reassign",
            &format!("topic:{}/{} to {:?}", r.topic, r.partition, r.replicas),
            ControllerCommand::ReassignPartition {
                topic: r.topic.clone(),
                partition: r.partition,
                replicas: r.replicas,
            },
        )
        .await?;
        self.node.reconcile().await;
        Ok(Response::new(self.describe(&self.topic(&r.topic)?)))
    }

    async fn decommission_node(
        &self,
        request: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        self.authorize(&request, "DecommissionNode", "")?;
        let context = crate::audit::Context::of(&request);
        let id = request.into_inner().node_id;
        let metadata = self.node.metadata();
        if !metadata.nodes.contains_key(&id) {
            return Err(BrokerError::InvalidConfig(format!("node {id} is not registered")).into());
        }
        let mut usable: Vec<u64> = self.placement_nodes(1).await?;
        usable.retain(|n| *n != id);
        // Plan every move before changing anything: a node that cannot be emptied stays.
        let mut load: BTreeMap<u64, usize> = usable.iter().map(|n| (*n, 0)).collect();
        for p in metadata.topics.values().flat_map(|t| &t.partitions) {
            for r in &p.replicas {
                if let Some(count) = load.get_mut(r) {
                    *count += 1;
                }
            }
        }
        let mut moves = Vec::new();
        for topic in metadata.topics.values() {
            for (i, p) in topic.partitions.iter().enumerate() {
                if !p.hosted_by(id) {
                    continue;
                }
                if p.target_replicas.is_some() {
                    return Err(BrokerError::InvalidConfig(format!(
                        "{}/{i} is being reassigned; decommission node {id} once that is done",
                        topic.name
                    ))
                    .into());
                }
                let replacement = load
                    .iter()
                    .filter(|(n, _)| !p.replicas.contains(n))
                    .min_by_key(|(n, count)| (**count, **n))
                    .map(|(n, _)| *n)
                    .ok_or_else(|| {
                        BrokerError::InvalidConfig(format!(
                            "no live node can take the replica of {}/{i} from node {id}",
                            topic.name
                        ))
                    })?;
                *load.entry(replacement).or_default() += 1;
                let replicas: Vec<u64> = p
                    .replicas
                    .iter()
                    .map(|r| if *r == id { replacement } else { *r })
                    .collect();
                moves.push((topic.name.clone(), i as u32, replicas));
            }
        }
        self.propose(
            &context,
            "node.decommission",
            &format!("node:{id}"),
            ControllerCommand::DecommissionNode { id },
        )
        .await?;
        let mut moved = Vec::new();
        for (topic, partition, replicas) in moves {
            self.apply(ControllerCommand::ReassignPartition {
                topic: topic.clone(),
                partition,
                replicas,
            })
            .await?;
            moved.push(format!("{topic}/{partition}"));
        }
        self.node.reconcile().await;
        Ok(Response::new(DecommissionNodeResponse { moved }))
    }

    async fn describe_cluster(
        &self,
        request: Request<DescribeClusterRequest>,
    ) -> Result<Response<ClusterDescription>, Status> {
        if self.node.controller_failed() {
            // Its metadata stops where its controller log failed: leaders named there send
            // clients back to partitions this node may not serve. UNAVAILABLE makes the SDK
            // ask another node.
            return Err(BrokerError::Unavailable(
                "this node's controller replica has failed (storage error); ask another node"
                    .into(),
            )
            .into());
        }
        let alive = self.node.alive_nodes().await;
        let voters = self.node.controller_voters();
        let nodes = self
            .node
            .metadata()
            .nodes
            .iter()
            .map(|(id, n)| NodeDescription {
                node_id: *id,
                address: n.address.clone(),
                raft_address: n.raft_address.clone(),
                alive: alive.contains(id),
                controller_voter: voters.contains(id),
                decommissioned: n.decommissioned,
            })
            .collect();
        let topics = self.describable(&Caller::of(&request));
        Ok(Response::new(ClusterDescription {
            nodes,
            controller: self.node.controller_leader().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            topics,
            cluster_id: self
                .node
                .cluster_id()
                .map(|c| c.to_string())
                .unwrap_or_default(),
        }))
    }
}
