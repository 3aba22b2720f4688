//! One module per command group.

pub mod acl;
pub mod audit;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod quota;
pub mod topic;
pub mod user;

use sluice_client::{Acks, Compression};

use crate::args::{AcksArg, CompressionArg};

/// The SDK's acks for the flag.
pub fn acks(acks: AcksArg) -> Acks {
    match acks {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
    }
}

/// The SDK's compression for the flag.
pub fn compression(compression: CompressionArg) -> Compression {
    match compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::Zstd => Compression::Zstd,
    }
}
