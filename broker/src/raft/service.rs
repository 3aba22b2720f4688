//! The internal Raft gRPC service: routes each message to its group's Raft instance.

use std::sync::Arc;

use sluice_protocol::internal::v1 as pb;
use sluice_protocol::internal::v1::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

use super::group::GroupRegistry;
use super::{GroupRaft, wire};

/// Serves `sluice.internal.v1.Raft` for every group this node runs.
pub struct RaftService {
    groups: Arc<GroupRegistry>,
}

impl RaftService {
    /// A service over this node's groups.
    pub fn new(groups: Arc<GroupRegistry>) -> Self {
        Self { groups }
    }

    fn group(&self, id: u64) -> Result<GroupRaft, Status> {
        // Unknown group: the peer treats NOT_FOUND as unreachable and backs off.
        self.groups
            .get(id)
            .ok_or_else(|| Status::not_found(format!("raft group {id} is not on this node")))
    }
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
        let raft = self.group(message.group_id)?;
        let rpc = wire::append_request_from_pb(message).map_err(invalid)?;
        let response = raft.append_entries(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(wire::append_response_to_pb(&response)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let message = request.into_inner();
        let raft = self.group(message.group_id)?;
        let rpc = wire::vote_request_from_pb(&message).map_err(invalid)?;
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
}
