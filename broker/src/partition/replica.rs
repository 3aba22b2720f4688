//! One partition replica on this node: its Raft group, its log, its writer and budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use sluice_storage::Batch;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::serving::{ServingTerm, serving_leader, track};
use super::state::PartitionState;
use super::writer::{PendingProduce, Produced, run_writer};
use crate::controller::{LeaderReport, Metadata, TopicConfig};
use crate::error::BrokerError;
use crate::flow::produce_budget::ByteBudget;
use crate::limits::PRODUCE_QUEUE_DEPTH;
use crate::raft::NodeId;
use crate::raft::group::Group;
use crate::raft::state_machine::GroupStateMachine;

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Whole batches, mmap-backed.
    pub batches: Vec<Bytes>,
    /// The high watermark when read.
    pub high_watermark: u64,
    /// The log start offset when read.
    pub log_start_offset: u64,
}

impl ReadResult {
    /// Bytes of all batches.
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

/// A partition replica hosted by this broker.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub index: u32,
    /// The Raft group.
    pub group: Group,
    node_id: NodeId,
    high_watermark: watch::Receiver<u64>,
    config: RwLock<TopicConfig>,
    queue: mpsc::Sender<PendingProduce>,
    budget: ByteBudget,
    writer: JoinHandle<()>,
    serving: ServingTerm,
    serving_tracker: JoinHandle<()>,
    /// The state machine (shared with the writer), for housekeeping of its state.
    sm: GroupStateMachine<PartitionState>,
    /// Set by the log when a read finds stored data damaged: the partition is offline.
    corruption: Arc<OnceLock<String>>,
    /// Whether the offline metric was counted for it.
    offline_counted: AtomicBool,
    /// The controller's metadata, for leaders' client addresses.
    metadata: Option<watch::Receiver<Arc<Metadata>>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Partition({}/{}, group {})",
            self.topic, self.index, self.group.id
        )
    }
}

/// Everything a partition is built from.
pub struct PartitionParts {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub index: u32,
    /// The started group.
    pub group: Group,
    /// Its state machine.
    pub sm: GroupStateMachine<PartitionState>,
    /// Watch of its high watermark.
    pub high_watermark: watch::Receiver<u64>,
    /// Effective topic config.
    pub config: TopicConfig,
    /// This node.
    pub node_id: NodeId,
    /// Produce bytes in flight allowed for this partition.
    pub budget_bytes: u64,
    /// The cluster's metadata and where leaderships are reported (`None` in unit tests).
    pub cluster: Option<ClusterLink>,
}

/// What a partition knows of the cluster around it.
#[derive(Clone)]
pub struct ClusterLink {
    /// The controller's metadata: leaders' client addresses.
    pub metadata: watch::Receiver<Arc<Metadata>>,
    /// Leaderships this node takes are reported here, for the controller.
    pub leader_reports: mpsc::UnboundedSender<LeaderReport>,
}

impl Partition {
    /// Wraps a started group and spawns its writer.
    pub fn new(parts: PartitionParts) -> Self {
        let (queue, rx) = mpsc::channel(PRODUCE_QUEUE_DEPTH);
        let writer = tokio::spawn(run_writer(
            parts.group.raft.clone(),
            Arc::clone(&parts.group.log),
            parts.sm.clone(),
            rx,
            parts.group.durable_end.clone(),
        ));
        let corruption = parts
            .group
            .log
            .read()
            .map(|log| log.corruption_flag())
            .unwrap_or_default();
        let serving = ServingTerm::default();
        let report = parts
            .cluster
            .as_ref()
            .map(|c| (parts.group.id, c.leader_reports.clone()));
        let serving_tracker = tokio::spawn(track(
            parts.group.raft.clone(),
            parts.node_id,
            serving.clone(),
            report,
        ));
        Self {
            topic: parts.topic,
            index: parts.index,
            group: parts.group,
            node_id: parts.node_id,
            high_watermark: parts.high_watermark,
            config: RwLock::new(parts.config),
            queue,
            budget: ByteBudget::new(parts.budget_bytes),
            writer,
            serving,
            serving_tracker,
            sm: parts.sm,
            corruption,
            offline_counted: AtomicBool::new(false),
            metadata: parts.cluster.map(|c| c.metadata),
        }
    }

    /// Forgets idempotent producers idle for longer than the topic's
    /// `producer.id.expiration.ms` as of `now_ms`; returns how many. Each replica does it on
    /// its own clock, as Kafka's brokers do.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        let expiration = self.config().producer_id_expiration_ms;
        let expires_before = now_ms.saturating_sub(expiration);
        self.sm
            .with_state_mut(|s| s.expire_producers(expires_before))
            .unwrap_or(0)
    }

    /// Why the partition is offline here (its stored data was found damaged), if it is.
    /// The first call that sees it counts it in the offline metric.
    pub fn storage_failure(&self) -> Option<&str> {
        let why = self.corruption.get()?;
        if !self.offline_counted.swap(true, Ordering::Relaxed) {
            tracing::error!(topic = %self.topic, partition = self.index, error = %why, "partition offline: stored data is damaged");
            crate::metrics::partition_offline(&self.topic, self.index);
        }
        Some(why)
    }

    /// This partition's in-flight produce budget.
    pub fn budget(&self) -> &ByteBudget {
        &self.budget
    }

    /// The topic's effective config.
    pub fn config(&self) -> TopicConfig {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Applies altered topic configs to the partition and its log.
    pub fn set_config(&self, config: TopicConfig) -> Result<(), BrokerError> {
        self.group
            .log
            .write()
            .map_err(|_| BrokerError::Internal("log lock poisoned".into()))?
            .set_config(config.log.clone())?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The node that leads the group, if any; this node only once its leadership serves
    /// (everything committed before it applied, see `serving`).
    pub fn leader(&self) -> Option<NodeId> {
        serving_leader(&self.group.raft, self.node_id, &self.serving)
    }

    /// [`Self::leader`] with the Raft term it leads in.
    pub fn leader_and_term(&self) -> Option<(NodeId, u64)> {
        super::serving::serving_leader_term(&self.group.raft, self.node_id, &self.serving)
    }

    /// Replicas whose log is within `IN_SYNC_LAG_ENTRIES` of this leader's (empty when
    /// this node does not lead: only the leader knows).
    pub fn in_sync_replicas(&self) -> Vec<NodeId> {
        if !self.is_leader() {
            return Vec::new();
        }
        let metrics = self.group.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let mut in_sync: Vec<NodeId> = metrics
            .replication
            .unwrap_or_default()
            .iter()
            .filter(|(_, m)| {
                m.as_ref()
                    .is_some_and(|m| m.index + crate::limits::IN_SYNC_LAG_ENTRIES >= last)
            })
            .map(|(id, _)| *id)
            .collect();
        if !in_sync.contains(&self.node_id) {
            in_sync.push(self.node_id);
        }
        in_sync.sort_unstable();
        in_sync
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// Refuses unless this node leads the partition.
    pub fn require_leader(&self) -> Result<(), BrokerError> {
        if self.is_leader() {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Err(BrokerError::Unavailable(format!(
                "{}/{} has no serving leader yet",
                self.topic, self.index
            )));
        };
        let leader_hint = self
            .metadata
            .as_ref()
            .and_then(|m| m.borrow().node_address(leader).map(str::to_string));
        Err(BrokerError::NotLeader {
            what: format!("{}/{}", self.topic, self.index),
            leader_hint,
        })
    }

    /// Queues a verified batch for the writer, in call order; the receiver yields its
    /// offsets, once the leader has the batch fsynced (`leader_ack`, acks=leader) or once a
    /// quorum committed it (acks=all). `permits` are held until the commit.
    pub async fn enqueue(
        &self,
        batch: Batch,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
        leader_ack: bool,
    ) -> Result<oneshot::Receiver<Result<Produced, BrokerError>>, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(PendingProduce {
                batch,
                leader_ack,
                reply,
                permits,
            })
            .await
            .map_err(|_| BrokerError::Unavailable("partition is shutting down".into()))?;
        Ok(answer)
    }

    /// Queues a verified batch and waits for its offsets (see [`Partition::enqueue`]).
    pub async fn produce(
        &self,
        batch: Batch,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
        leader_ack: bool,
    ) -> Result<Produced, BrokerError> {
        let answer = self.enqueue(batch, permits, leader_ack).await?;
        answer
            .await
            .map_err(|_| BrokerError::Unavailable("partition writer stopped".into()))?
    }

    /// The committed end: consumers read below it.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// A watch of the high watermark, for long polls and subscriptions.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.high_watermark.clone()
    }

    fn read_log(&self) -> Result<std::sync::RwLockReadGuard<'_, sluice_storage::Log>, BrokerError> {
        self.group
            .log
            .read()
            .map_err(|_| BrokerError::Internal("log lock poisoned".into()))
    }

    /// Reads whole batches from `offset` below the high watermark, up to `max_bytes` (at
    /// least one batch when any is available).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, BrokerError> {
        let high_watermark = self.high_watermark();
        let log = self.read_log()?;
        let (log_start_offset, log_end) = (log.log_start_offset(), log.next_offset());
        if offset < log_start_offset || offset > log_end.max(high_watermark) {
            return Err(BrokerError::OffsetOutOfRange {
                requested: offset,
                log_start: log_start_offset,
                log_end,
            });
        }
        let batches = if offset >= high_watermark {
            Vec::new()
        } else if log.reads_from_disk(offset) {
            // A few milliseconds of disk read: the worker's other tasks move elsewhere.
            crate::blocking::in_place(|| log.read(offset, max_bytes, high_watermark))?
        } else {
            log.read(offset, max_bytes, high_watermark)?
        };
        Ok(ReadResult {
            batches,
            high_watermark,
            log_start_offset,
        })
    }

    /// Waits until the high watermark passes `offset` or `timeout` elapses.
    pub async fn wait_past(&self, offset: u64, timeout: Duration) {
        let mut watch = self.watch_high_watermark();
        let _ = tokio::time::timeout(timeout, watch.wait_for(|hw| *hw > offset)).await;
    }

    /// First offset, high watermark, and size on disk.
    pub fn offsets(&self) -> Result<(u64, u64, u64), BrokerError> {
        let log = self.read_log()?;
        Ok((
            log.log_start_offset(),
            self.high_watermark(),
            log.size_bytes(),
        ))
    }

    /// The first offset at or after `timestamp_ms`, bounded by the high watermark.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64, BrokerError> {
        let high_watermark = self.high_watermark();
        let log = self.read_log()?;
        Ok(log
            .offset_for_timestamp(timestamp_ms)?
            .map_or(high_watermark, |o| o.min(high_watermark)))
    }

    /// Snapshots the state machine if it applied entries since its last snapshot. openraft
    /// re-applies every entry after the last snapshot at start, reading each back from the
    /// log (and so mapping and keeping resident all of it): after a clean stop, the next
    /// start then re-applies nothing. Bounded: a slow snapshot only costs that re-apply.
    async fn snapshot_before_stop(&self) {
        let raft = &self.group.raft;
        let metrics = raft.metrics();
        let (snapshot, applied) = {
            let m = metrics.borrow();
            (m.snapshot.map(|s| s.index), m.last_applied.map(|l| l.index))
        };
        let Some(applied) = applied else { return };
        if snapshot.is_some_and(|s| s >= applied) || raft.trigger().snapshot().await.is_err() {
            return;
        }
        let built = raft
            .wait(Some(crate::limits::SHUTDOWN_SNAPSHOT_WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot at shutdown",
            )
            .await;
        if let Err(e) = built {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "no snapshot at shutdown: the next start re-applies the log since the last one");
        }
    }

    /// Stops the writer and the Raft group, then checkpoints the log.
    pub async fn shutdown(&self) {
        self.writer.abort();
        self.serving_tracker.abort();
        self.snapshot_before_stop().await;
        let _ = self.group.raft.shutdown().await;
        if let Ok(mut log) = self.group.log.write()
            && let Err(e) = log.checkpoint()
        {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "checkpoint at shutdown failed");
        }
    }
}
