//! A partition replica: its log, its Raft group, and the produce and fetch paths.

pub mod producer_state;
pub mod replica;
pub mod serving;
pub mod snapshot;
pub mod state;
pub mod writer;

pub use replica::{ClusterLink, Partition, PartitionParts, ReadResult};
pub use writer::Produced;
