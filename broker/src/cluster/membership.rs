//! The controller group's membership: which founders vote from the start, how a node that
//! does not vote gets registered, and the controller leader's job of adding registered
//! nodes as learners and promoting them to voters (up to 3, or 5 from five nodes on).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};

use super::forward::forward;
use crate::config::{Bootstrap, BrokerConfig};
use crate::controller::{ControllerCommand, ControllerResponse};
use crate::node::Node;
use crate::raft::NodeId;
use crate::raft::network::PeerChannels;

/// How often the controller leader looks for nodes to add or promote.
const MEMBERSHIP_PASS: Duration = Duration::from_secs(1);

/// Entries a learner may lag behind the leader's log and still be promoted.
const PROMOTE_LAG_ENTRIES: u64 = 64;

/// Controller voters wanted for `nodes` registered nodes: 5 from five on, else 3 from three
/// on, else every node.
pub fn voter_target(nodes: usize) -> usize {
    match nodes {
        0 => 1,
        1 | 2 => nodes,
        3 | 4 => 3,
        _ => 5,
    }
}

/// The founding voters of the controller: the lowest ids of the initial cluster.
pub fn founding_voters(initial: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, String> {
    initial
        .iter()
        .take(voter_target(initial.len()))
        .map(|(id, a)| (*id, a.clone()))
        .collect()
}

/// The number of founding controller voters when the cluster forms from an initial list
/// (0 for a node that joins, or a single node).
pub fn founders(config: &BrokerConfig) -> usize {
    match config.cluster.as_ref().map(|c| &c.bootstrap) {
        Some(Bootstrap::Initial(initial)) => founding_voters(initial).len(),
        _ => 0,
    }
}

/// The controller's membership for a first start on this node (empty: wait to be added),
/// and whether this node stands for election at once.
pub fn controller_bootstrap(
    config: &BrokerConfig,
    address: &str,
) -> (BTreeMap<NodeId, String>, bool) {
    match config.cluster.as_ref().map(|c| &c.bootstrap) {
        None => (
            BTreeMap::from([(config.node_id, address.to_string())]),
            true,
        ),
        Some(Bootstrap::Initial(initial)) => {
            let voters = founding_voters(initial);
            if voters.contains_key(&config.node_id) {
                let first = voters.keys().next() == Some(&config.node_id);
                (voters, first)
            } else {
                (BTreeMap::new(), false)
            }
        }
        Some(Bootstrap::Join(_)) => (BTreeMap::new(), false),
    }
}

/// Raft addresses a node that does not vote asks to be registered through.
pub fn seeds(config: &BrokerConfig) -> Vec<String> {
    match config.cluster.as_ref().map(|c| &c.bootstrap) {
        None => Vec::new(),
        Some(Bootstrap::Initial(initial)) => founding_voters(initial)
            .into_iter()
            .filter(|(id, _)| *id != config.node_id)
            .map(|(_, a)| a)
            .collect(),
        Some(Bootstrap::Join(address)) => vec![address.clone()],
    }
}

/// Registers this node through the first seed that takes it, trying until `wait` passes.
pub async fn register_via_seeds(
    peers: &PeerChannels,
    seeds: &[String],
    command: &ControllerCommand,
    wait: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::from("no seed to register through");
    loop {
        for seed in seeds {
            match forward(peers, seed, command, 0).await {
                Ok((ControllerResponse::Refused { message, .. }, _)) => return Err(message),
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// On the controller's leader: adds every registered node the controller group lacks as a
/// learner, and promotes caught-up learners while there are fewer voters than wanted.
/// Runs until the node stops.
pub async fn run(node: Weak<Node>) {
    let mut passes = crate::node::Passes::every(MEMBERSHIP_PASS, node);
    while let Some(node) = passes.next().await {
        if node.controller_leader() != Some(node.node_id()) {
            continue;
        }
        adjust(&node).await;
    }
}

async fn adjust(node: &Node) {
    let raft = node.controller_raft();
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    let metadata = node.metadata();
    for (id, meta) in &metadata.nodes {
        if known.contains(id) || meta.raft_address.is_empty() {
            continue;
        }
        let learner = BasicNode {
            addr: meta.raft_address.clone(),
        };
        match raft.add_learner(*id, learner, false).await {
            Ok(_) => tracing::info!(node = id, "added to the controller as a learner"),
            Err(e) => tracing::warn!(node = id, error = %e, "cannot add a controller learner"),
        }
    }
    let retiring: BTreeSet<NodeId> = metadata
        .nodes
        .iter()
        .filter(|(_, n)| n.decommissioned)
        .map(|(id, _)| *id)
        .collect();
    let active = metadata.nodes.len() - retiring.len();
    let target = voter_target(active);
    let active_voters = voters.difference(&retiring).count();
    if active_voters >= target {
        // Enough voters that stay: retire the decommissioned ones (kept as learners, so
        // they still learn what moves off them).
        let leaving: BTreeSet<NodeId> = voters.intersection(&retiring).copied().collect();
        if !leaving.is_empty() && active_voters > 0 {
            match raft
                .change_membership(ChangeMembers::RemoveVoters(leaving.clone()), true)
                .await
            {
                Ok(_) => tracing::info!(
                    ?leaving,
                    "decommissioned nodes left the controller's voters"
                ),
                Err(e) => tracing::warn!(?leaving, error = %e, "cannot retire controller voters"),
            }
        }
        return;
    }
    let last = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.unwrap_or_default();
    let promote: BTreeSet<NodeId> = known
        .difference(&voters)
        .filter(|id| metadata.nodes.contains_key(id) && !retiring.contains(id))
        .filter(|id| {
            replication
                .get(id)
                .and_then(|m| m.as_ref())
                .is_some_and(|m| m.index + PROMOTE_LAG_ENTRIES >= last)
        })
        .take(target - active_voters)
        .copied()
        .collect();
    if promote.is_empty() {
        return;
    }
    match raft
        .change_membership(ChangeMembers::AddVoterIds(promote.clone()), false)
        .await
    {
        Ok(_) => tracing::info!(?promote, "promoted to controller voters"),
        Err(e) => tracing::warn!(?promote, error = %e, "cannot promote controller voters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_founders_vote() {
        let initial: BTreeMap<NodeId, String> =
            (1..=4).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
        assert_eq!(
            founding_voters(&initial)
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(voter_target(7), 5);
        assert_eq!(voter_target(2), 2);
    }
}
