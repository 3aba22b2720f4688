//! Compaction: newest value per key survives with its offset, tombstones expire, Raft
//! indexes stay contiguous, and a crash at any point leaves the old or the new content.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use sluice_storage::io::PowerLoss;
use sluice_storage::{
    Batch, CleanupPolicy, Compression, Log, LogConfig, PreparedCompaction, Record,
};

use crate::support::{Rng, all_records, batch, next_raft, open, sim_env, small_config};

/// A record as appended: (offset, key, value).
type Appended = (u64, Vec<u8>, Option<Vec<u8>>);

fn compact_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        ..small_config()
    }
}

/// Appends `n` single-record batches with keys `k{i % keys}`; a value `None` every
/// `tombstone_every` records. Returns every record as appended.
fn fill(
    log: &mut Log,
    n: u64,
    keys: u64,
    tombstone_every: u64,
    timestamp: i64,
    compression: Compression,
) -> Vec<Appended> {
    let mut appended = Vec::new();
    for i in 0..n {
        let key = format!("k{}", i % keys).into_bytes();
        let value = (tombstone_every == 0 || i % tombstone_every != tombstone_every - 1)
            .then(|| format!("v{i}-{}", "x".repeat(40)).into_bytes());
        let b = batch(&[(Some(&key), value.as_deref())], timestamp, compression);
        let info = log.append(&b, next_raft(log)).expect("append");
        appended.push((info.base_offset, key, value));
    }
    appended
}

fn newest_per_key(records: &[Appended]) -> HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> {
    let mut newest = HashMap::new();
    for (offset, key, value) in records {
        newest.insert(key.clone(), (*offset, value.clone()));
    }
    newest
}

fn assert_compacted(survivors: &[Record], appended: &[Appended], tombstones_kept: bool) {
    let by_offset: HashMap<u64, &Appended> = appended.iter().map(|r| (r.0, r)).collect();
    let mut last = None;
    for r in survivors {
        let original = by_offset
            .get(&r.offset)
            .expect("survivor was appended at this offset");
        assert_eq!(
            r.key.as_deref(),
            Some(&original.1[..]),
            "offset {} kept its key",
            r.offset
        );
        assert_eq!(
            r.value.as_deref(),
            original.2.as_deref(),
            "offset {} kept its value",
            r.offset
        );
        assert!(last.is_none_or(|l| l < r.offset), "order preserved");
        last = Some(r.offset);
    }
    let present: HashMap<u64, ()> = survivors.iter().map(|r| (r.offset, ())).collect();
    for (key, (offset, value)) in newest_per_key(appended) {
        if value.is_some() || tombstones_kept {
            assert!(
                present.contains_key(&offset),
                "newest record of {key:?} at {offset} survives"
            );
        }
    }
}

#[test]
fn compaction_keeps_the_newest_record_per_key_at_its_offset() {
    for compression in [Compression::None, Compression::Zstd] {
        let (_io, _clock, env) = sim_env();
        let mut log = open(Path::new("/c"), &compact_config(), &env);
        let appended = fill(&mut log, 300, 7, 0, 1_000_000, compression);
        let before = log.size_bytes();
        let report = log.compact().expect("compact");
        assert!(
            report.ran && report.segments_rewritten > 0 && report.records_removed > 200,
            "{report:?}"
        );
        assert!(log.size_bytes() < before);
        let survivors = all_records(&log);
        assert_compacted(&survivors, &appended, true);
        // Every batch keeps its Raft index: the Raft view of the log has no holes.
        let entries = log.read_raft(1, usize::MAX, u64::MAX).expect("raft read");
        let indexes: Vec<u64> = entries
            .iter()
            .map(|b| Batch::decode(b.clone()).expect("batch").header().raft.index)
            .collect();
        assert_eq!(indexes, (1..=300).collect::<Vec<_>>());
        assert_eq!(log.next_offset(), 300);
    }
}

/// Plans and prepares a pass over what lies below `below`, as a broker does off the lock.
fn prepare_pass(log: &Log, below: u64) -> PreparedCompaction {
    log.plan_compaction(below)
        .expect("plan")
        .expect("a pass is due")
        .prepare()
        .expect("prepare")
}

/// Files of `dir` left by a compaction pass that was not installed.
fn cleaned_files(io: &dyn sluice_storage::io::Io, dir: &Path) -> Vec<String> {
    io.list_dir(dir)
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
        .collect()
}

#[test]
fn a_pass_prepared_without_the_log_installs_after_appends_made_meanwhile() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/p");
    let mut log = open(dir, &compact_config(), &env);
    let mut appended = fill(&mut log, 300, 7, 0, 1_000_000, Compression::None);
    let prepared = prepare_pass(&log, u64::MAX);
    // What a broker's producers would do while the pass runs off the lock.
    appended.extend(fill(&mut log, 100, 7, 0, 1_000_000, Compression::None));
    let report = log.install_compaction(prepared).expect("install");
    assert!(
        report.segments_rewritten > 0 && report.records_removed > 200,
        "{report:?}"
    );
    assert_compacted(&all_records(&log), &appended, true);
    assert_eq!(log.next_offset(), 400);
    assert!(cleaned_files(&io, dir).is_empty());
    // Reopened, the log reads the same.
    let survivors = all_records(&log);
    drop(log);
    let log = open(dir, &compact_config(), &env);
    assert_eq!(all_records(&log), survivors);
}

#[test]
fn a_pass_leaves_everything_at_or_above_its_bound_alone() {
    let (_io, _clock, env) = sim_env();
    let mut log = open(Path::new("/b"), &compact_config(), &env);
    fill(&mut log, 300, 7, 0, 1_000_000, Compression::None);
    // As a replica whose high watermark is 150 would plan it.
    let prepared = prepare_pass(&log, 150);
    let report = log.install_compaction(prepared).expect("install");
    assert!(report.records_removed > 0, "{report:?}");
    assert!(report.cleaned_up_to <= 150, "{report:?}");
    let survivors = all_records(&log);
    let above: Vec<u64> = survivors
        .iter()
        .map(|r| r.offset)
        .filter(|o| *o >= 150)
        .collect();
    assert_eq!(
        above,
        (150..300).collect::<Vec<_>>(),
        "nothing at or above 150 is dropped"
    );
    assert!(survivors.len() < 300);
}

#[test]
fn install_skips_segments_retention_deleted_meanwhile() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/r");
    let mut log = open(dir, &compact_config(), &env);
    let appended = fill(&mut log, 300, 7, 0, 1_000_000, Compression::None);
    let prepared = prepare_pass(&log, u64::MAX);
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::CompactAndDelete,
        retention_bytes: Some(log.size_bytes() / 2),
        ..compact_config()
    };
    log.set_config(config).expect("config");
    let retained = log.apply_retention().expect("retention");
    assert!(retained.segments_deleted > 0);
    let report = log.install_compaction(prepared).expect("install");
    assert!(report.segments_rewritten > 0, "{report:?}");
    let start = log.log_start_offset();
    let kept: Vec<_> = appended.into_iter().filter(|r| r.0 >= start).collect();
    assert_compacted(&all_records(&log), &kept, true);
    assert!(
        cleaned_files(&io, dir).is_empty(),
        "skipped rewrites are removed"
    );
}

#[test]
fn a_truncation_since_the_plan_installs_nothing() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/x");
    let mut log = open(dir, &compact_config(), &env);
    fill(&mut log, 300, 7, 0, 1_000_000, Compression::None);
    let prepared = prepare_pass(&log, u64::MAX);
    // The newest records of some keys go: older ones the pass dropped for them must stay.
    // The log then grows past where it was, as a follower's would under a new leader.
    log.truncate_suffix(250).expect("truncate");
    fill(&mut log, 100, 1000, 0, 1_000_000, Compression::None);
    let before = all_records(&log);
    let report = log.install_compaction(prepared).expect("install");
    assert_eq!(report.segments_rewritten, 0, "{report:?}");
    assert_eq!(all_records(&log), before);
    assert_eq!(before.len(), 350);
    assert!(cleaned_files(&io, dir).is_empty());
}

#[test]
fn tombstones_survive_delete_retention_then_go() {
    let (_io, clock, env) = sim_env();
    let config = LogConfig {
        delete_retention_ms: 60_000,
        ..compact_config()
    };
    let mut log = open(Path::new("/t"), &config, &env);
    let appended = fill(&mut log, 200, 5, 4, 1_000_000, Compression::None);
    log.compact().expect("compact");
    assert_compacted(&all_records(&log), &appended, true);
    assert!(
        all_records(&log).iter().any(|r| r.value.is_none()),
        "young tombstones kept"
    );
    clock.advance(120_000);
    fill(&mut log, 50, 1000, 0, 1_120_000, Compression::None);
    log.roll().expect("roll");
    let report = log.compact().expect("compact");
    assert!(report.tombstones_removed > 0, "{report:?}");
    let sealed_tombstones = all_records(&log)
        .iter()
        .filter(|r| r.value.is_none() && r.timestamp < 1_060_000)
        .count();
    assert_eq!(sealed_tombstones, 0);
}

#[test]
fn crash_at_any_point_of_compaction_leaves_old_or_new_content() {
    let dir = Path::new("/crash");
    let mut points = 0;
    for crash_after in 0.. {
        let (io, _clock, env) = sim_env();
        let mut log = open(dir, &compact_config(), &env);
        let appended = fill(&mut log, 120, 4, 0, 1_000_000, Compression::Lz4);
        log.checkpoint().expect("checkpoint");
        let original = all_records(&log);
        io.crash_after_ops(Some(crash_after));
        let finished = log.compact().is_ok();
        drop(log);
        io.power_loss(PowerLoss::KeepRandomPrefix { seed: crash_after });
        io.clear_faults();
        let log = open(dir, &compact_config(), &env);
        let after = all_records(&log);
        assert_eq!(log.next_offset(), 120);
        assert_compacted(&after, &appended, true);
        // Each segment is either wholly old or wholly compacted: recompacting converges.
        assert!(after.len() <= original.len());
        if finished {
            break;
        }
        points += 1;
        assert!(points < 10_000, "compaction never finished");
    }
    assert!(points > 10, "exercised {points} crash points");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_appends_and_compactions_keep_every_key_newest(ops in proptest::collection::vec((0u8..50, any::<bool>(), 0u8..10), 1..400), seed in any::<u64>()) {
        let (_io, _clock, env) = sim_env();
        let mut log = open(Path::new("/p"), &compact_config(), &env);
        let mut appended = Vec::new();
        let mut rng = Rng::new(seed);
        for (key, tombstone, action) in ops {
            let key = vec![key];
            let value = (!tombstone).then(|| vec![key[0]; rng.below(60) as usize]);
            let b = batch(&[(Some(&key), value.as_deref())], 1_000_000, Compression::None);
            let info = log.append(&b, next_raft(&log)).expect("append");
            appended.push((info.base_offset, key, value));
            if action == 0 {
                log.compact().expect("compact");
            }
        }
        log.roll().expect("roll");
        log.compact().expect("compact");
        assert_compacted(&all_records(&log), &appended, true);
    }
}
