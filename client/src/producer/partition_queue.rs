//! One partition's queue: `send` encodes each record straight into the open batch (one lock,
//! one copy); full or lingered batches wait, sealed, for the partition's sender.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::ProducerRecord;
use super::outcome::BatchOutcome;

/// A batch closed to new records.
#[derive(Debug)]
pub(super) struct SealedBatch {
    pub(super) builder: BatchBuilder,
    pub(super) ticket: BatchTicket,
}

/// A batch's claim on an answer and on buffer space, from its first record until it is
/// answered. Dropping it unanswered answers `Closed`; dropping it always returns its bytes to
/// the producer's buffer.
#[derive(Debug)]
pub(super) struct BatchTicket {
    pub(super) outcome: Arc<BatchOutcome>,
    buffered: usize,
    buffer: Arc<Semaphore>,
}

impl Drop for BatchTicket {
    fn drop(&mut self) {
        if !self.outcome.is_settled() {
            self.outcome.settle(Err(crate::error::ClientError::Closed));
        }
        self.buffer.add_permits(self.buffered);
    }
}

/// The batch records are being added to.
#[derive(Debug)]
struct OpenBatch {
    batch: SealedBatch,
    /// Linger counts from the first record.
    started: Instant,
}

#[derive(Debug, Default)]
struct QueueState {
    open: Option<OpenBatch>,
    ready: VecDeque<SealedBatch>,
    /// Outcome of the newest batch: batches are answered in order, so a flush waits on it.
    newest: Option<Arc<BatchOutcome>>,
    closed: bool,
}

/// What the sender should do next.
#[derive(Debug)]
pub(super) enum Next {
    /// Send this batch.
    Send(SealedBatch),
    /// The open batch is lingering until then.
    WaitUntil(Instant),
    /// Nothing queued.
    Idle,
    /// Nothing queued and the producer is closed.
    Closed,
}

/// Batching settings of one partition queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    pub(super) linger: Duration,
    pub(super) batch_bytes: usize,
    pub(super) compression: Compression,
}

/// One partition's queue, shared by `send` callers and the partition's sender task.
#[derive(Debug)]
pub(super) struct PartitionQueue {
    state: Mutex<QueueState>,
    /// Wakes the sender: a batch was sealed or started, a flush was asked, or the producer
    /// closed. One waiter, so a wake-up that comes early is kept for it.
    pub(super) wake: Notify,
    batching: Batching,
    buffer: Arc<Semaphore>,
}

impl PartitionQueue {
    /// An empty queue whose batches hold `buffer` permits for their bytes.
    pub(super) fn new(batching: Batching, buffer: Arc<Semaphore>) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            batching,
            buffer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes `record` into the open batch; `buffered` buffer permits are already taken for
    /// it. Returns the batch's outcome and the record's index in the batch.
    pub(super) fn append(
        &self,
        record: &ProducerRecord,
        timestamp: i64,
        buffered: usize,
    ) -> (Arc<BatchOutcome>, u32) {
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_deref()))
            .collect();
        let new = NewRecord {
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            timestamp,
            headers: &headers,
        };
        let mut state = self.lock();
        let mut wake = false;
        if let Some(open) = &state.open
            && !open.batch.builder.is_empty()
            && open.batch.builder.uncompressed_len() + buffered > self.batching.batch_bytes
        {
            self.seal_open(&mut state);
            wake = true;
        }
        let open = match &mut state.open {
            Some(open) => open,
            None => {
                let outcome = BatchOutcome::new();
                state.newest = Some(Arc::clone(&outcome));
                wake = true;
                state.open.insert(OpenBatch {
                    batch: SealedBatch {
                        builder: BatchBuilder::new(self.batching.compression),
                        ticket: BatchTicket {
                            outcome,
                            buffered: 0,
                            buffer: Arc::clone(&self.buffer),
                        },
                    },
                    started: Instant::now(),
                })
            }
        };
        let index = open.batch.builder.record_count();
        open.batch.builder.push(new);
        open.batch.ticket.buffered += buffered;
        let outcome = Arc::clone(&open.batch.ticket.outcome);
        if open.batch.builder.uncompressed_len() >= self.batching.batch_bytes {
            self.seal_open(&mut state);
            wake = true;
        }
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        (outcome, index)
    }

    fn seal_open(&self, state: &mut QueueState) {
        if let Some(open) = state.open.take() {
            state.ready.push_back(open.batch);
        }
    }

    /// The next batch to send, if one is ready or has lingered long enough.
    pub(super) fn next(&self) -> Next {
        let mut state = self.lock();
        if let Some(batch) = state.ready.pop_front() {
            return Next::Send(batch);
        }
        match &state.open {
            Some(open) if state.closed || open.started + self.batching.linger <= Instant::now() => {
                let sealed = state.open.take().map(|o| o.batch);
                sealed.map_or(Next::Idle, Next::Send)
            }
            Some(open) => Next::WaitUntil(open.started + self.batching.linger),
            None if state.closed => Next::Closed,
            None => Next::Idle,
        }
    }

    /// Seals the open batch so it goes now, and returns the newest batch's outcome.
    pub(super) fn flush(&self) -> Option<Arc<BatchOutcome>> {
        let mut state = self.lock();
        self.seal_open(&mut state);
        let newest = state.newest.clone();
        drop(state);
        self.wake.notify_one();
        newest
    }

    /// Sends what is queued without lingering, then lets the sender stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}
