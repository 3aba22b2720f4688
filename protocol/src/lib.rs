//! Sluice's wire protocol: the client-facing gRPC services (`sluice.v1`), the internal Raft
//! service (`sluice.internal.v1`), and the stable error reasons both sides agree on.
//!
//! Byte-level semantics of every RPC are in `docs/protocol.md`.

pub mod entropy;
mod error_reason;
pub mod scram;
pub mod subscribe_frames;
pub mod tls;
pub mod transport;

pub use error_reason::{
    LEADER_HINT_KEY, REASON_KEY, RETRY_AFTER_MS_KEY, Reason, StatusInfo, status_with_reason,
};

/// Every .proto file compiled, as an encoded `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Client-facing services and messages (`sluice.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// Broker-to-broker messages (`sluice.internal.v1`).
pub mod internal {
    /// Version 1 of the internal Raft service.
    #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
    pub mod v1 {
        tonic::include_proto!("sluice.internal.v1");
    }
}

/// Largest gRPC message either side accepts or sends: the largest batch (64 MiB records
/// section plus header) with room for the envelope. Raised from tonic's 4 MiB default.
pub const MESSAGE_BYTES_MAX: usize = 80 * 1024 * 1024;

/// HTTP/2 receive window of one stream, on both sides. h2's default (64 KiB) makes a 1 MiB
/// batch wait for sixteen window updates; on a busy two-core machine each costs a scheduling
/// round, which capped one connection near 60 MB/s.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Largest HTTP/2 frame either side accepts. h2's default (16 KiB) cuts a 1 MiB batch into
/// 64 frames, each parsed and handed on by itself.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// How often an idle or busy HTTP/2 connection is probed with a PING, on both sides, unless
/// [`transport::set_keepalive`] says otherwise. A peer that died with its machine, or a
/// network that drops packets without a reset, otherwise leaves a connection that looks open
/// and answers nothing until TCP gives up (minutes): every call on it would time out while a
/// fresh connection would work. Found by the deterministic simulation (docs/reliability.md).
pub const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a PING may go unanswered before the connection is closed (and redialled). A PING
/// waits behind the frames already queued (a 1 MiB batch, a socket buffer): generous, so a
/// slow but healthy link is not cut.
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long dialling a broker may take before the attempt fails (Kafka's
/// `socket.connection.setup.timeout.ms` is 10 s): a partitioned address must not hang a
/// client's connect for ever.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// HTTP/2 receive window of one connection: a few streams' windows. Flow control still binds:
/// a receiver that stops reading holds at most this much per connection.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
