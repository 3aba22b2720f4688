//! Sluice's wire protocol: the client-facing gRPC services (`sluice.v1`), the internal Raft
//! service (`sluice.internal.v1`), and the stable error reasons both sides agree on.
//!
//! Byte-level semantics of every RPC are in `docs/protocol.md`.

mod error_reason;

pub use error_reason::{
    LEADER_HINT_KEY, REASON_KEY, RETRY_AFTER_MS_KEY, Reason, StatusInfo, status_with_reason,
};

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
/// HTTP/2 receive window of one connection: a few streams' windows. Flow control still binds:
/// a receiver that stops reading holds at most this much per connection.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
