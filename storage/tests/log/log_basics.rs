//! The log's everyday contract: append, read, roll, index lookups, truncation, retention,
//! a full disk and a failed fsync.

use std::path::Path;

use sluice_storage::io::PowerLoss;
use sluice_storage::{Batch, Compression, Log, LogConfig, RaftPosition, StorageError};

use crate::support::{
    all_batches, all_records, batch, control_batch, next_raft, open, sim_env, small_config,
    value_batch,
};

fn append_n(log: &mut Log, n: u64, seed: u64) {
    for i in 0..n {
        let raft = next_raft(log);
        log.append(&value_batch(seed + i, 100), raft)
            .expect("append");
    }
}

#[test]
fn appends_get_contiguous_offsets_and_read_back_zero_copy_on_real_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, report) = Log::open(dir.path(), small_config()).expect("open");
    assert_eq!(report.segments, 1);
    let three = batch(
        &[
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"2")),
            (None, Some(b"3")),
        ],
        5,
        Compression::None,
    );
    for i in 0..100u64 {
        let info = log.append(&three, next_raft(&log)).expect("append");
        assert_eq!((info.base_offset, info.next_offset), (i * 3, i * 3 + 3));
    }
    assert!(
        log.segment_count() > 1,
        "small segments roll: {}",
        log.segment_count()
    );
    let records = all_records(&log);
    assert_eq!(records.len(), 300);
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as u64)
    );
    // From the middle of a batch: the whole batch holding the offset comes first.
    let from_mid = log.read(151, usize::MAX, u64::MAX).expect("read");
    assert_eq!(
        Batch::decode(from_mid[0].clone())
            .expect("batch")
            .header()
            .base_offset,
        150
    );
    // A tiny budget still returns one batch; the upper bound (high watermark) stops reads.
    assert_eq!(log.read(0, 1, u64::MAX).expect("read").len(), 1);
    assert_eq!(log.read(0, usize::MAX, 30).expect("read").len(), 10);
    assert!(
        log.read(300, usize::MAX, u64::MAX)
            .expect("read at end")
            .is_empty()
    );
    assert!(matches!(
        log.read(301, 10, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

/// Names of the files in `dir` that wait for the background deleter.
fn deleted_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deleted"))
        .collect();
    names.sort();
    names
}

#[test]
fn handed_out_reads_stay_valid_and_deleted_segments_are_freed_once_no_reader_holds_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    append_n(&mut log, 40, 0);
    let held = log.read(0, usize::MAX, u64::MAX).expect("read");
    let copies: Vec<Vec<u8>> = held.iter().map(|b| b.to_vec()).collect();
    let report = log.apply_retention().expect("retention");
    assert!(report.segments_deleted > 0);
    // Renamed out of the log's way at once: the segment names are free again.
    assert!(!dir.path().join("00000000000000000000.log").exists());
    assert_eq!(deleted_files(dir.path()).len(), report.segments_deleted);
    // A reopen in the same process finds the same files and must not free them either.
    drop(log);
    let (log, reopened) = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(reopened.leftovers_removed, report.segments_deleted);
    assert_eq!(log.next_offset(), 40);
    // The deleter looks again every 100 ms; while the slices live it leaves the files be.
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(deleted_files(dir.path()).len(), report.segments_deleted);
    assert!(held.iter().zip(&copies).all(|(b, c)| b[..] == c[..]));
    drop(held);
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        deleted_files(dir.path()).is_empty()
    });
    assert!(gone, "left: {:?}", deleted_files(dir.path()));
    assert_eq!(log.log_start_offset(), report.log_start_offset);
}

#[test]
fn discarded_log_files_are_renamed_at_once_and_freed_when_the_log_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(dir.path(), small_config()).expect("open");
    append_n(&mut log, 40, 0);
    let segments = log.segment_count();
    log.discard_files().expect("discard");
    let raft = next_raft(&log);
    assert!(matches!(
        log.append(&value_batch(99, 100), raft),
        Err(StorageError::Failed { .. })
    ));
    assert_eq!(deleted_files(dir.path()).len(), segments);
    let live_logs = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert_eq!(live_logs, 0);
    drop(log);
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        deleted_files(dir.path()).is_empty()
    });
    assert!(gone, "left: {:?}", deleted_files(dir.path()));
}

#[test]
fn active_segment_is_reserved_with_fallocate_and_sealed_segments_are_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(dir.path(), small_config()).expect("open");
    append_n(&mut log, 60, 0);
    // Rolls leave their fsyncs and index files to the next sync.
    log.sync().expect("sync");
    let mut lens: Vec<(String, u64)> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    lens.sort();
    let (active, sealed) = lens.split_last().expect("segments");
    assert_eq!(active.1, 4096, "active segment reserved to segment_bytes");
    assert!(
        sealed.iter().all(|(_, len)| *len < 4096 && *len > 0),
        "{sealed:?}"
    );
    assert!(Path::new(&dir.path().join(format!("{}.index", &sealed[0].0[..20]))).exists());
}

#[test]
fn large_segments_are_reserved_a_step_at_a_time() {
    let step = sluice_storage::limits::RESERVE_STEP_BYTES;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 3 * step,
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    let active_len = || {
        std::fs::metadata(dir.path().join(format!("{:020}.log", 0)))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert_eq!(active_len(), step, "a new segment reserves one step");
    let batch = value_batch(0, 1 << 20);
    let mut written = 0;
    while written <= step {
        log.append(&batch, next_raft(&log)).expect("append");
        written += batch.len() as u64;
    }
    assert_eq!(
        active_len(),
        2 * step,
        "crossing a step reserves the next one"
    );
    log.sync().expect("sync");
    drop(log);
    let (log, report) = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.next_offset(), written / batch.len() as u64);
}

#[test]
fn raft_lookups_find_the_first_batch_of_an_entry_and_never_split_it() {
    let (_io, _clock, env) = sim_env();
    let mut log = open(Path::new("/raft"), &small_config(), &env);
    // Entries 1..=30, each of three batches (the leader's group commit).
    for index in 1..=30u64 {
        for j in 0..3 {
            log.append(
                &value_batch(index * 3 + j, 60),
                RaftPosition {
                    term: 2,
                    leader: 1,
                    index,
                },
            )
            .expect("append");
        }
    }
    let from_17 = log.read_raft(17, 1, u64::MAX).expect("read");
    let headers: Vec<_> = from_17
        .iter()
        .map(|b| *Batch::decode(b.clone()).expect("batch").header())
        .collect();
    assert_eq!(
        headers.len(),
        3,
        "one whole entry even with a 1-byte budget"
    );
    assert!(headers.iter().all(|h| h.raft.index == 17));
    assert_eq!(headers[0].base_offset, 16 * 3);
    let upto_20 = log.read_raft(17, usize::MAX, 20).expect("read");
    assert_eq!(upto_20.len(), 9);
    assert!(log.read_raft(31, 10, u64::MAX).expect("end").is_empty());
    let gap = log.append(
        &value_batch(0, 10),
        RaftPosition {
            term: 2,
            leader: 1,
            index: 29,
        },
    );
    assert!(matches!(
        gap,
        Err(StorageError::RaftIndexBackwards { last: 30, got: 29 })
    ));
    log.truncate_raft_suffix(25).expect("truncate");
    assert_eq!(log.last_raft_position().map(|r| r.index), Some(24));
    assert_eq!(log.next_offset(), 24 * 3);
}

#[test]
fn control_batches_take_no_offsets() {
    let (_io, _clock, env) = sim_env();
    let mut log = open(Path::new("/ctl"), &small_config(), &env);
    let control = control_batch();
    log.append(&control, next_raft(&log)).expect("append");
    log.append(&value_batch(1, 10), next_raft(&log))
        .expect("append");
    log.append(&control, next_raft(&log)).expect("append");
    log.append(&value_batch(2, 10), next_raft(&log))
        .expect("append");
    assert_eq!(log.next_offset(), 2);
    assert_eq!(
        all_records(&log)
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(log.read(1, usize::MAX, 1).expect("read below hw").len(), 0);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let (_io, _clock, env) = sim_env();
    let mut log = open(Path::new("/ts"), &small_config(), &env);
    for i in 0..200i64 {
        let b = batch(
            &[(None, Some(b"v")), (None, Some(b"w"))],
            1_000 + i * 10,
            Compression::None,
        );
        log.append(&b, next_raft(&log)).expect("append");
    }
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some(0));
    assert_eq!(
        log.offset_for_timestamp(1_000 + 57 * 10).expect("ts"),
        Some(114)
    );
    assert_eq!(
        log.offset_for_timestamp(1_000 + 57 * 10 - 3).expect("ts"),
        Some(114)
    );
    assert_eq!(log.offset_for_timestamp(1_000_000).expect("ts"), None);
}

#[test]
fn truncate_suffix_is_durable_and_offsets_are_reused() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/trunc");
    let mut log = open(dir, &small_config(), &env);
    append_n(&mut log, 50, 0);
    log.checkpoint().expect("checkpoint");
    log.truncate_suffix(20).expect("truncate");
    assert_eq!(log.next_offset(), 20);
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    let mut log = open(dir, &small_config(), &env);
    assert_eq!(
        log.next_offset(),
        20,
        "truncated batches must not come back"
    );
    append_n(&mut log, 5, 1000);
    log.sync().expect("sync");
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    let log = open(dir, &small_config(), &env);
    let records = all_records(&log);
    assert_eq!(records.len(), 25);
    assert_eq!(records[20].key.as_deref(), Some(&1000u64.to_le_bytes()[..]));
    assert!(matches!(
        open(dir, &small_config(), &env).truncate_suffix(0),
        Ok(())
    ));
}

#[test]
fn segments_roll_by_age() {
    let (_io, clock, env) = sim_env();
    let config = LogConfig {
        segment_ms: 1_000,
        ..small_config()
    };
    let mut log = open(Path::new("/age"), &config, &env);
    append_n(&mut log, 2, 0);
    assert_eq!(log.segment_count(), 1);
    clock.advance(1_000);
    append_n(&mut log, 1, 5);
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn retention_by_time_deletes_only_expired_sealed_segments() {
    let (_io, clock, env) = sim_env();
    let config = LogConfig {
        retention_ms: Some(10_000),
        ..small_config()
    };
    let mut log = open(Path::new("/ret"), &config, &env);
    for i in 0..60i64 {
        let b = batch(
            &[(None, Some(&[7u8; 100]))],
            1_000_000 + i * 1_000,
            Compression::None,
        );
        log.append(&b, next_raft(&log)).expect("append");
    }
    let segments = log.segment_count();
    clock.set(1_000_000 + 45_000);
    let report = log.apply_retention().expect("retention");
    assert!(report.segments_deleted > 0 && report.segments_deleted < segments);
    let first = all_records(&log)[0].timestamp;
    assert!(
        first <= 1_000_000 + 35_000,
        "kept a segment with unexpired records: {first}"
    );
    clock.set(10_000_000);
    log.apply_retention().expect("retention");
    assert_eq!(
        log.segment_count(),
        1,
        "the active segment is never deleted"
    );
}

#[test]
fn full_disk_is_a_clean_error_and_appends_resume_once_space_is_freed() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/full");
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let mut log = open(dir, &config, &env);
    append_n(&mut log, 30, 0);
    log.sync().expect("sync");
    io.set_space_limit(Some(io.used_bytes() + 1_000));
    let mut saw_no_space = false;
    for i in 0..100 {
        match log.append(&value_batch(100 + i, 100), next_raft(&log)) {
            Ok(_) => {}
            Err(StorageError::NoSpace { .. }) => {
                saw_no_space = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(saw_no_space);
    let before = all_records(&log).len();
    assert!(before >= 30, "stored data stays readable");
    // Opening on a disk without a free byte works too, and appends fail cleanly there.
    drop(log);
    io.set_space_limit(Some(io.used_bytes()));
    let mut log = open(dir, &config, &env);
    assert_eq!(all_records(&log).len(), before);
    let full = log.append(&value_batch(999, 4000), next_raft(&log));
    assert!(
        matches!(full, Err(StorageError::NoSpace { .. })),
        "{full:?}"
    );
    assert!(!log.is_failed(), "a full disk is not an fsync failure");
    // Retention frees space; appends resume.
    log.apply_retention().expect("retention");
    append_n(&mut log, 20, 500);
    log.sync().expect("sync");
}

#[test]
fn appends_after_make_room_never_find_the_disk_full() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/room");
    let config = small_config();
    let mut log = open(dir, &config, &env);
    append_n(&mut log, 10, 0);
    log.sync().expect("sync");
    // Room for a few segments more: the disk fills mid-run, at rolls and inside segments.
    io.set_space_limit(Some(io.used_bytes() + 3 * config.segment_bytes));
    let (mut rounds_stored, mut refused) = (0, 0);
    for round in 0..200u64 {
        let batches: Vec<Batch> = (0..1 + round % 3)
            .map(|i| value_batch(round * 10 + i, 200 + (round as usize * 37) % 600))
            .collect();
        let bytes: u64 = batches.iter().map(|b| b.len() as u64).sum();
        match log.make_room(bytes) {
            Ok(()) => {
                for batch in &batches {
                    let appended = log.append(batch, next_raft(&log));
                    assert!(appended.is_ok(), "round {round}: {appended:?}");
                }
                log.sync().expect("sync");
                rounds_stored += 1;
            }
            Err(StorageError::NoSpace { .. }) => refused += 1,
            Err(e) => panic!("round {round}: unexpected error {e}"),
        }
        assert!(!log.is_failed(), "a full disk never fails the log");
    }
    assert!(
        rounds_stored > 0 && refused > 0,
        "{rounds_stored} stored, {refused} refused"
    );
    let stored = all_records(&log).len();
    // Space comes back: rounds are stored again, after everything stored before.
    io.set_space_limit(None);
    log.make_room(1000).expect("room once space is back");
    append_n(&mut log, 5, 900);
    log.sync().expect("sync");
    assert_eq!(all_records(&log).len(), stored + 5);
}

#[test]
fn failed_fsync_fails_the_log_and_never_acknowledges_lost_data() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/eio");
    let mut log = open(dir, &small_config(), &env);
    append_n(&mut log, 5, 0);
    log.sync().expect("sync");
    append_n(&mut log, 3, 10);
    io.set_fail_sync(true);
    assert!(log.sync().is_err());
    assert!(log.is_failed());
    assert_eq!(log.flushed_offset(), 5);
    io.set_fail_sync(false);
    // No retry-then-succeed: the pages the kernel dropped are gone.
    assert!(matches!(log.sync(), Err(StorageError::Failed { .. })));
    assert!(matches!(
        log.append(&value_batch(1, 1), next_raft(&log)),
        Err(StorageError::Failed { .. })
    ));
    assert_eq!(
        log.read(0, usize::MAX, 5).expect("reads still work").len(),
        5
    );
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    let log = open(dir, &small_config(), &env);
    assert!(all_batches(&log).len() >= 5);
}

#[test]
fn reset_to_empties_the_log_and_offsets_continue_from_there() {
    let (_io, _clock, env) = sim_env();
    let dir = Path::new("/reset");
    let mut log = open(dir, &small_config(), &env);
    append_n(&mut log, 50, 0);
    assert!(matches!(
        log.reset_to(10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    log.reset_to(1_000).expect("reset");
    assert_eq!(
        (
            log.log_start_offset(),
            log.next_offset(),
            log.segment_count()
        ),
        (1_000, 1_000, 1)
    );
    assert!(log.last_raft_position().is_none());
    let info = log
        .append(
            &value_batch(7, 10),
            RaftPosition {
                term: 3,
                leader: 1,
                index: 77,
            },
        )
        .expect("append");
    assert_eq!(info.base_offset, 1_000);
    drop(log);
    let log = open(dir, &small_config(), &env);
    assert_eq!((log.log_start_offset(), log.next_offset()), (1_000, 1_001));
}

#[test]
fn crash_at_any_point_of_reset_leaves_the_old_log_or_the_reset_one() {
    let dir = Path::new("/reset-crash");
    let mut outcomes = (0, 0);
    for crash_after in 0.. {
        let (io, _clock, env) = sim_env();
        let mut log = open(dir, &small_config(), &env);
        append_n(&mut log, 50, 0);
        log.checkpoint().expect("checkpoint");
        io.crash_after_ops(Some(crash_after));
        let finished = log.reset_to(5_000).is_ok();
        drop(log);
        io.power_loss(PowerLoss::DropUnsynced);
        io.clear_faults();
        let log = open(dir, &small_config(), &env);
        match (log.log_start_offset(), log.next_offset()) {
            (0, 50) => outcomes.0 += 1,
            (5_000, 5_000) => outcomes.1 += 1,
            other => panic!("crash after {crash_after} ops left {other:?}"),
        }
        if finished {
            break;
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 1, "{outcomes:?}");
}

#[test]
fn purge_by_raft_index_deletes_whole_sealed_segments_only() {
    let (_io, _clock, env) = sim_env();
    let mut log = open(Path::new("/purge"), &small_config(), &env);
    append_n(&mut log, 60, 0);
    let segments = log.segment_count();
    let report = log.delete_segments_through_raft_index(30).expect("purge");
    assert!(report.segments_deleted > 0 && report.segments_deleted < segments);
    let first = log.first_raft_index().expect("first");
    assert!(
        first <= 31,
        "entries after the purge point are kept: first is {first}"
    );
    log.delete_segments_through_raft_index(1_000)
        .expect("purge all");
    assert_eq!(log.segment_count(), 1, "the active segment stays");
}

#[test]
fn control_batches_alone_never_roll_and_reset_to_the_end_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 1024,
            ..small_config()
        },
    )
    .expect("open");
    let control = control_batch();
    // 101 control batches of 85 bytes: far more than one 1 KiB segment holds.
    for index in 0..=100 {
        let raft = RaftPosition {
            term: 1,
            leader: 0,
            index,
        };
        log.append(&control, raft).expect("append");
    }
    assert_eq!(
        log.segment_count(),
        1,
        "segments that take no offsets do not roll"
    );
    log.roll().expect("roll is a no-op");
    assert_eq!(log.segment_count(), 1);
    log.sync().expect("sync");
    log.reset_to(log.next_offset()).expect("reset to the end");
    assert_eq!(log.next_offset(), 0);
}

#[test]
fn an_unlocked_sync_makes_appends_durable_and_its_failure_fails_the_log() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/unlocked");
    let mut log = open(dir, &small_config(), &env);
    append_n(&mut log, 30, 0);
    let pending = log.begin_sync().expect("begin");
    let result = pending.run();
    log.finish_sync(&pending, result).expect("finish");
    assert_eq!(log.flushed_offset(), 30);
    append_n(&mut log, 3, 100);
    io.set_fail_sync(true);
    let pending = log.begin_sync().expect("begin");
    let result = pending.run();
    assert!(log.finish_sync(&pending, result).is_err());
    assert!(log.is_failed());
    assert_eq!(log.flushed_offset(), 30);
    drop(log);
    io.set_fail_sync(false);
    io.power_loss(PowerLoss::DropUnsynced);
    let log = open(dir, &small_config(), &env);
    assert_eq!(
        log.next_offset(),
        30,
        "the synced appends survived, the failed ones did not"
    );
}

#[test]
fn synced_pages_behind_the_cached_tail_are_released_and_unsynced_ones_never() {
    // No cached tail at all puts every sync's freshly synced bytes up for release.
    for keep in [0, 3 << 20] {
        release_behind_a_cached_tail_of(keep);
    }
}

fn release_behind_a_cached_tail_of(keep: u64) {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/released");
    let config = LogConfig {
        segment_bytes: 2 << 20,
        cached_tail_bytes: Some(keep),
        ..small_config()
    };
    let mut log = open(dir, &config, &env);
    let mut written = 0u64;
    for i in 0..200u64 {
        let batch = value_batch(i, 60 << 10);
        written += batch.len() as u64;
        log.append(&batch, next_raft(&log)).expect("append");
        // Both ways of syncing release: inline, and unlocked (as the Raft log store does).
        match i % 3 {
            0 => log.sync().expect("sync"),
            1 => {
                let pending = log.begin_sync().expect("begin");
                let result = pending.run();
                log.finish_sync(&pending, result).expect("finish");
            }
            _ => {}
        }
        assert_eq!(io.released_unsynced_bytes(), 0, "released unsynced bytes");
        assert!(
            io.released_bytes() <= written.saturating_sub(keep),
            "released into the cached tail of {keep}: {} of {written}",
            io.released_bytes()
        );
    }
    let step = sluice_storage::limits::RELEASE_STEP_BYTES;
    assert!(
        io.released_bytes() + keep + 2 * step + (180 << 10) >= written,
        "released {} of {written} with a cached tail of {keep}",
        io.released_bytes()
    );
    assert_eq!(all_records(&log).len(), 200, "everything still reads back");
}

#[test]
fn released_pages_of_real_files_read_back_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = no_cached_tail(4 << 20);
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    let mut held = Vec::new();
    for i in 0..150u64 {
        log.append(&value_batch(i, 60 << 10), next_raft(&log))
            .expect("append");
        log.sync().expect("sync");
        // Reading maps the pages into this process; releasing must unmap them and slices
        // handed out before must still read the same bytes afterwards.
        held.extend(log.read(i, 1, u64::MAX).expect("read"));
    }
    for (i, bytes) in held.into_iter().enumerate() {
        let records = Batch::decode(bytes)
            .expect("decode")
            .records_vec()
            .expect("records");
        assert_eq!(records[0].offset, i as u64);
    }
    assert_eq!(all_records(&log).len(), 150);
    drop(log);
    let (log, _) = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(all_records(&log).len(), 150);
}

#[test]
fn released_ranges_are_read_past_the_page_cache_batch_for_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = no_cached_tail(4 << 20);
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    const BATCHES: u64 = 150;
    for i in 0..BATCHES {
        log.append(&value_batch(i, 60 << 10), next_raft(&log))
            .expect("append");
        log.sync().expect("sync");
    }
    for reopen in [false, true] {
        if reopen {
            // Sealed segments found at open are not in this process's cache either.
            drop(log);
            log = Log::open(dir.path(), config.clone()).expect("reopen").0;
            assert!(
                log.reads_from_disk(0),
                "a sealed segment at open reads from disk"
            );
        }
        read_back_from_disk(&log, BATCHES, dir.path());
    }
}

fn read_back_from_disk(log: &Log, batches: u64, dir: &Path) {
    const BATCHES: u64 = 150;
    assert_eq!(batches, BATCHES);
    let before = sluice_storage::io::direct_read_bytes();
    // Budgets below one batch, of a few batches, of a whole window and beyond one.
    for max_bytes in [1, 200 << 10, 4 << 20, 9 << 20] {
        let mut offset = 0;
        while offset < BATCHES {
            let batches = log.read(offset, max_bytes, u64::MAX).expect("read");
            assert!(!batches.is_empty(), "nothing read at {offset}");
            for bytes in batches {
                let records = Batch::decode(bytes)
                    .expect("decode")
                    .records_vec()
                    .expect("records");
                let expected = value_batch(offset, 60 << 10)
                    .records_vec()
                    .expect("records");
                assert_eq!(records[0].offset, offset, "budget {max_bytes}");
                assert_eq!(records[0].value, expected[0].value, "value at {offset}");
                offset += 1;
            }
        }
    }
    if direct_io_works(dir) {
        assert!(
            // Most of the sealed segments' 8 MiB at least once (later passes may find the windows
            // that were kept).
            sluice_storage::io::direct_read_bytes() - before >= 6 << 20,
            "the released log was read past the page cache: {} bytes",
            sluice_storage::io::direct_read_bytes() - before
        );
    }
}

#[test]
fn a_truncated_and_rewritten_range_never_reads_back_its_old_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = no_cached_tail(64 << 20);
    let (mut log, _) = Log::open(dir.path(), config).expect("open");
    let fill = |log: &mut Log, from: u64, seed: u64| {
        for i in from..200 {
            log.append(&value_batch(seed + i, 30 << 10), next_raft(log))
                .expect("append");
            log.sync().expect("sync");
        }
    };
    fill(&mut log, 0, 0);
    // Read (and keep windows of) the released middle, then rewrite it with other values.
    let before = sluice_storage::io::direct_read_bytes();
    assert!(!log.read(100, 1 << 20, u64::MAX).expect("read").is_empty());
    assert!(
        !direct_io_works(dir.path()) || sluice_storage::io::direct_read_bytes() > before,
        "the middle was read past the page cache"
    );
    log.truncate_suffix(50).expect("truncate");
    fill(&mut log, 50, 1_000);
    // The kept window began at offset 100: read inside it first.
    for offset in [100, 150, 50] {
        let bytes = log.read(offset, 1, u64::MAX).expect("read").remove(0);
        let records = Batch::decode(bytes)
            .expect("decode")
            .records_vec()
            .expect("records");
        let expected = value_batch(1_000 + offset, 30 << 10)
            .records_vec()
            .expect("records");
        assert_eq!(
            records[0].value, expected[0].value,
            "offset {offset} reads its new value"
        );
    }
}

/// A real-file log config whose synced pages are all released (no cached tail).
fn no_cached_tail(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        cached_tail_bytes: Some(0),
        ..small_config()
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT` (tmpfs refuses).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    std::fs::write(&probe, b"x").is_ok()
        && std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok()
}

/// A simulated log with segments large enough that no roll interrupts the hints.
fn writeback_log(
    dir: &Path,
) -> (
    sluice_storage::io::SimIo,
    sluice_storage::LogEnv,
    LogConfig,
    Log,
) {
    let (io, _clock, env) = sim_env();
    let config = LogConfig {
        segment_bytes: 64 << 20,
        ..small_config()
    };
    let log = open(dir, &config, &env);
    (io, env, config, log)
}

#[test]
fn writeback_starts_behind_the_writer_in_steps_of_whole_pages() {
    let dir = Path::new("/writeback");
    let (io, env, config, mut log) = writeback_log(dir);
    let step = sluice_storage::limits::WRITEBACK_STEP_BYTES;
    let mut written = 0u64;
    let mut hints_after_big = 0;
    // Small batches, one big one (written in pieces), then small ones again.
    let sizes = (0..40)
        .map(|_| 7_000)
        .chain([1 << 20])
        .chain((0..40).map(|_| 7_000));
    for (i, size) in sizes.enumerate() {
        let batch = value_batch(i as u64, size);
        written += batch.len() as u64;
        log.append(&batch, next_raft(&log)).expect("append");
        let hints = io.writeback_hints();
        let mut end = 0;
        for &(position, len) in &hints {
            assert_eq!(position, end, "hints are contiguous from the start");
            assert_eq!((position % 4096, len % 4096), (0, 0), "whole pages only");
            assert!(len >= step, "a hint covers at least a step: {len}");
            end = position + len;
        }
        assert!(end <= written, "no hint runs ahead of the writer");
        assert!(
            written - end < step + 4096,
            "at most a step stays unstarted: {end} of {written}"
        );
        if size == 1 << 20 {
            hints_after_big = hints.len();
        }
    }
    assert!(
        hints_after_big >= (1 << 20) / step as usize,
        "the big batch started writeback piece by piece: {hints_after_big} hints"
    );
    log.sync().expect("sync");
    io.power_loss(PowerLoss::DropUnsynced);
    let log = open(dir, &config, &env);
    assert_eq!(all_records(&log).len(), 81, "everything synced survives");
}

#[test]
fn writeback_hints_on_real_files_are_accepted_and_the_data_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 16 << 20,
        ..small_config()
    };
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    for i in 0..6u64 {
        log.append(&value_batch(i, 1 << 20), next_raft(&log))
            .expect("append with writeback hints");
    }
    log.sync().expect("sync");
    drop(log);
    let (log, _) = Log::open(dir.path(), config).expect("reopen");
    let records = all_records(&log);
    assert_eq!(records.len(), 6);
    for (i, record) in records.iter().enumerate() {
        let expected = value_batch(i as u64, 1 << 20)
            .records_vec()
            .expect("records");
        assert_eq!(
            record.value, expected[0].value,
            "record {i} reads back intact"
        );
    }
}

#[test]
fn writeback_hints_skip_what_a_sync_already_wrote() {
    let (io, _env, _config, mut log) = writeback_log(Path::new("/writeback-synced"));
    let step = sluice_storage::limits::WRITEBACK_STEP_BYTES;
    // Rounds smaller than a step, each synced: their fsync writes them, no hint is due.
    for i in 0..40u64 {
        log.append(&value_batch(i, 30_000), next_raft(&log))
            .expect("append");
        log.sync().expect("sync");
    }
    assert_eq!(
        io.writeback_hints(),
        Vec::new(),
        "small synced rounds need no hint"
    );
    // A round of several steps: hints cover only its own pages, none the syncs wrote.
    assert_eq!(log.segment_count(), 1);
    let synced = log.size_bytes();
    for i in 40..50u64 {
        log.append(&value_batch(i, 60_000), next_raft(&log))
            .expect("append");
    }
    let hints = io.writeback_hints();
    assert!(
        hints.len() >= 3,
        "a 600 KB round starts writeback: {hints:?}"
    );
    assert!(
        hints[0].0 >= synced / 4096 * 4096 && hints[0].0 + step > synced,
        "the first hint starts at the page the last sync ended in: {hints:?}, synced {synced}"
    );
}

#[test]
fn bytes_after_a_raft_index_count_what_a_restart_would_re_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(dir.path(), small_config()).expect("open");
    let mut sizes = Vec::new();
    for i in 0..60u64 {
        let batch = value_batch(i, 100);
        sizes.push(batch.len() as u64);
        log.append(&batch, next_raft(&log)).expect("append");
    }
    assert!(log.segment_count() > 2, "crosses segments");
    let total: u64 = sizes.iter().sum();
    assert_eq!(log.bytes_after_raft_index(None).expect("all"), total);
    assert_eq!(log.bytes_after_raft_index(Some(60)).expect("none"), 0);
    for k in [1u64, 7, 25, 59] {
        let after: u64 = sizes.iter().skip(k as usize).sum();
        assert_eq!(
            log.bytes_after_raft_index(Some(k)).expect("some"),
            after,
            "after {k}"
        );
    }
}

#[test]
fn an_entry_that_fails_part_way_fails_the_log_and_is_cut_on_reopen() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/entry");
    let config = small_config();
    let mut log = open(dir, &config, &env);
    append_n(&mut log, 3, 0);
    log.sync().expect("sync");
    let whole = log.next_offset();
    // No room for another segment: the entry's roll fails after its first batches.
    io.set_space_limit(Some(io.used_bytes()));
    let batches: Vec<Batch> = (0..40).map(|i| value_batch(100 + i, 100)).collect();
    let failed = log.append_entry(&batches, next_raft(&log));
    assert!(
        matches!(failed, Err(StorageError::NoSpace { .. })),
        "{failed:?}"
    );
    assert!(log.next_offset() > whole, "some of the entry was written");
    assert!(log.is_failed(), "no other entry may follow a part of one");
    drop(log);
    io.clear_faults();
    let (log, report) = Log::open_with(dir, config, env).expect("reopen");
    assert_eq!(log.next_offset(), whole, "the partial entry is cut");
    assert!(report.truncated_bytes > 0, "{report:?}");
}
