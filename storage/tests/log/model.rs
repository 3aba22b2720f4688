//! Seeded model-based test: random append / sync / roll / truncate / retention / compact /
//! power loss / reopen / read, checked against an in-memory model after every step.
//! A failure prints its seed; `SLUICE_SEED=<n>` replays it.

use std::collections::HashMap;
use std::path::Path;

use sluice_storage::io::{PowerLoss, SimIo};
use sluice_storage::{Batch, CleanupPolicy, Compression, Log, LogConfig, LogEnv, RaftPosition};

use crate::support::{Kv, Rng, batch, seeds, sim_env};

/// One record as the model remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelRecord {
    offset: u64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// One batch as the model remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelBatch {
    base_offset: u64,
    next_offset: u64,
    raft_index: u64,
    records: Vec<ModelRecord>,
}

struct Harness {
    io: SimIo,
    env: LogEnv,
    config: LogConfig,
    log: Option<Log>,
    model: Vec<ModelBatch>,
    /// Batches `model[..durable]` were covered by a successful sync.
    durable: usize,
    rng: Rng,
    step: usize,
}

const DIR: &str = "/model";
const OPS_PER_SEED: usize = 1_500;

impl Harness {
    fn new(seed: u64) -> Self {
        let (io, _clock, env) = sim_env();
        let config = LogConfig {
            segment_bytes: 2048,
            index_interval_bytes: 128,
            retention_ms: None,
            retention_bytes: Some(24 * 1024),
            cleanup_policy: CleanupPolicy::CompactAndDelete,
            min_cleanable_dirty_ratio: 0.0,
            delete_retention_ms: i64::MAX / 4,
            ..LogConfig::default()
        };
        let log = Log::open_with(DIR, config.clone(), env.clone())
            .expect("open")
            .0;
        Self {
            io,
            env,
            config,
            log: Some(log),
            model: Vec::new(),
            durable: 0,
            rng: Rng::new(seed),
            step: 0,
        }
    }

    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("log is open between steps")
    }

    fn step(&mut self) {
        self.step += 1;
        let roll = self.rng.below(100);
        if std::env::var_os("SLUICE_TRACE").is_some() {
            eprintln!(
                "step {} op {roll} model {:?}",
                self.step,
                self.model
                    .iter()
                    .map(|b| (b.base_offset, b.raft_index))
                    .collect::<Vec<_>>()
            );
        }
        match roll {
            0..=54 => self.append(),
            55..=64 => {
                self.log().sync().expect("sync");
                self.durable = self.model.len();
            }
            65..=68 => {
                // A roll seals in memory; its fsyncs come with the next sync.
                self.log().roll().expect("roll");
            }
            69..=73 => self.truncate(),
            74..=78 => self.retention(),
            79..=83 => self.compact(),
            84..=91 => self.power_loss(),
            _ => self.reopen_cleanly(),
        }
        self.check();
    }

    fn append(&mut self) {
        let n = 1 + self.rng.below(4) as usize;
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|_| vec![b'k', self.rng.below(12) as u8])
            .collect();
        let values: Vec<Option<Vec<u8>>> = (0..n)
            .map(|_| {
                (!self.rng.chance(10))
                    .then(|| vec![self.rng.below(256) as u8; self.rng.below(150) as usize])
            })
            .collect();
        let kvs: Vec<Kv<'_>> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
            .collect();
        let compression =
            [Compression::None, Compression::Lz4, Compression::Zstd][self.rng.below(3) as usize];
        let b = batch(&kvs, 1_000_000, compression);
        let last = self.model.last().map(|m| m.raft_index);
        let raft_index = match last {
            Some(last) if self.rng.chance(25) => last,
            Some(last) => last + 1,
            None => self.log().last_raft_position().map_or(1, |r| r.index + 1),
        };
        let info = self
            .log()
            .append(
                &b,
                RaftPosition {
                    term: 1,
                    leader: 1,
                    index: raft_index,
                },
            )
            .expect("append");
        let records = keys
            .into_iter()
            .zip(values)
            .enumerate()
            .map(|(i, (key, value))| ModelRecord {
                offset: info.base_offset + i as u64,
                key,
                value,
            })
            .collect();
        self.model.push(ModelBatch {
            base_offset: info.base_offset,
            next_offset: info.next_offset,
            raft_index,
            records,
        });
    }

    fn truncate(&mut self) {
        if self.model.is_empty() {
            return;
        }
        let cut = self.rng.below(self.model.len() as u64) as usize;
        if self.rng.chance(50) {
            let raft_index = self.model[cut].raft_index;
            self.log()
                .truncate_raft_suffix(raft_index)
                .expect("truncate raft");
            self.model.retain(|b| b.raft_index < raft_index);
        } else {
            let offset = self.model[cut].base_offset;
            self.log().truncate_suffix(offset).expect("truncate");
            self.model.retain(|b| b.next_offset <= offset);
        }
        self.durable = self.model.len();
    }

    fn retention(&mut self) {
        let report = self.log().apply_retention().expect("retention");
        let start = report.log_start_offset;
        let before = self.model.len();
        self.model.retain(|b| b.base_offset >= start);
        let removed = before - self.model.len();
        self.durable = self.durable.saturating_sub(removed);
    }

    fn compact(&mut self) {
        let before = self.model.clone();
        self.log().compact().expect("compact");
        let actual = self.read_model();
        assert_eq!(actual.len(), before.len(), "compaction keeps every batch");
        let mut newest: HashMap<&[u8], u64> = HashMap::new();
        for r in before.iter().flat_map(|b| &b.records) {
            newest.insert(&r.key, r.offset);
        }
        for (got, was) in actual.iter().zip(&before) {
            assert_eq!(
                (got.base_offset, got.next_offset, got.raft_index),
                (was.base_offset, was.next_offset, was.raft_index)
            );
            assert!(
                got.records.iter().all(|r| was.records.contains(r)),
                "survivors are unchanged originals"
            );
            for r in &was.records {
                if newest.get(r.key.as_slice()) == Some(&r.offset) {
                    assert!(
                        got.records.contains(r),
                        "newest record of {:?} at {} survives",
                        r.key,
                        r.offset
                    );
                }
            }
        }
        self.model = actual;
    }

    fn power_loss(&mut self) {
        self.log = None;
        let mode = if self.rng.chance(50) {
            PowerLoss::DropUnsynced
        } else {
            PowerLoss::KeepRandomPrefix {
                seed: self.rng.next_u64(),
            }
        };
        self.io.power_loss(mode);
        self.reopen();
        let actual = self.read_model();
        assert!(
            actual.len() >= self.durable,
            "synced batches lost: had {} durable, found {}",
            self.durable,
            actual.len()
        );
        assert_eq!(
            actual[..],
            self.model[..actual.len()],
            "recovered log is a prefix of what was appended"
        );
        self.model.truncate(actual.len());
        self.durable = self.model.len();
    }

    fn reopen_cleanly(&mut self) {
        self.log().checkpoint().expect("checkpoint");
        self.log = None;
        self.reopen();
        self.durable = self.model.len();
    }

    fn reopen(&mut self) {
        let (log, _report) =
            Log::open_with(Path::new(DIR), self.config.clone(), self.env.clone()).expect("reopen");
        self.log = Some(log);
    }

    fn read_model(&mut self) -> Vec<ModelBatch> {
        let log = self.log();
        let start = log.log_start_offset();
        let bytes = log.read(start, usize::MAX, u64::MAX).expect("read all");
        bytes
            .into_iter()
            .map(|b| {
                let batch = Batch::decode(b).expect("stored batch decodes");
                let h = *batch.header();
                let records = batch
                    .records_vec()
                    .expect("records decode")
                    .into_iter()
                    .map(|r| ModelRecord {
                        offset: r.offset,
                        key: r.key.map(|k| k.to_vec()).unwrap_or_default(),
                        value: r.value.map(|v| v.to_vec()),
                    })
                    .collect();
                ModelBatch {
                    base_offset: h.base_offset,
                    next_offset: h.next_offset(),
                    raft_index: h.raft.index,
                    records,
                }
            })
            .collect()
    }

    fn check(&mut self) {
        let actual = self.read_model();
        assert_eq!(actual, self.model, "log differs from the model");
        let mut last = None;
        for b in &actual {
            assert!(
                last.is_none_or(|l: u64| b.base_offset == l),
                "offsets contiguous across batches"
            );
            last = Some(b.next_offset);
        }
        let next = self.model.last().map(|b| b.next_offset);
        if let Some(next) = next {
            assert_eq!(self.log().next_offset(), next);
        }
    }
}

#[test]
fn random_operations_match_the_model() {
    for seed in seeds(&[1, 2, 3, 0x5eed]) {
        let mut harness = Harness::new(seed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..OPS_PER_SEED {
                harness.step();
            }
        }));
        if let Err(panic) = outcome {
            eprintln!(
                "model test failed at step {}: replay with SLUICE_SEED={seed}",
                harness.step
            );
            std::panic::resume_unwind(panic);
        }
    }
}
