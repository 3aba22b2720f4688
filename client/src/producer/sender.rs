//! One partition's sender: a `ProduceStream` with up to `max_in_flight` batches on the wire,
//! answered in order.
//!
//! Retries resend every batch in flight, in order, on a fresh stream. With idempotence the
//! broker recognises the ones it already stored (it remembers a producer's last five
//! batches, which is why `max_in_flight` is at most five) and answers their original
//! offsets, so a retry never duplicates or reorders records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::Reason;
use sluice_protocol::v1::{InitProducerIdRequest, ProduceRequest, ProduceResponse};
use sluice_storage::batch::{NO_PRODUCER_ID, with_producer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::ProducerConfig;
use super::partition_queue::{BatchTicket, Next, PartitionQueue, SealedBatch};
use crate::connection::Client;
use crate::error::ClientError;

/// Idempotent identity of this partition's batches: producer id, epoch, next sequence.
#[derive(Debug, Clone, Copy)]
struct Identity {
    producer_id: u64,
    epoch: u16,
    next_sequence: u32,
}

/// A batch sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    ticket: BatchTicket,
    /// The encoded batch, as sent (and resent on retries).
    bytes: Bytes,
    records: u32,
    request_id: u64,
    /// When it was (last) written to a stream: the request timeout counts from here.
    sent_at: Instant,
}

/// An open `ProduceStream` call.
struct Stream {
    requests: mpsc::Sender<ProduceRequest>,
    responses: Streaming<ProduceResponse>,
}

/// Sends one partition's batches until its queue is closed and drained.
pub(super) struct PartitionSender {
    client: Client,
    config: ProducerConfig,
    topic: String,
    partition: u32,
    queue: Arc<PartitionQueue>,
    identity: Option<Identity>,
    in_flight: VecDeque<InFlight>,
    stream: Option<Stream>,
    next_request_id: u64,
    /// Retries of the oldest batch in flight.
    attempts: u32,
}

fn timeout_error(timeout: Duration) -> ClientError {
    ClientError::Refused {
        reason: None,
        code: tonic::Code::Unavailable,
        message: format!("no answer within the request timeout ({timeout:?})"),
        retry_after_ms: None,
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

impl PartitionSender {
    pub(super) fn new(
        client: Client,
        config: ProducerConfig,
        topic: String,
        partition: u32,
        queue: Arc<PartitionQueue>,
    ) -> Self {
        Self {
            client,
            config,
            topic,
            partition,
            queue,
            identity: None,
            in_flight: VecDeque::new(),
            stream: None,
            next_request_id: 0,
            attempts: 0,
        }
    }

    /// Runs until the producer is closed and every batch is answered.
    pub(super) async fn run(mut self) {
        loop {
            let mut linger_until = None;
            while self.in_flight.len() < self.config.max_in_flight {
                match self.queue.next() {
                    Next::Send(batch) => self.dispatch(batch).await,
                    Next::WaitUntil(at) => {
                        linger_until = Some(at);
                        break;
                    }
                    Next::Idle => break,
                    Next::Closed => {
                        if self.in_flight.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
            let room = self.in_flight.len() < self.config.max_in_flight;
            let oldest_deadline = self
                .in_flight
                .front()
                .map(|f| f.sent_at + self.config.request_timeout);
            tokio::select! {
                response = next_response(&mut self.stream), if !self.in_flight.is_empty() => {
                    self.on_response(response).await;
                }
                () = sleep_until_opt(oldest_deadline), if oldest_deadline.is_some() => {
                    self.on_failure(timeout_error(self.config.request_timeout)).await;
                }
                () = self.queue.wake.notified(), if room => {}
                () = sleep_until_opt(linger_until), if room && linger_until.is_some() => {}
            }
        }
    }

    /// Stamps the batch with this partition's producer id and next sequence, and sends it.
    async fn dispatch(&mut self, batch: SealedBatch) {
        let SealedBatch {
            mut builder,
            ticket,
        } = batch;
        let records = builder.record_count();
        let stamped = match self.identity().await {
            Ok(identity) => {
                if identity.producer_id != NO_PRODUCER_ID {
                    builder.set_producer(
                        identity.producer_id,
                        identity.epoch,
                        identity.next_sequence,
                    );
                }
                builder.finish().map_err(ClientError::Corrupt)
            }
            Err(e) => Err(e),
        };
        let bytes = match stamped {
            Ok(bytes) => bytes,
            Err(e) => {
                ticket.outcome.settle(Err(e));
                return;
            }
        };
        self.take_sequences(records);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.in_flight.push_back(InFlight {
            ticket,
            bytes,
            records,
            request_id,
            sent_at: Instant::now(),
        });
        if self.stream.is_some() {
            if let Some(last) = self.in_flight.back() {
                let request = self.request(last);
                self.write(request).await;
            }
        } else {
            self.resend_all().await;
        }
    }

    /// Advances the idempotent sequence past `records` just stamped.
    fn take_sequences(&mut self, records: u32) {
        if let Some(id) = self
            .identity
            .as_mut()
            .filter(|id| id.producer_id != NO_PRODUCER_ID)
        {
            id.next_sequence = id.next_sequence.wrapping_add(records);
        }
    }

    async fn identity(&mut self) -> Result<Identity, ClientError> {
        if let Some(identity) = self.identity {
            return Ok(identity);
        }
        let identity = if self.config.idempotent {
            let mut attempt = 0;
            loop {
                let mut producer = self
                    .client
                    .producer_client(self.client.leader_channel("", 0));
                match producer.init_producer_id(InitProducerIdRequest {}).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        break Identity {
                            producer_id: response.producer_id,
                            epoch: u16::try_from(response.producer_epoch).unwrap_or(u16::MAX),
                            next_sequence: 0,
                        };
                    }
                    Err(status) => {
                        let error = ClientError::from(status);
                        if !error.is_retriable() || attempt >= self.config.retries {
                            return Err(error);
                        }
                        attempt += 1;
                        tokio::time::sleep(self.backoff(attempt, &error)).await;
                    }
                }
            }
        } else {
            Identity {
                producer_id: NO_PRODUCER_ID,
                epoch: 0,
                next_sequence: 0,
            }
        };
        self.identity = Some(identity);
        Ok(identity)
    }

    fn request(&self, in_flight: &InFlight) -> ProduceRequest {
        ProduceRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            batch: in_flight.bytes.clone(),
            acks: self.config.acks as i32,
            request_id: in_flight.request_id,
        }
    }

    /// Queues a request on the open stream. A stream that went away shows up as its
    /// response stream ending, which is where failures are handled.
    async fn write(&mut self, request: ProduceRequest) {
        if let Some(stream) = &self.stream {
            let _ = stream.requests.send(request).await;
        }
    }

    /// Opens a fresh stream and sends every batch in flight on it, oldest first.
    async fn resend_all(&mut self) {
        self.stream = None;
        let (requests, receiver) = mpsc::channel(self.config.max_in_flight.max(1));
        let mut producer = self
            .client
            .producer_client(self.client.leader_channel(&self.topic, self.partition));
        let now = Instant::now();
        for in_flight in &mut self.in_flight {
            in_flight.sent_at = now;
        }
        // Queued before the call: the channel holds max_in_flight requests, and the call
        // only returns once the broker answers with headers.
        let pending: Vec<ProduceRequest> = self.in_flight.iter().map(|f| self.request(f)).collect();
        for request in pending {
            if requests.try_send(request).is_err() {
                break;
            }
        }
        match producer.produce_stream(ReceiverStream::new(receiver)).await {
            Ok(response) => {
                self.stream = Some(Stream {
                    requests,
                    responses: response.into_inner(),
                });
            }
            Err(status) => {
                Box::pin(self.on_failure(ClientError::from(status))).await;
            }
        }
    }

    async fn on_response(&mut self, response: Result<Option<ProduceResponse>, tonic::Status>) {
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) => {
                return self
                    .on_failure(ClientError::Refused {
                        reason: None,
                        code: tonic::Code::Unavailable,
                        message: "the broker closed the produce stream".into(),
                        retry_after_ms: None,
                    })
                    .await;
            }
            Err(status) => return self.on_failure(ClientError::from(status)).await,
        };
        let expected = self.in_flight.front().map(|f| f.request_id);
        if expected != Some(response.request_id) {
            return self
                .on_failure(ClientError::Refused {
                    reason: None,
                    code: tonic::Code::Unavailable,
                    message: format!(
                        "answer to request {} while waiting for {expected:?}",
                        response.request_id
                    ),
                    retry_after_ms: None,
                })
                .await;
        }
        if let Some(error) = &response.error {
            return self.on_failure(ClientError::from(error)).await;
        }
        if let Some(done) = self.in_flight.pop_front() {
            done.ticket.outcome.settle(Ok(response.base_offset));
        }
        self.attempts = 0;
    }

    /// The oldest batch in flight failed with `error`.
    async fn on_failure(&mut self, error: ClientError) {
        if self.in_flight.is_empty() {
            self.stream = None;
            return;
        }
        if error.is_retriable() && self.attempts < self.config.retries {
            self.attempts += 1;
            tracing::debug!(topic = %self.topic, partition = self.partition,
                attempt = self.attempts, error = %error, "retrying produce");
            tokio::time::sleep(self.backoff(self.attempts, &error)).await;
            // A leader change shows as NOT_LEADER from a live broker, or as UNAVAILABLE
            // from one that stopped: either way, ask again who leads.
            if !matches!(error.reason(), Some(Reason::Throttled)) {
                let _ = self.client.refresh_metadata().await;
            }
            return self.resend_all().await;
        }
        self.attempts = 0;
        if is_definite_refusal(&error) {
            // Nothing of the oldest batch was written. The batches behind it were refused
            // as out of sequence (idempotent) and go again under a fresh identity; without
            // idempotence they may be stored already and are answered as failed too.
            let refused_records = self.in_flight.pop_front().map_or(0, |refused| {
                refused.ticket.outcome.settle(Err(error.clone()));
                refused.records
            });
            if !self.config.idempotent {
                // The batches behind it are answered on the same stream: keep reading it.
                return;
            }
            if self.in_flight.is_empty() {
                // The refused batch took no sequence numbers on the broker: give them back.
                if let Some(id) = self.identity.as_mut() {
                    id.next_sequence = id.next_sequence.wrapping_sub(refused_records);
                }
                return;
            }
            self.identity = None;
            if let Err(e) = self.restamp_all().await {
                self.fail_all(&e);
                self.stream = None;
                return;
            }
            return self.resend_all().await;
        }
        // Possibly written: fail everything in flight and start a fresh producer id, so no
        // later batch can be taken for a duplicate of these.
        self.fail_all(&error);
        self.identity = None;
        self.stream = None;
    }

    fn fail_all(&mut self, error: &ClientError) {
        for failed in self.in_flight.drain(..) {
            failed.ticket.outcome.settle(Err(error.clone()));
        }
    }

    /// Restamps every batch in flight under a fresh identity, in order.
    async fn restamp_all(&mut self) -> Result<(), ClientError> {
        let identity = self.identity().await?;
        let mut sequence = identity.next_sequence;
        for in_flight in &mut self.in_flight {
            in_flight.bytes = with_producer(
                &in_flight.bytes,
                identity.producer_id,
                identity.epoch,
                sequence,
            )
            .map_err(ClientError::Corrupt)?;
            sequence = sequence.wrapping_add(in_flight.records);
        }
        if let Some(id) = self.identity.as_mut() {
            id.next_sequence = sequence;
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32, error: &ClientError) -> Duration {
        match error {
            ClientError::Refused {
                retry_after_ms: Some(ms),
                ..
            } => Duration::from_millis(u64::from(*ms)),
            error => {
                let cap = if leader_changing(error) {
                    LEADER_CHANGE_BACKOFF_MAX
                } else {
                    Duration::from_secs(1)
                };
                (self.config.retry_backoff * 2u32.saturating_pow(attempt.min(5))).min(cap)
            }
        }
    }
}

/// Longest pause between retries while a partition changes leader: its new leader serves
/// about 1.3 s after the old one died (docs/benchmarks.md), and a longer pause only adds to
/// that.
const LEADER_CHANGE_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Whether `error` says the partition's leader is changing or unreachable.
fn leader_changing(error: &ClientError) -> bool {
    match error.reason() {
        Some(reason) => matches!(reason, Reason::NotLeader | Reason::Unavailable),
        // Transport failures (the leader's process is gone) carry no reason.
        None => error.is_retriable(),
    }
}

async fn next_response(
    stream: &mut Option<Stream>,
) -> Result<Option<ProduceResponse>, tonic::Status> {
    match stream {
        Some(stream) => stream.responses.message().await,
        // No stream (it failed to open): report it as ended so the batches are retried.
        None => Ok(None),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
