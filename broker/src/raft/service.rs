//! The internal Raft gRPC service: routes each message to its group's Raft instance, takes
//! controller commands forwarded by other nodes, and answers pings. It is served on the
//! raft listener only, behind the cluster-secret check (`cluster::internal_auth`).

use std::sync::{Arc, OnceLock, Weak};

use sluice_protocol::internal::v1 as pb;
use sluice_protocol::internal::v1::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use super::group::GroupRegistry;
use super::{GroupRaft, NodeId, wire};
use crate::cluster::forward::FORWARD_HOPS_MAX;
use crate::cluster::internal_auth::ClusterAuth;
use crate::controller::ControllerCommand;
use crate::node::Node;

/// The node, once started: forwarded commands need it, Raft traffic does not.
pub type NodeSlot = Arc<OnceLock<Weak<Node>>>;

/// Serves `sluice.internal.v1.Raft` for every group this node runs.
pub struct RaftService {
    groups: Arc<GroupRegistry>,
    node: NodeSlot,
    node_id: NodeId,
    auth: Option<ClusterAuth>,
    /// This node started on an empty data dir.
    fresh: bool,
}

impl RaftService {
    /// A service over this node's groups; `node` is filled once the node has started.
    pub fn new(
        groups: Arc<GroupRegistry>,
        node: NodeSlot,
        node_id: NodeId,
        auth: Option<ClusterAuth>,
        fresh: bool,
    ) -> Self {
        Self {
            groups,
            node,
            node_id,
            auth,
            fresh,
        }
    }

    fn group(&self, id: u64) -> Result<GroupRaft, Status> {
        // Unknown group: the peer treats NOT_FOUND as unreachable and backs off.
        self.groups
            .get(id)
            .ok_or_else(|| Status::not_found(format!("raft group {id} is not on this node")))
    }
}

/// Log bytes an entry takes at most: its batches, and a control batch's worth besides.
fn entry_bytes(entry: &openraft::Entry<super::TypeConfig>) -> u64 {
    const CONTROL_BATCH_BYTES: u64 = 512;
    let data = match &entry.payload {
        openraft::EntryPayload::Normal(super::Command::Produce(p)) => {
            p.batches.iter().map(|b| b.len() as u64).sum()
        }
        // Rare and small, but a command is stored as its JSON.
        openraft::EntryPayload::Normal(super::Command::Controller(c)) => {
            serde_json::to_vec(c).map_or(0, |j| j.len() as u64)
        }
        _ => 0,
    };
    data + CONTROL_BATCH_BYTES
}

fn invalid(e: wire::WireError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let message = request.into_inner();
        let group_id = message.group_id;
        let (raft, log, suspect) =
            self.groups
                .get_for_append(message.group_id)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "raft group {} is not on this node",
                        message.group_id
                    ))
                })?;
        let rpc = wire::append_request_from_pb(message).map_err(invalid)?;
        let (leader_vote, leader_commit) = (rpc.vote, rpc.leader_commit);
        // Room first, as a leader reserves before it proposes: once openraft holds the
        // entries a full disk would be a storage error that stops this replica's group. A
        // refusal here is a failed call; the leader retries and this replica catches up once
        // there is space again.
        let bytes: u64 = rpc.entries.iter().map(entry_bytes).sum();
        if bytes > 0
            && let Err(e) = crate::log_room::reserve(&log, bytes).await
        {
            crate::metrics::append_refused(group_id);
            tracing::warn!(group = group_id, bytes, error = %e, "refused appends: no room for them");
            return Err(Status::resource_exhausted(format!(
                "cannot take {bytes} bytes of entries: {e}"
            )));
        }
        let response = raft.append_entries(rpc).await.map_err(raft_failed)?;
        if let Some(suspect) = suspect
            && !matches!(
                response,
                openraft::raft::AppendEntriesResponse::HigherVote(_)
            )
        {
            suspect.leader_append(&leader_vote, leader_commit);
        }
        Ok(Response::new(wire::append_response_to_pb(&response)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let message = request.into_inner();
        let raft = self.group(message.group_id)?;
        let mut rpc = wire::vote_request_from_pb(&message).map_err(invalid)?;
        let candidate = rpc.vote.leader_id().node_id;
        if rpc.vote.leader_id().term > 0
            && let Some(suspect) = self.groups.suspect(message.group_id)
            && !suspect.permits_vote(candidate, rpc.last_log_id).await
        {
            // Refused: asked as for term 0, openraft answers its vote and last log id and
            // grants nothing.
            rpc = super::last_log::last_log_query(candidate);
        }
        let response = raft.vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(wire::vote_response_to_pb(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let message = request.into_inner();
        let raft = self.group(message.group_id)?;
        let rpc = wire::snapshot_request_from_pb(message).map_err(invalid)?;
        let response = raft.install_snapshot(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(wire::snapshot_vote_to_pb(&response.vote)))
    }

    async fn forward_controller_command(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let message = request.into_inner();
        if message.hops > FORWARD_HOPS_MAX {
            return Err(Status::failed_precondition("forwarded too many times"));
        }
        let command: ControllerCommand = serde_json::from_slice(&message.command)
            .map_err(|e| Status::invalid_argument(format!("not a controller command: {e}")))?;
        let node = self
            .node
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Status::unavailable("this node is still starting"))?;
        let (answer, log_index) = node
            .propose_forwarded(command, message.hops)
            .await
            .map_err(|e| e.to_status())?;
        let response = serde_json::to_vec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ForwardResponse {
            response: response.into(),
            log_index,
        }))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let node = self.node.get().and_then(Weak::upgrade);
        let asking = request.get_ref();
        if asking.fresh_data_dir
            && asking.node_id != 0
            && let Some(node) = &node
            && node.metadata().nodes.contains_key(&asking.node_id)
        {
            return Err(Status::failed_precondition(
                crate::cluster::fresh_start::lost_data_refusal(asking.node_id),
            ));
        }
        let cluster_id = self
            .auth
            .as_ref()
            .and_then(ClusterAuth::cluster_id)
            .map(|c| c.to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::PingResponse {
            node_id: self.node_id,
            cluster_id,
            started: node.is_some(),
            fresh_data_dir: self.fresh,
        }))
    }
}
