//! Calls to another node's internal service: controller commands handed to the
//! controller's leader (so any node accepts metadata changes), and liveness pings.

use std::time::Duration;

use sluice_protocol::internal::v1::{ForwardRequest, PingRequest, PingResponse};

use crate::controller::{ControllerCommand, ControllerResponse};
use crate::error::BrokerError;
use crate::raft::network::PeerChannels;

/// How many nodes a controller command may pass through before it must be applied.
pub const FORWARD_HOPS_MAX: u32 = 2;

/// How long a ping may take before the node counts as not alive.
pub const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// Hands `command` to the node at raft address `address`, which applies it or passes it to
/// the controller's leader; returns the answer and the Raft index it was applied at.
pub async fn forward(
    peers: &PeerChannels,
    address: &str,
    command: &ControllerCommand,
    hops: u32,
) -> Result<(ControllerResponse, u64), BrokerError> {
    let unavailable =
        |why: String| BrokerError::Unavailable(format!("controller via {address}: {why}"));
    let encoded = serde_json::to_vec(command).map_err(|e| BrokerError::Internal(e.to_string()))?;
    let mut client = peers
        .client(address)
        .map_err(|e| unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(ForwardRequest {
        command: encoded.into(),
        hops,
    });
    // Longer than the receiving node's own wait for the controller, so an answer it gives
    // at the end of that wait still arrives.
    request.set_timeout(crate::limits::CONTROLLER_PROPOSE_WAIT + Duration::from_secs(5));
    let wait = crate::limits::CONTROLLER_PROPOSE_WAIT + Duration::from_secs(5);
    let response = tokio::time::timeout(wait, client.forward_controller_command(request))
        .await
        .map_err(|_| unavailable(format!("no answer within {wait:?}")))?
        .map_err(|s| unavailable(s.message().to_string()))?;
    let answer = serde_json::from_slice(&response.get_ref().response)
        .map_err(|e| BrokerError::Internal(format!("controller answer from {address}: {e}")))?;
    Ok((answer, response.get_ref().log_index))
}

/// Pings the node at raft address `address`: its answer, its refusal, or `None` if it did
/// not answer in time.
pub async fn ping_call(
    peers: &PeerChannels,
    address: &str,
    asking: PingRequest,
) -> Option<Result<PingResponse, tonic::Status>> {
    let mut client = peers.client(address).ok()?;
    let mut request = tonic::Request::new(asking);
    request.set_timeout(PING_TIMEOUT);
    tokio::time::timeout(PING_TIMEOUT, client.ping(request))
        .await
        .ok()
        .map(|answer| answer.map(tonic::Response::into_inner))
}

/// Pings the node at raft address `address`; `None` if it did not answer in time.
pub async fn ping(peers: &PeerChannels, address: &str) -> Option<PingResponse> {
    ping_call(peers, address, PingRequest::default())
        .await?
        .ok()
}

/// Whether a ping was refused because the caller belongs to another cluster: the refusal
/// message, if so.
pub async fn refused_as_other_cluster(peers: &PeerChannels, address: &str) -> Option<String> {
    match ping_call(peers, address, PingRequest::default()).await? {
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            Some(status.message().to_string())
        }
        _ => None,
    }
}
