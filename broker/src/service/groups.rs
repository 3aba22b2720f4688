//! `sluice.v1.ConsumerGroups`: finding coordinators, membership, committed offsets, and
//! group administration.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use sluice_protocol::v1::consumer_groups_server::ConsumerGroups;
use sluice_protocol::v1::reset_offsets_request::To;
use sluice_protocol::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, CommittedOffset, DeleteGroupRequest,
    DeleteGroupResponse, DescribeGroupRequest, FetchOffsetsRequest, FetchOffsetsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupDescription, GroupListing,
    GroupPartition, HeartbeatRequest, HeartbeatResponse, ListGroupsRequest, ListGroupsResponse,
    MemberDescription, ResetOffsetsRequest, ResetOffsetsResponse, TopicPartition,
};
use tonic::{Request, Response, Status};

use crate::authz::{Caller, Operation, ResourceType, authorize, authorize_topics, permits};
use crate::error::{BrokerError, quote};
use crate::groups::group::{Group, HEARTBEAT_INTERVAL, Heartbeat, HeartbeatAnswer, Subscription};
use crate::groups::offset_record::{METADATA_BYTES_MAX, OffsetValue};
use crate::groups::partition_offsets::{self, Spec};
use crate::groups::shard::Shard;
use crate::groups::shard::{Write, now_ms};
use crate::groups::{user_topics, validate_group_name};
use crate::limits::{
    GROUP_NAME_LEN_MAX, GROUP_PATTERN_COMPILED_MAX, GROUP_PATTERN_LEN_MAX, GROUP_REQUEST_ITEMS_MAX,
    GROUP_SESSION_TIMEOUT_DEFAULT_MS, GROUP_SESSION_TIMEOUT_MAX_MS, GROUP_SESSION_TIMEOUT_MIN_MS,
    MEMBER_ID_LEN_MAX,
};
use crate::node::Node;

/// Serves `sluice.v1.ConsumerGroups`.
pub struct GroupsService {
    node: Arc<Node>,
}

impl GroupsService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn too_many(what: &str, n: usize) -> Result<(), BrokerError> {
    if n > GROUP_REQUEST_ITEMS_MAX {
        return Err(BrokerError::InvalidRequest(format!(
            "{n} {what} in one request; at most {GROUP_REQUEST_ITEMS_MAX}"
        )));
    }
    Ok(())
}

fn subscription(r: &HeartbeatRequest) -> Result<Subscription, BrokerError> {
    too_many("topics", r.topics.len())?;
    let pattern = if r.topic_pattern.is_empty() {
        None
    } else {
        if r.topic_pattern.len() > GROUP_PATTERN_LEN_MAX {
            return Err(BrokerError::InvalidRequest(format!(
                "topic pattern longer than {GROUP_PATTERN_LEN_MAX} bytes"
            )));
        }
        // Anchored: a pattern names whole topics, as in Kafka.
        let anchored = format!("^(?:{})$", r.topic_pattern);
        Some(
            regex::RegexBuilder::new(&anchored)
                .size_limit(GROUP_PATTERN_COMPILED_MAX)
                .build()
                .map_err(|e| {
                    BrokerError::InvalidRequest(format!(
                        "topic pattern {}: {e}",
                        quote(&r.topic_pattern)
                    ))
                })?,
        )
    };
    if r.topics.is_empty() && pattern.is_none() {
        return Err(BrokerError::InvalidRequest(
            "a member subscribes to topics or a topic pattern".into(),
        ));
    }
    Ok(Subscription {
        topics: r.topics.iter().cloned().collect(),
        pattern,
    })
}

/// Waits until `group` changes past `seen` (a change elsewhere in the shard wakes it only
/// to look) or `deadline` passes.
async fn park(
    shard: &Shard,
    group: &str,
    seen: u64,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) {
    while tokio::time::timeout_at(deadline, changes.changed())
        .await
        .is_ok_and(|r| r.is_ok())
    {
        let now = shard.groups.lock().await.get(group).map(|g| g.changes);
        if now != Some(seen) {
            return;
        }
    }
}

/// What DescribeGroup says of each member.
fn describe_members(group: &Group) -> Vec<MemberDescription> {
    group
        .members
        .iter()
        .map(|(id, m)| MemberDescription {
            member_id: id.clone(),
            instance_id: m.instance_id.clone().unwrap_or_default(),
            member_epoch: m.epoch,
            topics: m.subscription.topics.iter().cloned().collect(),
            topic_pattern: m
                .subscription
                .pattern
                .as_ref()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            assignment: m.assigned.keys().map(tp).collect(),
            revoking: m.revoking.iter().map(tp).collect(),
            target: group
                .target
                .get(id)
                .map(|t| t.iter().map(tp).collect())
                .unwrap_or_default(),
        })
        .collect()
}

fn tp(t: &(String, u32)) -> TopicPartition {
    TopicPartition {
        topic: t.0.clone(),
        partition: t.1,
    }
}

fn committed(group: &Group, topic: &str, partition: u32) -> Option<CommittedOffset> {
    group
        .offsets
        .get(&(topic.to_string(), partition))
        .map(|c| CommittedOffset {
            topic: topic.to_string(),
            partition,
            offset: c.value.offset,
            leader_epoch: c.value.leader_epoch,
            metadata: c.value.metadata.clone(),
            commit_time_ms: c.value.commit_time_ms,
        })
}

/// The partitions of `topic` named (all of them when none is), checked against metadata.
fn topic_partitions(node: &Node, topic: &str, partitions: &[u32]) -> Result<Vec<u32>, BrokerError> {
    let count = node
        .metadata()
        .topics
        .get(topic)
        .filter(|_| !topic.starts_with("__"))
        .map(|t| t.partitions.len() as u32)
        .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
    if partitions.is_empty() {
        return Ok((0..count).collect());
    }
    if let Some(p) = partitions.iter().find(|p| **p >= count) {
        return Err(BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition: *p,
        });
    }
    Ok(partitions.to_vec())
}

impl GroupsService {
    async fn heartbeat_inner(&self, r: HeartbeatRequest) -> Result<HeartbeatResponse, BrokerError> {
        let shard = self.node.group_shard(&r.group).await?;
        // A leave needs no subscription.
        let subscription = if r.member_epoch < 0 {
            Subscription::default()
        } else {
            subscription(&r)?
        };
        too_many("owned partitions", r.owned.len())?;
        if r.member_id.len() > MEMBER_ID_LEN_MAX || r.instance_id.len() > GROUP_NAME_LEN_MAX {
            return Err(BrokerError::InvalidRequest(format!(
                "member ids are at most {MEMBER_ID_LEN_MAX} bytes, instance ids {GROUP_NAME_LEN_MAX}"
            )));
        }
        let timeout_ms = match r.session_timeout_ms {
            0 => GROUP_SESSION_TIMEOUT_DEFAULT_MS,
            ms => ms.clamp(GROUP_SESSION_TIMEOUT_MIN_MS, GROUP_SESSION_TIMEOUT_MAX_MS),
        };
        let heartbeat = Heartbeat {
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            instance_id: Some(r.instance_id).filter(|i| !i.is_empty()),
            subscription,
            owned: r
                .owned
                .into_iter()
                .map(|t| (t.topic, t.partition))
                .collect(),
            session_timeout: Duration::from_millis(u64::from(timeout_ms)),
            assign: true,
        };
        let owned: BTreeSet<(String, u32)> = heartbeat.owned.clone();
        // Only a member that stays may be parked (a join or leave is answered at once).
        let may_wait = r.wait && r.member_epoch > 0;
        // Parked for at most a third of the session, so a parked member is never expelled.
        let longest = HEARTBEAT_INTERVAL.min(Duration::from_millis(u64::from(timeout_ms / 3)));
        let mut deadline = tokio::time::Instant::now() + longest;
        let mut shard = shard;
        loop {
            let mut changes = shard.watch_changes();
            changes.borrow_and_update();
            let mut heartbeat = heartbeat.clone();
            heartbeat.assign = shard.assigns();
            if let Some(until) = shard.hold_until.filter(|_| !heartbeat.assign) {
                deadline = deadline.min(until);
            }
            let (answer, seen) = self.heartbeat_once(&shard, &r.group, heartbeat).await?;
            let nothing_to_do = answer.assignment.iter().cloned().collect::<BTreeSet<_>>() == owned;
            let now = tokio::time::Instant::now();
            if !may_wait || !nothing_to_do || now >= deadline {
                return Ok(HeartbeatResponse {
                    member_id: answer.member_id,
                    member_epoch: answer.member_epoch,
                    // A waiting member comes back at once (a join too: it is parked then).
                    heartbeat_interval_ms: if r.wait && r.member_epoch >= 0 {
                        0
                    } else {
                        answer.interval.as_millis() as u32
                    },
                    assignment: answer.assignment.iter().map(tp).collect(),
                });
            }
            park(&shard, &r.group, seen, &mut changes, deadline).await;
            // Still the coordinator? A deposed one must not keep answering from old state.
            shard = self.node.group_shard(&r.group).await?;
        }
    }

    /// Applies one heartbeat to its group; answers with the group's change count after it.
    async fn heartbeat_once(
        &self,
        shard: &Shard,
        group_name: &str,
        heartbeat: Heartbeat,
    ) -> Result<(HeartbeatAnswer, u64), BrokerError> {
        let topics = user_topics(&self.node.metadata());
        let mut groups = shard.groups.lock().await;
        let group = groups.entry(group_name.to_string()).or_default();
        let (rebalances, changes) = (group.rebalances, group.changes);
        let answer = group.heartbeat(group_name, heartbeat, &topics, Instant::now());
        if group.rebalances != rebalances {
            crate::metrics::group_rebalanced(group_name);
        }
        let changed = group.changes != changes;
        let seen = group.changes;
        crate::metrics::group_members(group_name, group.members.len());
        if group.is_empty() {
            groups.remove(group_name);
        }
        drop(groups);
        if changed {
            shard.changed();
        }
        Ok((answer?, seen))
    }

    async fn commit_inner(&self, r: CommitOffsetsRequest) -> Result<(), BrokerError> {
        let shard = self.node.group_shard(&r.group).await?;
        too_many("offsets", r.offsets.len())?;
        let metadata = self.node.metadata();
        let mut writes: Vec<Write> = Vec::with_capacity(r.offsets.len());
        let now = now_ms();
        for c in r.offsets {
            if c.metadata.len() > METADATA_BYTES_MAX {
                return Err(BrokerError::InvalidRequest(format!(
                    "commit metadata longer than {METADATA_BYTES_MAX} bytes"
                )));
            }
            let count = metadata
                .topics
                .get(&c.topic)
                .filter(|_| !c.topic.starts_with("__"))
                .map(|t| t.partitions.len() as u32)
                .ok_or_else(|| BrokerError::UnknownTopic(c.topic.clone()))?;
            if c.partition >= count {
                return Err(BrokerError::UnknownPartition {
                    topic: c.topic,
                    partition: c.partition,
                });
            }
            let value = OffsetValue {
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                commit_time_ms: now,
                metadata: c.metadata,
            };
            writes.push((r.group.clone(), c.topic, c.partition, Some(value)));
        }
        let tps: Vec<(String, u32)> = writes.iter().map(|w| (w.1.clone(), w.2)).collect();
        let (group, member_id, member_epoch) = (r.group.clone(), r.member_id, r.member_epoch);
        shard
            .write(&r.group, |g| {
                match g {
                    Some(g) => g.check_commit(&group, &member_id, member_epoch, tps.iter())?,
                    None if member_id.is_empty() => {}
                    None => {
                        return Err(BrokerError::UnknownMember {
                            group: group.clone(),
                            member: member_id.clone(),
                        });
                    }
                }
                Ok(writes)
            })
            .await
            .map(|_| ())
    }

    async fn describe_inner(&self, group_name: &str) -> Result<GroupDescription, BrokerError> {
        let shard = self.node.group_shard(group_name).await?;
        let group = shard
            .groups
            .lock()
            .await
            .get(group_name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownGroup(group_name.to_string()))?;
        let members = describe_members(&group);
        let owned: BTreeSet<(String, u32)> = group
            .members
            .values()
            .flat_map(|m| m.assigned.keys().chain(m.revoking.iter()).cloned())
            .collect();
        let all: BTreeSet<(String, u32)> = group.offsets.keys().cloned().chain(owned).collect();
        let mut partitions = Vec::with_capacity(all.len());
        for (topic, partition) in all {
            let commit = group.offsets.get(&(topic.clone(), partition));
            let committed_offset = commit.map_or(0, |c| c.value.offset);
            let (high_watermark, lag, error) = match self
                .lag(&topic, partition, commit.is_some(), committed_offset)
                .await
            {
                Ok((high_watermark, lag)) => (high_watermark, lag, String::new()),
                Err(e) => (0, 0, e.to_string()),
            };
            partitions.push(GroupPartition {
                member_id: group
                    .owner_of(&(topic.clone(), partition))
                    .unwrap_or_default()
                    .to_string(),
                topic,
                partition,
                has_committed: commit.is_some(),
                committed_offset,
                high_watermark,
                lag,
                error,
            });
        }
        Ok(GroupDescription {
            group: group_name.to_string(),
            state: group.state().to_string(),
            coordinator: self.node.node_id(),
            group_epoch: group.epoch,
            members,
            partitions,
        })
    }

    /// A partition's high watermark and the group's lag on it (the whole log when nothing
    /// is committed).
    async fn lag(
        &self,
        topic: &str,
        partition: u32,
        has_committed: bool,
        committed: u64,
    ) -> Result<(u64, u64), BrokerError> {
        let high_watermark =
            partition_offsets::offset(&self.node, topic, partition, Spec::Latest).await?;
        let from = if has_committed {
            committed
        } else {
            partition_offsets::offset(&self.node, topic, partition, Spec::Earliest).await?
        };
        Ok((high_watermark, high_watermark.saturating_sub(from)))
    }

    async fn reset_inner(
        &self,
        r: ResetOffsetsRequest,
    ) -> Result<ResetOffsetsResponse, BrokerError> {
        let shard = self.node.group_shard(&r.group).await?;
        too_many("partitions", r.partitions.len())?;
        let mut named = r.partitions.clone();
        named.sort_unstable();
        named.dedup();
        let partitions = topic_partitions(&self.node, &r.topic, &named)?;
        let to = r.to.ok_or_else(|| {
            BrokerError::InvalidRequest("reset to earliest, latest, an offset or a time".into())
        })?;
        if shard
            .groups
            .lock()
            .await
            .get(&r.group)
            .is_some_and(|g| !g.members.is_empty())
        {
            return Err(BrokerError::GroupNotEmpty(r.group));
        }
        let now = now_ms();
        let mut writes: Vec<Write> = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let earliest =
                partition_offsets::offset(&self.node, &r.topic, partition, Spec::Earliest).await?;
            let latest =
                partition_offsets::offset(&self.node, &r.topic, partition, Spec::Latest).await?;
            let offset = match to {
                To::Earliest(_) => earliest,
                To::Latest(_) => latest,
                // Kafka's rule: an offset outside the log moves to its nearest end.
                To::Offset(o) => o.clamp(earliest, latest.max(earliest)),
                To::TimestampMs(ts) => {
                    partition_offsets::offset(&self.node, &r.topic, partition, Spec::Timestamp(ts))
                        .await?
                }
            };
            let value = OffsetValue {
                offset,
                leader_epoch: 0,
                commit_time_ms: now,
                metadata: String::new(),
            };
            writes.push((r.group.clone(), r.topic.clone(), partition, Some(value)));
        }
        let answer: Vec<CommittedOffset> = writes
            .iter()
            .filter_map(|(_, topic, partition, value)| {
                value.as_ref().map(|v| CommittedOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata.clone(),
                    commit_time_ms: v.commit_time_ms,
                })
            })
            .collect();
        let group = r.group.clone();
        shard
            .write(&r.group, |g| match g {
                Some(g) if !g.members.is_empty() => Err(BrokerError::GroupNotEmpty(group.clone())),
                _ => Ok(writes),
            })
            .await?;
        Ok(ResetOffsetsResponse { offsets: answer })
    }

    async fn delete_inner(&self, group_name: String) -> Result<(), BrokerError> {
        let shard = self.node.group_shard(&group_name).await?;
        shard
            .write(&group_name, |g| {
                let g = g.ok_or_else(|| BrokerError::UnknownGroup(group_name.clone()))?;
                if !g.members.is_empty() {
                    return Err(BrokerError::GroupNotEmpty(group_name.clone()));
                }
                Ok(g.offsets
                    .keys()
                    .map(|(t, p)| (group_name.clone(), t.clone(), *p, None))
                    .collect())
            })
            .await
            .map(|_| ())
    }
}

impl GroupsService {
    /// Checks the caller of `request` against the rule of ConsumerGroups method `method`.
    fn authorize<T>(&self, request: &Request<T>, method: &str, group: &str) -> Result<(), Status> {
        let path = format!("/sluice.v1.ConsumerGroups/{method}");
        Ok(authorize(&self.node, &Caller::of(request), &path, group)?)
    }
}

#[tonic::async_trait]
impl ConsumerGroups for GroupsService {
    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        self.authorize(&request, "FindCoordinator", &request.get_ref().group)?;
        let group = request.into_inner().group;
        let (node_id, address, offsets_partition) = self.node.find_coordinator(&group).await?;
        Ok(Response::new(FindCoordinatorResponse {
            node_id,
            address,
            offsets_partition,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.authorize(&request, "Heartbeat", &request.get_ref().group)?;
        Ok(Response::new(
            self.heartbeat_inner(request.into_inner()).await?,
        ))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        self.authorize(&request, "CommitOffsets", &request.get_ref().group)?;
        // Committing a topic's offsets needs Read on the topic too (as Kafka's OffsetCommit).
        let topics = request.get_ref().offsets.iter().map(|c| c.topic.as_str());
        authorize_topics(
            &self.node,
            &Caller::of(&request),
            "/sluice.v1.ConsumerGroups/CommitOffsets",
            Operation::Read,
            topics,
        )?;
        self.commit_inner(request.into_inner()).await?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        self.authorize(&request, "FetchOffsets", &request.get_ref().group)?;
        let caller = Caller::of(&request);
        let r = request.into_inner();
        too_many("partitions", r.partitions.len())?;
        let shard = self.node.group_shard(&r.group).await?;
        let groups = shard.groups.lock().await;
        let offsets = match groups.get(&r.group) {
            None => Vec::new(),
            Some(g) if r.partitions.is_empty() => g
                .offsets
                .keys()
                .filter_map(|(t, p)| committed(g, t, *p))
                .collect(),
            Some(g) => r
                .partitions
                .iter()
                .filter_map(|t| committed(g, &t.topic, t.partition))
                .collect(),
        };
        // Only the topics the caller may describe (Kafka's OffsetFetch hides the others).
        let offsets = offsets
            .into_iter()
            .filter(|c| {
                !self.node.config().require_auth
                    || permits(
                        &self.node,
                        &caller.principal,
                        caller.host,
                        Operation::Describe,
                        ResourceType::Topic,
                        &c.topic,
                    )
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        // Only the groups the caller may describe (rule: filtered).
        let caller = Caller::of(&request);
        let visible = |name: &str| {
            permits(
                &self.node,
                &caller.principal,
                caller.host,
                Operation::Describe,
                ResourceType::Group,
                name,
            )
        };
        let mut groups = Vec::new();
        for shard in self.node.coordinator.shards() {
            for (name, g) in shard.groups.lock().await.iter().filter(|(n, _)| visible(n)) {
                groups.push(GroupListing {
                    group: name.clone(),
                    state: g.state().to_string(),
                    members: g.members.len() as u32,
                    coordinator: self.node.node_id(),
                });
            }
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupDescription>, Status> {
        self.authorize(&request, "DescribeGroup", &request.get_ref().group)?;
        let group = request.into_inner().group;
        validate_group_name(&group)?;
        Ok(Response::new(self.describe_inner(&group).await?))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        self.authorize(&request, "ResetOffsets", &request.get_ref().group)?;
        authorize_topics(
            &self.node,
            &Caller::of(&request),
            "/sluice.v1.ConsumerGroups/ResetOffsets",
            Operation::Read,
            [request.get_ref().topic.as_str()],
        )?;
        let context = crate::audit::Context::of(&request);
        let r = request.into_inner();
        let resource = format!("group:{} topic:{} {:?}", r.group, r.topic, r.to);
        let result = self.reset_inner(r).await;
        let audit = self.node.audit();
        let answer = audit
            .admin(&context, "group.reset_offsets", &resource, result)
            .await?;
        Ok(Response::new(answer))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        self.authorize(&request, "DeleteGroup", &request.get_ref().group)?;
        let context = crate::audit::Context::of(&request);
        let group = request.into_inner().group;
        let result = self.delete_inner(group.clone()).await;
        let resource = format!("group:{group}");
        let audit = self.node.audit();
        audit
            .admin(&context, "group.delete", &resource, result)
            .await?;
        Ok(Response::new(DeleteGroupResponse {}))
    }
}
