//! The partition state machine: high watermark, next offset, producer table.

use serde::{Deserialize, Serialize};
use sluice_storage::BatchHeader;
use tokio::sync::watch;

use super::producer_state::ProducerTable;
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

/// The snapshot of a partition state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    next_offset: u64,
    producers: ProducerTable,
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

    /// Offsets below this are committed: the high watermark.
    pub fn high_watermark(&self) -> u64 {
        self.next_offset
    }
}

impl GroupState for PartitionState {
    type Snapshot = PartitionSnapshot;

    fn apply(&mut self, _log_id: LogId, command: &Command) -> CommandResponse {
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
            self.producers.record(&header, base);
            self.next_offset += header.offset_count();
            base_offsets.push(base);
        }
        CommandResponse::Produced { base_offsets }
    }

    fn applied(&mut self) {
        self.high_watermark.send_replace(self.next_offset);
    }

    fn snapshot(&self) -> PartitionSnapshot {
        PartitionSnapshot {
            next_offset: self.next_offset,
            producers: self.producers.clone(),
        }
    }

    fn restore(&mut self, snapshot: PartitionSnapshot) -> Result<(), String> {
        self.next_offset = snapshot.next_offset;
        self.producers = snapshot.producers;
        let mut log = self
            .log
            .write()
            .map_err(|_| "log lock poisoned".to_string())?;
        if log.next_offset() < self.next_offset {
            // A follower behind the snapshot: its log restarts where the snapshot ends.
            log.reset_to(self.next_offset).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
