//! The recovery checkpoint follows the syncs: damage to synced data is corruption (refused,
//! nothing cut), and only what was never synced is a torn tail that recovery may cut.

use std::path::{Path, PathBuf};

use sluice_storage::io::{PowerLoss, SimIo};
use sluice_storage::{BatchHeader, Log, LogConfig, LogEnv, StorageError};

use crate::support::{next_raft, sim_env, small_config, value_batch};

fn config(checkpoint_interval_ms: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        checkpoint_interval_ms,
        ..small_config()
    }
}

/// Appends `n` batches starting at seed `from`, syncing after each if `sync`.
fn append(log: &mut Log, from: u64, n: u64, sync: bool) {
    for i in from..from + n {
        log.append(&value_batch(i, 200), next_raft(log))
            .expect("append");
        if sync {
            log.sync().expect("sync");
        }
    }
}

fn segment(dir: &Path) -> PathBuf {
    dir.join("00000000000000000000.log")
}

/// Byte position of the `n`th batch of the segment, by walking the headers.
fn batch_position(io: &SimIo, dir: &Path, n: usize) -> u64 {
    let bytes = io.file_bytes(&segment(dir)).expect("segment");
    let mut at = 0usize;
    for _ in 0..n {
        let header = BatchHeader::decode(&bytes[at..]).expect("header");
        at += header.batch_len() as usize;
    }
    at as u64
}

/// A log of 10 synced batches whose process died (no shutdown checkpoint) and whose machine
/// lost power; `interval` is the checkpoint interval it ran with.
fn crashed(interval: u64) -> (SimIo, LogEnv, &'static Path) {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/marked");
    let (mut log, _) = Log::open_with(dir, config(interval), env.clone()).expect("open");
    append(&mut log, 0, 10, true);
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    (io, env, dir)
}

#[test]
fn a_bit_flip_in_synced_data_is_refused_and_nothing_is_cut() {
    let (io, env, dir) = crashed(0);
    // A records byte of the 4th of 10 synced batches.
    let position = batch_position(&io, dir, 3) + 100;
    io.corrupt(&segment(dir), position, 0x10).expect("flip");
    let before = io.file_bytes(&segment(dir));
    let err = Log::open_with(dir, config(0), env.clone()).expect_err("refused");
    match &err {
        StorageError::Corruption {
            segment: path,
            reason,
            ..
        } => {
            assert_eq!(path, &segment(dir));
            assert!(reason.contains("offset 3"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(io.file_bytes(&segment(dir)), before, "nothing was cut");
    // And it stays refused: a second open does not "repair" it either.
    assert!(Log::open_with(dir, config(0), env).is_err());
}

#[test]
fn a_torn_unsynced_tail_is_cut_and_the_synced_batches_stay() {
    for seed in 0..20 {
        let (io, _clock, env) = sim_env();
        let dir = Path::new("/torn");
        let (mut log, _) = Log::open_with(dir, config(0), env.clone()).expect("open");
        append(&mut log, 0, 6, true);
        append(&mut log, 6, 5, false);
        drop(log);
        io.power_loss(PowerLoss::KeepRandomPrefix { seed });
        let (log, report) = Log::open_with(dir, config(0), env).expect("a torn tail opens");
        assert!(
            (6..=11).contains(&log.next_offset()),
            "seed {seed}: {}",
            log.next_offset()
        );
        assert_eq!(report.segments_removed, 0, "seed {seed}");
    }
}

#[test]
fn the_checkpoint_follows_syncs_at_its_interval() {
    let (io, clock, env) = sim_env();
    let dir = Path::new("/interval");
    let (mut log, _) = Log::open_with(dir, config(1000), env.clone()).expect("open");
    // The first sync carries a mark; the next ones within the interval do not.
    append(&mut log, 0, 3, true);
    clock.advance(1000);
    append(&mut log, 3, 3, true);
    append(&mut log, 6, 3, true);
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    // The 4th sync (after offset 3) carried the mark: offsets 0-3 are below it.
    let covered = batch_position(&io, dir, 3) + 100;
    io.corrupt(&segment(dir), covered, 0x01).expect("flip");
    let err = Log::open_with(dir, config(1000), env.clone()).expect_err("below the mark");
    assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
    io.corrupt(&segment(dir), covered, 0x01).expect("flip back");
    // Batch 7 was synced after the mark: within the window the interval leaves, so a flip
    // there counts as a torn tail and is cut (this is the bound the interval sets).
    let after = batch_position(&io, dir, 7) + 100;
    io.corrupt(&segment(dir), after, 0x01).expect("flip");
    let (log, report) = Log::open_with(dir, config(1000), env).expect("above the mark");
    assert_eq!(log.next_offset(), 7);
    assert!(report.truncated_bytes > 0);
}

#[test]
fn a_mark_taken_before_a_truncation_never_lands_above_the_cut() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/race");
    let (mut log, _) = Log::open_with(dir, config(0), env.clone()).expect("open");
    append(&mut log, 0, 5, false);
    let pending = log.begin_sync().expect("begin");
    // A truncation (or a snapshot's reset) slips in between the sync's start and its fsync.
    log.truncate_suffix(2).expect("truncate");
    let result = pending.run();
    log.finish_sync(&pending, result).expect("finish");
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    let (log, _) =
        Log::open_with(dir, config(0), env).expect("the checkpoint is not above the cut");
    assert_eq!(log.next_offset(), 2);
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_found_when_raft_reads_it() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/sealed");
    let small = LogConfig {
        segment_bytes: 4096,
        ..config(0)
    };
    let (mut log, _) = Log::open_with(dir, small.clone(), env.clone()).expect("open");
    append(&mut log, 0, 40, true);
    assert!(log.segment_count() > 2);
    log.checkpoint().expect("shutdown checkpoint");
    drop(log);
    // The first segment is sealed, below the checkpoint, with intact index files: the open
    // trusts it without a scan.
    let position = batch_position(&io, dir, 1) + 100;
    io.corrupt(&segment(dir), position, 0x04).expect("flip");
    let (log, _) = Log::open_with(dir, small, env).expect("opens on its index files");
    let flag = log.corruption_flag();
    assert!(flag.get().is_none());
    let err = log
        .read_raft(1, usize::MAX, u64::MAX)
        .expect_err("the damaged batch is refused");
    match err {
        StorageError::Corruption {
            segment: path,
            reason,
            ..
        } => {
            assert_eq!(path, segment(dir));
            assert!(reason.contains("offset 1"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    // The owner (the broker) sees it without the log's lock and takes the partition offline.
    let why = flag.get().expect("the log is marked corrupt");
    assert!(why.contains("records CRC mismatch"), "{why}");
}

#[test]
fn a_roll_during_an_unlocked_sync_still_moves_the_checkpoint_into_the_new_segment() {
    let (io, clock, env) = sim_env();
    let dir = Path::new("/rolled");
    let small = LogConfig {
        segment_bytes: 4096,
        ..config(1000)
    };
    let (mut log, _) = Log::open_with(dir, small.clone(), env.clone()).expect("open");
    append(&mut log, 0, 2, false);
    // A sync that carries a mark (the open's own one was a second ago) begins; another
    // task's `make_room` rolls meanwhile.
    clock.advance(1000);
    let pending = log.begin_sync().expect("begin");
    log.make_room(4096).expect("room in a new segment");
    let result = pending.run();
    log.finish_sync(&pending, result).expect("finish");
    // The next sync is the first after the roll: it must move the checkpoint into the new
    // segment, although the clock has not moved past the interval.
    append(&mut log, 2, 3, false);
    log.sync().expect("sync");
    drop(log);
    io.power_loss(PowerLoss::DropUnsynced);
    let new_segment = dir.join("00000000000000000002.log");
    let bytes = io.file_bytes(&new_segment).expect("new segment");
    let second = BatchHeader::decode(&bytes)
        .expect("first batch")
        .batch_len()
        + 100;
    io.corrupt(&new_segment, second, 0x08).expect("flip");
    let err = Log::open_with(dir, small, env).expect_err("synced data below the mark is refused");
    assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
}

#[test]
fn a_full_disk_when_a_seal_writes_its_index_files_does_not_fail_the_sync() {
    let (io, _clock, env) = sim_env();
    let dir = Path::new("/full");
    let small = LogConfig {
        segment_bytes: 4096,
        ..config(0)
    };
    let (mut log, _) = Log::open_with(dir, small.clone(), env.clone()).expect("open");
    append(&mut log, 0, 2, false);
    log.make_room(4096).expect("room in a new segment");
    append(&mut log, 2, 2, false);
    // No room for anything new: the sealed segment's index files cannot be written.
    io.set_space_limit(Some(io.used_bytes()));
    log.sync()
        .expect("index files are derived data: the sync still succeeds");
    assert!(!log.is_failed());
    drop(log);
    io.set_space_limit(None);
    io.power_loss(PowerLoss::DropUnsynced);
    let (log, _) = Log::open_with(dir, small, env).expect("reopens, rebuilding the index");
    assert_eq!(log.next_offset(), 4, "every synced batch is there");
}
