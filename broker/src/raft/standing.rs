//! Standing for election only when the replica could win: the log half of Raft's pre-vote
//! (Ongaro's thesis §9.6), which openraft 0.9 lacks.
//!
//! openraft's own timer makes a replica stand with a new term whenever it has not heard
//! from a leader for an election timeout, whether or not a quorum could grant it. A replica
//! that fell behind while cut off (or that still holds a membership its peers have since
//! left, asking voters that no longer host the group) then stands on every timeout and
//! never wins, and each of its terms unseats the leader. In openraft's default leader-id
//! mode a candidate of the same term and a higher node id even outranks a committed leader,
//! so the leader re-elected one term up meets the lagging replica's next term, and the two
//! take turns for good: a partition with a live majority that never serves (the
//! simulation's seed 31 on 5 nodes, reliability.md).
//!
//! So every group runs with openraft's election timer off, and this task keeps the same
//! clock: an election timeout (randomised per round) since the replica's vote last changed,
//! plus the leader lease while it follows a leader. When that passes, the replica first asks
//! its fellow voters for their last log ids, and stands only if in every configuration of
//! its membership a majority (itself counted) hold logs no longer than its own: those are
//! the votes openraft's vote check would grant. A replica that cannot win keeps its term,
//! and a leader one term up reaches it and catches it up. First elections of new
//! partitions and suspect replicas keep their own rules and hold this task off meanwhile.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::ServerState;
use sluice_storage::canary::{Canary, armed};
use tokio::time::Instant;

use super::network::PeerChannels;
use super::{GroupId, GroupRaft, LogId, NodeId, last_log};

/// A group replica's standing for election.
pub struct Standing {
    group_id: GroupId,
    node_id: NodeId,
    raft: GroupRaft,
    peers: Arc<PeerChannels>,
    /// Other rules deciding for now (first election, suspect replica).
    holds: AtomicU32,
}

/// Keeps [`Standing`] from standing while it lives.
pub struct Hold(Arc<Standing>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the replica's Raft state says about standing now.
struct View {
    /// When its vote last changed (heard from a leader, granted a vote, stood).
    vote_changed: Option<Instant>,
    /// Whether it follows (or is) an elected leader.
    committed: bool,
    leader: bool,
    /// Its membership's configurations (two while joint).
    configs: Vec<BTreeSet<NodeId>>,
    /// The other voters' addresses.
    others: Vec<(NodeId, String)>,
}

impl Standing {
    /// Starts the task for group `group_id`'s replica on `raft`, whose config must have
    /// openraft's own election timer off.
    pub fn start(
        group_id: GroupId,
        node_id: NodeId,
        raft: GroupRaft,
        peers: Arc<PeerChannels>,
    ) -> Arc<Self> {
        debug_assert!(!raft.config().enable_elect);
        let standing = Arc::new(Self {
            group_id,
            node_id,
            raft,
            peers,
            holds: AtomicU32::new(0),
        });
        tokio::spawn(run(Arc::downgrade(&standing)));
        standing
    }

    /// Holds it off until the returned guard drops.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.holds.fetch_add(1, Ordering::Relaxed);
        Hold(Arc::clone(self))
    }

    fn held(&self) -> bool {
        self.holds.load(Ordering::Relaxed) > 0
    }

    async fn view(&self) -> Option<View> {
        let me = self.node_id;
        self.raft
            .with_raft_state(move |state| {
                let membership = state.membership_state.effective().membership();
                let configs = membership.get_joint_config().clone();
                let others = last_log::other_voters(membership, me);
                View {
                    vote_changed: state.vote_last_modified(),
                    committed: state.vote_ref().is_committed(),
                    leader: state.server_state == ServerState::Leader,
                    configs,
                    others,
                }
            })
            .await
            .ok()
    }

    /// Whether a quorum of every configuration holds logs no longer than `mine`.
    async fn could_win(&self, view: &View, mine: Option<LogId>) -> bool {
        if armed(Canary::StandWithoutAsking) {
            return true;
        }
        let mut asks: FuturesUnordered<_> = view
            .others
            .iter()
            .map(|(id, address)| async move {
                let last = last_log::of_peer(&self.peers, self.group_id, self.node_id, address);
                (*id, last.await)
            })
            .collect();
        let mut granting = BTreeSet::from([self.node_id]);
        let mut pending: BTreeSet<NodeId> = view.others.iter().map(|(id, _)| *id).collect();
        loop {
            if let Some(verdict) = verdict(&view.configs, &granting, &pending) {
                tracing::debug!(
                    node = self.node_id,
                    group = self.group_id,
                    ?mine,
                    ?granting,
                    verdict,
                    "asked the voters before standing"
                );
                return verdict;
            }
            let Some((id, answer)) = asks.next().await else {
                return false;
            };
            pending.remove(&id);
            if answer.is_some_and(|theirs| theirs <= mine) {
                granting.insert(id);
            }
        }
    }
}

/// Whether votes from `granting` win in every configuration (`Some(true)`), cannot whatever
/// `pending` answer (`Some(false)`), or it is not known yet (`None`).
fn verdict(
    configs: &[BTreeSet<NodeId>],
    granting: &BTreeSet<NodeId>,
    pending: &BTreeSet<NodeId>,
) -> Option<bool> {
    let mut won = true;
    for config in configs {
        let quorum = config.len() / 2 + 1;
        let yes = config.intersection(granting).count();
        let maybe = config.intersection(pending).count();
        if yes + maybe < quorum {
            return Some(false);
        }
        won &= yes >= quorum;
    }
    won.then_some(true)
}

/// A random election timeout in openraft's range, as its own timer draws one.
fn election_timeout(raft: &GroupRaft) -> Duration {
    let config = raft.config();
    let spread = config
        .election_timeout_max
        .saturating_sub(config.election_timeout_min);
    let jitter = sluice_protocol::entropy::random_u64() % (spread + 1);
    Duration::from_millis(config.election_timeout_min + jitter)
}

/// The task: waits out the election timeout since the vote last changed (or since its own
/// last try), then stands if it could win. Ends when the group stops.
async fn run(standing: Weak<Standing>) {
    let mut tried: Option<Instant> = None;
    loop {
        let Some(strong) = standing.upgrade() else {
            return;
        };
        let timeout = election_timeout(&strong.raft);
        let Some(view) = strong.view().await else {
            return;
        };
        let now = Instant::now();
        let voter = view.configs.iter().any(|c| c.contains(&strong.node_id));
        let due = if view.others.is_empty() {
            // A group of one has no one to wait for, as in openraft's own timer.
            tried.map(|at| at + timeout / 4)
        } else {
            let lease = Duration::from_millis(strong.raft.config().election_timeout_max);
            let wait = if view.committed {
                lease + timeout
            } else {
                timeout
            };
            let since_vote = view.vote_changed.map(|at| at + wait);
            since_vote.max(tried.map(|at| at + timeout))
        };
        let due = due.unwrap_or(now);
        if view.leader || !voter || strong.held() || due > now {
            let wake = if due > now { due } else { now + timeout };
            drop(strong);
            tokio::time::sleep_until(wake).await;
            continue;
        }
        tried = Some(now);
        let Some(mine) = last_log::of_self(&strong.raft, strong.node_id).await else {
            return;
        };
        if strong.could_win(&view, mine).await {
            let _ = strong.raft.trigger().elect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_majority_of_shorter_logs_wins_and_a_lost_majority_loses_early() {
        let configs = [set(&[1, 2, 3])];
        assert_eq!(verdict(&configs, &set(&[1]), &set(&[2, 3])), None);
        assert_eq!(verdict(&configs, &set(&[1, 2]), &set(&[3])), Some(true));
        assert_eq!(verdict(&configs, &set(&[1]), &set(&[3])), None);
        assert_eq!(verdict(&configs, &set(&[1]), &set(&[])), Some(false));
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_each_configuration() {
        // The lagging replica of seed 31 still held {3, 4, 5}; 4 and 5 had left the group.
        let configs = [set(&[3, 4, 5]), set(&[1, 2, 3])];
        assert_eq!(verdict(&configs, &set(&[3, 1, 2]), &set(&[4, 5])), None);
        assert_eq!(verdict(&configs, &set(&[3, 1, 2]), &set(&[])), Some(false));
        assert_eq!(verdict(&configs, &set(&[3, 1, 4]), &set(&[])), Some(true));
    }

    #[test]
    fn a_single_voter_wins_alone_and_a_replica_outside_the_config_counts_nothing() {
        assert_eq!(verdict(&[set(&[1])], &set(&[1]), &set(&[])), Some(true));
        assert_eq!(
            verdict(&[set(&[2, 3, 4])], &set(&[1]), &set(&[2])),
            Some(false)
        );
    }
}
