//! When this node's leadership of a partition may serve: only once it has applied every
//! entry committed before it (Raft's read barrier, `ensure_linearizable`).
//!
//! A restarted broker is leader of its partitions at once (openraft restores a single
//! voter's leadership), but its state machine re-applies the log from the last saved
//! committed hint. Until that is done its high watermark lies below records it already
//! acknowledged, and a fetch, `ListOffsets(latest)` or describe would show them missing.
//! So, as in Kafka while a new leader is not ready, the partition reports no leader until
//! then and requests get a retriable `UNAVAILABLE`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::controller::LeaderReport;
use crate::raft::{GroupId, GroupRaft, NodeId};

/// How long one attempt waits for the leader's log to be applied before trying again.
const SERVING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pause before a failed read barrier is tried again in the same leadership.
const BARRIER_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The term this node's leadership serves in, shared with a tracking task.
#[derive(Debug, Default, Clone)]
pub struct ServingTerm(Arc<AtomicU64>);

impl ServingTerm {
    /// Whether this node's leadership in `term` has passed the read barrier.
    pub fn serves(&self, term: u64) -> bool {
        // Stored as term + 1 so that 0 means "not yet in any term".
        self.0.load(Ordering::Acquire) == term.saturating_add(1)
    }

    fn set(&self, term: u64) {
        self.0.store(term.saturating_add(1), Ordering::Release);
    }
}

/// The leader `raft` reports, except this node while its leadership does not serve yet.
pub fn serving_leader(raft: &GroupRaft, node_id: NodeId, serving: &ServingTerm) -> Option<NodeId> {
    serving_leader_term(raft, node_id, serving).map(|(leader, _)| leader)
}

/// [`serving_leader`] with the Raft term it leads in.
pub fn serving_leader_term(
    raft: &GroupRaft,
    node_id: NodeId,
    serving: &ServingTerm,
) -> Option<(NodeId, u64)> {
    let metrics = raft.server_metrics();
    let m = metrics.borrow();
    let term = m.vote.leader_id().term;
    match m.current_leader {
        Some(leader) if leader == node_id && !serving.serves(term) => None,
        other => other.map(|leader| (leader, term)),
    }
}

/// Where a serving leadership is reported: the group and the node's report queue.
pub type Reporter = (GroupId, mpsc::UnboundedSender<LeaderReport>);

/// Follows the group's leadership and marks each term this node leads as serving once
/// everything committed before it is applied, then reports it to `report` (for the
/// controller's metadata). Runs until the group shuts down.
pub async fn track(
    raft: GroupRaft,
    node_id: NodeId,
    serving: ServingTerm,
    report: Option<Reporter>,
) {
    // Server metrics change with votes and leaders only, not with every append.
    let mut metrics = raft.server_metrics();
    loop {
        // Read in its own statement: a watch borrow held across an await blocks the sender.
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.vote.leader_id().term)
        };
        let was_serving = serving.serves(term);
        if leader == Some(node_id) && !serves_or_set(&raft, &serving, term).await {
            // Lost leadership, or no quorum confirmed it: try again unless the metrics
            // say first that something changed.
            tracing::debug!(term, "read barrier failed; trying again");
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(BARRIER_RETRY) => {}
            }
            continue;
        }
        if leader == Some(node_id)
            && !was_serving
            && let Some((group_id, reports)) = &report
        {
            let _ = reports.send(LeaderReport {
                group_id: *group_id,
                leader: node_id,
                term,
            });
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn serves_or_set(raft: &GroupRaft, serving: &ServingTerm, term: u64) -> bool {
    if serving.serves(term) {
        return true;
    }
    // openraft restores a restarted leader as leader at once, in its old term, knowing only
    // the committed index it last saved (a hint): the read barrier then passes at that
    // index, below records it acknowledged before the restart. A leader never drops its own
    // entries, so it serves once everything in its log when it took over is applied: that
    // covers every record acknowledged before.
    let last = raft.metrics().borrow().last_log_index;
    if raft.ensure_linearizable().await.is_err() {
        return false;
    }
    let applied = raft
        .wait(Some(SERVING_WAIT))
        .applied_index_at_least(last, "the leader's log applied")
        .await;
    if applied.is_err() {
        return false;
    }
    serving.set(term);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_term_serves_until_set() {
        let serving = ServingTerm::default();
        assert!(!serving.serves(0));
        assert!(!serving.serves(1));
        serving.set(3);
        assert!(serving.serves(3));
        assert!(!serving.serves(4), "a later term needs its own barrier");
    }
}
