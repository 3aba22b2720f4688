//! Shared pieces of Sluice's benchmarks: workloads, same-run baselines, and the report that
//! states every figure as a ratio to its baseline (these machines are shared and noisy, so
//! only ratios measured in one run are comparable).

pub mod cleanup;
pub mod latency_floor;
pub mod raw_file;
pub mod raw_producer;
pub mod report;
pub mod samples;
pub mod workload;
