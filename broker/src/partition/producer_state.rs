//! Idempotent-producer state of a partition: per producer id, the epoch and the last five
//! batches' sequence ranges with their offsets (Kafka's window), so a retried batch gets
//! its original offsets back and a gap in sequences is refused.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sluice_storage::BatchHeader;
use sluice_storage::batch::NO_PRODUCER_ID;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` bound for idempotence).
pub const RECENT_BATCHES: usize = 5;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedBatch {
    /// Sequence of the batch's first record.
    pub first_sequence: u32,
    /// Sequence of its last record.
    pub last_sequence: u32,
    /// Offset its first record got.
    pub base_offset: u64,
}

/// What one producer id has written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    /// The newest epoch seen; older epochs are fenced.
    pub epoch: u16,
    /// The largest record timestamp of its newest batch (Kafka's `lastTimestamp`): the
    /// producer expires `producer.id.expiration.ms` after it.
    #[serde(default)]
    pub last_timestamp: i64,
    /// The last few batches, oldest first.
    pub recent: VecDeque<SequencedBatch>,
}

/// The verdict on an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not seen before and in order: append it.
    New,
    /// A retry of a stored batch: answer with its original offset, append nothing.
    Duplicate {
        /// The offset the original got.
        base_offset: u64,
    },
    /// A gap or reordering.
    OutOfOrder {
        /// The sequence the broker expected.
        expected: u32,
    },
    /// An older epoch of a producer id that has moved on.
    Fenced,
}

/// Producer id → entry. Part of the partition's state machine, so it survives restarts and
/// follows leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<u64, ProducerEntry>,
}

/// The sequences a batch took: one per offset, so from `last_offset_delta`, which
/// compaction keeps, not `record_count`, which it lowers (Kafka does the same).
fn sequence_span(header: &BatchHeader) -> (u32, u32) {
    let first = header.base_sequence;
    (first, first.wrapping_add(header.last_offset_delta))
}

impl ProducerTable {
    /// Checks a batch (by its header) against what is stored.
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id == NO_PRODUCER_ID {
            return SequenceCheck::New;
        }
        let (first, last) = sequence_span(header);
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return if first == 0 {
                SequenceCheck::New
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        };
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::Fenced;
        }
        if header.producer_epoch > entry.epoch {
            return if first == 0 {
                SequenceCheck::New
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        }
        if let Some(dup) = entry
            .recent
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
            };
        }
        let expected = entry
            .recent
            .back()
            .map_or(0, |b| b.last_sequence.wrapping_add(1));
        if first == expected {
            SequenceCheck::New
        } else {
            SequenceCheck::OutOfOrder { expected }
        }
    }

    /// The entries of just these producer ids (for the writer's per-round overlay).
    pub fn subset(&self, producer_ids: &std::collections::BTreeSet<u64>) -> Self {
        let producers = producer_ids
            .iter()
            .filter_map(|id| self.producers.get(id).map(|e| (*id, e.clone())))
            .collect();
        Self { producers }
    }

    /// Forgets producers whose newest batch is older than `expires_before` (ms); returns how
    /// many. Like Kafka's `producer.id.expiration.ms`: an idle producer's next batch must
    /// start over at sequence 0 (its client takes a new producer id).
    pub fn expire(&mut self, expires_before: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| entry.last_timestamp >= expires_before);
        before - self.producers.len()
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Every producer id with its entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ProducerEntry)> {
        self.producers.iter().map(|(id, e)| (*id, e))
    }

    /// Adds (or replaces) one producer's entry, as a snapshot restores it.
    pub fn insert(&mut self, producer_id: u64, entry: ProducerEntry) {
        self.producers.insert(producer_id, entry);
    }

    /// Records a stored batch.
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id == NO_PRODUCER_ID {
            return;
        }
        let (first, last) = sequence_span(header);
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.recent.clear();
        }
        entry.last_timestamp = entry.last_timestamp.max(header.max_timestamp);
        entry.recent.push_back(SequencedBatch {
            first_sequence: first,
            last_sequence: last,
            base_offset,
        });
        while entry.recent.len() > RECENT_BATCHES {
            entry.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::NewRecord;
    use sluice_storage::{Batch, BatchBuilder, Compression};

    fn header(pid: u64, epoch: u16, seq: u32, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::new(Compression::None).producer(pid, epoch, seq);
        for _ in 0..records {
            b.push(NewRecord {
                key: None,
                value: Some(b"v"),
                timestamp: 0,
                headers: &[],
            });
        }
        *Batch::decode(b.build().expect("batch"))
            .expect("decode")
            .header()
    }

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut table = ProducerTable::default();
        assert_eq!(
            table.check(&header(7, 0, 3, 1)),
            SequenceCheck::OutOfOrder { expected: 0 }
        );
        let first = header(7, 0, 0, 3);
        assert_eq!(table.check(&first), SequenceCheck::New);
        table.record(&first, 100);
        assert_eq!(
            table.check(&first),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            table.check(&header(7, 0, 4, 1)),
            SequenceCheck::OutOfOrder { expected: 3 }
        );
        let second = header(7, 0, 3, 2);
        assert_eq!(table.check(&second), SequenceCheck::New);
        table.record(&second, 103);
        assert_eq!(table.check(&header(7, 1, 0, 1)), SequenceCheck::New);
        table.record(&header(7, 1, 0, 1), 105);
        assert_eq!(table.check(&header(7, 0, 5, 1)), SequenceCheck::Fenced);
        assert_eq!(
            table.check(&header(NO_PRODUCER_ID, 0, 9, 1)),
            SequenceCheck::New
        );
    }

    #[test]
    fn a_compacted_batch_keeps_its_sequence_span() {
        // Compaction lowers record_count but keeps last_offset_delta: a table rebuilt from
        // the compacted log must expect the same next sequence as the one that saw it whole.
        let whole = header(9, 0, 0, 3);
        let compacted = BatchHeader {
            record_count: 1,
            ..whole
        };
        let mut table = ProducerTable::default();
        table.record(&compacted, 40);
        assert_eq!(
            table.check(&whole),
            SequenceCheck::Duplicate { base_offset: 40 }
        );
        assert_eq!(table.check(&header(9, 0, 3, 1)), SequenceCheck::New);
    }

    #[test]
    fn idle_producers_expire_by_their_newest_batch_s_timestamp() {
        let mut table = ProducerTable::default();
        let mut old = header(1, 0, 0, 1);
        old.max_timestamp = 1_000;
        let mut fresh = header(2, 0, 0, 1);
        fresh.max_timestamp = 5_000;
        table.record(&old, 0);
        table.record(&fresh, 1);
        assert_eq!(table.expire(2_000), 1);
        assert_eq!(table.len(), 1);
        // The expired producer starts over: its next sequence is not recognised.
        assert_eq!(
            table.check(&header(1, 0, 1, 1)),
            SequenceCheck::OutOfOrder { expected: 0 }
        );
        assert_eq!(
            table.check(&header(2, 0, 1, 1)),
            SequenceCheck::New,
            "the active one is kept"
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut table = ProducerTable::default();
        for i in 0..8u32 {
            table.record(&header(1, 0, i, 1), u64::from(i));
        }
        assert_eq!(
            table.check(&header(1, 0, 7, 1)),
            SequenceCheck::Duplicate { base_offset: 7 }
        );
        assert_eq!(
            table.check(&header(1, 0, 1, 1)),
            SequenceCheck::OutOfOrder { expected: 8 }
        );
    }
}
