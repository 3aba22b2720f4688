//! The consumer: manual assignment, seek by offset or time, and a `Stream` of records fed
//! by credit-paced subscriptions. Credit is granted back only after records were handed to
//! the stream, so a slow reader slows the broker instead of filling memory.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::stream::SelectAll;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{
    Credit, ListOffsetsRequest, OffsetSpec, SubscribeRequest, SubscribeStart,
};
use sluice_storage::Batch;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::connection::Client;
use crate::error::ClientError;

/// Attempts to resolve a position while its partition's leader moves (≈ 20 s with backoff).
const RESOLVE_ATTEMPTS: u32 = 45;

/// How a consumer paces its subscriptions.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bytes of credit per partition; must be at least the topics' `max.message.bytes`.
    pub credit_bytes: u64,
    /// Batches of credit per partition.
    pub credit_batches: u32,
    /// Records buffered per partition between its subscription and the stream (one stored
    /// batch beyond it when a single batch holds more).
    pub buffer_records: usize,
    /// Group members: how often processed offsets are committed; `None` commits only when
    /// asked (and on revoke and close).
    pub auto_commit_interval: Option<Duration>,
    /// Group members: where to start a partition the group has no committed offset for.
    pub auto_offset_reset: AutoOffsetReset,
    /// Group members: the coordinator expels a member silent for longer.
    pub session_timeout: Duration,
    /// Group members: a static instance id; a member restarting with the same id within
    /// the session timeout gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
}

/// Where a group member starts a partition without a committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// The first stored offset.
    Earliest,
    /// The high watermark: only records produced from now on (Kafka's default).
    #[default]
    Latest,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            credit_bytes: 8 * 1024 * 1024,
            credit_batches: 256,
            buffer_records: 4096,
            auto_commit_interval: Some(Duration::from_secs(5)),
            auto_offset_reset: AutoOffsetReset::Latest,
            session_timeout: Duration::from_secs(45),
            instance_id: None,
        }
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The first stored offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// This offset.
    At(u64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic (shared by every record of a subscription, not copied per record).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// A consumer with manually assigned partitions.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
}

/// One assigned partition: where to start, and where (if anywhere) its records end.
#[derive(Debug, Clone)]
struct Assignment {
    topic: String,
    partition: u32,
    from: u64,
    /// The partition's stream ends once the position reaches this offset.
    until: Option<u64>,
}

/// The records of every assigned partition, interleaved; each partition in offset order.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<ConsumerRecord, ClientError>> + Send>>;

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Self {
        Self {
            client,
            config,
            assignments: Vec::new(),
        }
    }

    /// Resolves `from` to an offset of `topic`/`partition`.
    pub async fn resolve(
        &self,
        topic: &str,
        partition: u32,
        from: Offset,
    ) -> Result<u64, ClientError> {
        let (spec, timestamp_ms) = match from {
            Offset::At(offset) => return Ok(offset),
            Offset::Earliest => (OffsetSpec::Earliest, 0),
            Offset::Latest => (OffsetSpec::Latest, 0),
            Offset::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
        };
        let request = ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            spec: spec as i32,
            timestamp_ms,
        };
        // A leader moving or not serving yet is retried at the leader metadata names next.
        let mut attempt = 0u32;
        loop {
            let mut consumer = self
                .client
                .consumer_client(self.client.leader_channel(topic, partition));
            match consumer.list_offsets(request.clone()).await {
                Ok(answer) => return Ok(answer.into_inner().offset),
                Err(status) => {
                    let e = ClientError::from(status);
                    if !e.is_retriable() || attempt >= RESOLVE_ATTEMPTS {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(10))))
                        .await;
                    let _ = self.client.refresh_metadata().await;
                }
            }
        }
    }

    /// Adds (or moves) a partition to read from `from`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
    ) -> Result<(), ClientError> {
        self.assign_range(topic, partition, from, None).await
    }

    /// Adds (or moves) a partition to read from `from` up to `until` (exclusive): its part of
    /// the stream ends once the consumer's position there reaches `until`, even if the last
    /// offsets before it hold no records (compacted away). The stream as a whole ends when
    /// every partition assigned this way has ended.
    pub async fn assign_until(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
        until: u64,
    ) -> Result<(), ClientError> {
        self.assign_range(topic, partition, from, Some(until)).await
    }

    async fn assign_range(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
        until: Option<u64>,
    ) -> Result<(), ClientError> {
        let from = self.resolve(topic, partition, from).await?;
        self.assignments
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.assignments.push(Assignment {
            topic: topic.to_string(),
            partition,
            from,
            until,
        });
        Ok(())
    }

    /// Joins consumer group `group` subscribed to `topics`: the group's coordinator
    /// assigns this member its share of their partitions (see [`GroupConsumer`]).
    pub fn subscribe<S: AsRef<str>>(
        self,
        group: &str,
        topics: &[S],
    ) -> Result<crate::GroupConsumer, ClientError> {
        let topics = topics.iter().map(|t| t.as_ref().to_string()).collect();
        crate::GroupConsumer::start(
            self.client,
            self.config,
            group,
            crate::Subscription::Topics(topics),
        )
    }

    /// Joins consumer group `group` subscribed to every topic whose whole name matches
    /// `pattern` (a regular expression), including topics created later.
    pub fn subscribe_pattern(
        self,
        group: &str,
        pattern: &str,
    ) -> Result<crate::GroupConsumer, ClientError> {
        crate::GroupConsumer::start(
            self.client,
            self.config,
            group,
            crate::Subscription::Pattern(pattern.to_string()),
        )
    }

    /// Moves an assigned partition (same as `assign`).
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: Offset,
    ) -> Result<(), ClientError> {
        self.assign(topic, partition, to).await
    }

    /// The stream of records. Dropping it ends the subscriptions.
    pub fn into_stream(self) -> RecordStream {
        let mut streams = SelectAll::new();
        for assignment in self.assignments {
            let (tx, rx) = crate::record_channel::channel(self.config.buffer_records);
            tokio::spawn(run_partition(
                self.client.clone(),
                self.config.clone(),
                assignment,
                tx,
            ));
            streams.push(rx);
        }
        Box::pin(streams)
    }
}

/// Where a partition's records go; `send` is false once nobody reads them.
pub(crate) trait RecordSink: Send + Sync + 'static {
    /// Hands over one record (or the error that ended the partition's reading).
    fn send(
        &self,
        item: Result<ConsumerRecord, ClientError>,
    ) -> impl std::future::Future<Output = bool> + Send;

    /// Hands over one stored batch's records, in order.
    fn send_batch(
        &self,
        records: Vec<ConsumerRecord>,
    ) -> impl std::future::Future<Output = bool> + Send {
        async move {
            for record in records {
                if !self.send(Ok(record)).await {
                    return false;
                }
            }
            true
        }
    }
}

impl RecordSink for mpsc::Sender<Result<ConsumerRecord, ClientError>> {
    async fn send(&self, item: Result<ConsumerRecord, ClientError>) -> bool {
        mpsc::Sender::send(self, item).await.is_ok()
    }
}

/// Reads one partition from `from` until the sink is dropped, reconnecting on retriable
/// errors (a group member's partitions read this way).
pub(crate) async fn read_partition<S: RecordSink>(
    client: Client,
    config: ConsumerConfig,
    topic: String,
    partition: u32,
    from: u64,
    out: S,
) {
    let assignment = Assignment {
        topic,
        partition,
        from,
        until: None,
    };
    run_partition(client, config, assignment, out).await;
}

/// Reads one partition until the stream is dropped, reconnecting on retriable errors.
async fn run_partition<S: RecordSink>(
    client: Client,
    config: ConsumerConfig,
    assignment: Assignment,
    out: S,
) {
    let Assignment {
        topic,
        partition,
        from: mut position,
        until,
    } = assignment;
    let mut failures = 0u32;
    loop {
        if until.is_some_and(|end| position >= end) {
            return;
        }
        let read = Range {
            topic: &topic,
            partition,
            until,
        };
        match subscribe_once(&client, &config, &read, &mut position, &out).await {
            Ok(()) => return,
            Err(e) if e.is_retriable() && failures < 50 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
                let _ = client.refresh_metadata().await;
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
}

/// One subscription: `Ok` when the caller dropped the stream, `Err` when the broker failed.
/// What one subscription reads.
struct Range<'a> {
    topic: &'a str,
    partition: u32,
    until: Option<u64>,
}

async fn subscribe_once<S: RecordSink>(
    client: &Client,
    config: &ConsumerConfig,
    range: &Range<'_>,
    position: &mut u64,
    out: &S,
) -> Result<(), ClientError> {
    let (topic, partition) = (range.topic, range.partition);
    let end = range.until.unwrap_or(u64::MAX);
    let (requests, rx) = mpsc::channel(4);
    let start = SubscribeStart {
        topic: topic.to_string(),
        partition,
        offset: *position,
    };
    let credit = Credit {
        bytes: config.credit_bytes,
        batches: config.credit_batches,
    };
    for kind in [Kind::Start(start), Kind::Credit(credit)] {
        requests
            .send(SubscribeRequest { kind: Some(kind) })
            .await
            .map_err(|_| ClientError::Closed)?;
    }
    let mut consumer = client.consumer_client(client.leader_channel(topic, partition));
    let mut responses = consumer
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let topic_name: Arc<str> = Arc::from(topic);
    while let Some(response) = responses.message().await? {
        let (mut bytes, mut batches) = (0u64, 0u32);
        for stored in response.batches {
            bytes += stored.len() as u64;
            batches += 1;
            // Verified again here: integrity is end to end.
            let batch = Batch::decode(stored)?;
            let header = *batch.header();
            if !header.attributes.is_control() {
                // The position moves once the batch's records are handed over: a batch
                // that fails to decode half way is read again whole on a retry.
                let mut next = *position;
                let mut records = Vec::with_capacity((header.record_count as usize).min(4096));
                for record in batch.records()? {
                    let record = record?;
                    if record.offset < next || record.offset >= end {
                        continue;
                    }
                    next = record.offset + 1;
                    let headers = record
                        .headers
                        .into_iter()
                        .map(|h| (h.key, h.value))
                        .collect();
                    let record = ConsumerRecord {
                        topic: Arc::clone(&topic_name),
                        partition,
                        offset: record.offset,
                        timestamp: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers,
                    };
                    records.push(record);
                }
                if !records.is_empty() && !out.send_batch(records).await {
                    return Ok(());
                }
                *position = next;
            }
            *position = (*position).max(header.next_offset());
        }
        if *position >= end {
            return Ok(());
        }
        let credit = Credit { bytes, batches };
        if requests
            .send(SubscribeRequest {
                kind: Some(Kind::Credit(credit)),
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Err(ClientError::Refused {
        reason: Some(sluice_protocol::Reason::Unavailable),
        code: tonic::Code::Unavailable,
        message: "subscription ended".into(),
        retry_after_ms: None,
    })
}
