//! Broker configuration: command-line flags, `SLUICE_*` environment variables, and an
//! optional TOML file, in that order of precedence, over built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sluice_storage::LogConfig;

use crate::limits;
use crate::raft::group::RaftTiming;

/// `sluiced` command line. Every flag also has a `SLUICE_*` variable and a TOML key.
#[derive(Debug, Parser, Default)]
#[command(
    name = "sluiced",
    version,
    about = "The Sluice broker: an append-only event log over Raft."
)]
pub struct Args {
    /// TOML file whose keys (same names, `-` as `_`) fill in what flags and env leave unset.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for all data [default: ./data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client gRPC address; port 0 picks a free port [default: 127.0.0.1:9092].
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics address, served at /metrics [default: 127.0.0.1:9644].
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// This broker's node id (≥ 1), recorded in the data dir on first start [default: 1].
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address of the internal (Raft) service; required in a cluster.
    #[arg(long, env = "SLUICE_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// The client address other nodes and clients are told [default: the listen address].
    #[arg(long, env = "SLUICE_ADVERTISED_ADDR")]
    pub advertised_addr: Option<String>,
    /// The raft address other nodes dial for this node [default: its entry in
    /// --initial-cluster, else the raft listen address].
    #[arg(long, env = "SLUICE_ADVERTISED_RAFT_ADDR")]
    pub advertised_raft_addr: Option<String>,
    /// Founding nodes of a new cluster, `ID=HOST:RAFTPORT,...`, the same on every one of them.
    #[arg(long, env = "SLUICE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// The raft address of a node of an existing cluster to join.
    #[arg(long, env = "SLUICE_JOIN")]
    pub join: Option<String>,
    /// File holding the cluster secret every internal call proves; required in a cluster.
    #[arg(long, env = "SLUICE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long, env = "SLUICE_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Raft election timeout in milliseconds (at least 3× the heartbeat); failover takes
    /// about 2.2× it [default: 500].
    #[arg(long, env = "SLUICE_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Bytes of produce requests in flight per partition before producers are throttled
    /// [default: 32 MiB].
    #[arg(long, env = "SLUICE_PARTITION_INFLIGHT_BYTES")]
    pub partition_inflight_bytes: Option<u64>,
    /// Bytes of produce requests in flight across the broker [default: 128 MiB].
    #[arg(long, env = "SLUICE_BROKER_INFLIGHT_BYTES")]
    pub broker_inflight_bytes: Option<u64>,
    /// Seconds between retention and compaction passes [default: 30].
    #[arg(long, env = "SLUICE_HOUSEKEEPING_INTERVAL_SECS")]
    pub housekeeping_interval_secs: Option<u64>,
    /// Synced bytes at each partition's tail kept in the page cache; older pages are dropped
    /// after each sync so new writes reuse their memory. 0 leaves caching to the kernel
    /// [default: 256 MiB].
    #[arg(long, env = "SLUICE_CACHED_TAIL_BYTES")]
    pub cached_tail_bytes: Option<u64>,
    /// Partitions of `__consumer_offsets` when it is created (fixed afterwards: a group's
    /// coordinator is partition hash(group) % this) [default: 16].
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<u32>,
    /// Certificate chain (PEM) of the client port: turns TLS on there.
    #[arg(long, env = "SLUICE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that clients' certificates must chain to; when given, the client port
    /// requires a client certificate.
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA (PEM) that other brokers' client-port certificates chain to, for this broker's
    /// calls to them [default: --tls-client-ca].
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Certificate chain (PEM) of the internal (Raft) port: turns mutual TLS on between
    /// brokers; also this broker's identity when it calls its peers.
    #[arg(long, env = "SLUICE_RAFT_TLS_CERT")]
    pub raft_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --raft-tls-cert.
    #[arg(long, env = "SLUICE_RAFT_TLS_KEY")]
    pub raft_tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): peers' internal certificates, both ways, must chain to it.
    #[arg(long, env = "SLUICE_RAFT_TLS_CLIENT_CA")]
    pub raft_tls_client_ca: Option<PathBuf>,
    /// Refuse every client call that is not authenticated (a SCRAM session or a client
    /// certificate), with UNAUTHENTICATED.
    #[arg(long, env = "SLUICE_REQUIRE_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_auth: bool,
    /// Produce bytes per second each principal may send to this broker (0 or absent: no
    /// limit); `sluice quota set` overrides it per principal.
    #[arg(long, env = "SLUICE_QUOTA_PRODUCE_BYTES_PER_SEC")]
    pub quota_produce_bytes_per_sec: Option<u64>,
    /// Fetch bytes per second each principal may read from this broker (0 or absent: no
    /// limit); `sluice quota set` overrides it per principal.
    #[arg(long, env = "SLUICE_QUOTA_FETCH_BYTES_PER_SEC")]
    pub quota_fetch_bytes_per_sec: Option<u64>,
    /// Print the effective configuration (flags, environment, file and defaults) as JSON,
    /// and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// Record security and admin events in the internal topic `__audit` (always on with
    /// --require-auth).
    #[arg(long, env = "SLUICE_AUDIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub audit: bool,
    /// Users who may do everything, comma separated (and manage users when authentication
    /// is required).
    #[arg(long, env = "SLUICE_SUPERUSER", value_delimiter = ',')]
    pub superuser: Vec<String>,
    /// File holding the password of the first --superuser, created on a cluster that has no
    /// users yet.
    #[arg(long, env = "SLUICE_BOOTSTRAP_PASSWORD_FILE")]
    pub bootstrap_password_file: Option<PathBuf>,
    /// Serve a client or internal gRPC port on a non-loopback address without TLS and client
    /// authentication: anyone who reaches it can read and write every topic. Without it such
    /// a bind refuses to start.
    #[arg(
        long,
        env = "SLUICE_INSECURE_ALLOW_PLAINTEXT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_allow_plaintext: bool,
}

/// The keys a TOML config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    node_id: Option<u64>,
    raft_listen: Option<SocketAddr>,
    advertised_addr: Option<String>,
    advertised_raft_addr: Option<String>,
    initial_cluster: Option<String>,
    join: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
    partition_inflight_bytes: Option<u64>,
    broker_inflight_bytes: Option<u64>,
    housekeeping_interval_secs: Option<u64>,
    cached_tail_bytes: Option<u64>,
    offsets_topic_partitions: Option<u32>,
    insecure_allow_plaintext: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    raft_tls_cert: Option<PathBuf>,
    raft_tls_key: Option<PathBuf>,
    raft_tls_client_ca: Option<PathBuf>,
    require_auth: Option<bool>,
    audit: Option<bool>,
    quota_produce_bytes_per_sec: Option<u64>,
    quota_fetch_bytes_per_sec: Option<u64>,
    superuser: Option<Vec<String>>,
    bootstrap_password_file: Option<PathBuf>,
}

/// The broker's effective configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where every group keeps its data.
    pub data_dir: PathBuf,
    /// Client gRPC address.
    pub listen: SocketAddr,
    /// Metrics address.
    pub metrics_listen: SocketAddr,
    /// This node's id.
    pub node_id: u64,
    /// The client address clients are told; `None`: the bound listen address.
    pub advertised_addr: Option<String>,
    /// How this node takes part in a cluster; `None`: a single node (groups of one).
    pub cluster: Option<ClusterConfig>,
    /// Every group's heartbeat and election timing.
    pub raft_timing: RaftTiming,
    /// Produce bytes in flight per partition.
    pub partition_inflight_bytes: u64,
    /// Produce bytes in flight per broker.
    pub broker_inflight_bytes: u64,
    /// Time between retention/compaction passes.
    pub housekeeping_interval: Duration,
    /// Defaults for every topic's log.
    pub default_log: LogConfig,
    /// Partitions of `__consumer_offsets` when it is created.
    pub offsets_topic_partitions: u32,
    /// Whether plaintext, unauthenticated gRPC may be served beyond loopback.
    pub insecure_allow_plaintext: bool,
    /// TLS on the listeners and on calls to other brokers.
    pub tls: TlsConfig,
    /// Whether every client call must be authenticated.
    pub require_auth: bool,
    /// Whether security and admin events go to `__audit` (`--audit`, or `--require-auth`).
    pub audit: bool,
    /// Each principal's byte rates unless it has its own (`--quota-*-bytes-per-sec`).
    pub default_quota: crate::flow::quota::QuotaLimits,
    /// Super-users' names.
    pub superusers: Vec<String>,
    /// The first super-user's password file, for a cluster without users.
    pub bootstrap_password_file: Option<PathBuf>,
}

/// A listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Its certificate chain (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM).
    pub key: PathBuf,
    /// The CA clients' certificates must chain to; `Some` requires a client certificate.
    pub client_ca: Option<PathBuf>,
}

/// TLS settings; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The client port's.
    pub client: Option<ListenerTls>,
    /// The internal port's (its client CA is always set: brokers authenticate each other).
    pub raft: Option<ListenerTls>,
    /// The CA other brokers' client ports are verified by, for calls to them.
    pub peer_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// What this broker presents and trusts when it calls another broker's client port:
    /// `None` without TLS there.
    pub fn client_port_files(&self) -> Option<sluice_protocol::tls::ClientTlsFiles> {
        let listener = self.client.as_ref()?;
        // Its own certificate is its identity where client certificates are required.
        let identity = listener.client_ca.is_some();
        Some(sluice_protocol::tls::ClientTlsFiles {
            ca: self.peer_ca.clone().or(listener.client_ca.clone())?,
            cert: identity.then(|| listener.cert.clone()),
            key: identity.then(|| listener.key.clone()),
            server_name: None,
        })
    }

    /// What this broker presents and trusts when it calls a peer's internal port.
    pub fn raft_port_files(&self) -> Option<sluice_protocol::tls::ClientTlsFiles> {
        let listener = self.raft.as_ref()?;
        Some(sluice_protocol::tls::ClientTlsFiles {
            ca: listener.client_ca.clone()?,
            cert: Some(listener.cert.clone()),
            key: Some(listener.key.clone()),
            server_name: None,
        })
    }
}

/// One listener's TLS from its three flags: the certificate and key come together, and a
/// client CA needs them.
fn listener_tls(
    what: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<ListenerTls>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(ListenerTls {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(ConfigError::Tls(format!(
            "--{what}client-ca needs --{what}cert and --{what}key"
        ))),
        _ => Err(ConfigError::Tls(format!(
            "--{what}cert and --{what}key go together"
        ))),
    }
}

/// The TLS settings from flags over the file.
fn resolve_tls(args: &Args, file: &FileConfig) -> Result<TlsConfig, ConfigError> {
    let pick = |a: &Option<PathBuf>, f: &Option<PathBuf>| a.clone().or(f.clone());
    let client = listener_tls(
        "tls-",
        pick(&args.tls_cert, &file.tls_cert),
        pick(&args.tls_key, &file.tls_key),
        pick(&args.tls_client_ca, &file.tls_client_ca),
    )?;
    let raft = listener_tls(
        "raft-tls-",
        pick(&args.raft_tls_cert, &file.raft_tls_cert),
        pick(&args.raft_tls_key, &file.raft_tls_key),
        pick(&args.raft_tls_client_ca, &file.raft_tls_client_ca),
    )?;
    if raft.as_ref().is_some_and(|r| r.client_ca.is_none()) {
        return Err(ConfigError::Tls(
            "--raft-tls-cert needs --raft-tls-client-ca: brokers verify each other by the cluster's CA".into(),
        ));
    }
    Ok(TlsConfig {
        client,
        raft,
        peer_ca: pick(&args.tls_ca, &file.tls_ca),
    })
}

/// How a node forms or finds its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A founding node: every founder has the same list of node ids and raft addresses.
    Initial(BTreeMap<u64, String>),
    /// A new node joining through the raft address of a member.
    Join(String),
}

/// A cluster member's settings.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Where the internal service listens.
    pub raft_listen: SocketAddr,
    /// What other nodes dial for it, if not the default.
    pub advertised_raft_addr: Option<String>,
    /// Founding or joining.
    pub bootstrap: Bootstrap,
    /// The shared secret every internal call proves.
    pub secret: Arc<[u8]>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.debug_struct("ClusterConfig")
            .field("raft_listen", &self.raft_listen)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

/// Shortest cluster secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// Parses `1=host:port,2=host:port`: ids ≥ 1, each once, addresses non-empty.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut nodes = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, address) = item.split_once('=').ok_or_else(|| {
            ConfigError::Cluster(format!(
                "--initial-cluster entry {item:?} is not ID=HOST:PORT"
            ))
        })?;
        let id: u64 = id.trim().parse().map_err(|_| {
            ConfigError::Cluster(format!(
                "--initial-cluster entry {item:?}: the id is not a number"
            ))
        })?;
        let address = address.trim();
        if id == 0 || address.is_empty() || !address.contains(':') {
            return Err(ConfigError::Cluster(format!(
                "--initial-cluster entry {item:?}: ids start at 1 and addresses are HOST:PORT"
            )));
        }
        if nodes.insert(id, address.to_string()).is_some() {
            return Err(ConfigError::Cluster(format!(
                "--initial-cluster names node {id} twice"
            )));
        }
    }
    if nodes.is_empty() {
        return Err(ConfigError::Cluster("--initial-cluster is empty".into()));
    }
    Ok(nodes)
}

fn read_secret(path: &Path) -> Result<Arc<[u8]>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A trailing newline from an editor or `echo` is not part of the secret.
    let secret = bytes.trim_ascii_end();
    if secret.len() < CLUSTER_SECRET_BYTES_MIN {
        return Err(ConfigError::Cluster(format!(
            "the cluster secret in {} must be at least {CLUSTER_SECRET_BYTES_MIN} bytes",
            path.display()
        )));
    }
    Ok(Arc::from(secret))
}

/// The config could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(&'static str),
    /// The cluster flags do not fit together.
    #[error("invalid cluster config: {0}")]
    Cluster(String),
    /// The TLS flags do not fit together.
    #[error("invalid TLS config: {0}")]
    Tls(String),
    /// A gRPC port would be open beyond loopback without TLS and authentication.
    #[error(
        "refusing to serve gRPC without TLS and client authentication on {}: anyone who reaches the port could read and write every topic; bind a loopback address, give the port a certificate and a client CA (--tls-cert, --tls-key, --tls-client-ca; --raft-tls-* for the internal port), or pass --insecure-allow-plaintext to accept that",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
    )]
    Insecure(Vec<SocketAddr>),
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

impl BrokerConfig {
    /// Merges flags (and their env vars) over the TOML file over defaults.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        let tls = resolve_tls(&args, &file)?;
        let cluster = resolve_cluster(
            node_id,
            args.raft_listen.or(file.raft_listen),
            args.initial_cluster.or(file.initial_cluster),
            args.join.or(file.join),
            args.cluster_secret_file.or(file.cluster_secret_file),
        )?
        .map(|mut c| {
            c.advertised_raft_addr = args.advertised_raft_addr.or(file.advertised_raft_addr);
            c
        });
        let config = Self {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(limits::LISTEN_DEFAULT),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(limits::METRICS_LISTEN_DEFAULT),
            node_id,
            advertised_addr: args.advertised_addr.or(file.advertised_addr),
            cluster,
            raft_timing: RaftTiming {
                heartbeat_ms: args
                    .raft_heartbeat_ms
                    .or(file.raft_heartbeat_ms)
                    .unwrap_or(limits::RAFT_HEARTBEAT_MS_DEFAULT),
                election_timeout_ms: args
                    .raft_election_timeout_ms
                    .or(file.raft_election_timeout_ms)
                    .unwrap_or(limits::RAFT_ELECTION_TIMEOUT_MS_DEFAULT),
            },
            partition_inflight_bytes: args
                .partition_inflight_bytes
                .or(file.partition_inflight_bytes)
                .unwrap_or(limits::PARTITION_INFLIGHT_BYTES_DEFAULT),
            broker_inflight_bytes: args
                .broker_inflight_bytes
                .or(file.broker_inflight_bytes)
                .unwrap_or(limits::BROKER_INFLIGHT_BYTES_DEFAULT),
            housekeeping_interval: Duration::from_secs(
                args.housekeeping_interval_secs
                    .or(file.housekeeping_interval_secs)
                    .unwrap_or(30),
            ),
            default_log: LogConfig {
                segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
                // 0 turns the cached tail off.
                cached_tail_bytes: Some(
                    args.cached_tail_bytes
                        .or(file.cached_tail_bytes)
                        .unwrap_or(sluice_storage::limits::CACHED_TAIL_BYTES_DEFAULT),
                )
                .filter(|&bytes| bytes > 0),
                ..LogConfig::default()
            },
            offsets_topic_partitions: args
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions)
                .unwrap_or(limits::OFFSETS_TOPIC_PARTITIONS_DEFAULT),
            insecure_allow_plaintext: args.insecure_allow_plaintext
                || file.insecure_allow_plaintext.unwrap_or(false),
            tls,
            require_auth: args.require_auth || file.require_auth.unwrap_or(false),
            default_quota: crate::flow::quota::QuotaLimits {
                produce_bytes_per_sec: args
                    .quota_produce_bytes_per_sec
                    .or(file.quota_produce_bytes_per_sec),
                fetch_bytes_per_sec: args
                    .quota_fetch_bytes_per_sec
                    .or(file.quota_fetch_bytes_per_sec),
            },
            audit: args.audit
                || file.audit.unwrap_or(false)
                || args.require_auth
                || file.require_auth.unwrap_or(false),
            superusers: if args.superuser.is_empty() {
                file.superuser.unwrap_or_default()
            } else {
                args.superuser
            },
            bootstrap_password_file: args
                .bootstrap_password_file
                .or(file.bootstrap_password_file),
        };
        config.validate()?;
        Ok(config)
    }

    /// The gRPC listen addresses (client, internal) that are not loopback and lack TLS with
    /// authentication (client certificates, or `--require-auth` on the client port): each
    /// serves whoever reaches it.
    pub fn plaintext_binds(&self) -> Vec<SocketAddr> {
        let authenticated =
            |tls: &Option<ListenerTls>| tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let client_secure =
            authenticated(&self.tls.client) || (self.tls.client.is_some() && self.require_auth);
        let client = (!client_secure).then_some(self.listen);
        let raft = self
            .cluster
            .as_ref()
            .filter(|_| !authenticated(&self.tls.raft))
            .map(|c| c.raft_listen);
        client
            .into_iter()
            .chain(raft)
            .filter(|addr| !addr.ip().to_canonical().is_loopback())
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::Invalid("node ids start at 1"));
        }
        let timing = self.raft_timing;
        if timing.heartbeat_ms == 0 || timing.election_timeout_ms < 3 * timing.heartbeat_ms {
            return Err(ConfigError::Invalid(
                "the raft election timeout must be at least 3× a non-zero heartbeat",
            ));
        }
        let min = limits::INFLIGHT_BYTES_MIN;
        if self.partition_inflight_bytes < min || self.broker_inflight_bytes < min {
            return Err(ConfigError::Invalid(
                "in-flight budgets must be at least 1 MiB",
            ));
        }
        if self.offsets_topic_partitions == 0
            || self.offsets_topic_partitions > limits::PARTITIONS_PER_TOPIC_MAX
        {
            return Err(ConfigError::Invalid(
                "offsets_topic_partitions must be between 1 and 10000",
            ));
        }
        if self.housekeeping_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "housekeeping_interval_secs must be positive",
            ));
        }
        if self.tls.raft.is_some() && self.cluster.is_none() {
            return Err(ConfigError::Tls(
                "--raft-tls-cert needs a cluster (--raft-listen)".into(),
            ));
        }
        if self.cluster.is_some()
            && self.tls.client.is_some()
            && self.tls.client_port_files().is_none()
        {
            return Err(ConfigError::Tls(
                "in a cluster, TLS on the client port needs --tls-ca or --tls-client-ca: brokers call each other's client ports and verify them by it".into(),
            ));
        }
        if self.bootstrap_password_file.is_some() && self.superusers.is_empty() {
            return Err(ConfigError::Invalid(
                "--bootstrap-password-file needs --superuser: the password is the first super-user's",
            ));
        }
        let exposed = self.plaintext_binds();
        if !exposed.is_empty() && !self.insecure_allow_plaintext {
            return Err(ConfigError::Insecure(exposed));
        }
        Ok(())
    }
}

/// The cluster settings, if any cluster flag is given: `--initial-cluster` or `--join`
/// (not both) needs `--raft-listen` and `--cluster-secret-file`.
fn resolve_cluster(
    node_id: u64,
    raft_listen: Option<SocketAddr>,
    initial_cluster: Option<String>,
    join: Option<String>,
    secret_file: Option<PathBuf>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let bootstrap = match (initial_cluster, join) {
        (None, None) => {
            if raft_listen.is_some() || secret_file.is_some() {
                return Err(ConfigError::Cluster(
                    "--raft-listen and --cluster-secret-file need --initial-cluster or --join"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::Cluster(
                "give --initial-cluster (a new cluster) or --join (an existing one), not both"
                    .into(),
            ));
        }
        (Some(list), None) => {
            let nodes = parse_initial_cluster(&list)?;
            if !nodes.contains_key(&node_id) {
                return Err(ConfigError::Cluster(format!(
                    "--initial-cluster does not name this node (--node-id {node_id})"
                )));
            }
            Bootstrap::Initial(nodes)
        }
        (None, Some(address)) => Bootstrap::Join(address),
    };
    let raft_listen = raft_listen.ok_or_else(|| {
        ConfigError::Cluster("a cluster node needs --raft-listen HOST:PORT".into())
    })?;
    let secret_file = secret_file.ok_or_else(|| {
        ConfigError::Cluster("a cluster node needs --cluster-secret-file FILE".into())
    })?;
    Ok(Some(ClusterConfig {
        raft_listen,
        advertised_raft_addr: None,
        bootstrap,
        secret: read_secret(&secret_file)?,
    }))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Args, BrokerConfig, ConfigError};
    use crate::limits;

    fn listening_on(
        listen: &str,
        insecure_allow_plaintext: bool,
    ) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::resolve(Args {
            listen: listen.parse().ok(),
            insecure_allow_plaintext,
            ..Args::default()
        })
    }

    #[test]
    fn a_plaintext_port_beyond_loopback_needs_the_insecure_flag() {
        for addr in ["0.0.0.0:9092", "10.1.2.3:9092", "[::]:9092"] {
            let refused = listening_on(addr, false).expect_err(addr);
            let message = refused.to_string();
            assert!(
                matches!(refused, ConfigError::Insecure(_))
                    && message.contains(addr)
                    && message.contains("--insecure-allow-plaintext"),
                "{message}"
            );
            let allowed = listening_on(addr, true).expect(addr);
            assert_eq!(allowed.plaintext_binds().len(), 1);
        }
        for addr in [
            "127.0.0.1:9092",
            "[::1]:9092",
            "127.0.0.2:0",
            "[::ffff:127.0.0.1]:9092",
        ] {
            let config = listening_on(addr, false).expect(addr);
            assert!(config.plaintext_binds().is_empty(), "{addr}");
        }
    }

    #[test]
    fn tls_with_client_certificates_may_bind_beyond_loopback_and_tls_alone_may_not() {
        let tls = |client_ca: Option<&str>| Args {
            listen: "0.0.0.0:9092".parse().ok(),
            tls_cert: Some("broker.pem".into()),
            tls_key: Some("broker.key".into()),
            tls_client_ca: client_ca.map(Into::into),
            ..Args::default()
        };
        let config = BrokerConfig::resolve(tls(Some("clients.pem"))).expect("mTLS");
        assert!(config.plaintext_binds().is_empty());
        let refused = BrokerConfig::resolve(tls(None)).expect_err("TLS without client auth");
        assert!(matches!(refused, ConfigError::Insecure(_)), "{refused}");
    }

    #[test]
    fn tls_flags_that_do_not_fit_together_are_refused() {
        let cases = [
            Args {
                tls_cert: Some("a.pem".into()),
                ..Args::default()
            },
            Args {
                tls_client_ca: Some("ca.pem".into()),
                ..Args::default()
            },
            Args {
                raft_tls_cert: Some("a.pem".into()),
                raft_tls_key: Some("a.key".into()),
                ..Args::default()
            },
        ];
        for args in cases {
            let refused = BrokerConfig::resolve(args).expect_err("refused");
            assert!(matches!(refused, ConfigError::Tls(_)), "{refused}");
        }
    }

    #[test]
    fn the_default_config_stays_on_loopback() {
        let config = BrokerConfig::resolve(Args::default()).expect("defaults");
        assert!(config.plaintext_binds().is_empty());
        assert!(!config.insecure_allow_plaintext);
    }

    #[test]
    fn help_states_the_budget_defaults_the_broker_uses() {
        let help = Args::command().render_long_help().to_string();
        for bytes in [
            limits::PARTITION_INFLIGHT_BYTES_DEFAULT,
            limits::BROKER_INFLIGHT_BYTES_DEFAULT,
            sluice_storage::limits::CACHED_TAIL_BYTES_DEFAULT,
        ] {
            let stated = format!("[default: {} MiB]", bytes >> 20);
            assert!(help.contains(&stated), "--help lacks {stated}:\n{help}");
        }
    }
}
