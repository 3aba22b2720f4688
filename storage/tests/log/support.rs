//! Helpers shared by the storage tests.

use std::path::Path;
use std::sync::Arc;

use sluice_storage::batch::NewRecord;
use sluice_storage::io::SimIo;
use sluice_storage::{
    Batch, BatchBuilder, Compression, Log, LogConfig, LogEnv, ManualClock, RaftPosition, Record,
};

/// A key/value pair for building batches; `None` value is a tombstone.
pub type Kv<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A batch of `records`, all stamped `timestamp`.
pub fn batch(records: &[Kv<'_>], timestamp: i64, compression: Compression) -> Batch {
    let mut builder = BatchBuilder::new(compression);
    for (key, value) in records {
        builder.push(NewRecord {
            key: *key,
            value: *value,
            timestamp,
            headers: &[],
        });
    }
    let bytes = builder.build().expect("test batches are valid");
    Batch::decode(bytes).expect("builder output decodes")
}

/// A control batch (no records, no offsets), as Raft blank entries are stored.
pub fn control_batch() -> Batch {
    let bytes = BatchBuilder::new(Compression::None)
        .control()
        .build()
        .expect("control batch");
    Batch::decode(bytes).expect("builder output decodes")
}

/// A one-record batch with a value of `len` bytes derived from `seed`.
pub fn value_batch(seed: u64, len: usize) -> Batch {
    let value: Vec<u8> = (0..len).map(|i| (seed as usize + i) as u8).collect();
    let key = seed.to_le_bytes();
    batch(
        &[(Some(&key), Some(&value))],
        1_000 + seed as i64,
        Compression::None,
    )
}

/// The Raft position that continues `log` as a new entry.
pub fn next_raft(log: &Log) -> RaftPosition {
    let index = log.last_raft_position().map_or(1, |r| r.index + 1);
    RaftPosition {
        term: 1,
        leader: 1,
        index,
    }
}

/// Small segments and a dense index so tests cross segment and index boundaries.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A simulated file system and a manual clock at t = 1,000,000 ms.
pub fn sim_env() -> (SimIo, Arc<ManualClock>, LogEnv) {
    let io = SimIo::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let env = LogEnv {
        io: Arc::new(io.clone()),
        clock: clock.clone(),
    };
    (io, clock, env)
}

/// Opens a log or fails the test with the error.
pub fn open(dir: &Path, config: &LogConfig, env: &LogEnv) -> Log {
    Log::open_with(dir, config.clone(), env.clone())
        .expect("log opens")
        .0
}

/// Every batch from the log start to the end.
pub fn all_batches(log: &Log) -> Vec<Batch> {
    let bytes = log
        .read(log.log_start_offset(), usize::MAX, u64::MAX)
        .expect("read");
    bytes
        .into_iter()
        .map(|b| Batch::decode(b).expect("stored batch decodes"))
        .collect()
}

/// Every record from the log start to the end.
pub fn all_records(log: &Log) -> Vec<Record> {
    all_batches(log)
        .iter()
        .flat_map(|b| b.records_vec().expect("records decode"))
        .collect()
}

/// A replayable pseudo-random sequence (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seeds to run: `SLUICE_SEED` alone if set, else `defaults`.
pub fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var("SLUICE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => defaults.to_vec(),
    }
}
