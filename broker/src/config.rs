//! Broker configuration: command-line flags, `SLUICE_*` environment variables, and an
//! optional TOML file, in that order of precedence, over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sluice_storage::LogConfig;

use crate::limits;

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
    /// This broker's node id [default: 1].
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<u64>,
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
}

/// The keys a TOML config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    node_id: Option<u64>,
    partition_inflight_bytes: Option<u64>,
    broker_inflight_bytes: Option<u64>,
    housekeeping_interval_secs: Option<u64>,
    cached_tail_bytes: Option<u64>,
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
    /// Produce bytes in flight per partition.
    pub partition_inflight_bytes: u64,
    /// Produce bytes in flight per broker.
    pub broker_inflight_bytes: u64,
    /// Time between retention/compaction passes.
    pub housekeeping_interval: Duration,
    /// Defaults for every topic's log.
    pub default_log: LogConfig,
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
            node_id: args.node_id.or(file.node_id).unwrap_or(1),
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
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let min = limits::INFLIGHT_BYTES_MIN;
        if self.partition_inflight_bytes < min || self.broker_inflight_bytes < min {
            return Err(ConfigError::Invalid(
                "in-flight budgets must be at least 1 MiB",
            ));
        }
        if self.housekeeping_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "housekeeping_interval_secs must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;
    use crate::limits;

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
