//! Moving a partition's replicas by Raft membership change, carried out by the partition's
//! leader once the controller records the target: each new replica is added as a learner
//! and caught up, then one joint-consensus change makes the target the voters (old
//! replicas leave last), and the controller is told it is done. Nodes no longer listed
//! then close their replica and delete its data (the reconciler).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::BasicNode;

use crate::controller::ControllerCommand;
use crate::node::Node;
use crate::partition::Partition;
use crate::raft::{GroupId, NodeId};

/// How often a node looks for reassignments of partitions it leads.
const PASS: Duration = Duration::from_millis(500);

/// How long a new replica gets to catch up before the step is tried again.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// Runs until the node stops: drives every reassignment of a partition this node leads.
pub async fn run(node: Weak<Node>) {
    let in_flight: Arc<Mutex<BTreeSet<GroupId>>> = Arc::default();
    let mut passes = crate::node::Passes::every(PASS, node);
    while let Some(node) = passes.next().await {
        let metadata = node.metadata();
        // Only partitions being moved, looked up by group once per pass.
        let moving: BTreeMap<GroupId, Vec<NodeId>> = metadata
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.target_replicas.clone().map(|t| (p.group_id, t)))
            .collect();
        if moving.is_empty() {
            continue;
        }
        for partition in node.partitions() {
            let Some(target) = moving.get(&partition.group.id).cloned() else {
                continue;
            };
            if !partition.is_leader() {
                continue;
            }
            let group_id = partition.group.id;
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(group_id)
            {
                continue;
            }
            let addresses: BTreeMap<NodeId, String> = target
                .iter()
                .filter_map(|id| {
                    metadata
                        .nodes
                        .get(id)
                        .map(|n| (*id, n.raft_address.clone()))
                })
                .collect();
            let (node, in_flight) = (Arc::clone(&node), Arc::clone(&in_flight));
            tokio::spawn(async move {
                if let Err(why) = drive(&node, &partition, &target, &addresses).await {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, %why, "reassignment step failed; retrying");
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&group_id);
            });
        }
    }
}

/// One attempt at moving `partition` to `target`.
async fn drive(
    node: &Node,
    partition: &Partition,
    target: &[NodeId],
    addresses: &BTreeMap<NodeId, String>,
) -> Result<(), String> {
    let raft = &partition.group.raft;
    let membership = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    let present: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    for id in target.iter().filter(|id| !present.contains(id)) {
        let address = addresses
            .get(id)
            .ok_or_else(|| format!("node {id} has no raft address"))?;
        let learner = BasicNode {
            addr: address.clone(),
        };
        // Blocking: returns once the learner has caught up with the leader's log.
        tokio::time::timeout(CATCH_UP_WAIT, raft.add_learner(*id, learner, true))
            .await
            .map_err(|_| format!("node {id} did not catch up within {CATCH_UP_WAIT:?}"))?
            .map_err(|e| format!("adding node {id} as a learner: {e}"))?;
        tracing::info!(topic = %partition.topic, partition = partition.index, node = id, "new replica caught up");
    }
    // Every new replica must be caught up now, not only when it was added: an earlier
    // attempt may have added it and then timed out waiting.
    let metrics = raft.metrics().borrow().clone();
    let last = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.clone().unwrap_or_default();
    let behind: Vec<NodeId> = target
        .iter()
        .filter(|id| **id != metrics.id)
        .filter(|id| {
            replication
                .get(id)
                .and_then(|m| m.as_ref())
                .is_none_or(|m| m.index + crate::limits::IN_SYNC_LAG_ENTRIES < last)
        })
        .copied()
        .collect();
    if !behind.is_empty() {
        return Err(format!("replicas {behind:?} are not caught up yet"));
    }
    let voters: BTreeSet<NodeId> = target.iter().copied().collect();
    let effective = metrics.membership_config.clone();
    let joint = effective.membership().get_joint_config().len() > 1;
    let current: BTreeSet<NodeId> = effective.membership().voter_ids().collect();
    if joint || voters != current {
        // From a joint configuration (a leader that died between the two steps) too: the
        // change ends it.
        raft.change_membership(voters, false)
            .await
            .map_err(|e| format!("changing the voters to {target:?}: {e}"))?;
    } else if effective.log_id().as_ref().map(|l| l.index) > metrics.last_applied.map(|l| l.index) {
        // The target configuration is in the log but not committed yet (a new leader
        // found it there): completing now could delete the only copies a quorum needs.
        return Err("the new configuration is not committed yet".into());
    }
    node.propose(ControllerCommand::CompleteReassignment {
        group_id: partition.group.id,
        replicas: target.to_vec(),
    })
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!(topic = %partition.topic, partition = partition.index, replicas = ?target, "reassignment complete");
    Ok(())
}
