//! The latency floor of a durable log on this machine: the storage engine alone, fed records
//! at a fixed rate and group-committing them (append what has arrived, fsync, repeat), with
//! each record's latency measured from its arrival to the end of its fsync.
//!
//! A broker's produce latency at the same rate can only be worse, so it is the baseline for
//! latency goals, measured in the same run: a slow spell of the shared disk shows in both.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_storage::{Compression, Log, LogConfig, RaftPosition};

use crate::cleanup::remove_dir_gently;
use crate::workload::{RECORDS_PER_BATCH, batch_64k};

/// Per-record latency percentiles and the slowest fsync of a paced storage-only run.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Records written per second (the asked rate, unless the disk fell behind).
    pub records_per_s: f64,
    /// Median record latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile record latency, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile record latency, milliseconds.
    pub p999_ms: f64,
    /// The slowest single fsync, milliseconds.
    pub slowest_sync_ms: f64,
}

/// Runs the storage engine for `seconds` at `rate` records/s of 1 KiB (taken in whole
/// batches of 63 records) in a fresh temp dir, with the broker's default segment size.
pub fn storage_latency_floor(rate: f64, seconds: f64) -> std::io::Result<Floor> {
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        segment_bytes: 1 << 30,
        retention_bytes: Some(2 << 30),
        retention_ms: None,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), config).map_err(std::io::Error::other)?;
    let batches: Vec<_> = (0..16).map(|i| batch_64k(i, Compression::None)).collect();
    let per_batch = RECORDS_PER_BATCH as u64;
    // Microseconds, up to a minute, three significant digits.
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    let mut slowest_sync = Duration::ZERO;
    let (mut written, mut index) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let arrived = (start.elapsed().as_secs_f64() * rate) as u64;
        let round = (arrived.saturating_sub(written) / per_batch) * per_batch;
        if round == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        for _ in 0..round / per_batch {
            index += 1;
            let batch = &batches[index as usize % batches.len()];
            let position = RaftPosition {
                term: 1,
                leader: 1,
                index,
            };
            log.append(batch, position).map_err(std::io::Error::other)?;
        }
        let sync_started = Instant::now();
        log.sync().map_err(std::io::Error::other)?;
        slowest_sync = slowest_sync.max(sync_started.elapsed());
        let done = start.elapsed().as_secs_f64();
        for record in written..written + round {
            let arrival = record as f64 / rate;
            let micros = ((done - arrival) * 1e6).max(1.0) as u64;
            latencies.saturating_record(micros);
        }
        written += round;
        if log.segment_count() > 2 {
            log.apply_retention().map_err(std::io::Error::other)?;
        }
    }
    let records_per_s = written as f64 / start.elapsed().as_secs_f64();
    drop(log);
    remove_dir_gently(dir.path());
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(Floor {
        records_per_s,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        slowest_sync_ms: slowest_sync.as_secs_f64() * 1000.0,
    })
}
