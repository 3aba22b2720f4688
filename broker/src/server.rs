//! Binding, serving, and shutting down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_protocol::internal::v1::raft_server::RaftServer;
use sluice_protocol::v1::admin_server::AdminServer;
use sluice_protocol::v1::auth_server::AuthServer;
use sluice_protocol::v1::consumer_groups_server::ConsumerGroupsServer;
use sluice_protocol::v1::producer_server::ProducerServer;
use sluice_protocol::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
    MESSAGE_BYTES_MAX,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::auth::Authenticate;
use crate::cluster::internal_auth::{ClusterAuth, RequireSecret};
use crate::config::{Bootstrap, BrokerConfig};
use crate::node::{Node, Wiring};
use crate::raft::service::{NodeSlot, RaftService};
use crate::service::admin::AdminService;
use crate::service::auth::AuthService;
use crate::service::consumer::ConsumerService;
use crate::service::deadline::stamp_arrival;
use crate::service::groups::GroupsService;
use crate::service::producer::ProducerService;
use crate::service::subscribe_route::ConsumerRoutes;
use crate::tls::{self, Reloader, ServerTls};

/// How long in-flight requests and open streams get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The `sluiced` process: logging to stderr (`SLUICE_LOG`), a multi-threaded runtime, and
/// [`run`] with the configuration `args` resolve to.
pub fn run_process(args: crate::config::Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let print_config = args.print_config;
    let config = BrokerConfig::resolve(args)?;
    if print_config {
        println!("{:#}", crate::config_dump::dump(&config));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

/// Runs the broker until SIGINT or SIGTERM, then shuts down cleanly: stop accepting, let
/// in-flight requests finish (bounded), stop the Raft groups, checkpoint every log.
pub async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    for addr in config.plaintext_binds() {
        tracing::warn!(%addr, "serving plaintext, unauthenticated gRPC beyond loopback (--insecure-allow-plaintext): anyone who reaches this port can read and write every topic");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?.to_string();
    let address = config
        .advertised_addr
        .clone()
        .unwrap_or_else(|| bound.clone());
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(config.metrics_listen)
        // Gauges are set every few seconds while what they describe exists here; one not
        // set for a minute (a deleted partition, a group coordinated elsewhere now) goes.
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(crate::limits::METRIC_GAUGE_IDLE),
        )
        .install()
        .with_context(|| format!("cannot serve metrics on {}", config.metrics_listen))?;
    crate::metrics::describe();
    let data_dir = config.data_dir.clone();
    let raft_listener = match &config.cluster {
        Some(cluster) => Some(
            TcpListener::bind(cluster.raft_listen)
                .await
                .with_context(|| format!("cannot listen on {}", cluster.raft_listen))?,
        ),
        None => None,
    };
    let raft_address = match (&config.cluster, &raft_listener) {
        (Some(cluster), Some(listener)) => {
            Some(match (&cluster.advertised_raft_addr, &cluster.bootstrap) {
                (Some(advertised), _) => advertised.clone(),
                // What the founders dial this node at.
                (None, Bootstrap::Initial(initial)) => initial
                    .get(&config.node_id)
                    .cloned()
                    .unwrap_or(listener.local_addr()?.to_string()),
                (None, Bootstrap::Join(_)) => listener.local_addr()?.to_string(),
            })
        }
        _ => None,
    };
    let client_tls = config.tls.client.clone().map(ServerTls::load).transpose()?;
    let raft_tls = config.tls.raft.clone().map(ServerTls::load).transpose()?;
    let wiring = Wiring::new(&config, raft_address.clone())
        .with_context(|| format!("cannot start on data dir {}", data_dir.display()))?;
    let reloader = Reloader {
        servers: client_tls.iter().chain(&raft_tls).cloned().collect(),
        clients: wiring
            .raft_tls
            .iter()
            .chain(&wiring.client_port_tls)
            .cloned()
            .collect(),
    };
    // Before the (possibly long) start: a rotation script's SIGHUP must not end the process.
    if !reloader.is_empty() {
        reloader.on_sighup()?;
    }
    let running = start(
        config,
        address.clone(),
        raft_address,
        wiring,
        tls::incoming(incoming(listener), client_tls, "client"),
        raft_listener.map(|l| tls::incoming(incoming(l), raft_tls, "raft")),
    )
    .await?;
    // Installed before the ready line: a SIGTERM sent right after it must stop the broker
    // cleanly, not kill it with the default action (a race seen under load in tests).
    let signals = ShutdownSignals::install()?;
    // Tests and scripts wait for this line: the broker accepts requests from here on.
    println!("sluiced listening on {address}");
    tracing::info!(%address, data_dir = %data_dir.display(), "sluiced ready");
    running.until_stopped(signals.wait()).await
}

/// A started broker: its node and the servers in front of it.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
    server: JoinHandle<anyhow::Result<()>>,
    stop: Arc<Notify>,
    internal: Option<JoinHandle<anyhow::Result<()>>>,
    stop_internal: Arc<Notify>,
}

/// Starts a node and serves it on connections from `client` (and Raft peers' from `raft`, a
/// cluster node only): any byte streams, so the simulation serves over its own network.
pub async fn start<I, IO, IE, R, RIO, RE>(
    config: BrokerConfig,
    address: String,
    raft_address: Option<String>,
    wiring: Wiring,
    client: I,
    raft: Option<R>,
) -> anyhow::Result<Running>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    R: Stream<Item = Result<RIO, RE>> + Send + 'static,
    RIO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    RIO::ConnectInfo: Clone + Send + Sync + 'static,
    RE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let data_dir = config.data_dir.clone();
    let slot: NodeSlot = Arc::clone(&wiring.node_slot);
    let stop_internal = Arc::new(Notify::new());
    let internal = match raft {
        Some(raft) => {
            let service = RaftService::new(
                Arc::clone(&wiring.groups),
                Arc::clone(&slot),
                config.node_id,
                wiring.auth.clone(),
                wiring.fresh,
            );
            let auth = wiring.auth.clone().context("a cluster node has a secret")?;
            let serving = serve_internal(service, auth, raft, Arc::clone(&stop_internal));
            if let Some(raft_address) = &raft_address {
                tracing::info!(%raft_address, "internal service listening");
            }
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let node = Node::start(config, address, wiring)
        .await
        .with_context(|| format!("cannot start on data dir {}", data_dir.display()))?;
    let _ = slot.set(Arc::downgrade(&node));
    crate::auth::bootstrap::create_first_superuser(&node).await?;
    let stop = Arc::new(Notify::new());
    let server = tokio::spawn(serve(Arc::clone(&node), client, Arc::clone(&stop)));
    Ok(Running {
        node,
        server,
        stop,
        internal,
        stop_internal,
    })
}

impl Running {
    /// Serves until the server fails or `signal` fires, then shuts down cleanly: stop
    /// accepting, let in-flight requests finish (bounded), stop the Raft groups, checkpoint
    /// every log.
    pub async fn until_stopped(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            result = &mut self.server => result.context("gRPC server task")??,
            () = signal => {
                tracing::info!("shutting down");
                self.stop.notify_one();
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await.is_err() {
                    tracing::warn!("requests still open after the grace period; closing them");
                    self.server.abort();
                }
            }
        }
        self.node.shutdown().await;
        self.stop_internal.notify_one();
        if let Some(internal) = self.internal {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, internal).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves the internal service on its own listener; every call must prove the cluster
/// secret before its body is read.
async fn serve_internal<I, IO, IE>(
    service: RaftService,
    auth: ClusterAuth,
    incoming: I,
    stop: Arc<Notify>,
) -> anyhow::Result<()>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let raft = RaftServer::new(service)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let raft = InterceptedService::new(raft, RequireSecret(auth));
    grpc_server()
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, async move { stop.notified().await })
        .await
        .context("internal gRPC server failed")
}

async fn serve<I, IO, IE>(node: Arc<Node>, incoming: I, stop: Arc<Notify>) -> anyhow::Result<()>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    // Who calls is decided from the headers, before any body is read; under
    // --require-auth an anonymous call goes no further.
    let authenticate = || Authenticate::required(Arc::clone(&node));
    let producer = ProducerServer::new(ProducerService::new(Arc::clone(&node)))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    // Stamped on the headers, before a (possibly large) body is received: a THROTTLED
    // answer must beat the caller's deadline, which runs from its send.
    let producer = InterceptedService::new(producer, stamp_arrival);
    let producer = InterceptedService::new(producer, authenticate());
    let consumer = ConsumerRoutes::new(ConsumerService::new(Arc::clone(&node)));
    let consumer = InterceptedService::new(consumer, authenticate());
    let admin = AdminServer::new(AdminService::new(Arc::clone(&node)));
    let admin = InterceptedService::new(admin, authenticate());
    let groups = ConsumerGroupsServer::new(GroupsService::new(Arc::clone(&node)));
    let groups = InterceptedService::new(groups, authenticate());
    // Sessions begin here, so it identifies callers without requiring them.
    let auth = AuthServer::new(AuthService::new(Arc::clone(&node)))
        .max_decoding_message_size(AUTH_MESSAGE_BYTES_MAX);
    let auth = InterceptedService::new(auth, Authenticate::identify_only(Arc::clone(&node)));
    grpc_server()
        .add_service(producer)
        .add_service(consumer)
        .add_service(admin)
        .add_service(groups)
        .add_service(auth)
        .serve_with_incoming_shutdown(incoming, async move { stop.notified().await })
        .await
        .context("gRPC server failed")
}

/// Largest message of the Auth service: it is called before authentication, so no large
/// body is ever read for it.
const AUTH_MESSAGE_BYTES_MAX: usize = 16 * 1024;

/// A gRPC server with the HTTP/2 windows and frame size every listener uses.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        // Dead clients' streams (and the credit and budget they hold) are closed.
        .http2_keepalive_interval(Some(sluice_protocol::transport::keepalive().0))
        .http2_keepalive_timeout(Some(sluice_protocol::transport::keepalive().1))
}

/// Accepted sockets get TCP_NODELAY: a response written in several frames must not wait for
/// the peer's delayed ACK (Nagle), which showed as 40 ms outliers.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// SIGINT and SIGTERM, handled from the moment they are installed.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
