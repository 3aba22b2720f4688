//! Raft's safety properties, checked after every simulation step from each running node's
//! Raft metrics. openraft lets several candidates lead one term (a leader is a term *and*
//! a node id), so election safety is that a node's vote never goes backwards, across power
//! losses too (it voted twice in a term otherwise); and an entry applied at an index is the
//! same entry (term and leader) on every replica, for ever: committed entries never change,
//! and with log matching every replica's log is a prefix of the leader's below the commit.
//! A replica moved off a node and later back is a new member (a learner with an empty log
//! and vote), so a running node that stops hosting a group, or that learns from the
//! controller that it no longer hosts it (a restarted node does not open such a replica
//! again, and replaces its directory if it is moved back), starts its vote afresh.

use std::collections::{BTreeMap, BTreeSet};

use openraft::Vote;

use super::cluster::SimNode;

/// What the checks have seen so far.
#[derive(Default)]
pub struct RaftChecks {
    /// (group, node) → the highest vote it has shown.
    votes: BTreeMap<(u64, u64), Vote<u64>>,
    /// (group, index) → (the applied entry's leader, the node that first applied it).
    applied: BTreeMap<(u64, u64), (String, u64)>,
    /// (group, node) → the leader it last knew, for the trace.
    known_leaders: BTreeMap<(u64, u64), Option<u64>>,
    /// node → (its running instance, the groups it hosted at the last check).
    hosted: BTreeMap<u64, (usize, BTreeSet<u64>)>,
    /// Violations, in the order found (the first few).
    pub violations: Vec<String>,
}

const VIOLATIONS_KEPT: usize = 10;

impl RaftChecks {
    /// Checks every running node once.
    pub fn check(&mut self, nodes: &[SimNode], recorder: &super::record::Recorder) {
        for sim_node in nodes {
            let Some(node) = sim_node.node.borrow().upgrade() else {
                continue;
            };
            self.forget_removed(
                sim_node.id,
                std::sync::Arc::as_ptr(&node) as usize,
                node.groups.ids(),
            );
            self.forget_moved_off(sim_node.id, &node.metadata());
            for group in node.groups.ids() {
                let Some(raft) = node.groups.get(group) else {
                    continue;
                };
                let metrics = raft.metrics().borrow().clone();
                let known = self.known_leaders.entry((group, sim_node.id)).or_default();
                if *known != metrics.current_leader {
                    *known = metrics.current_leader;
                    recorder.event(
                        &sim_node.name,
                        &format!(
                            "group {group} leader {:?} vote {}",
                            metrics.current_leader, metrics.vote
                        ),
                    );
                }
                self.check_vote(group, sim_node.id, metrics.vote);
                if let Some(applied) = metrics.last_applied {
                    self.check_applied(
                        group,
                        sim_node.id,
                        applied.index,
                        applied.leader_id.to_string(),
                    );
                }
            }
        }
    }

    /// Forgets the votes of replicas the same running instance of `node` no longer hosts
    /// (moved off it). A restarted node is another instance: its votes are kept.
    fn forget_removed(&mut self, node: u64, instance: usize, groups: Vec<u64>) {
        let groups: BTreeSet<u64> = groups.into_iter().collect();
        if let Some((previous, hosted)) = self.hosted.get(&node)
            && *previous == instance
        {
            for removed in hosted.difference(&groups) {
                self.votes.remove(&(*removed, node));
            }
        }
        self.hosted.insert(node, (instance, groups));
    }

    /// Forgets the votes of `node`'s replicas that the controller's metadata, as `node`
    /// knows it, no longer places on it.
    fn forget_moved_off(&mut self, node: u64, metadata: &sluice_broker::controller::Metadata) {
        for partition in metadata.topics.values().flat_map(|t| t.partitions.iter()) {
            if !partition.hosted_by(node) {
                self.votes.remove(&(partition.group_id, node));
            }
        }
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(what);
        }
    }

    fn check_vote(&mut self, group: u64, node: u64, vote: Vote<u64>) {
        let highest = self.votes.entry((group, node)).or_insert(vote);
        // A replica whose recovery cut its log forgets that its vote was committed
        // (`raft::suspect`): the same vote for the same leader, not a vote given twice.
        if vote.leader_id() < highest.leader_id() {
            let was = *highest;
            self.violation(format!(
                "group {group}: node {node}'s vote went back from {was} to {vote}"
            ));
        } else if vote > *highest {
            *highest = vote;
        }
    }

    fn check_applied(&mut self, group: u64, node: u64, index: u64, leader: String) {
        let (first, first_node) = self
            .applied
            .entry((group, index))
            .or_insert_with(|| (leader.clone(), node))
            .clone();
        if first != leader {
            self.violation(format!(
                "group {group} index {index}: node {first_node} applied the entry of leader {first}, node {node} the one of leader {leader}"
            ));
        }
    }
}
