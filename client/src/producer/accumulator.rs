//! One partition's accumulator: collects records into a batch until `batch_bytes` or
//! `linger`, sends it with retries, and answers every record. One batch in flight per
//! partition keeps order under retries; batches grow while one is in flight.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_protocol::Reason;
use sluice_protocol::v1::{InitProducerIdRequest, ProduceRequest};
use sluice_storage::BatchBuilder;
use sluice_storage::batch::{NO_PRODUCER_ID, NewRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{ProducerConfig, ProducerRecord};
use crate::connection::Client;
use crate::error::ClientError;

/// A record waiting for its offset.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) record: ProducerRecord,
    /// When `send` queued it: linger counts from the oldest record of a batch.
    pub(super) queued_at: Instant,
    pub(super) reply: oneshot::Sender<Result<u64, ClientError>>,
}

/// What the accumulator is asked to do.
#[derive(Debug)]
pub(super) enum Item {
    /// Add a record.
    Record(Pending),
    /// Send what is queued now; answer when everything before this is answered.
    Flush(oneshot::Sender<()>),
}

/// Idempotent identity: producer id, epoch, next sequence.
#[derive(Debug, Clone, Copy)]
struct Identity {
    producer_id: u64,
    epoch: u16,
    next_sequence: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) async fn run_accumulator(
    client: Client,
    config: ProducerConfig,
    topic: String,
    partition: u32,
    mut queue: mpsc::Receiver<Item>,
) {
    let mut identity: Option<Identity> = None;
    while let Some(first) = queue.recv().await {
        let mut round: Vec<Pending> = Vec::new();
        let mut flushes = Vec::new();
        let mut bytes = 0usize;
        let deadline = match &first {
            Item::Record(p) => p.queued_at + config.linger,
            Item::Flush(_) => Instant::now(),
        };
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Item::Record(p)) => {
                    bytes += p.record.key.as_ref().map_or(0, |k| k.len())
                        + p.record.value.as_ref().map_or(0, |v| v.len())
                        + 16;
                    round.push(p);
                }
                Some(Item::Flush(done)) => {
                    flushes.push(done);
                    break;
                }
                None => {}
            }
            if bytes >= config.batch_bytes {
                break;
            }
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(item)) => next = Some(item),
                Ok(None) | Err(_) => break,
            }
        }
        if !round.is_empty() {
            send_round(&client, &config, &topic, partition, &mut identity, round).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn producer_identity(
    client: &Client,
    config: &ProducerConfig,
) -> Result<Identity, ClientError> {
    if !config.idempotent {
        return Ok(Identity {
            producer_id: NO_PRODUCER_ID,
            epoch: 0,
            next_sequence: 0,
        });
    }
    let mut producer = client.producer_client(client.leader_channel("", 0));
    let response = producer
        .init_producer_id(InitProducerIdRequest {})
        .await?
        .into_inner();
    let epoch = u16::try_from(response.producer_epoch).unwrap_or(u16::MAX);
    Ok(Identity {
        producer_id: response.producer_id,
        epoch,
        next_sequence: 0,
    })
}

fn build_batch(
    config: &ProducerConfig,
    identity: &Identity,
    round: &[Pending],
) -> Result<bytes::Bytes, ClientError> {
    let mut builder = BatchBuilder::new(config.compression);
    if identity.producer_id != NO_PRODUCER_ID {
        builder = builder.producer(identity.producer_id, identity.epoch, identity.next_sequence);
    }
    let now = now_ms();
    for pending in round {
        let r = &pending.record;
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_deref()))
            .collect();
        builder.push(NewRecord {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            timestamp: r.timestamp.unwrap_or(now),
            headers: &headers,
        });
    }
    builder.build().map_err(ClientError::Corrupt)
}

async fn send_round(
    client: &Client,
    config: &ProducerConfig,
    topic: &str,
    partition: u32,
    identity: &mut Option<Identity>,
    round: Vec<Pending>,
) {
    let result = async {
        let id = match identity {
            Some(id) => *id,
            None => {
                let id = producer_identity(client, config).await?;
                *identity = Some(id);
                id
            }
        };
        let batch = build_batch(config, &id, &round)?;
        produce_with_retries(client, config, topic, partition, batch).await
    }
    .await;
    match &result {
        Ok(_) => {
            if let Some(id) = identity
                .as_mut()
                .filter(|id| id.producer_id != NO_PRODUCER_ID)
            {
                id.next_sequence = id.next_sequence.wrapping_add(round.len() as u32);
            }
        }
        // Refused before anything was written: the sequence stays.
        Err(e) if is_definite_refusal(e) => {}
        // Possibly written, or the broker lost track: start a fresh producer id, so no later
        // batch can be taken for a duplicate of this one.
        Err(_) => *identity = None,
    }
    for (i, pending) in round.into_iter().enumerate() {
        let answer = result
            .as_ref()
            .map(|base| base + i as u64)
            .map_err(Clone::clone);
        let _ = pending.reply.send(answer);
    }
}

fn is_definite_refusal(e: &ClientError) -> bool {
    matches!(
        e.reason(),
        Some(
            Reason::CorruptBatch
                | Reason::RecordTooLarge
                | Reason::InvalidRequest
                | Reason::InvalidConfig
                | Reason::UnknownTopic
        )
    ) || matches!(e, ClientError::Corrupt(_) | ClientError::InvalidArgument(_))
}

async fn produce_with_retries(
    client: &Client,
    config: &ProducerConfig,
    topic: &str,
    partition: u32,
    batch: bytes::Bytes,
) -> Result<u64, ClientError> {
    let mut attempt = 0;
    loop {
        let mut producer = client.producer_client(client.leader_channel(topic, partition));
        let mut request = tonic::Request::new(ProduceRequest {
            topic: topic.to_string(),
            partition,
            batch: batch.clone(),
            acks: config.acks as i32,
            request_id: u64::from(attempt),
        });
        request.set_timeout(config.request_timeout);
        let error = match producer.produce(request).await {
            Ok(response) => return Ok(response.into_inner().base_offset),
            Err(status) => ClientError::from(status),
        };
        if !error.is_retriable() || attempt >= config.retries {
            return Err(error);
        }
        attempt += 1;
        let hinted = match &error {
            ClientError::Refused {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(u64::from(*ms))),
            _ => None,
        };
        let backoff = hinted.unwrap_or_else(|| {
            (config.retry_backoff * 2u32.saturating_pow(attempt.min(5))).min(Duration::from_secs(1))
        });
        tracing::debug!(%topic, partition, attempt, error = %error, "retrying produce");
        tokio::time::sleep(backoff).await;
        if matches!(
            error.reason(),
            Some(Reason::NotLeader | Reason::UnknownPartition)
        ) {
            let _ = client.refresh_metadata().await;
        }
    }
}
