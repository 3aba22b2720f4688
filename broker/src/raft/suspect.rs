//! A replica whose recovery cut its log's tail. The recovery checkpoint vouches for the log
//! only up to where it was last written (at most once a second), so a cut above it may be
//! a torn write that was never acknowledged, or synced bytes that were acknowledged and
//! then damaged: recovery cannot tell. A replica that lost acknowledged entries must not
//! vote as if whole: with a lagging peer it would elect a leader without entries a majority
//! had acknowledged (the loss Jepsen found in NATS 2.12, and reliability.md's open finding).
//!
//! So such a replica, while it is *suspect*, neither stands for election on its own timer
//! nor grants votes, except when it has heard the last log ids of enough other voters to
//! be sure to include one that held every committed entry (n − q + 1 of the n − 1 others,
//! the candidate counting as one), and the candidate's log is at least as long as each of
//! them. The same rule lets it stand for election, so a whole cluster that lost power (every
//! replica cut a torn tail) still elects. It is cleared once it has applied an entry of its
//! current leader's own term at or past that leader's commit index when it first heard
//! from it: then its log holds every committed entry again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{CommittedLeaderId, Vote};

use super::network::PeerChannels;
use super::standing::{Hold, Standing};
use super::{GroupId, GroupRaft, LogId, NodeId, last_log};

/// A replica whose log may have lost acknowledged entries, until it is cleared.
pub struct Suspect {
    group_id: GroupId,
    node_id: NodeId,
    raft: GroupRaft,
    peers: Arc<PeerChannels>,
    /// The leader it follows now and that leader's commit index in its first append.
    first_commit: Mutex<Option<(CommittedLeaderId<NodeId>, u64)>>,
    cleared: AtomicBool,
    /// Keeps the replica's usual standing for election off until it is cleared.
    hold: Mutex<Option<Hold>>,
}

impl Suspect {
    /// Marks group `group_id`'s replica suspect: it stops standing for election on its own
    /// and a task watches for it to be cleared (or to stand by the rule above).
    pub fn start(
        group_id: GroupId,
        node_id: NodeId,
        raft: GroupRaft,
        peers: Arc<PeerChannels>,
        standing: &Arc<Standing>,
        election_timeout: Duration,
    ) -> Arc<Self> {
        let suspect = Arc::new(Self {
            group_id,
            node_id,
            raft,
            peers,
            first_commit: Mutex::new(None),
            cleared: AtomicBool::new(false),
            hold: Mutex::new(Some(standing.hold())),
        });
        tokio::spawn(watch(Arc::downgrade(&suspect), election_timeout));
        suspect
    }

    /// Whether it is whole again.
    pub fn is_cleared(&self) -> bool {
        self.cleared.load(Ordering::Relaxed)
    }

    /// Notes an append this replica accepted from the leader holding `vote`, with the
    /// leader's commit index.
    pub fn leader_append(&self, vote: &Vote<NodeId>, leader_commit: Option<LogId>) {
        // Committed leader ids are leader ids in openraft's default (advanced) mode.
        let leader: CommittedLeaderId<NodeId> = *vote.leader_id();
        let mut first = self.first_commit.lock().unwrap_or_else(|p| p.into_inner());
        if first.as_ref().is_none_or(|(l, _)| *l != leader) {
            *first = Some((leader, leader_commit.map_or(0, |c| c.index)));
        }
    }

    /// Whether this replica may grant its vote to `candidate` (itself included), whose last
    /// log id is `last`: that log is at least as long as that of every other voter heard
    /// from, and enough were heard from to include one that holds every committed entry.
    pub async fn permits_vote(&self, candidate: NodeId, last: Option<LogId>) -> bool {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters = last_log::other_voters(membership.membership(), self.node_id);
        let n = voters.len() + 1;
        let needed = n - (n / 2 + 1) + 1;
        let asked = voters
            .iter()
            .filter(|(id, _)| *id != candidate)
            .map(|(_, address)| {
                last_log::of_peer(&self.peers, self.group_id, self.node_id, address)
            });
        let mut known: Vec<Option<LogId>> = futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect();
        if candidate != self.node_id {
            known.push(last);
        }
        let complete = known.len() >= needed && known.iter().all(|l| last >= *l);
        tracing::debug!(
            node = self.node_id,
            group = self.group_id,
            candidate,
            ?last,
            ?known,
            complete,
            "suspect replica asked its peers"
        );
        complete
    }

    /// Clears it once it applied an entry of its current leader's term at or past that
    /// leader's first commit index; answers whether it is clear.
    fn check_cleared(&self) -> bool {
        if self.is_cleared() {
            return true;
        }
        let applied = self.raft.metrics().borrow().last_applied;
        let first = *self.first_commit.lock().unwrap_or_else(|p| p.into_inner());
        let whole = match (applied, first) {
            (Some(applied), Some((leader, commit))) => {
                applied.leader_id == leader && applied.index >= commit
            }
            _ => false,
        };
        if whole {
            self.cleared.store(true, Ordering::Relaxed);
            self.hold.lock().unwrap_or_else(|p| p.into_inner()).take();
            tracing::info!(
                node = self.node_id,
                group = self.group_id,
                ?applied,
                ?first,
                "replica caught up with its leader after recovery cut its log: it votes again"
            );
        }
        whole
    }
}

/// Until the replica is cleared: checks after every metrics change, and once it has been
/// without a leader for a (jittered) election timeout, stands for election if the rule
/// allows.
async fn watch(suspect: std::sync::Weak<Suspect>, election_timeout: Duration) {
    let Some(mut metrics) = suspect.upgrade().map(|s| s.raft.metrics()) else {
        return;
    };
    let mut leaderless_since: Option<tokio::time::Instant> = None;
    loop {
        let timeout_ms = election_timeout.as_millis() as u64;
        let jitter = sluice_protocol::entropy::random_u64() % (timeout_ms + 1);
        let wait = election_timeout + Duration::from_millis(jitter);
        if let Ok(Err(_)) = tokio::time::timeout(wait, metrics.changed()).await {
            return;
        }
        let Some(suspect) = suspect.upgrade() else {
            return;
        };
        if suspect.check_cleared() {
            return;
        }
        let now = tokio::time::Instant::now();
        if metrics.borrow().current_leader.is_some() {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert(now);
        if now.duration_since(since) < wait {
            continue;
        }
        let Some(last) = last_log::of_self(&suspect.raft, suspect.node_id).await else {
            return;
        };
        if suspect.permits_vote(suspect.node_id, last).await {
            let _ = suspect.raft.trigger().elect().await;
        }
        // One try per (jittered) election timeout, whatever the outcome.
        leaderless_since = Some(tokio::time::Instant::now());
    }
}
