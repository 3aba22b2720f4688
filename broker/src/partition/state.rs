//! The partition state machine: high watermark, next offset, producer table.

use sluice_storage::{BatchHeader, Log};
use tokio::sync::watch;

use super::producer_state::ProducerTable;
use super::snapshot;
use crate::raft::log_store::SharedLog;
use crate::raft::state_machine::GroupState;
use crate::raft::{Command, CommandResponse, LogId};

/// Applied state of one partition. Offsets are assigned here exactly as the log store
/// assigns them on append (both count from the same start in the same order), so the
/// offsets a produce is answered with are the offsets the batch has in every replica.
#[derive(Debug)]
pub struct PartitionState {
    log: SharedLog,
    next_offset: u64,
    producers: ProducerTable,
    high_watermark: watch::Sender<u64>,
}

impl PartitionState {
    /// State for a log whose entries will be applied from its first one.
    pub fn new(log: SharedLog, high_watermark: watch::Sender<u64>) -> Self {
        let next_offset = log.read().map(|l| l.log_start_offset()).unwrap_or(0);
        high_watermark.send_replace(next_offset);
        Self {
            log,
            next_offset,
            producers: ProducerTable::default(),
            high_watermark,
        }
    }

    /// The producer table as of the last applied entry.
    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    /// Forgets producers idle since before `expires_before` (ms); returns how many.
    pub fn expire_producers(&mut self, expires_before: i64) -> usize {
        self.producers.expire(expires_before)
    }

    /// Takes the partition offline: its log and its state machine disagree on offsets, so
    /// answering either would hand out wrong offsets.
    fn offsets_disagree(&self, index: u64, stored: u64, counted: u64) {
        let Ok(log) = self.log.read() else { return };
        let error = sluice_storage::StorageError::Invariant {
            dir: log.dir().to_path_buf(),
            what: format!(
                "the batch of Raft index {index} is stored at offset {stored}, applied at {counted}"
            ),
        };
        tracing::error!(error = %error, "partition state disagrees with its log");
        log.mark_corrupt(&error);
    }

    /// Offsets below this are committed: the high watermark.
    pub fn high_watermark(&self) -> u64 {
        self.next_offset
    }
}

impl GroupState for PartitionState {
    fn apply(&mut self, log_id: LogId, command: &Command) -> CommandResponse {
        let Command::Produce(produce) = command else {
            return CommandResponse::None;
        };
        let mut base_offsets = Vec::with_capacity(produce.batches.len());
        for bytes in &produce.batches {
            // The leader verified every batch before proposing it; a header that does not
            // decode here would have been refused by the log store's append already.
            let Ok(header) = BatchHeader::decode(bytes) else {
                base_offsets.push(self.next_offset);
                continue;
            };
            let base = self.next_offset;
            // Offsets are counted here and assigned by the log at append: a batch read back
            // from a log (stamped with this entry's Raft index) must carry the offset counted
            // here. The leader's own fresh entries are not stamped yet (index 0).
            if header.raft.index == log_id.index && header.base_offset != base {
                self.offsets_disagree(log_id.index, header.base_offset, base);
            }
            self.producers.record(&header, base);
            self.next_offset += header.offset_count();
            base_offsets.push(base);
        }
        CommandResponse::Produced { base_offsets }
    }

    fn applied(&mut self) {
        self.high_watermark.send_replace(self.next_offset);
    }

    fn snapshot(&self, out: &mut Vec<u8>) {
        snapshot::encode(self.next_offset, &self.producers, out);
    }

    fn restore(&mut self, last: Option<LogId>, snapshot: &[u8]) -> Result<(), String> {
        let (next_offset, producers) = snapshot::decode(snapshot).map_err(|e| e.to_string())?;
        self.next_offset = next_offset;
        self.producers = producers;
        let mut log = self
            .log
            .write()
            .map_err(|_| "log lock poisoned".to_string())?;
        // The one place a partition's log is reset (openraft's purge afterwards only drops
        // whole segments the snapshot covers): a log that does not lead up to the snapshot
        // restarts where the snapshot ends, so the next entry takes the leader's offset.
        if !leads_up_to(&log, last, next_offset).map_err(|e| e.to_string())? {
            log.reset_to_snapshot(next_offset)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Whether `log` continues a snapshot through `last` whose next offset is `next_offset`:
/// it holds the snapshot's last entry itself (same term and leader), or starts right after
/// it at that offset (a log reset to this snapshot before). An empty snapshot fits any log.
fn leads_up_to(
    log: &Log,
    last: Option<LogId>,
    next_offset: u64,
) -> Result<bool, sluice_storage::StorageError> {
    let Some(last) = last else {
        return Ok(true);
    };
    let Some(first) = log.first_raft_index() else {
        return Ok(log.next_offset() == next_offset);
    };
    if first == last.index + 1 {
        return Ok(log.log_start_offset() == next_offset);
    }
    let holds = first <= last.index
        && log
            .last_raft_position()
            .is_some_and(|p| p.index >= last.index);
    if !holds {
        return Ok(false);
    }
    let entry = log.read_raft(last.index, 1, last.index + 1)?;
    let header = entry.first().and_then(|b| BatchHeader::decode(b).ok());
    Ok(header.is_some_and(|h| h.raft == crate::raft::raft_position(&last)))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use openraft::RaftSnapshotBuilder;
    use sluice_storage::io::{FsIo, Io};
    use sluice_storage::{BatchHeader, Log, LogConfig, RaftPosition};

    use super::*;
    use crate::partition::producer_state::RECENT_BATCHES;
    use crate::raft::recent_entries::RecentEntries;
    use crate::raft::state_machine::GroupStateMachine;

    fn header(producer_id: u64, base_sequence: u32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            raft: RaftPosition::default(),
            magic: sluice_storage::batch::MAGIC_V1,
            attributes: sluice_storage::batch::Attributes::default(),
            record_count: 1,
            last_offset_delta: 0,
            first_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_000 + i64::from(base_sequence),
            producer_id,
            producer_epoch: 0,
            base_sequence,
            records_len: 0,
            records_crc: 0,
        }
    }

    fn open_state(dir: &std::path::Path) -> GroupStateMachine<PartitionState> {
        let config = LogConfig {
            retention_ms: None,
            ..LogConfig::default()
        };
        let (log, _) = Log::open(dir.join("log"), config).expect("log");
        let (high_watermark, _) = watch::channel(0);
        let io: Arc<dyn Io> = Arc::new(FsIo);
        GroupStateMachine::open(
            PartitionState::new(Arc::new(RwLock::new(log)), high_watermark),
            io,
            dir,
            Arc::new(RecentEntries::default()),
        )
        .expect("state machine")
    }

    #[test]
    fn a_stored_batch_at_another_offset_than_applied_takes_the_partition_offline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = Log::open(dir.path(), LogConfig::default()).expect("log");
        let flag = log.corruption_flag();
        let (high_watermark, _) = watch::channel(0);
        let mut state = PartitionState::new(Arc::new(RwLock::new(log)), high_watermark);
        let stamped = |base_offset: u64, index: u64| {
            let bytes = crate::raft::one_record_batch();
            let mut header = [0u8; sluice_storage::limits::BATCH_HEADER_LEN];
            header.copy_from_slice(&bytes[..sluice_storage::limits::BATCH_HEADER_LEN]);
            let raft = RaftPosition {
                term: 1,
                leader: 1,
                index,
            };
            let placement = sluice_storage::batch::Placement {
                base_offset,
                raft,
                entry_continues: false,
            };
            sluice_storage::batch::stamp_assigned_fields(&mut header, placement);
            let mut out = header.to_vec();
            out.extend_from_slice(&bytes[sluice_storage::limits::BATCH_HEADER_LEN..]);
            Command::Produce(crate::raft::command::ProduceCommand {
                batches: vec![out.into()],
            })
        };
        state.apply(openraft::testing::log_id(1, 1, 1), &stamped(0, 1));
        assert!(flag.get().is_none(), "where it was counted: fine");
        state.apply(openraft::testing::log_id(1, 1, 2), &stamped(7, 2));
        let why = flag.get().expect("offline");
        assert!(why.contains("stored at offset 7, applied at 1"), "{why}");
    }

    #[tokio::test]
    async fn a_hundred_thousand_producers_snapshot_compactly_and_restore() {
        const PRODUCERS: u64 = 100_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = open_state(dir.path());
        sm.with_state_mut(|s| {
            for pid in 0..PRODUCERS {
                for seq in 0..RECENT_BATCHES as u32 {
                    s.producers
                        .record(&header(pid, seq), pid * 10 + u64::from(seq));
                }
            }
        });
        let before = sm.with_state(|s| s.producers().clone()).expect("state");
        assert_eq!(before.len(), PRODUCERS as usize);
        // The format of earlier builds (JSON inside JSON) passed the 64 MiB read limit here,
        // and the partition could no longer open.
        let legacy = serde_json::to_vec(&serde_json::to_vec(&before).expect("json")).expect("json");
        assert!(legacy.len() as u64 > sluice_storage::limits::STATE_FILE_BYTES_MAX);
        sm.clone().build_snapshot().await.expect("snapshot");
        let size = std::fs::metadata(dir.path().join("snapshot"))
            .expect("file")
            .len();
        assert!(size < 12 << 20, "{size} bytes");
        drop(sm);
        let reopened = open_state(dir.path());
        let after = reopened
            .with_state(|s| s.producers().clone())
            .expect("state");
        assert_eq!(after, before);
    }
}
