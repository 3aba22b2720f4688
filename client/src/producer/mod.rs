//! The producer: records are encoded into per-partition batches as they are sent; each
//! partition's sender keeps several batches in flight on one `ProduceStream`, in order, with
//! idempotence on by default and retries with backoff on retriable reasons.

mod delivery_queue;
mod outcome;
mod partition_queue;
mod sender;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::v1::Acks;
use sluice_storage::Compression;
use tokio::sync::Semaphore;

use crate::connection::Client;
use crate::error::ClientError;
use crate::partitioner::partition_for_key;
pub use delivery_queue::{Answered, DeliveryQueue};
use partition_queue::{Batching, PartitionQueue};
use sender::PartitionSender;

/// How a producer batches, retries and acknowledges.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent (Kafka's `linger.ms`).
    /// The default, zero, sends as soon as the partition has a batch slot free: batches
    /// still grow while `max_in_flight` are unanswered, so batching follows the load
    /// without adding a wait when the broker keeps up (docs/benchmarks.md).
    pub linger: Duration,
    /// A batch is sent once its records reach this size (or its linger passes). While
    /// `max_in_flight` batches are unanswered, batches grow up to this size.
    pub batch_bytes: usize,
    /// Batches per partition sent and not yet answered (Kafka's
    /// `max.in.flight.requests.per.connection`). At most 5 with idempotence: the broker
    /// recognises a retry among a producer's last five batches.
    pub max_in_flight: usize,
    /// Compression of each batch.
    pub compression: Compression,
    /// Producer id and sequence numbers, so retries never duplicate a record.
    pub idempotent: bool,
    /// What a send waits for.
    pub acks: Acks,
    /// Attempts after the first for retriable failures.
    pub retries: u32,
    /// First retry delay; doubles up to one second, or up to 250 ms while a partition
    /// changes leader (NOT_LEADER, UNAVAILABLE), so a failover costs little more than the
    /// election.
    pub retry_backoff: Duration,
    /// Deadline of each produce request.
    pub request_timeout: Duration,
    /// Bytes of records buffered, over all partitions, before `send` waits (Kafka's
    /// `buffer.memory`).
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::ZERO,
            batch_bytes: 1024 * 1024,
            max_in_flight: 5,
            compression: Compression::None,
            idempotent: true,
            acks: Acks::All,
            retries: 100,
            retry_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(30),
            buffer_bytes: 64 * 1024 * 1024,
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

/// A queued record's pending answer; see [`Producer::enqueue`].
#[derive(Debug)]
pub struct Delivery {
    outcome: Arc<outcome::BatchOutcome>,
    partition: u32,
    index: u32,
}

impl Delivery {
    /// The partition the record was queued for.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Waits until the record's batch is answered: its partition and offset, or why it
    /// failed.
    pub async fn wait(&self) -> Result<RecordMetadata, ClientError> {
        let base = self.outcome.wait().await;
        self.metadata(base)
    }

    /// The answer, if it has arrived, and when the client received it: callers tracking
    /// many records can check without a future per record, and measure latency exactly.
    pub fn try_wait(&self) -> Option<(Result<RecordMetadata, ClientError>, Instant)> {
        self.outcome
            .get()
            .map(|(base, at)| (self.metadata(base.clone()), at))
    }

    fn metadata(&self, base: Result<u64, ClientError>) -> Result<RecordMetadata, ClientError> {
        Ok(RecordMetadata {
            partition: self.partition,
            offset: base? + u64::from(self.index),
        })
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

/// Sends records. Clone it to share; when the last clone is dropped, what is queued is still
/// sent, but nobody waits for it: call [`Producer::flush`] first.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

/// Records a batch counts beyond their key and value (varints, timestamp, offset delta).
const RECORD_OVERHEAD_BYTES: usize = 16;
/// Idempotent batches in flight per partition: the broker remembers five per producer.
const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

#[derive(Debug)]
struct Inner {
    client: Client,
    config: ProducerConfig,
    /// Topic → partition → queue; looked up by `&str` on every send.
    queues: RwLock<BTreeMap<String, BTreeMap<u32, Arc<PartitionQueue>>>>,
    /// Bytes of records buffered and not yet answered.
    buffer: Arc<Semaphore>,
    round_robin: AtomicU32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let queues = self.queues.get_mut().unwrap_or_else(|p| p.into_inner());
        for queue in queues.values().flat_map(BTreeMap::values) {
            queue.close();
        }
    }
}

fn now_ms() -> i64 {
    sluice_storage::Clock::now_ms(&sluice_storage::SystemClock)
}

impl Producer {
    pub(crate) async fn new(client: Client, config: ProducerConfig) -> Result<Self, ClientError> {
        if config.batch_bytes == 0 || config.buffer_bytes == 0 || config.max_in_flight == 0 {
            return Err(ClientError::InvalidArgument(
                "batch_bytes, buffer_bytes and max_in_flight must be positive".into(),
            ));
        }
        if config.idempotent && config.max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer keeps at most {IDEMPOTENT_IN_FLIGHT_MAX} batches in flight per partition"
            )));
        }
        let buffer = Arc::new(Semaphore::new(
            config.buffer_bytes.min(Semaphore::MAX_PERMITS),
        ));
        let inner = Inner {
            client,
            config,
            queues: RwLock::new(BTreeMap::new()),
            buffer,
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

    fn queue(&self, topic: &str, partition: u32) -> Arc<PartitionQueue> {
        let known = self
            .inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .and_then(|t| t.get(&partition))
            .cloned();
        if let Some(queue) = known {
            return queue;
        }
        let mut queues = self.inner.queues.write().unwrap_or_else(|p| p.into_inner());
        let partitions = queues.entry(topic.to_string()).or_default();
        if let Some(queue) = partitions.get(&partition) {
            return Arc::clone(queue);
        }
        let config = &self.inner.config;
        let queue = Arc::new(PartitionQueue::new(
            Batching {
                linger: config.linger,
                batch_bytes: config.batch_bytes,
                compression: config.compression,
            },
            Arc::clone(&self.inner.buffer),
        ));
        let sender = PartitionSender::new(
            self.inner.client.clone(),
            config.clone(),
            topic.to_string(),
            partition,
            Arc::clone(&queue),
        );
        tokio::spawn(sender.run());
        partitions.insert(partition, Arc::clone(&queue));
        queue
    }

    /// Queues a record and waits until it is stored (per `acks`); resolves to its partition
    /// and offset. Waits for buffer space when `buffer_bytes` are queued.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        self.enqueue(record).await?.wait().await
    }

    /// Queues a record and returns as soon as it is in its partition's batch: records
    /// enqueued one after another keep that order in their partition. Waits only for buffer
    /// space (and, for a topic not seen before, its metadata). [`Delivery::wait`] gives the
    /// offset once the batch is stored.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let size = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
            + RECORD_OVERHEAD_BYTES;
        let permits = u32::try_from(size)
            .ok()
            .filter(|_| size <= self.inner.config.buffer_bytes)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "a record of {size} bytes does not fit the producer's buffer_bytes ({})",
                    self.inner.config.buffer_bytes
                ))
            })?;
        let partition = self.choose_partition(&record).await?;
        self.inner
            .buffer
            .acquire_many(permits)
            .await
            .map_err(|_| ClientError::Closed)?
            .forget();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let (outcome, index) = self
            .queue(&record.topic, partition)
            .append(&record, timestamp, size);
        Ok(Delivery {
            outcome,
            partition,
            index,
        })
    }

    /// Sends every queued record now and waits until all are answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let queues: Vec<Arc<PartitionQueue>> = self
            .inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|t| t.values().cloned())
            .collect();
        let newest: Vec<_> = queues.iter().filter_map(|q| q.flush()).collect();
        for outcome in newest {
            // Failures are answered to their own `send`s.
            let _ = outcome.wait().await;
        }
        Ok(())
    }
}
