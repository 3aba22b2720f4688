//! The groups of one `__consumer_offsets` partition while this node leads it: loaded from
//! the partition's log when the leadership starts, changed by heartbeats, and by commits
//! once they are durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

use sluice_storage::batch::NewRecord;
use sluice_storage::{Batch, BatchBuilder, Compression};

use super::group::{Committed, Group};
use super::offset_record::{OffsetKey, OffsetValue};
use super::partition_offsets::{self, Spec};
use super::{OFFSETS_TOPIC, not_coordinator};
use crate::error::BrokerError;
use crate::node::Node;
use crate::partition::Partition;

/// Bytes read per step while loading.
const LOAD_READ_BYTES: usize = 1 << 20;

/// The Raft term of the partition's leadership as this node sees it.
pub fn leader_term(partition: &Partition) -> u64 {
    partition.group.raft.metrics().borrow().current_term
}

/// One offsets partition's groups.
pub struct Shard {
    /// The partition number.
    pub index: u32,
    /// The leadership term it was loaded in: a later leadership reloads.
    pub term: u64,
    /// The partition its commits go to.
    pub partition: Arc<Partition>,
    /// Groups by name.
    pub groups: tokio::sync::Mutex<BTreeMap<String, Group>>,
    /// Held across a write, from its plan to its application.
    write_lock: tokio::sync::Mutex<()>,
    /// Bumped whenever any of its groups changes: parked heartbeats wake on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Until then no partition is handed out: the previous coordinator's members (whom this
    /// one does not know) are given time to find it gone and stop reading (`TAKEOVER_GRACE`).
    pub hold_until: Option<tokio::time::Instant>,
}

/// One commit to write: where, and the value (`None`: a tombstone).
pub type Write = (String, String, u32, Option<OffsetValue>);

impl Shard {
    /// Reads every committed offset of the partition, below its high watermark (which,
    /// once the leadership serves, covers every acknowledged commit).
    pub async fn load(
        index: u32,
        term: u64,
        partition: Arc<Partition>,
    ) -> Result<Self, BrokerError> {
        let reader = Arc::clone(&partition);
        let groups = crate::blocking::run(move || read_groups(&reader))
            .await
            .map_err(|e| BrokerError::Internal(format!("loading groups: {e}")))??;
        // The group's first leadership writes its blank entry at Raft index 1 (after the
        // initial membership at 0); a log beyond that had an earlier leadership, whose
        // coordinator's members may still be reading.
        let last_log = partition.group.raft.metrics().borrow().last_log_index;
        let earlier_leader = last_log.is_some_and(|i| i > 1);
        let hold_until = earlier_leader
            .then(|| tokio::time::Instant::now() + crate::limits::GROUP_TAKEOVER_GRACE);
        Ok(Self {
            index,
            term,
            partition,
            groups: tokio::sync::Mutex::new(groups),
            write_lock: tokio::sync::Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
            hold_until,
        })
    }

    /// Whether partitions may be handed out now.
    pub fn assigns(&self) -> bool {
        self.hold_until
            .is_none_or(|until| tokio::time::Instant::now() >= until)
    }

    /// Wakes parked heartbeats: a group changed.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees the next change.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Groups held.
    pub async fn group_count(&self) -> usize {
        self.groups.lock().await.len()
    }

    /// Expels silent members of every group.
    pub async fn expire(&self, topics: &BTreeMap<String, u32>, now: Instant) {
        let mut groups = self.groups.lock().await;
        let mut changed = false;
        for (name, group) in groups.iter_mut() {
            let (rebalances, changes) = (group.rebalances, group.changes);
            if group.expire(topics, now) {
                tracing::info!(group = %name, "expelled members past their session timeout");
            }
            if group.rebalances != rebalances {
                crate::metrics::group_rebalanced(name);
            }
            changed |= group.changes != changes;
        }
        if changed {
            self.changed();
        }
        groups.retain(|_, g| !g.is_empty());
    }

    /// Writes what `plan` decides from the group's state (acks=all), then applies it.
    /// Writes of one shard go one at a time, so they apply in log order and a plan sees
    /// every earlier write; heartbeats do not wait for them.
    pub async fn write(
        &self,
        group: &str,
        plan: impl FnOnce(Option<&Group>) -> Result<Vec<Write>, BrokerError>,
    ) -> Result<Vec<Write>, BrokerError> {
        let _serial = self.write_lock.lock().await;
        let writes = plan(self.groups.lock().await.get(group))?;
        if writes.is_empty() {
            return Ok(writes);
        }
        let batch = commit_batch(&writes)?;
        let produced = self
            .partition
            .produce(batch, Vec::new(), false)
            .await
            .map_err(|e| not_coordinator(group, e))?;
        let mut groups = self.groups.lock().await;
        for (i, (g, topic, partition, value)) in writes.iter().enumerate() {
            let log_offset = produced.base_offset + i as u64;
            let committed = value.clone().map(|value| Committed { value, log_offset });
            groups.entry(g.clone()).or_default().apply_commit(
                (topic.clone(), *partition),
                committed,
                log_offset,
            );
        }
        groups.retain(|_, g| !g.is_empty());
        Ok(writes)
    }
}

/// One batch holding `writes`' records.
fn commit_batch(writes: &[Write]) -> Result<Batch, BrokerError> {
    let mut encoded = Vec::with_capacity(writes.len());
    for (group, topic, partition, value) in writes {
        let key = OffsetKey {
            group: group.clone(),
            topic: topic.clone(),
            partition: *partition,
        }
        .encode()
        .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        let value = value
            .as_ref()
            .map(OffsetValue::encode)
            .transpose()
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        encoded.push((key, value));
    }
    let now = now_ms();
    let mut builder = BatchBuilder::new(Compression::None);
    for (key, value) in &encoded {
        builder.push(NewRecord {
            key: Some(key),
            value: value.as_deref(),
            timestamp: now,
            headers: &[],
        });
    }
    let bytes = builder
        .finish()
        .map_err(|e| BrokerError::Internal(format!("building a commit batch: {e}")))?;
    Batch::decode(bytes).map_err(|e| BrokerError::Internal(format!("building a commit batch: {e}")))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    sluice_storage::Clock::now_ms(&sluice_storage::SystemClock)
}

/// The committed offsets in the partition's log.
fn read_groups(partition: &Partition) -> Result<BTreeMap<String, Group>, BrokerError> {
    let (start, high_watermark, _) = partition.offsets()?;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut offset = start;
    let mut skipped = 0u64;
    while offset < high_watermark {
        let read = partition.read(offset, LOAD_READ_BYTES)?;
        if read.batches.is_empty() {
            break;
        }
        for stored in read.batches {
            let batch =
                Batch::decode(stored).map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
            let next = batch.header().next_offset();
            if !batch.header().attributes.is_control() {
                for record in batch
                    .records()
                    .map_err(|e| BrokerError::CorruptBatch(e.to_string()))?
                {
                    let record = record.map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
                    if record.offset >= high_watermark {
                        break;
                    }
                    let Some(key) = record
                        .key
                        .as_deref()
                        .and_then(|k| OffsetKey::decode(k).ok())
                    else {
                        skipped += 1;
                        continue;
                    };
                    let value = match record.value.as_deref().map(OffsetValue::decode) {
                        Some(Ok(v)) => Some(v),
                        Some(Err(_)) => {
                            skipped += 1;
                            continue;
                        }
                        None => None,
                    };
                    let committed = value.map(|value| Committed {
                        value,
                        log_offset: record.offset,
                    });
                    groups.entry(key.group).or_default().apply_commit(
                        (key.topic, key.partition),
                        committed,
                        record.offset,
                    );
                }
            }
            offset = offset.max(next);
        }
    }
    if skipped > 0 {
        tracing::warn!(
            partition = partition.index,
            skipped,
            "records of {OFFSETS_TOPIC} this build cannot read were skipped"
        );
    }
    groups.retain(|_, g| !g.is_empty());
    Ok(groups)
}

/// Publishes members and lag per group and partition for the groups this node coordinates.
pub async fn publish_gauges(node: &Node) {
    let mut lags = Vec::new();
    for shard in node.coordinator.shards() {
        let groups = shard.groups.lock().await;
        for (name, group) in groups.iter() {
            crate::metrics::group_members(name, group.members.len());
            for ((topic, partition), c) in &group.offsets {
                lags.push((name.clone(), topic.clone(), *partition, c.value.offset));
            }
        }
    }
    for (group, topic, partition, committed) in lags {
        if let Ok(hw) = partition_offsets::offset(node, &topic, partition, Spec::Latest).await {
            crate::metrics::group_lag(&group, &topic, partition, hw.saturating_sub(committed));
        }
    }
}
