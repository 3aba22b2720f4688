//! The producer: per-partition accumulators, Kafka's key partitioner, idempotence on by
//! default, retries with backoff on retriable reasons.

mod accumulator;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::v1::Acks;
use sluice_storage::Compression;
use tokio::sync::{mpsc, oneshot};

use crate::connection::Client;
use crate::error::ClientError;
use crate::partitioner::partition_for_key;
use accumulator::{Item, Pending, run_accumulator};

/// How a producer batches, retries and acknowledges.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once its records reach this size. One batch per partition is in flight
    /// (that keeps order under retries), so batches grow under load up to this size.
    pub batch_bytes: usize,
    /// Compression of each batch.
    pub compression: Compression,
    /// Producer id and sequence numbers, so retries never duplicate a record.
    pub idempotent: bool,
    /// What a send waits for.
    pub acks: Acks,
    /// Attempts after the first for retriable failures.
    pub retries: u32,
    /// First retry delay; doubles up to one second.
    pub retry_backoff: Duration,
    /// Deadline of each produce request.
    pub request_timeout: Duration,
    /// Records queued per partition before `send` waits.
    pub queue_records: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 1024 * 1024,
            compression: Compression::None,
            idempotent: true,
            acks: Acks::All,
            retries: 20,
            retry_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
            queue_records: 16 * 1024,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: String,
    /// Explicit partition; otherwise murmur2 of the key, or round robin for null keys.
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
    /// Timestamp in ms since the epoch; now if unset.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// An empty record for `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sends to this partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<Bytes>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }

    /// Sets the timestamp.
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// Sends records. Clone it to share; it is closed when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    config: ProducerConfig,
    /// Topic → partition → accumulator queue; looked up by `&str` on every send.
    accumulators: Mutex<HashMap<String, HashMap<u32, mpsc::Sender<Item>>>>,
    round_robin: AtomicU32,
}

impl Producer {
    pub(crate) async fn new(client: Client, config: ProducerConfig) -> Result<Self, ClientError> {
        if config.batch_bytes == 0 || config.queue_records == 0 {
            return Err(ClientError::InvalidArgument(
                "batch_bytes and queue_records must be positive".into(),
            ));
        }
        let inner = Inner {
            client,
            config,
            accumulators: Mutex::new(HashMap::new()),
            round_robin: AtomicU32::new(0),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    async fn choose_partition(&self, record: &ProducerRecord) -> Result<u32, ClientError> {
        let count = self.inner.client.partition_count(&record.topic).await?;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % count,
        };
        if partition >= count {
            return Err(ClientError::InvalidArgument(format!(
                "topic {} has {count} partitions, not {}",
                record.topic,
                partition + 1
            )));
        }
        Ok(partition)
    }

    fn accumulator(&self, topic: &str, partition: u32) -> mpsc::Sender<Item> {
        let mut accumulators = self
            .inner
            .accumulators
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = accumulators.get(topic).and_then(|t| t.get(&partition)) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.config.queue_records);
        tokio::spawn(run_accumulator(
            self.inner.client.clone(),
            self.inner.config.clone(),
            topic.to_string(),
            partition,
            rx,
        ));
        accumulators
            .entry(topic.to_string())
            .or_default()
            .insert(partition, tx.clone());
        tx
    }

    /// Queues a record and waits until it is stored (per `acks`); resolves to its partition
    /// and offset. Waits for queue space when the partition's queue is full.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        let partition = self.choose_partition(&record).await?;
        let (reply, answer) = oneshot::channel();
        self.accumulator(&record.topic, partition)
            .send(Item::Record(Pending {
                record,
                reply,
                queued_at: tokio::time::Instant::now(),
            }))
            .await
            .map_err(|_| ClientError::Closed)?;
        let offset = answer.await.map_err(|_| ClientError::Closed)??;
        Ok(RecordMetadata { partition, offset })
    }

    /// Sends every queued record now and waits until all are answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let senders: Vec<mpsc::Sender<Item>> = self
            .inner
            .accumulators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|t| t.values().cloned())
            .collect();
        for sender in senders {
            let (done, wait) = oneshot::channel();
            if sender.send(Item::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
        Ok(())
    }
}
