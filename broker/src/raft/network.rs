//! Raft's network: one gRPC channel per peer node, shared by every group; each message
//! names its group. A peer that cannot be reached is `Unreachable`, so openraft backs off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use sluice_protocol::MESSAGE_BYTES_MAX;
use sluice_protocol::internal::v1::raft_client::RaftClient;
use sluice_protocol::tls::ClientTls;
use sluice_protocol::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::wire;
use super::{GroupId, NodeId, TypeConfig};
use crate::cluster::internal_auth::{ClusterAuth, ProveSecret};

/// A client of a peer's internal service, proving the cluster secret on every call.
pub type InternalClient = RaftClient<InterceptedService<Channel, ProveSecret>>;

/// Channels to peer brokers by raft address, shared by all groups of this node.
#[derive(Debug, Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
    auth: Option<ClusterAuth>,
    tls: Option<Arc<ClientTls>>,
}

impl PeerChannels {
    /// Channels whose calls prove `auth` (a cluster) or nothing (a single node's groups of
    /// one never call out), over TLS when `tls` is given.
    pub fn new(auth: Option<ClusterAuth>, tls: Option<Arc<ClientTls>>) -> Self {
        Self {
            channels: Mutex::default(),
            auth,
            tls,
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(HTTP2_MAX_FRAME_BYTES)
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(2))
            .http2_keep_alive_interval(sluice_protocol::transport::keepalive().0)
            .keep_alive_timeout(sluice_protocol::transport::keepalive().1)
            .keep_alive_while_idle(true);
        let channel = sluice_protocol::transport::connect_lazy(endpoint, self.tls.clone());
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// A client of the internal service at `address` (one shared connection per peer).
    pub fn client(&self, address: &str) -> Result<InternalClient, tonic::transport::Error> {
        let channel = self.channel(address)?;
        Ok(
            RaftClient::with_interceptor(channel, ProveSecret(self.auth.clone()))
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        )
    }
}

/// Builds the network of one group.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    group_id: GroupId,
    peers: Arc<PeerChannels>,
}

impl GroupNetwork {
    /// The network of group `group_id` over the node's shared channels.
    pub fn new(group_id: GroupId, peers: Arc<PeerChannels>) -> Self {
        Self { group_id, peers }
    }
}

/// A connection from one group to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    group_id: GroupId,
    client: Result<InternalClient, String>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> Self::Network {
        let client = self.peers.client(&node.addr).map_err(|e| e.to_string());
        PeerConnection {
            group_id: self.group_id,
            client,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

fn unreachable<E: std::error::Error + 'static>(e: E) -> Unreachable {
    Unreachable::new(&e)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerConnection {
    fn client(&self) -> Result<InternalClient, Unreachable> {
        self.client
            .clone()
            .map_err(|e| Unreachable::new(&Message(e)))
    }
}

fn with_timeout<T>(option: &RPCOption, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let message = wire::append_request_to_pb(self.group_id, &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let response = client
            .append_entries(with_timeout(&option, message))
            .await
            .map_err(|s| RPCError::Unreachable(unreachable(s)))?;
        wire::append_response_from_pb(response.into_inner())
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let message = wire::snapshot_request_to_pb(self.group_id, &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let response = client
            .install_snapshot(with_timeout(&option, message))
            .await
            .map_err(|s| RPCError::Unreachable(unreachable(s)))?;
        let vote = wire::snapshot_vote_from_pb(response.get_ref())
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        Ok(InstallSnapshotResponse { vote })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let message = wire::vote_request_to_pb(self.group_id, &rpc);
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let response = client
            .vote(with_timeout(&option, message))
            .await
            .map_err(|s| RPCError::Unreachable(unreachable(s)))?;
        wire::vote_response_from_pb(response.get_ref())
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}
