//! Conversions between openraft's messages and the internal protobuf messages. Batches
//! travel as `bytes` in the storage format; small openraft structures (membership,
//! snapshot meta) as JSON inside the protobuf, since openraft owns their shape.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, LeaderId, Vote};
use sluice_protocol::internal::v1 as pb;

use super::{Command, LogId, NodeId, ProduceCommand, TypeConfig};

/// A protobuf message that does not carry what its openraft counterpart needs.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A JSON-carried part does not parse.
    #[error("invalid payload: {0}")]
    Json(#[from] serde_json::Error),
}

type Entry = openraft::Entry<TypeConfig>;

/// LogId to protobuf.
pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        leader: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

/// LogId from protobuf.
pub fn log_id_from_pb(log_id: &pb::LogId) -> LogId {
    LogId::new(
        CommittedLeaderId::new(log_id.term, log_id.leader),
        log_id.index,
    )
}

fn vote_to_pb(vote: &Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

fn vote_from_pb(vote: Option<&pb::Vote>) -> Result<Vote<NodeId>, WireError> {
    let vote = vote.ok_or(WireError::Missing("vote"))?;
    Ok(Vote {
        leader_id: LeaderId::new(vote.term, vote.node_id),
        committed: vote.committed,
    })
}

fn entry_to_pb(entry: &Entry) -> Result<pb::Entry, WireError> {
    use pb::entry::Payload;
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Membership(m) => Payload::Membership(serde_json::to_vec(m)?.into()),
        EntryPayload::Normal(Command::Produce(p)) => Payload::Batches(pb::Batches {
            batches: p.batches.clone(),
        }),
        EntryPayload::Normal(Command::Controller(c)) => {
            Payload::Controller(serde_json::to_vec(c)?.into())
        }
    };
    Ok(pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    })
}

fn entry_from_pb(entry: pb::Entry) -> Result<Entry, WireError> {
    use pb::entry::Payload;
    let log_id = log_id_from_pb(&entry.log_id.ok_or(WireError::Missing("entry.log_id"))?);
    let payload = match entry.payload.ok_or(WireError::Missing("entry.payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Membership(m) => EntryPayload::Membership(serde_json::from_slice(&m)?),
        Payload::Batches(b) => {
            EntryPayload::Normal(Command::Produce(ProduceCommand { batches: b.batches }))
        }
        Payload::Controller(c) => {
            EntryPayload::Normal(Command::Controller(serde_json::from_slice(&c)?))
        }
    };
    Ok(Entry { log_id, payload })
}

/// AppendEntries to protobuf.
pub fn append_request_to_pb(
    group_id: u64,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<pb::AppendEntriesRequest, WireError> {
    Ok(pb::AppendEntriesRequest {
        group_id,
        vote: Some(vote_to_pb(&rpc.vote)),
        prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_pb),
        entries: rpc
            .entries
            .iter()
            .map(entry_to_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: rpc.leader_commit.as_ref().map(log_id_to_pb),
    })
}

/// AppendEntries from protobuf.
pub fn append_request_from_pb(
    rpc: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(rpc.vote.as_ref())?,
        prev_log_id: rpc.prev_log_id.as_ref().map(log_id_from_pb),
        entries: rpc
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        leader_commit: rpc.leader_commit.as_ref().map(log_id_from_pb),
    })
}

/// AppendEntries response to protobuf.
pub fn append_response_to_pb(resp: &AppendEntriesResponse<NodeId>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match resp {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(log_id) => match log_id {
            Some(l) => R::PartialSuccess(log_id_to_pb(l)),
            None => R::Success(pb::Blank {}),
        },
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

/// AppendEntries response from protobuf.
pub fn append_response_from_pb(
    resp: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<NodeId>, WireError> {
    use pb::append_entries_response::Result as R;
    Ok(match resp.result.ok_or(WireError::Missing("result"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(Some(&v))?),
        R::PartialSuccess(l) => AppendEntriesResponse::PartialSuccess(Some(log_id_from_pb(&l))),
    })
}

/// Vote request to protobuf.
pub fn vote_request_to_pb(group_id: u64, rpc: &VoteRequest<NodeId>) -> pb::VoteRequest {
    pb::VoteRequest {
        group_id,
        vote: Some(vote_to_pb(&rpc.vote)),
        last_log_id: rpc.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// Vote request from protobuf.
pub fn vote_request_from_pb(rpc: &pb::VoteRequest) -> Result<VoteRequest<NodeId>, WireError> {
    Ok(VoteRequest {
        vote: vote_from_pb(rpc.vote.as_ref())?,
        last_log_id: rpc.last_log_id.as_ref().map(log_id_from_pb),
    })
}

/// Vote response to protobuf.
pub fn vote_response_to_pb(resp: &VoteResponse<NodeId>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
    }
}

/// Vote response from protobuf.
pub fn vote_response_from_pb(resp: &pb::VoteResponse) -> Result<VoteResponse<NodeId>, WireError> {
    Ok(VoteResponse {
        vote: vote_from_pb(resp.vote.as_ref())?,
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_from_pb),
    })
}

/// Snapshot chunk to protobuf.
pub fn snapshot_request_to_pb(
    group_id: u64,
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> Result<pb::InstallSnapshotRequest, WireError> {
    Ok(pb::InstallSnapshotRequest {
        group_id,
        vote: Some(vote_to_pb(&rpc.vote)),
        meta: serde_json::to_vec(&rpc.meta)?.into(),
        offset: rpc.offset,
        data: rpc.data.clone().into(),
        done: rpc.done,
    })
}

/// Snapshot chunk from protobuf.
pub fn snapshot_request_from_pb(
    rpc: pb::InstallSnapshotRequest,
) -> Result<InstallSnapshotRequest<TypeConfig>, WireError> {
    Ok(InstallSnapshotRequest {
        vote: vote_from_pb(rpc.vote.as_ref())?,
        meta: serde_json::from_slice(&rpc.meta)?,
        offset: rpc.offset,
        data: rpc.data.to_vec(),
        done: rpc.done,
    })
}

/// The vote a snapshot response carries.
pub fn snapshot_vote_to_pb(vote: &Vote<NodeId>) -> pb::InstallSnapshotResponse {
    pb::InstallSnapshotResponse {
        vote: Some(vote_to_pb(vote)),
    }
}

/// The vote from a snapshot response.
pub fn snapshot_vote_from_pb(
    resp: &pb::InstallSnapshotResponse,
) -> Result<Vote<NodeId>, WireError> {
    vote_from_pb(resp.vote.as_ref())
}
