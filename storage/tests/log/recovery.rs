//! Recovery on real files: torn tails are cut, corruption below the checkpoint is refused,
//! indexes are rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use sluice_storage::{BatchHeader, Log, LogConfig, StorageError};

use crate::support::{all_records, next_raft, small_config, value_batch};

const BATCHES: u64 = 50;

/// A log of `BATCHES` batches over several segments, the last 5 after the checkpoint.
fn crashed_log() -> (tempfile::TempDir, LogConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    for i in 0..BATCHES {
        if i == BATCHES - 5 {
            log.checkpoint().expect("checkpoint");
        }
        log.append(&value_batch(i, 100), next_raft(&log))
            .expect("append");
    }
    // Dropped without sync or checkpoint: the process "died" after writing.
    drop(log);
    (dir, config)
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// (position, length) of every batch in a segment file.
fn batch_spans(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(path).expect("read segment");
    let mut spans = Vec::new();
    let mut at = 0;
    while let Ok(h) = BatchHeader::decode(&bytes[at..]) {
        spans.push((at, h.batch_len() as usize));
        at += h.batch_len() as usize;
    }
    spans
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read");
    f(&mut bytes);
    fs::write(path, bytes).expect("write");
}

fn reopen(
    dir: &Path,
    config: &LogConfig,
) -> Result<(Log, sluice_storage::RecoveryReport), StorageError> {
    Log::open(dir, config.clone())
}

#[test]
fn clean_zero_filled_preallocated_tail_is_not_a_truncation() {
    let (dir, config) = crashed_log();
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.truncated_at, None);
    assert_eq!(
        report.segments_scanned, 1,
        "only the segment after the checkpoint is scanned"
    );
    assert_eq!(log.next_offset(), BATCHES);
}

fn assert_tail_cut(dir: &Path, config: &LogConfig, surviving: u64) {
    let (log, report) = reopen(dir, config).expect("open");
    assert!(report.truncated_bytes > 0, "{report:?}");
    assert!(report.truncated_at.is_some());
    assert_eq!(log.next_offset(), surviving);
    assert_eq!(all_records(&log).len() as u64, surviving);
    drop(log);
    // The cut is durable: a second open finds a clean log.
    let (log, report) = reopen(dir, config).expect("reopen");
    assert_eq!((report.truncated_bytes, log.next_offset()), (0, surviving));
}

#[test]
fn tail_cut_mid_header_is_truncated() {
    let (dir, config) = crashed_log();
    let active = log_files(dir.path()).pop().expect("active");
    let (at, _) = *batch_spans(&active).last().expect("batches");
    damage(&active, |b| b[at + 40..].fill(0));
    assert_tail_cut(dir.path(), &config, BATCHES - 1);
}

#[test]
fn tail_cut_mid_records_is_truncated() {
    let (dir, config) = crashed_log();
    let active = log_files(dir.path()).pop().expect("active");
    let (at, len) = *batch_spans(&active).last().expect("batches");
    damage(&active, |b| b[at + len - 30..].fill(0));
    assert_tail_cut(dir.path(), &config, BATCHES - 1);
}

#[test]
fn flipped_bit_in_a_batch_after_the_checkpoint_is_truncated_with_what_follows() {
    let (dir, config) = crashed_log();
    let active = log_files(dir.path()).pop().expect("active");
    let spans = batch_spans(&active);
    let (at, len) = spans[spans.len() - 2];
    damage(&active, |b| b[at + len / 2] ^= 0x10);
    assert_tail_cut(dir.path(), &config, BATCHES - 2);
}

#[test]
fn flipped_bit_below_the_checkpoint_is_reported_and_nothing_is_truncated() {
    let (dir, config) = crashed_log();
    let active = log_files(dir.path()).pop().expect("active");
    let spans = batch_spans(&active);
    assert!(
        spans.len() > 5,
        "the checkpoint falls inside the active segment"
    );
    let (at, len) = spans[0];
    damage(&active, |b| b[at + len - 3] ^= 0x01);
    let before = fs::read(&active).expect("read");
    let err = reopen(dir.path(), &config).expect_err("corruption must fail the open");
    assert!(
        matches!(&err, StorageError::Corruption { position: 0, .. }),
        "{err}"
    );
    assert_eq!(
        fs::read(&active).expect("read"),
        before,
        "durable data is never truncated"
    );
}

#[test]
fn deleted_index_is_rebuilt_and_a_damaged_sealed_segment_without_one_is_refused() {
    let (dir, config) = crashed_log();
    let sealed = log_files(dir.path()).remove(1);
    let index = sealed.with_extension("index");
    fs::remove_file(&index).expect("rm index");
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(report.indexes_rebuilt, 1);
    assert!(index.exists());
    assert_eq!(all_records(&log).len() as u64, BATCHES);
    drop(log);
    fs::remove_file(&index).expect("rm index");
    damage(&sealed, |b| b[120] ^= 0x04);
    assert!(matches!(
        reopen(dir.path(), &config),
        Err(StorageError::Corruption { .. })
    ));
}

#[test]
fn inconsistent_index_is_rebuilt() {
    let (dir, config) = crashed_log();
    let sealed = log_files(dir.path()).remove(0);
    let index = sealed.with_extension("index");
    damage(&index, |b| b[20] ^= 0xff);
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(report.indexes_rebuilt, 1);
    assert_eq!(
        log.read(3, usize::MAX, u64::MAX).expect("read").len() as u64,
        BATCHES - 3
    );
}

#[test]
fn leftover_temporary_files_are_removed() {
    let (dir, config) = crashed_log();
    fs::write(dir.path().join("recovery-checkpoint.tmp"), b"partial").expect("write");
    fs::write(
        dir.path().join("00000000000000000000.log.cleaned"),
        b"partial",
    )
    .expect("write");
    let (_, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(report.leftovers_removed, 2);
    assert!(!dir.path().join("recovery-checkpoint.tmp").exists());
}

/// A log of 10 one-batch entries, a checkpoint, then one entry of 3 batches and one of
/// `last_entry_batches` batches, dropped without a sync.
fn log_ending_in_entries(last_entry_batches: u64) -> (tempfile::TempDir, LogConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let (mut log, _) = Log::open(dir.path(), config.clone()).expect("open");
    for i in 0..10 {
        log.append(&value_batch(i, 100), next_raft(&log))
            .expect("append");
    }
    log.checkpoint().expect("checkpoint");
    for (first, count) in [(10, 3), (13, last_entry_batches)] {
        let batches: Vec<_> = (first..first + count)
            .map(|i| value_batch(i, 100))
            .collect();
        log.append_entry(&batches, next_raft(&log))
            .expect("append entry");
    }
    drop(log);
    (dir, config)
}

#[test]
fn an_entry_torn_between_its_batches_is_cut_whole() {
    let (dir, config) = log_ending_in_entries(3);
    let active = log_files(dir.path()).pop().expect("active");
    let (at, _) = *batch_spans(&active).last().expect("batches");
    // The last batch is lost at a batch boundary: every batch left is valid on its own.
    damage(&active, |b| b[at..].fill(0));
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(log.next_offset(), 13, "entry 12 goes whole, entry 11 stays");
    assert_eq!(log.last_raft_position().map(|r| r.index), Some(11));
    assert!(report.truncated_bytes > 0, "{report:?}");
    let reason = report.truncated_at.map(|t| t.2).unwrap_or_default();
    assert!(reason.contains("lost its last batches"), "{reason}");
    drop(log);
    let (log, report) = reopen(dir.path(), &config).expect("reopen");
    assert_eq!((report.truncated_bytes, log.next_offset()), (0, 13));
}

#[test]
fn an_entry_torn_after_a_roll_is_cut_back_into_the_sealed_segment() {
    // 40 batches of ~190 bytes do not fit one 4 KiB segment: the entry straddles a roll.
    let (dir, config) = log_ending_in_entries(40);
    let files = log_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    let active = files.last().expect("active");
    damage(active, |b| b.fill(0));
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!(log.next_offset(), 13);
    assert_eq!(log.last_raft_position().map(|r| r.index), Some(11));
    assert!(report.truncated_bytes > 0, "{report:?}");
}

#[test]
fn whole_entries_of_several_batches_survive_a_reopen() {
    let (dir, config) = log_ending_in_entries(3);
    let (log, report) = reopen(dir.path(), &config).expect("open");
    assert_eq!((report.truncated_bytes, log.next_offset()), (0, 16));
    assert_eq!(log.last_raft_position().map(|r| r.index), Some(12));
}
