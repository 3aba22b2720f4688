//! Storage benchmarks, each against a baseline measured in the same run:
//! append vs raw `pwrite`, append+sync vs raw `pwrite`+`fdatasync`, sequential read vs
//! `memcpy`, recovery scan vs `crc32fast`, and batch encode/decode per codec.
//!
//! `cargo bench -p sluice-benches --bench storage -- --noplot`; figures in docs/benchmarks.md.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sluice_benches::raw_file::RawSegments;
use sluice_benches::report::{RatioLine, criterion_dir, print_ratios};
use sluice_benches::workload::{RECORD_BYTES, RECORDS_PER_BATCH, batch_64k, batch_64k_bytes};
use sluice_storage::batch::NewRecord;
use sluice_storage::io::{FsIo, Io, OpenMode};
use sluice_storage::{
    Batch, BatchBuilder, BatchHeader, CleanupPolicy, Compression, Log, LogConfig, RaftPosition,
};

const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
const READ_LOG_BYTES: u64 = 1024 * 1024 * 1024;
const SCAN_BYTES: u64 = 256 * 1024 * 1024;
const SYNC_EVERY_BYTES: usize = 1024 * 1024;

fn bench_dir() -> tempfile::TempDir {
    let root = std::env::var_os("SLUICE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(root)
        .expect("bench dir")
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        retention_ms: None,
        retention_bytes: Some(2 * SEGMENT_BYTES),
        cleanup_policy: CleanupPolicy::Delete,
        ..LogConfig::default()
    }
}

/// Batches to cycle through, so no single buffer stays hot in cache.
fn batches() -> Vec<Batch> {
    (0..16).map(|i| batch_64k(i, Compression::None)).collect()
}

struct Appender {
    log: Log,
    raft_index: u64,
}

impl Appender {
    fn new(dir: &Path) -> Self {
        Self {
            log: Log::open(dir, log_config()).expect("open").0,
            raft_index: 0,
        }
    }

    fn append(&mut self, batch: &Batch) {
        self.raft_index += 1;
        let raft = RaftPosition {
            term: 1,
            leader: 1,
            index: self.raft_index,
        };
        self.log.append(batch, raft).expect("append");
        if self.log.segment_count() > 3 {
            self.log.apply_retention().expect("retention");
        }
    }
}

fn append(c: &mut Criterion, batches: &[Batch]) {
    let mut group = c.benchmark_group("append_64k");
    group.throughput(Throughput::Bytes(batches[0].len() as u64));
    let dir = bench_dir();
    let mut log = Appender::new(&dir.path().join("log"));
    group.bench_function("log_append", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                log.append(&batches[i as usize % batches.len()]);
            }
            start.elapsed()
        })
    });
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).expect("mkdir");
    let mut raw = RawSegments::new(&raw_dir, SEGMENT_BYTES).expect("raw");
    group.bench_function("raw_pwrite", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                raw.write(batches[i as usize % batches.len()].as_bytes())
                    .expect("write");
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn append_sync(c: &mut Criterion, batches: &[Batch]) {
    let per_sync = SYNC_EVERY_BYTES / batches[0].len();
    let mut group = c.benchmark_group("append_sync_1mib");
    group.throughput(Throughput::Bytes((per_sync * batches[0].len()) as u64));
    let dir = bench_dir();
    let mut log = Appender::new(&dir.path().join("log"));
    group.bench_function("log_append_sync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                for j in 0..per_sync {
                    log.append(&batches[(i as usize + j) % batches.len()]);
                }
                log.log.sync().expect("sync");
            }
            start.elapsed()
        })
    });
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir).expect("mkdir");
    let mut raw = RawSegments::new(&raw_dir, SEGMENT_BYTES).expect("raw");
    group.bench_function("raw_pwrite_fdatasync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                for j in 0..per_sync {
                    raw.write(batches[(i as usize + j) % batches.len()].as_bytes())
                        .expect("write");
                }
                raw.sync().expect("sync");
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Reads the whole log in 1 MiB fetches, as a consumer would: batch slices, no copies.
fn read_all(log: &Log) -> u64 {
    let mut from = log.log_start_offset();
    let mut bytes = 0;
    while from < log.next_offset() {
        for batch in log.read(from, 1024 * 1024, u64::MAX).expect("read") {
            let header = BatchHeader::decode(&batch).expect("header");
            from = header.next_offset();
            bytes += batch.len() as u64;
        }
    }
    bytes
}

/// A synced log in `dir` holding `bytes` of the benchmark batches.
fn filled_log(dir: &Path, config: LogConfig, bytes: u64, batches: &[Batch]) -> Log {
    let (mut log, _) = Log::open(dir, config).expect("open");
    for i in 0..bytes / batches[0].len() as u64 {
        let raft = RaftPosition {
            term: 1,
            leader: 1,
            index: i + 1,
        };
        log.append(&batches[i as usize % batches.len()], raft)
            .expect("append");
    }
    log.sync().expect("sync");
    log
}

fn read(c: &mut Criterion, batches: &[Batch]) {
    let dir = bench_dir();
    let config = LogConfig {
        retention_bytes: None,
        ..log_config()
    };
    let log = filled_log(dir.path(), config, READ_LOG_BYTES, batches);
    let total = read_all(&log);
    let source: Vec<u8> = (0..total).map(|i| i as u8).collect();
    let mut target = vec![0u8; source.len()];
    let mut group = c.benchmark_group("read_1gib");
    group
        .throughput(Throughput::Bytes(total))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("log_read", |b| b.iter(|| black_box(read_all(&log))));
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            target.copy_from_slice(&source);
            black_box(&target);
        })
    });
    group.finish();
}

fn recovery(c: &mut Criterion, batches: &[Batch]) {
    let dir = bench_dir();
    let config = LogConfig {
        segment_bytes: SCAN_BYTES + 1024 * 1024,
        retention_bytes: None,
        ..log_config()
    };
    let log = filled_log(dir.path(), config.clone(), SCAN_BYTES, batches);
    let count = SCAN_BYTES / batches[0].len() as u64;
    let scanned = log.size_bytes();
    drop(log);
    let data: Vec<u8> = (0..scanned).map(|i| (i * 7) as u8).collect();
    let mut group = c.benchmark_group("recovery_scan_256mib");
    group
        .throughput(Throughput::Bytes(scanned))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("log_open_full_scan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Without a checkpoint every byte is scanned and CRC-checked.
                std::fs::remove_file(dir.path().join("recovery-checkpoint"))
                    .expect("rm checkpoint");
                let start = Instant::now();
                let (log, report) = Log::open(dir.path(), config.clone()).expect("open");
                total += start.elapsed();
                assert_eq!(report.batches_checked, count);
                drop(log);
            }
            total
        })
    });
    group.bench_function("crc32fast", |b| {
        b.iter(|| black_box(crc32fast::hash(&data)))
    });
    // The floor the kernel sets for any scan of a file after a restart: map it afresh (page
    // table setup for every page) and CRC it, with none of the log's work.
    let segment = dir.path().join("00000000000000000000.log");
    group.bench_function("fresh_mmap_crc32fast", |b| {
        b.iter(|| {
            let file = FsIo
                .open(&segment, OpenMode::Existing)
                .expect("open segment");
            let bytes = file.read_at(0, scanned as usize).expect("map segment");
            black_box(crc32fast::hash(&bytes))
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
        .map(|i| {
            (0..RECORD_BYTES)
                .map(|j| {
                    if j % 2 == 0 {
                        (i * 31 + j * 7) as u8
                    } else {
                        b'a'
                    }
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("codec_64k");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    for (name, codec) in [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                let mut builder = BatchBuilder::new(codec);
                for (i, value) in values.iter().enumerate() {
                    builder.push(NewRecord {
                        key: Some(&i.to_le_bytes()),
                        value: Some(value),
                        timestamp: i as i64,
                        headers: &[],
                    });
                }
                black_box(builder.build().expect("build"))
            })
        });
        let encoded = batch_64k_bytes(3, codec);
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let batch = Batch::decode(encoded.clone()).expect("decode");
                let mut n = 0;
                for record in batch.records().expect("records") {
                    n += record.expect("record").value.map_or(0, |v| v.len());
                }
                black_box(n)
            })
        });
    }
    let plain = batch_64k_bytes(3, Compression::None);
    group.bench_function("crc32_only", |b| {
        b.iter(|| black_box(crc32fast::hash(&plain)))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&criterion_dir())
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let batches = batches();
    let batch_bytes = batches[0].len() as u64;
    append(&mut c, &batches);
    append_sync(&mut c, &batches);
    read(&mut c, &batches);
    recovery(&mut c, &batches);
    codec(&mut c);
    c.final_summary();
    let per_sync = (SYNC_EVERY_BYTES as u64 / batch_bytes) * batch_bytes;
    print_ratios(&[
        RatioLine {
            name: "append 64 KiB batches, no sync",
            group: "append_64k",
            subject: "log_append",
            baseline: "raw_pwrite",
            bytes_per_iter: batch_bytes,
            goal: 0.85,
        },
        RatioLine {
            name: "append + sync every 1 MiB",
            group: "append_sync_1mib",
            subject: "log_append_sync",
            baseline: "raw_pwrite_fdatasync",
            bytes_per_iter: per_sync,
            goal: 0.9,
        },
        RatioLine {
            name: "sequential read of 1 GiB (page cache)",
            group: "read_1gib",
            subject: "log_read",
            baseline: "memcpy",
            bytes_per_iter: READ_LOG_BYTES,
            goal: 0.5,
        },
        RatioLine {
            name: "recovery scan of 256 MiB",
            group: "recovery_scan_256mib",
            subject: "log_open_full_scan",
            baseline: "crc32fast",
            bytes_per_iter: SCAN_BYTES,
            goal: 0.7,
        },
        RatioLine {
            name: "recovery scan vs fresh mmap + crc32 of file",
            group: "recovery_scan_256mib",
            subject: "log_open_full_scan",
            baseline: "fresh_mmap_crc32fast",
            bytes_per_iter: SCAN_BYTES,
            goal: 0.7,
        },
        RatioLine {
            name: "decode 64 KiB batch, no compression",
            group: "codec_64k",
            subject: "decode_none",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
        RatioLine {
            name: "decode 64 KiB batch, lz4",
            group: "codec_64k",
            subject: "decode_lz4",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
        RatioLine {
            name: "decode 64 KiB batch, zstd",
            group: "codec_64k",
            subject: "decode_zstd",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
        RatioLine {
            name: "encode 64 KiB batch, no compression",
            group: "codec_64k",
            subject: "encode_none",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
        RatioLine {
            name: "encode 64 KiB batch, lz4",
            group: "codec_64k",
            subject: "encode_lz4",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
        RatioLine {
            name: "encode 64 KiB batch, zstd",
            group: "codec_64k",
            subject: "encode_zstd",
            baseline: "crc32_only",
            bytes_per_iter: batch_bytes,
            goal: 0.0,
        },
    ]);
}
