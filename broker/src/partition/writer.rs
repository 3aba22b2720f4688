//! The partition leader's writer: group commit with idempotence checked at append time.
//!
//! openraft waits for each append's fsync before the next `client_write`, so the writer
//! takes every produce that arrived while the previous write was in flight and proposes
//! them as one entry: one fsync for all of them. Idempotence is checked here, against the
//! committed producer table plus the batches of the round being built, so a duplicate never
//! reaches the log.

use std::collections::{BTreeSet, HashMap};

use openraft::error::{ClientWriteError, RaftError};
use sluice_storage::Batch;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::producer_state::{ProducerTable, SequenceCheck};
use super::state::PartitionState;
use crate::error::BrokerError;
use crate::limits::{GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_REQUESTS_MAX};
use crate::raft::log_store::{DurableEnd, SharedLog};
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
    /// `true`: answer once the leader has it fsynced (acks=leader); `false`: once a quorum
    /// has committed it (acks=all).
    pub leader_ack: bool,
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
    sluice_storage::Clock::now_ms(&sluice_storage::SystemClock)
}

/// Runs until every sender is gone. `durable_end` is how far the log store has fsynced.
pub async fn run_writer(
    raft: GroupRaft,
    log: SharedLog,
    sm: GroupStateMachine<PartitionState>,
    mut queue: mpsc::Receiver<PendingProduce>,
    mut durable_end: watch::Receiver<DurableEnd>,
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
        commit_round(&raft, &log, &sm, round, &mut durable_end).await;
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
            h.last_offset_delta,
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
    log: &SharedLog,
    sm: &GroupStateMachine<PartitionState>,
    round: Vec<PendingProduce>,
    durable_end: &mut watch::Receiver<DurableEnd>,
) {
    let started = std::time::Instant::now();
    let (slots, batches) = classify(sm, &round);
    let append_time = now_ms();
    let mut replies: Vec<Option<oneshot::Sender<Result<Produced, BrokerError>>>> = Vec::new();
    let mut round_rest = Vec::with_capacity(round.len());
    for pending in round {
        replies.push(Some(pending.reply));
        round_rest.push((pending.leader_ack, pending.permits));
    }
    let offsets: Result<Vec<u64>, BrokerError> = if batches.is_empty() {
        Ok(Vec::new())
    } else if let Err(e) = crate::log_room::reserve(log, round_bytes(&batches)).await {
        // Refused before it reaches Raft, where a full disk would stop the group.
        Err(e)
    } else {
        let leader_acks = slots
            .iter()
            .zip(&round_rest)
            .any(|(slot, (leader_ack, _))| *leader_ack && matches!(slot, Slot::Proposed(_)));
        let expected = leader_acks
            .then(|| expected_offsets(raft, log, &batches))
            .flatten();
        let promised = expected.as_ref().map(|(_, _, offsets)| offsets.clone());
        let write = raft.client_write(Command::Produce(ProduceCommand { batches }));
        tokio::pin!(write);
        let written = match expected {
            Some((leader, end, expected)) => {
                // Answers acks=leader requests once the log is fsynced past the entry's end
                // with its last entry written by this leader in its term: only this writer
                // proposes data entries in that term, so the bytes up to `end` are its
                // batches. The rest wait for the commit.
                durable_end.mark_unchanged();
                let mut early = true;
                loop {
                    tokio::select! {
                        result = &mut write => break result,
                        changed = durable_end.changed(), if early => {
                            let durable = *durable_end.borrow_and_update();
                            if changed.is_err() {
                                early = false;
                            } else if durable.next_offset >= end
                                && durable.last.is_some_and(|p| (p.term, p.leader) == leader)
                            {
                                early = false;
                                answer_leader_acks(&slots, &round_rest, &mut replies, &expected, append_time);
                            }
                        }
                    }
                }
            }
            None => write.await,
        };
        match written {
            Ok(response) => match response.data {
                CommandResponse::Produced { base_offsets } => {
                    if promised.as_ref().is_some_and(|p| *p != base_offsets) {
                        // acks=leader answers went out with these offsets.
                        tracing::error!(
                            ?promised,
                            ?base_offsets,
                            "acks=leader offsets differ from the committed ones"
                        );
                    }
                    Ok(base_offsets)
                }
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
    crate::metrics::group_commit(replies.len(), started.elapsed());
    for (reply, result) in replies.into_iter().zip(results) {
        // Answered already (acks=leader), or a caller that went away (deadline,
        // disconnect): it just misses the answer.
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
    // The budget permits go last: the bytes stay in flight until the commit.
    drop(round_rest);
}

/// This leader (term, node) as its entries are stamped, the end offset its entry will
/// reach, and each batch's base offset: the writer is the only proposer of data entries and
/// waits for each, so the entry starts at the log's end now (other entries take no
/// offsets). `None` unless this node leads.
fn expected_offsets(
    raft: &GroupRaft,
    log: &SharedLog,
    batches: &[bytes::Bytes],
) -> Option<((u64, NodeId), u64, Vec<u64>)> {
    let leader = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return None;
        }
        (m.current_term, m.id)
    };
    let mut next = log.read().ok()?.next_offset();
    let mut offsets = Vec::with_capacity(batches.len());
    for bytes in batches {
        let header = sluice_storage::BatchHeader::decode(bytes).ok()?;
        offsets.push(next);
        next += u64::from(header.last_offset_delta) + 1;
    }
    Some((leader, next, offsets))
}

/// Answers the round's acks=leader requests with the offsets their batches were appended at.
fn answer_leader_acks(
    slots: &[Slot],
    rest: &[(bool, Vec<OwnedSemaphorePermit>)],
    replies: &mut [Option<oneshot::Sender<Result<Produced, BrokerError>>>],
    expected: &[u64],
    append_time: i64,
) {
    for (i, slot) in slots.iter().enumerate() {
        let (Slot::Proposed(b), Some((true, _))) = (slot, rest.get(i)) else {
            continue;
        };
        let (Some(reply), Some(&base_offset)) =
            (replies.get_mut(i).and_then(Option::take), expected.get(*b))
        else {
            continue;
        };
        let _ = reply.send(Ok(Produced {
            base_offset,
            log_append_time_ms: append_time,
            duplicate: false,
        }));
    }
}

fn round_bytes(batches: &[bytes::Bytes]) -> u64 {
    batches.iter().map(|b| b.len() as u64).sum()
}

/// Maps a failed proposal to what the producer should do.
pub fn write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> BrokerError {
    match e {
        // The membership holds raft addresses, not what clients dial: callers refresh
        // their metadata instead.
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => BrokerError::NotLeader {
            what: "this group".into(),
            leader_hint: None,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            BrokerError::Internal(c.to_string())
        }
        RaftError::Fatal(f) => BrokerError::Unavailable(format!("raft group stopped: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use sluice_storage::batch::NewRecord;
    use sluice_storage::io::{Io, SimIo};
    use sluice_storage::{Batch, BatchBuilder, Compression, LogConfig};
    use tokio::sync::watch;

    use crate::controller::TopicConfig;
    use crate::error::BrokerError;
    use crate::partition::state::PartitionState;
    use crate::partition::{Partition, PartitionParts};
    use crate::raft::entry_codec::GroupKind;
    use crate::raft::group::start_single_on;

    fn batch(seed: u8) -> Batch {
        let mut builder = BatchBuilder::new(Compression::None);
        let value = vec![seed; 1000];
        for _ in 0..8 {
            builder.push(NewRecord {
                key: None,
                value: Some(&value),
                timestamp: 1,
                headers: &[],
            });
        }
        Batch::decode(builder.build().expect("build")).expect("decode")
    }

    async fn partition_on(io: Arc<dyn Io>) -> Partition {
        let log_config = LogConfig {
            segment_bytes: 64 * 1024,
            retention_ms: None,
            ..LogConfig::default()
        };
        let (high_watermark_tx, high_watermark) = watch::channel(0);
        let (group, sm) = start_single_on(
            GroupKind::Partition,
            Path::new("/disk/t/0"),
            log_config.clone(),
            io,
            |log| PartitionState::new(log, high_watermark_tx),
        )
        .await;
        Partition::new(PartitionParts {
            topic: "t".into(),
            index: 0,
            group,
            sm,
            high_watermark,
            config: TopicConfig {
                log: log_config,
                max_message_bytes: 1 << 20,
                producer_id_expiration_ms: crate::controller::PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            },
            node_id: 1,
            budget_bytes: 64 << 20,
            cluster: None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_rounds_cleanly_and_writes_resume_once_space_is_back() {
        let sim = SimIo::new();
        let partition = partition_on(Arc::new(sim.clone())).await;
        sim.set_space_limit(Some(sim.used_bytes() + 300 * 1024));
        let mut stored = 0u64;
        let mut refused = 0;
        for i in 0..200u8 {
            match partition.produce(batch(i), Vec::new(), false).await {
                Ok(produced) => {
                    assert_eq!(produced.base_offset, stored * 8, "offsets stay contiguous");
                    stored += 1;
                }
                Err(BrokerError::NoSpace) => {
                    refused += 1;
                    if refused == 3 {
                        break;
                    }
                }
                Err(e) => panic!("batch {i}: a full disk must be NO_SPACE, got {e}"),
            }
        }
        assert!(
            stored > 0 && refused == 3,
            "{stored} stored, {refused} refused"
        );
        // The group is still running: once space is back the next batch is stored after
        // everything stored before, and all of it reads back.
        sim.set_space_limit(None);
        let produced = partition
            .produce(batch(255), Vec::new(), false)
            .await
            .expect("produce once space is back");
        assert_eq!(produced.base_offset, stored * 8);
        let read = partition.read(0, usize::MAX).expect("read");
        assert_eq!(read.batches.len() as u64, stored + 1);
        partition.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_leader_serves_only_once_every_acknowledged_batch_is_applied() {
        let sim = SimIo::new();
        let partition = partition_on(Arc::new(sim.clone())).await;
        for i in 0..40u8 {
            partition
                .produce(batch(i), Vec::new(), false)
                .await
                .expect("produce");
        }
        let acknowledged = partition.high_watermark();
        assert_eq!(acknowledged, 40 * 8);
        partition.shutdown().await;
        // The committed hint on disk is at most a second fresh, so the restarted group
        // re-applies most of the log while already being leader.
        let restarted = partition_on(Arc::new(sim.clone())).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while restarted.leader().is_none() {
            assert!(std::time::Instant::now() < deadline, "no serving leader");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            restarted.high_watermark(),
            acknowledged,
            "a serving leader never shows acknowledged records missing"
        );
        restarted.require_leader().expect("serves");
        restarted.shutdown().await;
    }
}
