//! The Sluice broker: every partition is a Raft group over its segmented log, the controller
//! is Raft group 0, and everything is served over gRPC (`sluice-protocol`).

pub mod audit;
pub mod auth;
pub mod authz;
pub mod blocking;
pub mod cluster;
pub mod config;
pub mod config_dump;
pub mod controller;
pub mod error;
pub mod flow;
pub mod groups;
pub mod housekeeping;
pub mod limits;
pub mod log_room;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod partition_dir;
// openraft's `StorageError` is large by its own design; boxing it at every await would only
// add allocations on the hot path.
#[allow(clippy::result_large_err)]
pub mod raft;
pub mod server;
pub mod service;
mod status;
pub mod tls;
