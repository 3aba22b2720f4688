//! How long a tailing reader waits for the log while the writer rolls segments and the
//! cleaner installs compactions: the fetch-side cost of work done under the log's write
//! lock. In-process on the storage engine, so the figures are the lock's, not gRPC's.
//!
//! A writer appends 64 KiB batches paced to `STALL_MB_PER_S` (default 200) and syncs every
//! 1 MiB as the Raft log store does (append under the write lock, fsync without it). A
//! reader takes the read lock every millisecond and reads the newest batch, as a tailing
//! fetch does. Three runs of `STALL_SECONDS` (default 10) each:
//! - *baseline*: 1 GiB segments, so no roll happens;
//! - *rolls*: 16 MiB segments, a roll every ~80 ms;
//! - *rolls + compaction*: the same on a compacted topic, a cleaner pass every 200 ms.
//!
//! `cargo build --release -p sluice-benches --bin read_stall && target/release/read_stall`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_storage::{CleanupPolicy, Compression, Log, LogConfig, RaftPosition};

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    reads_us: Vec<u64>,
    rolls: usize,
    compactions: usize,
}

fn run(segment_bytes: u64, compact: bool, seconds: f64, mb_per_s: f64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes,
        retention_ms: None,
        cleanup_policy: if compact {
            CleanupPolicy::Compact
        } else {
            CleanupPolicy::Delete
        },
        min_cleanable_dirty_ratio: 0.01,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir.path(), config).expect("open");
    let log = Arc::new(RwLock::new(log));
    let stop = Arc::new(AtomicBool::new(false));
    // Keys repeat every 16 batches, so a compacted topic has something to clean.
    let batches: Vec<_> = (0..16)
        .map(|seed| sluice_benches::workload::batch_64k(seed, Compression::None))
        .collect();
    let writer = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut written = 0u64;
            let mut since_sync = 0u64;
            let mut index = 1u64;
            let segments_before = log.read().map(|l| l.segment_count()).unwrap_or(0);
            while !stop.load(Ordering::Relaxed) {
                let due = Duration::from_secs_f64(written as f64 / (mb_per_s * 1e6));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let batch = &batches[(index % 16) as usize];
                let raft = RaftPosition {
                    term: 1,
                    leader: 1,
                    index,
                };
                index += 1;
                let mut guard = log.write().expect("lock");
                guard.append(batch, raft).expect("append");
                written += batch.len() as u64;
                since_sync += batch.len() as u64;
                if since_sync >= 1 << 20 {
                    since_sync = 0;
                    let pending = guard.begin_sync().expect("begin sync");
                    drop(guard);
                    let result = pending.run();
                    log.write()
                        .expect("lock")
                        .finish_sync(&pending, result)
                        .expect("sync");
                }
            }
            let segments_after = log.read().map(|l| l.segment_count()).unwrap_or(0);
            segments_after.saturating_sub(segments_before)
        })
    };
    let cleaner = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut passes = 0;
            while compact && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let below = log.read().map(|l| l.flushed_offset()).unwrap_or(0);
                let plan = log.read().expect("lock").plan_compaction(below);
                let Ok(Some(plan)) = plan else { continue };
                let Ok(prepared) = plan.prepare() else {
                    continue;
                };
                if log
                    .write()
                    .expect("lock")
                    .install_compaction(prepared)
                    .is_ok()
                {
                    passes += 1;
                }
            }
            passes
        })
    };
    let mut reads_us = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_millis(1));
        let t0 = Instant::now();
        {
            let guard = log.read().expect("lock");
            let next = guard.next_offset();
            let from = next.saturating_sub(63).max(guard.log_start_offset());
            let _ = std::hint::black_box(guard.read(from, 64 << 10, u64::MAX));
        }
        reads_us.push(t0.elapsed().as_micros() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let rolls = writer.join().expect("writer");
    let compactions = cleaner.join().expect("cleaner");
    Run {
        reads_us,
        rolls,
        compactions,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
}

fn main() {
    let seconds = env_or("STALL_SECONDS", 10.0);
    let mb_per_s = env_or("STALL_MB_PER_S", 200.0);
    let mut baseline_p99 = 0.0;
    for (label, segment_bytes, compact) in [
        ("baseline (no roll)", 1 << 30, false),
        ("rolls (16 MiB segments)", 16 << 20, false),
        ("rolls + compaction", 16 << 20, true),
    ] {
        let mut r = run(segment_bytes, compact, seconds, mb_per_s);
        r.reads_us.sort_unstable();
        let p99 = percentile(&r.reads_us, 0.99) as f64;
        if baseline_p99 == 0.0 {
            baseline_p99 = p99.max(1.0);
        }
        println!(
            "{label:<26} reads {:>6}  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>6} us  (p99 {:.1}x baseline; {} rolls, {} compactions)",
            r.reads_us.len(),
            percentile(&r.reads_us, 0.5),
            p99,
            percentile(&r.reads_us, 0.999),
            r.reads_us.last().copied().unwrap_or(0),
            p99 / baseline_p99,
            r.rolls,
            r.compactions,
        );
    }
}
