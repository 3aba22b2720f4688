//! A partition replica: its log, its Raft group, and the produce and fetch paths.

pub mod producer_state;
pub mod state;
