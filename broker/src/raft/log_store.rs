//! openraft's `RaftLogStorage` over a `sluice_storage::Log`: the partition's segmented log
//! is the Raft log, with no second copy of record bytes.
//!
//! Appends write every entry's batches and report the flush to openraft only after
//! `Log::sync` returned; the vote is durable before `save_vote` returns; `truncate` cuts
//! the conflicting suffix durably; `purge` records the purge point and deletes whole
//! segments behind it (entries after the point in a shared segment are filtered on read).
//! Entries appended and not yet applied are also held in memory ([`RecentEntries`]), so
//! openraft's read-back before apply does not go to the log.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, Vote};
use sluice_storage::io::Io;
use sluice_storage::{Batch, Log, StorageError};
use tokio::sync::watch;

use super::entry_codec::{GroupKind, batches_to_entry, entry_to_batches};
use super::raft_state::RaftState;
use super::recent_entries::RecentEntries;
use super::{
    LogId, NodeId, RaftStorageError, TypeConfig, log_id_of, raft_position, read_logs_error,
    write_logs_error,
};

type Entry = openraft::Entry<TypeConfig>;

/// Bytes one `limited_get_log_entries` call returns at most (at least one entry), so
/// replication RPCs of large batches stay bounded.
const REPLICATION_READ_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The committed log id is a hint; write it at most this often.
const COMMITTED_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// A group's log, shared by the log store, its readers and the partition's fetch path.
pub type SharedLog = Arc<RwLock<Log>>;

/// The log store of one Raft group. Cloning shares it (the clone is openraft's reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: GroupKind,
    log: SharedLog,
    io: Arc<dyn Io>,
    dir: PathBuf,
    /// The state as last written; held only to read or swap it, never across file I/O.
    state: Mutex<RaftState>,
    /// Serialises writers of the state file, so readers of `state` (every entry read
    /// checks `purged`) never wait for its fsyncs.
    state_writer: Mutex<()>,
    committed_saved_at: Mutex<Option<Instant>>,
    /// Appended entries the state machine has not applied yet, read without the log.
    recent: Arc<RecentEntries>,
    /// How far the log is fsynced on this replica (acks=leader waits for it).
    durable_end: watch::Sender<DurableEnd>,
}

/// How far a replica's log is fsynced: its end offset and the Raft position of its last
/// entry (which term and leader wrote it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableEnd {
    /// The offset after the last fsynced record.
    pub next_offset: u64,
    /// The last entry's Raft position, if any.
    pub last: Option<sluice_storage::RaftPosition>,
}

impl DurableEnd {
    fn of(log: &Log) -> Self {
        Self {
            next_offset: log.next_offset(),
            last: log.last_raft_position(),
        }
    }
}

/// A poisoned lock means a thread panicked mid-operation on the log: refuse to go on.
fn poisoned() -> RaftStorageError {
    read_logs_error(std::io::Error::other("log lock poisoned"))
}

impl LogStore {
    /// A store over `log`, with its Raft state file in `dir`.
    pub fn open(
        kind: GroupKind,
        log: SharedLog,
        io: Arc<dyn Io>,
        dir: &Path,
    ) -> Result<Self, RaftStorageError> {
        let state = RaftState::read(io.as_ref(), dir).map_err(read_logs_error)?;
        let end = DurableEnd::of(&*log.read().map_err(|_| poisoned())?);
        let inner = Inner {
            kind,
            log,
            io,
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            state_writer: Mutex::new(()),
            committed_saved_at: Mutex::new(None),
            recent: Arc::new(RecentEntries::default()),
            durable_end: watch::channel(end).0,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Forgets, in memory, that this replica's vote was a leader's committed vote: a replica
    /// whose recovery cut its log must not resume leading at once at start, as openraft
    /// lets a restarted leader do (`raft::suspect`). Call before the group starts.
    pub fn forget_leadership(&self) -> Result<(), RaftStorageError> {
        let mut state = self.inner.state.lock().map_err(|_| poisoned())?;
        if let Some(vote) = state.vote.as_mut() {
            vote.committed = false;
        }
        Ok(())
    }

    /// How far this replica has fsynced its log; it goes down when a conflicting suffix is
    /// truncated.
    pub fn durable_end(&self) -> watch::Receiver<DurableEnd> {
        self.inner.durable_end.subscribe()
    }

    /// The log this store writes.
    pub fn log(&self) -> &SharedLog {
        &self.inner.log
    }

    /// The entries appended and not yet applied; the group's state machine forgets them
    /// as it applies them.
    pub fn recent(&self) -> Arc<RecentEntries> {
        Arc::clone(&self.inner.recent)
    }

    fn state(&self) -> Result<RaftState, RaftStorageError> {
        self.inner
            .state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| poisoned())
    }

    fn update_state(&self, f: impl FnOnce(&mut RaftState)) -> Result<(), RaftStorageError> {
        let _writer = self.inner.state_writer.lock().map_err(|_| poisoned())?;
        let mut next = self.state()?;
        f(&mut next);
        next.write(self.inner.io.as_ref(), &self.inner.dir)
            .map_err(write_logs_error)?;
        let mut current = self.inner.state.lock().map_err(|_| poisoned())?;
        // `save_committed` raises the in-memory hint without the writer lock: keep the newer.
        next.committed = next.committed.max(current.committed);
        *current = next;
        Ok(())
    }

    /// Entries with indexes in `[start, end)`, at most about `max_bytes` (never none when
    /// the range holds any).
    fn read_entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let purged = self.state()?.purged.map(|p| p.index);
        let start = start.max(purged.map_or(0, |p| p + 1));
        let log = self.inner.log.read().map_err(|_| poisoned())?;
        let (Some(first), Some(last)) = (log.first_raft_index(), log.last_raft_position()) else {
            return Ok(Vec::new());
        };
        let start = start.max(first);
        if start >= end || start > last.index {
            return Ok(Vec::new());
        }
        let stored = log
            .read_raft(start, max_bytes, end)
            .map_err(read_logs_error)?;
        drop(log);
        self.group_into_entries(stored)
    }

    fn group_into_entries(
        &self,
        stored: Vec<bytes::Bytes>,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let mut entries = Vec::new();
        let mut pending: Vec<Batch> = Vec::new();
        for bytes in stored {
            let batch = Batch::decode(bytes).map_err(read_logs_error)?;
            let same = pending
                .first()
                .is_none_or(|p| p.header().raft == batch.header().raft);
            if !same {
                entries.push(self.to_entry(std::mem::take(&mut pending))?);
            }
            pending.push(batch);
        }
        if !pending.is_empty() {
            entries.push(self.to_entry(pending)?);
        }
        Ok(entries)
    }

    fn to_entry(&self, batches: Vec<Batch>) -> Result<Entry, RaftStorageError> {
        let position = batches.first().map(|b| b.header().raft).unwrap_or_default();
        batches_to_entry(self.inner.kind, log_id_of(position), batches).map_err(read_logs_error)
    }

    fn write_entries(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let started = Instant::now();
        let (pending, bytes) = self.append_entries(&entries)?;
        let written = Instant::now();
        // The fsync runs without the log lock, so fetches are not stalled behind it.
        let result = pending.run();
        crate::metrics::raft_append(bytes, written - started, written.elapsed());
        let end = {
            let mut log = self.lock_for_write()?;
            log.finish_sync(&pending, result)?;
            DurableEnd::of(&log)
        };
        self.inner.durable_end.send_replace(end);
        self.inner.recent.appended(&entries);
        Ok(())
    }

    fn lock_for_write(&self) -> Result<std::sync::RwLockWriteGuard<'_, Log>, StorageError> {
        self.inner.log.write().map_err(|_| StorageError::Failed {
            dir: self.inner.dir.clone(),
        })
    }

    fn append_entries(
        &self,
        entries: &[Entry],
    ) -> Result<(sluice_storage::PendingSync, usize), StorageError> {
        let mut log = self.lock_for_write()?;
        let mut bytes = 0;
        for entry in entries {
            let batches = entry_to_batches(self.inner.kind, entry).map_err(|e| match e {
                super::entry_codec::EntryCodecError::Batch(d) => StorageError::InvalidBatch(d),
                _ => StorageError::InvalidConfig("entry payload does not fit this group"),
            })?;
            let position = raft_position(&entry.log_id);
            log.append_entry(&batches, position)?;
            bytes += batches.iter().map(Batch::len).sum::<usize>();
        }
        Ok((log.begin_sync()?, bytes))
    }
}

fn range_to_half_open<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let (start, end) = range_to_half_open(&range);
        if let Some(entries) = self.inner.recent.get(start, end, usize::MAX) {
            return Ok(entries);
        }
        let store = self.clone();
        run_blocking(move || store.read_entries(start, end, usize::MAX)).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        if let Some(entries) = self
            .inner
            .recent
            .get(start, end, REPLICATION_READ_BYTES_MAX)
        {
            return Ok(entries);
        }
        let store = self.clone();
        run_blocking(move || store.read_entries(start, end, REPLICATION_READ_BYTES_MAX)).await
    }
}

/// Runs blocking file I/O off the async workers.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
) -> Result<T, RaftStorageError> {
    crate::blocking::run(f)
        .await
        .map_err(|e| read_logs_error(std::io::Error::other(e.to_string())))?
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let purged = self.state()?.purged;
        let last = self
            .inner
            .log
            .read()
            .map_err(|_| poisoned())?
            .last_raft_position()
            .map(log_id_of);
        let last_log_id = match (last, purged) {
            (Some(last), Some(purged)) if purged.index >= last.index => Some(purged),
            (Some(last), _) => Some(last),
            (None, purged) => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let store = self.clone();
        let vote = *vote;
        run_blocking(move || store.update_state(|s| s.vote = Some(vote))).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        Ok(self.state()?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // A hint only (a lower committed id is always safe), so it need not cost an fsync
        // per commit.
        let due = {
            let mut saved_at = self
                .inner
                .committed_saved_at
                .lock()
                .map_err(|_| poisoned())?;
            let due = saved_at.is_none_or(|t| t.elapsed() >= COMMITTED_SAVE_INTERVAL);
            if due {
                *saved_at = Some(Instant::now());
            }
            due
        };
        if !due {
            return Ok(());
        }
        // Written in the background: openraft awaits this between appends, and the state
        // file's write, rename and two fsyncs held up the next group commit by milliseconds
        // once a second. Writes are serialised; a slow one finishing after a newer one only
        // leaves a lower committed id, which is safe.
        // `read_committed` sees the new value at once.
        self.inner.state.lock().map_err(|_| poisoned())?.committed = committed;
        let store = self.clone();
        crate::blocking::detach(move || {
            if let Err(e) = store.update_state(|s| s.committed = committed) {
                tracing::warn!(error = %e, "cannot save the committed log id (a hint)");
            }
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        let committed = self.state()?.committed;
        // The broken broker a canary stands for trusts a log cut below its commit.
        if sluice_storage::canary::armed(sluice_storage::canary::Canary::CutLogVotes)
            || sluice_storage::canary::armed(sluice_storage::canary::Canary::TruncateOnCorruption)
        {
            let last = self.get_log_state().await?.last_log_id;
            return Ok(committed.min(last));
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.clone();
        // The write and fsync run in place rather than on the blocking pool: on one
        // partition, produce p99 at half of peak 6.5-7.3 ms in three runs against 6.5-23 ms
        // (docs/benchmarks.md).
        let result = crate::blocking::run_in_place(move || store.write_entries(entries))
            .await
            .map_err(|e| write_logs_error(std::io::Error::other(e.to_string())))?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message)));
                Err(write_logs_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.inner.recent.forget_from(log_id.index);
        let store = self.clone();
        run_blocking(move || {
            let mut log = store.inner.log.write().map_err(|_| poisoned())?;
            log.truncate_raft_suffix(log_id.index)
                .map_err(write_logs_error)?;
            store.inner.durable_end.send_replace(DurableEnd::of(&log));
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.inner.recent.forget_through(log_id.index);
        let store = self.clone();
        run_blocking(move || {
            store.update_state(|s| s.purged = Some(log_id))?;
            let mut log = store.inner.log.write().map_err(|_| poisoned())?;
            let last = log.last_raft_position().map(|r| r.index);
            if last.is_some_and(|last| last <= log_id.index) {
                // Everything goes: restart the log empty, offsets continuing.
                let next = log.next_offset();
                log.reset_to(next).map_err(write_logs_error)
            } else {
                log.delete_segments_through_raft_index(log_id.index)
                    .map(|_| ())
                    .map_err(write_logs_error)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use openraft::EntryPayload;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::testing::{StoreBuilder, Suite};
    use sluice_storage::io::{FsIo, Io};
    use sluice_storage::{Log, LogConfig};
    use tokio::sync::watch;

    use super::{LogStore, RaftStorageError, read_logs_error};
    use crate::partition::state::PartitionState;
    use crate::raft::entry_codec::GroupKind;
    use crate::raft::state_machine::GroupStateMachine;
    use crate::raft::{Command, ProduceCommand, TypeConfig};

    struct PartitionStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine<PartitionState>, tempfile::TempDir>
        for PartitionStoreBuilder
    {
        async fn build(
            &self,
        ) -> Result<
            (
                tempfile::TempDir,
                LogStore,
                GroupStateMachine<PartitionState>,
            ),
            RaftStorageError,
        > {
            let dir = tempfile::tempdir().map_err(read_logs_error)?;
            let io: Arc<dyn Io> = Arc::new(FsIo);
            // Small segments, so purges and truncations cross segment boundaries.
            let config = LogConfig {
                segment_bytes: 1024,
                retention_ms: None,
                ..LogConfig::default()
            };
            let (log, _) = Log::open(dir.path().join("log"), config).map_err(read_logs_error)?;
            let log = Arc::new(RwLock::new(log));
            let store = LogStore::open(
                GroupKind::Partition,
                Arc::clone(&log),
                Arc::clone(&io),
                dir.path(),
            )?;
            let (high_watermark, _) = watch::channel(0);
            let sm = GroupStateMachine::open(
                PartitionState::new(log, high_watermark),
                io,
                dir.path(),
                store.recent(),
            )?;
            Ok((dir, store, sm))
        }
    }

    fn produce_entry(term: u64, index: u64) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: openraft::testing::log_id(term, 1, index),
            payload: EntryPayload::Normal(Command::Produce(ProduceCommand {
                batches: vec![crate::raft::one_record_batch()],
            })),
        }
    }

    async fn read(store: &mut LogStore, start: u64, end: u64) -> Vec<(u64, u64)> {
        store
            .try_get_log_entries(start..end)
            .await
            .expect("read")
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[tokio::test]
    async fn entries_read_from_memory_never_outlive_a_truncation_or_a_purge() {
        let (_dir, mut store, _sm) = PartitionStoreBuilder.build().await.expect("store");
        let entries = (1..=5).map(|i| produce_entry(1, i)).collect();
        store.write_entries(entries).expect("append");
        store
            .truncate(openraft::testing::log_id(1, 1, 3))
            .await
            .expect("truncate");
        assert_eq!(read(&mut store, 1, 6).await, [(1, 1), (1, 2)]);
        let entries = (3..=4).map(|i| produce_entry(2, i)).collect();
        store.write_entries(entries).expect("append");
        assert_eq!(
            read(&mut store, 1, 5).await,
            [(1, 1), (1, 2), (2, 3), (2, 4)]
        );
        store
            .purge(openraft::testing::log_id(1, 1, 2))
            .await
            .expect("purge");
        assert_eq!(read(&mut store, 1, 5).await, [(2, 3), (2, 4)]);
        // Held entries answer without the log: cut it behind the store's back.
        store
            .log()
            .write()
            .expect("lock")
            .truncate_raft_suffix(3)
            .expect("cut");
        assert_eq!(read(&mut store, 3, 5).await, [(2, 3), (2, 4)]);
    }

    #[test]
    fn openraft_storage_suite_passes_against_the_log_store() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
        Suite::test_all(PartitionStoreBuilder).expect("openraft storage suite");
    }
}
