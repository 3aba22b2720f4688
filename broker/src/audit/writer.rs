//! The node's audit writer: one task that batches events into `__audit/0`, acks=all, as an
//! idempotent producer, so a retried batch is written once even across a leader change.
//! Admin operations wait for their event's write before they are answered; events nobody
//! waits for (denials) are dropped, and counted, when the queue is full.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::{Acks, ProduceRequest};
use sluice_storage::batch::NewRecord;
use sluice_storage::{Batch, BatchBuilder, Compression};
use tokio::sync::{mpsc, oneshot};

use super::event::AuditEvent;
use super::{AUDIT_PARTITION, AUDIT_TOPIC};
use crate::controller::{ControllerCommand, ControllerResponse};
use crate::error::BrokerError;
use crate::node::Node;

/// Events queued and not yet written, at most.
pub const QUEUE_EVENTS_MAX: usize = 4096;
/// Events one batch holds, at most.
const BATCH_EVENTS_MAX: usize = 256;
/// How long a batch is retried before its events are given up (and reported lost).
const WRITE_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long an admin operation waits for its event to be durable.
pub const DURABLE_WAIT: Duration = Duration::from_secs(15);

/// An event and, if someone waits for it, where to say it is durable.
pub struct Pending {
    event: AuditEvent,
    done: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

/// The sending side, held by the node.
#[derive(Debug, Clone)]
pub struct AuditSender {
    sender: mpsc::Sender<Pending>,
}

/// The receiving side, run by [`run`].
pub struct AuditQueue {
    receiver: mpsc::Receiver<Pending>,
}

/// A queue of audit events.
pub fn queue() -> (AuditSender, AuditQueue) {
    let (sender, receiver) = mpsc::channel(QUEUE_EVENTS_MAX);
    (AuditSender { sender }, AuditQueue { receiver })
}

impl AuditSender {
    /// Queues `event` without waiting; a full queue drops it (counted, and logged).
    pub fn note(&self, event: AuditEvent) {
        if let Err(e) = self.sender.try_send(Pending { event, done: None }) {
            crate::metrics::audit_dropped();
            let event = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => {
                    p.event
                }
            };
            tracing::warn!(?event, "audit queue full: event dropped");
        }
    }

    /// Queues `event` and waits until it is durable in `__audit` (acks=all).
    pub async fn write(&self, event: AuditEvent) -> Result<(), BrokerError> {
        let (done, written) = oneshot::channel();
        let wait = async {
            self.sender
                .send(Pending {
                    event,
                    done: Some(done),
                })
                .await
                .map_err(|_| BrokerError::Unavailable("the audit writer stopped".into()))?;
            written
                .await
                .map_err(|_| BrokerError::Unavailable("the audit writer stopped".into()))?
        };
        tokio::time::timeout(DURABLE_WAIT, wait)
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "the audit record was not durable within {DURABLE_WAIT:?}"
                ))
            })?
    }
}

/// This writer's idempotent producer: its id, and the next batch's first sequence.
#[derive(Default)]
struct Producer {
    id: Option<u64>,
    sequence: u32,
}

/// Writes queued events until the node is gone.
pub async fn run(node: Weak<Node>, mut queue: AuditQueue) {
    let mut producer = Producer::default();
    while let Some(first) = queue.receiver.recv().await {
        let mut pending = vec![first];
        while pending.len() < BATCH_EVENTS_MAX {
            match queue.receiver.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        let result = write_batch(&node, &pending, &mut producer).await;
        match &result {
            Ok(()) => crate::metrics::audit_written(pending.len()),
            Err(e) => {
                crate::metrics::audit_lost(pending.len());
                tracing::error!(events = pending.len(), error = %e, "audit events could not be written");
            }
        }
        for p in pending {
            if let Some(done) = p.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Writes `pending` as one batch, retrying the same batch (same producer sequence, so it
/// lands once) for a while; a batch given up starts a new producer, so later batches do
/// not wait on a sequence that was never written.
async fn write_batch(
    node: &Weak<Node>,
    pending: &[Pending],
    producer: &mut Producer,
) -> Result<(), BrokerError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(20);
    let mut batch = None;
    loop {
        let Some(node) = node.upgrade() else {
            return Err(BrokerError::Unavailable(
                "the broker is shutting down".into(),
            ));
        };
        let attempt = async {
            if batch.is_none() {
                let id = match producer.id {
                    Some(id) => id,
                    None => allocate_producer(&node).await?,
                };
                producer.id = Some(id);
                batch = Some(encode(pending, id, producer.sequence)?);
            }
            let bytes = batch.clone().unwrap_or_default();
            append(&node, bytes).await
        };
        match attempt.await {
            Ok(()) => {
                producer.sequence = producer.sequence.wrapping_add(pending.len() as u32);
                return Ok(());
            }
            Err(e) if started.elapsed() >= WRITE_RETRY_FOR => {
                *producer = Producer::default();
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(error = %e, "audit write failed; retrying");
                drop(node);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn allocate_producer(node: &Node) -> Result<u64, BrokerError> {
    match node.propose(ControllerCommand::AllocateProducerId).await? {
        ControllerResponse::ProducerId(id) => Ok(id),
        other => Err(BrokerError::Internal(format!(
            "unexpected controller answer {other:?}"
        ))),
    }
}

/// One batch of `pending`'s events, keyed by their ids, from producer `id`.
fn encode(pending: &[Pending], id: u64, sequence: u32) -> Result<Bytes, BrokerError> {
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = pending
        .iter()
        .map(|p| (p.event.id.clone().into_bytes(), p.event.encode()))
        .collect();
    let mut builder = BatchBuilder::new(Compression::None).producer(id, 0, sequence);
    for ((key, value), p) in encoded.iter().zip(pending) {
        builder.push(NewRecord {
            key: Some(key),
            value: Some(value),
            timestamp: p.event.time_ms,
            headers: &[],
        });
    }
    builder
        .finish()
        .map_err(|e| BrokerError::Internal(format!("building an audit batch: {e}")))
}

/// Appends `batch` to `__audit/0`: locally when this node leads it, else through its
/// leader's client port as a broker.
async fn append(node: &Node, batch: Bytes) -> Result<(), BrokerError> {
    node.audit_topic().await?;
    if let Ok(partition) = node.partition(AUDIT_TOPIC, AUDIT_PARTITION)
        && partition.is_leader()
    {
        let batch = Batch::decode(batch)
            .map_err(|e| BrokerError::Internal(format!("an audit batch: {e}")))?;
        partition.produce(batch, Vec::new(), false).await?;
        return Ok(());
    }
    let metadata = node.metadata();
    let leader = metadata
        .topics
        .get(AUDIT_TOPIC)
        .and_then(|t| t.partitions.get(AUDIT_PARTITION as usize))
        .and_then(|p| p.leader)
        .and_then(|l| metadata.node_address(l).map(str::to_string))
        .ok_or_else(|| BrokerError::Unavailable(format!("{AUDIT_TOPIC} has no known leader")))?;
    let channel = node.coordinator.channel(&leader)?;
    let mut request = tonic::Request::new(ProduceRequest {
        topic: AUDIT_TOPIC.to_string(),
        partition: AUDIT_PARTITION,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    });
    let token = format!("Bearer {}", node.session_keys().broker_token());
    if let Ok(value) = token.parse() {
        request
            .metadata_mut()
            .insert(crate::auth::interceptor::AUTHORIZATION_KEY, value);
    }
    ProducerClient::new(channel)
        .produce(request)
        .await
        .map_err(|s| {
            BrokerError::Unavailable(format!(
                "{AUDIT_TOPIC} through its leader at {leader}: {}",
                s.message()
            ))
        })?;
    Ok(())
}
