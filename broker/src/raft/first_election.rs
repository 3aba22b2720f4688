//! The first election of a new partition group. Placement names a preferred leader (the
//! first replica) per partition so that leaders spread over the nodes. Its replicas open the
//! group at about the same time, but not at once: a preferred leader that stands before its
//! peers have opened the group gets no votes, and then whichever replica's election timer
//! fires first wins, which piled every leader of a new topic on one node in CI.
//!
//! So, for a bounded grace after the group is first started, the preferred leader stands
//! again until a leader exists, and the other replicas do not stand on their own timers.
//! Once a leader exists, or the grace ends (the preferred leader may be down), every replica
//! elects as usual.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::GroupRaft;
use super::standing::Standing;

/// The grace, in election timeouts: long enough for every replica to open the group, short
/// enough that a dead preferred leader delays a new partition by seconds at most.
const GRACE_ELECTION_TIMEOUTS: u32 = 3;

/// How often, in fractions of an election timeout, the preferred leader stands again.
const RETRIES_PER_ELECTION_TIMEOUT: u32 = 4;

/// Starts the first election of a group just initialised with other voters.
pub fn start(
    raft: GroupRaft,
    standing: &Arc<Standing>,
    preferred: bool,
    election_timeout: Duration,
) {
    // The usual standing (`raft::standing`) waits until a leader exists or the grace ends.
    let hold = standing.hold();
    tokio::spawn(async move {
        let _hold = hold;
        let deadline = Instant::now() + election_timeout * GRACE_ELECTION_TIMEOUTS;
        let retry = election_timeout / RETRIES_PER_ELECTION_TIMEOUT;
        let mut metrics = raft.metrics();
        let mut next_stand = Instant::now();
        while metrics.borrow().current_leader.is_none() && Instant::now() < deadline {
            // Paced by the clock, not by metrics changes: standing changes the metrics (a new
            // term), so standing again on every change would stand without end (and, under
            // a simulated clock, without time ever passing).
            if preferred && Instant::now() >= next_stand {
                let _ = raft.trigger().elect().await;
                next_stand = Instant::now() + retry;
            }
            let wake = if preferred {
                next_stand.min(deadline)
            } else {
                deadline
            };
            // A leader shows as a metrics change; a refused vote does not, hence the clock.
            if let Ok(Err(_)) = tokio::time::timeout_at(wake, metrics.changed()).await {
                return;
            }
        }
    });
}
