//! `Client`: connections to brokers and the cluster metadata used to route requests.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use sluice_protocol::MESSAGE_BYTES_MAX;
use sluice_protocol::tls::ClientTls;
use sluice_protocol::v1::admin_client::AdminClient;
use sluice_protocol::v1::auth_client::AuthClient;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::consumer_groups_client::ConsumerGroupsClient;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::{ClusterDescription, DescribeClusterRequest};
use sluice_protocol::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES, Reason,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::admin::Admin;
use crate::consumer::{Consumer, ConsumerConfig};
use crate::error::ClientError;
use crate::producer::{Producer, ProducerConfig};
use crate::session::{self, Credentials, SessionHeader};

/// How long one broker gets to answer a metadata request before the next is asked.
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A handle on a Sluice cluster. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// How a [`Client`] connects: [`Client::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// TLS to every broker, if the cluster serves it ([`ClientTls::load`]).
    pub tls: Option<Arc<ClientTls>>,
    /// A SCRAM-SHA-256 login, for brokers that require authentication.
    pub credentials: Option<Credentials>,
}

/// A channel whose calls carry the client's session token.
pub(crate) type Rpc = InterceptedService<Channel, SessionHeader>;

#[derive(Debug)]
struct Inner {
    tls: Option<Arc<ClientTls>>,
    credentials: Option<Credentials>,
    session: SessionHeader,
    bootstrap: Channel,
    channels: RwLock<BTreeMap<String, Channel>>,
    metadata: RwLock<Metadata>,
}

/// What the client knows of the cluster: partitions per topic and their leaders' addresses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metadata {
    pub(crate) partitions: BTreeMap<String, u32>,
    pub(crate) leaders: BTreeMap<(String, u32), String>,
    /// Every node's client address, to ask for metadata when the bootstrap broker is down.
    pub(crate) nodes: Vec<String>,
}

fn endpoint(address: &str) -> Result<Endpoint, ClientError> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Endpoint::from_shared(url)
        .map(|e| {
            e.initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
                .max_frame_size(HTTP2_MAX_FRAME_BYTES)
                .connect_timeout(sluice_protocol::CONNECT_TIMEOUT)
                .http2_keep_alive_interval(sluice_protocol::transport::keepalive().0)
                .keep_alive_timeout(sluice_protocol::transport::keepalive().1)
                .keep_alive_while_idle(true)
        })
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {address:?}: {e}")))
}

/// Logs in again at the bootstrap broker (the session renewal).
fn renew(inner: &Arc<Inner>) -> session::RenewFuture {
    let inner = Arc::clone(inner);
    Box::pin(async move {
        let credentials = inner
            .credentials
            .clone()
            .ok_or_else(|| ClientError::Authentication("no credentials to renew with".into()))?;
        session::login(inner.bootstrap.clone(), &credentials, &inner.session).await
    })
}

impl Client {
    /// Connects to the first reachable broker of `brokers` (`host:port`) and loads metadata.
    pub async fn connect<I, S>(brokers: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(brokers, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with `options` (TLS).
    pub async fn connect_with<I, S>(
        brokers: I,
        options: ConnectOptions,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let brokers: Vec<String> = brokers
            .into_iter()
            .map(|b| b.as_ref().to_string())
            .collect();
        if brokers.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no broker address given".into(),
            ));
        }
        let mut last_error = String::new();
        for broker in &brokers {
            let tls = options.tls.clone();
            match sluice_protocol::transport::connect(endpoint(broker)?, tls.clone()).await {
                Ok(channel) => {
                    let session = SessionHeader::default();
                    let lifetime = match &options.credentials {
                        Some(credentials) => {
                            match session::login(channel.clone(), credentials, &session).await {
                                Ok(lifetime) => Some(lifetime),
                                // Another broker may answer; a throttled login would be
                                // throttled there too (the window is per user).
                                Err(e)
                                    if e.is_retriable()
                                        && e.reason() != Some(Reason::Throttled) =>
                                {
                                    last_error = e.to_string();
                                    continue;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        None => None,
                    };
                    let client = Self {
                        inner: Arc::new(Inner {
                            tls,
                            credentials: options.credentials.clone(),
                            session,
                            bootstrap: channel.clone(),
                            channels: RwLock::new(BTreeMap::from([(broker.clone(), channel)])),
                            metadata: RwLock::new(Metadata::default()),
                        }),
                    };
                    if let Some(lifetime) = lifetime {
                        session::renew_forever(Arc::downgrade(&client.inner), lifetime, renew);
                    }
                    // A broker that connects but cannot answer: try the next one.
                    match client.refresh_metadata().await {
                        Ok(()) => return Ok(client),
                        Err(e) if e.is_retriable() => last_error = e.to_string(),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(ClientError::Connect {
            brokers: brokers.join(","),
            message: last_error,
        })
    }

    /// Re-reads topics and partition leaders from the cluster.
    pub async fn refresh_metadata(&self) -> Result<(), ClientError> {
        let cluster = self.describe_cluster().await?;
        let mut metadata = Metadata::default();
        let addresses: BTreeMap<u64, String> = cluster
            .nodes
            .iter()
            .map(|n| (n.node_id, n.address.clone()))
            .collect();
        metadata.nodes = cluster.nodes.iter().map(|n| n.address.clone()).collect();
        for topic in &cluster.topics {
            metadata
                .partitions
                .insert(topic.name.clone(), topic.partitions.len() as u32);
            for p in &topic.partitions {
                let address = Some(&p.leader_address)
                    .filter(|a| !a.is_empty())
                    .or_else(|| addresses.get(&p.leader));
                if let Some(address) = address {
                    metadata
                        .leaders
                        .insert((topic.name.clone(), p.partition), address.clone());
                }
            }
        }
        *self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner()) = metadata;
        Ok(())
    }

    /// The cluster as the bootstrap broker describes it, or, if it cannot answer, the
    /// first other known node that can.
    pub(crate) async fn describe_cluster(&self) -> Result<ClusterDescription, ClientError> {
        // Bounded here: a paused broker accepts connections but never answers.
        let first = tokio::time::timeout(
            METADATA_TIMEOUT,
            self.admin_client()
                .describe_cluster(DescribeClusterRequest {}),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::unavailable(format!(
                "no metadata from the bootstrap broker within {METADATA_TIMEOUT:?}"
            )))
        });
        let error = match first {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => ClientError::from(status),
        };
        if !error.is_retriable() {
            return Err(error);
        }
        let others = self.metadata().nodes;
        for address in others {
            let channel = self.channel_to(&address);
            let answer = tokio::time::timeout(
                METADATA_TIMEOUT,
                AdminClient::with_interceptor(channel, self.inner.session.clone())
                    .describe_cluster(DescribeClusterRequest {}),
            )
            .await;
            if let Ok(Ok(response)) = answer {
                return Ok(response.into_inner());
            }
        }
        Err(error)
    }

    /// Partitions of `topic`, refreshing metadata once if it is not known.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        // Per-record path: a read lock and a lookup, no copy of the metadata.
        let known = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .partitions
            .get(topic)
            .copied();
        if let Some(n) = known {
            return Ok(n);
        }
        self.refresh_metadata().await?;
        if let Some(n) = self.metadata().partitions.get(topic).copied() {
            return Ok(n);
        }
        // Metadata lists only the topics this principal may describe: asking for the topic
        // by name tells "does not exist" from "may not" (PERMISSION_DENIED).
        let described = self
            .admin_client()
            .describe_topic(sluice_protocol::v1::DescribeTopicRequest {
                name: topic.to_string(),
            })
            .await?;
        Ok(described.into_inner().partitions.len() as u32)
    }

    pub(crate) fn metadata(&self) -> Metadata {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The channel to the leader of a partition (the bootstrap broker if unknown).
    pub(crate) fn leader_channel(&self, topic: &str, partition: u32) -> Channel {
        let address = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .leaders
            .get(&(topic.to_string(), partition))
            .cloned();
        let Some(address) = address else {
            return self.inner.bootstrap.clone();
        };
        self.channel_to(&address)
    }

    /// The channel to the broker the client was connected through.
    pub(crate) fn bootstrap_channel(&self) -> Channel {
        self.inner.bootstrap.clone()
    }

    /// A (lazily connected, shared) channel to the broker at `address`.
    pub(crate) fn channel_to(&self, address: &str) -> Channel {
        if let Some(channel) = self
            .inner
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
        {
            return channel.clone();
        }
        match endpoint(address) {
            Ok(e) => {
                let channel = sluice_protocol::transport::connect_lazy(e, self.inner.tls.clone());
                self.inner
                    .channels
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(address.to_string(), channel.clone());
                channel
            }
            Err(_) => self.inner.bootstrap.clone(),
        }
    }

    pub(crate) fn admin_client(&self) -> AdminClient<Rpc> {
        AdminClient::with_interceptor(self.inner.bootstrap.clone(), self.inner.session.clone())
    }

    pub(crate) fn producer_client(&self, channel: Channel) -> ProducerClient<Rpc> {
        ProducerClient::with_interceptor(channel, self.inner.session.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub(crate) fn consumer_client(&self, channel: Channel) -> ConsumerClient<Rpc> {
        ConsumerClient::with_interceptor(channel, self.inner.session.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// A client of the ConsumerGroups service on `channel`.
    pub(crate) fn groups_client(&self, channel: Channel) -> ConsumerGroupsClient<Rpc> {
        ConsumerGroupsClient::with_interceptor(channel, self.inner.session.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// A client of the Auth service (users, who am I) at the bootstrap broker.
    pub(crate) fn auth_client(&self) -> AuthClient<Rpc> {
        AuthClient::with_interceptor(self.inner.bootstrap.clone(), self.inner.session.clone())
    }

    /// Topic and cluster administration.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// A producer with its own per-partition batches and (if idempotent) producer ids.
    pub async fn producer(&self, config: ProducerConfig) -> Result<Producer, ClientError> {
        Producer::new(self.clone(), config).await
    }

    /// A consumer with manual partition assignment.
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }
}
