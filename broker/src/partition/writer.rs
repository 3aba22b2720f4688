//! The partition leader's writer: group commit with idempotence checked at append time.
//!
//! openraft waits for each append's fsync before the next `client_write`, so the writer
//! takes every produce that arrived while the previous write was in flight and proposes
//! them as one entry: one fsync for all of them. Idempotence is checked here, against the
//! committed producer table plus the batches of the round being built, so a duplicate never
//! reaches the log.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use sluice_storage::Batch;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::producer_state::{ProducerTable, SequenceCheck};
use super::state::PartitionState;
use crate::error::BrokerError;
use crate::limits::{GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_REQUESTS_MAX};
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::{Command, CommandResponse, GroupRaft, NodeId, ProduceCommand};

/// Where a produced batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Broker time of the append, ms since the epoch.
    pub log_append_time_ms: i64,
    /// A retry of a stored batch: nothing was appended.
    pub duplicate: bool,
}

/// A verified batch waiting for the writer, holding its share of the in-flight budgets
/// until it is answered.
#[derive(Debug)]
pub struct PendingProduce {
    /// The verified batch.
    pub batch: Batch,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Produced, BrokerError>>,
    /// Budget permits, released when this is dropped.
    pub permits: Vec<OwnedSemaphorePermit>,
}

/// What the round decided for one request.
enum Slot {
    /// Proposed as batch number `usize` of the entry.
    Proposed(usize),
    /// Same batch as an earlier request of this round.
    SameAs(usize),
    /// Answered without writing.
    Done(Result<Produced, BrokerError>),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs until every sender is gone.
pub async fn run_writer(
    raft: GroupRaft,
    sm: GroupStateMachine<PartitionState>,
    mut queue: mpsc::Receiver<PendingProduce>,
) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.batch.len();
        let mut round = vec![first];
        while bytes < GROUP_COMMIT_BYTES_MAX && round.len() < GROUP_COMMIT_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.batch.len();
                    round.push(next);
                }
                Err(_) => break,
            }
        }
        commit_round(&raft, &sm, round).await;
    }
}

fn classify(
    sm: &GroupStateMachine<PartitionState>,
    round: &[PendingProduce],
) -> (Vec<Slot>, Vec<bytes::Bytes>) {
    let pids: BTreeSet<u64> = round.iter().map(|p| p.batch.header().producer_id).collect();
    let mut overlay: ProducerTable = sm
        .with_state(|s| s.producers().subset(&pids))
        .unwrap_or_default();
    let mut slots = Vec::with_capacity(round.len());
    let mut batches = Vec::with_capacity(round.len());
    let mut seen: HashMap<(u64, u16, u32, u32), usize> = HashMap::new();
    for (i, pending) in round.iter().enumerate() {
        let h = pending.batch.header();
        // A retry of a batch earlier in this same round: answered with that batch's result.
        let identity = (
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            h.record_count,
        );
        let idempotent = h.producer_id != sluice_storage::batch::NO_PRODUCER_ID;
        let twin = if idempotent {
            seen.get(&identity).copied()
        } else {
            None
        };
        if idempotent && twin.is_none() {
            seen.insert(identity, i);
        }
        let slot = match (twin, overlay.check(h)) {
            (Some(j), _) => Slot::SameAs(j),
            (None, SequenceCheck::New) => {
                overlay.record(h, 0);
                batches.push(pending.batch.as_bytes().clone());
                Slot::Proposed(batches.len() - 1)
            }
            (None, SequenceCheck::Duplicate { base_offset }) => Slot::Done(Ok(Produced {
                base_offset,
                log_append_time_ms: -1,
                duplicate: true,
            })),
            (None, SequenceCheck::OutOfOrder { expected }) => {
                Slot::Done(Err(BrokerError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected,
                    got: h.base_sequence,
                }))
            }
            (None, SequenceCheck::Fenced) => {
                Slot::Done(Err(BrokerError::ProducerFenced(h.producer_id)))
            }
        };
        slots.push(slot);
    }
    (slots, batches)
}

async fn commit_round(
    raft: &GroupRaft,
    sm: &GroupStateMachine<PartitionState>,
    round: Vec<PendingProduce>,
) {
    let started = std::time::Instant::now();
    let (slots, batches) = classify(sm, &round);
    let append_time = now_ms();
    let offsets: Result<Vec<u64>, BrokerError> = if batches.is_empty() {
        Ok(Vec::new())
    } else {
        match raft
            .client_write(Command::Produce(ProduceCommand { batches }))
            .await
        {
            Ok(response) => match response.data {
                CommandResponse::Produced { base_offsets } => Ok(base_offsets),
                other => Err(BrokerError::Internal(format!(
                    "unexpected apply result {other:?}"
                ))),
            },
            Err(e) => Err(write_error(e)),
        }
    };
    let mut results: Vec<Result<Produced, BrokerError>> = Vec::with_capacity(slots.len());
    for slot in slots {
        let result = match slot {
            Slot::Done(result) => result,
            Slot::Proposed(i) => offsets.as_ref().map_err(Clone::clone).and_then(|o| {
                let base_offset = o
                    .get(i)
                    .copied()
                    .ok_or_else(|| BrokerError::Internal("missing offset".into()))?;
                Ok(Produced {
                    base_offset,
                    log_append_time_ms: append_time,
                    duplicate: false,
                })
            }),
            Slot::SameAs(j) => match results.get(j) {
                Some(Ok(p)) => Ok(Produced {
                    duplicate: true,
                    ..*p
                }),
                Some(Err(e)) => Err(e.clone()),
                None => Err(BrokerError::Internal("retry of a later request".into())),
            },
        };
        results.push(result);
    }
    crate::metrics::group_commit(round.len(), started.elapsed());
    for (pending, result) in round.into_iter().zip(results) {
        // A caller that went away (deadline, disconnect) just misses the answer.
        let _ = pending.reply.send(result);
    }
}

/// Maps a failed proposal to what the producer should do.
pub fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> BrokerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => BrokerError::NotLeader {
            what: "this partition".into(),
            leader_hint: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            BrokerError::Internal(c.to_string())
        }
        RaftError::Fatal(f) => BrokerError::Unavailable(format!("raft group stopped: {f}")),
    }
}
