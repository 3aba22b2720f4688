//! Asking a replica how long its log is, without changing anything: a vote request for
//! term 0, which openraft answers with its vote and last log id and never grants. Both
//! the suspect replica's rule (`raft::suspect`) and standing for election
//! (`raft::standing`) decide on the answers.

use std::time::Duration;

use openraft::raft::VoteRequest;
use openraft::{BasicNode, Membership, Vote};

use super::network::PeerChannels;
use super::{GroupId, GroupRaft, LogId, NodeId, wire};

/// How long a peer may take to tell its last log id.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// A vote request for term 0 from `from`: openraft answers it with its vote and last log
/// id, grants nothing and changes nothing, so it asks a replica how long its log is.
pub fn last_log_query(from: NodeId) -> VoteRequest<NodeId> {
    VoteRequest::new(Vote::new(0, from), None)
}

/// The last log id of group `group_id`'s replica at `address`, asked on behalf of `from`;
/// `None` without an answer within [`ASK_TIMEOUT`].
pub async fn of_peer(
    peers: &PeerChannels,
    group_id: GroupId,
    from: NodeId,
    address: &str,
) -> Option<Option<LogId>> {
    let message = wire::vote_request_to_pb(group_id, &last_log_query(from));
    let mut client = peers.client(address).ok()?;
    let mut call = tonic::Request::new(message);
    call.set_timeout(ASK_TIMEOUT);
    let answer = tokio::time::timeout(ASK_TIMEOUT, client.vote(call))
        .await
        .ok()?
        .ok()?;
    wire::vote_response_from_pb(answer.get_ref())
        .ok()
        .map(|r| r.last_log_id)
}

/// This replica's own last log id; `None` once its Raft has stopped.
pub async fn of_self(raft: &GroupRaft, node_id: NodeId) -> Option<Option<LogId>> {
    raft.vote(last_log_query(node_id))
        .await
        .ok()
        .map(|r| r.last_log_id)
}

/// The voters of `membership` other than `me`, with their raft addresses (empty if unknown):
/// whom to ask.
pub fn other_voters(
    membership: &Membership<NodeId, BasicNode>,
    me: NodeId,
) -> Vec<(NodeId, String)> {
    membership
        .voter_ids()
        .filter(|id| *id != me)
        .map(|id| {
            let address = membership.get_node(&id).map(|n| n.addr.clone());
            (id, address.unwrap_or_default())
        })
        .collect()
}
