//! A consumer group member: joins through the group's coordinator, follows its assignment
//! (revoked partitions are stopped, committed and released before anyone else gets them),
//! reads its partitions with credit like the plain consumer, and commits what was
//! processed: every `auto_commit_interval`, on `commit`, on revoke and on close.
//!
//! A record counts as processed once the next one is asked for (or `commit` is called):
//! what was handed out but may still be in the caller's hands is never committed, so a
//! crash re-delivers at most the uncommitted window (at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use futures::Stream;
use sluice_protocol::Reason;
use sluice_protocol::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, HeartbeatRequest, HeartbeatResponse, OffsetCommit,
    TopicPartition,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::connection::Client;
use crate::consumer::{
    AutoOffsetReset, ConsumerConfig, ConsumerRecord, Offset, RecordSink, read_partition,
};
use crate::error::ClientError;
use crate::groups::backoff;

/// A topic and partition.
pub type Partition = (String, u32);

/// Leave epochs of the heartbeat protocol.
const LEAVE_EPOCH: i32 = -1;
const STATIC_LEAVE_EPOCH: i32 = -2;

/// How long one heartbeat (finding the coordinator included) may take before the member
/// tries again.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Rebalance events kept for a reader; later ones are dropped while it lags.
const EVENTS_BUFFERED: usize = 1024;

/// The session timeouts a coordinator takes (it clamps to these too).
const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// See [`SESSION_TIMEOUT_MIN`].
const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// The least pause before trying again to start newly assigned partitions.
const TAKE_RETRY: Duration = Duration::from_millis(200);

/// What a member subscribes to.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// These topics.
    Topics(Vec<String>),
    /// Topics whose whole name matches this regular expression.
    Pattern(String),
}

/// A change of what this member owns, stamped when it happened here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceEvent {
    /// When.
    pub at: std::time::Instant,
    /// What happened.
    pub kind: RebalanceKind,
    /// The partitions.
    pub partitions: Vec<Partition>,
}

/// The kinds of [`RebalanceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    /// Given to this member: it reads them from here on.
    Assigned,
    /// Taken away: no record of them is handed out after this; their processed offsets are
    /// committed next (before the coordinator hears they are released).
    Revoked,
    /// Lost without a commit (fenced, or the coordinator unreachable for a session).
    Lost,
}

/// One owned partition.
struct Owned {
    lease: u64,
    /// Where its reading started.
    start: u64,
    /// What was last committed (or the start, if it came from a commit).
    committed: Option<u64>,
    reader: JoinHandle<()>,
}

struct State {
    member_id: String,
    member_epoch: i32,
    owned: BTreeMap<Partition, Owned>,
    /// The owned partitions' leases, each with the next offset after what was processed
    /// (`None` until something was): what the per-record path looks up, by number.
    leases: BTreeMap<u64, Option<u64>>,
    next_lease: u64,
}

impl State {
    /// Next offset after what was processed of an owned partition.
    fn processed(&self, owned: &Owned) -> Option<u64> {
        self.leases.get(&owned.lease).copied().flatten()
    }
}

struct Shared {
    client: Client,
    group: String,
    /// The id this member joins with, for its whole life (a join sent twice is one member).
    own_id: String,
    config: ConsumerConfig,
    subscription: Subscription,
    state: Mutex<State>,
    /// Commits go out one at a time, so a member's commits apply in order.
    commit_lock: tokio::sync::Mutex<()>,
    events: mpsc::Sender<RebalanceEvent>,
    records: mpsc::Sender<(u64, Result<ConsumerRecord, ClientError>)>,
    close: Notify,
    /// Milliseconds after `base` when the last heartbeat that was answered was sent.
    last_ok_ms: AtomicU64,
    /// The reader paused while the member may have been expelled, woken by the next answer.
    paused: Mutex<Option<std::task::Waker>>,
    base: Instant,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the coordinator may have expelled this member by now (its last answered
    /// heartbeat was sent most of a session ago): then no record is handed out, since
    /// another member may own its partitions already.
    fn maybe_expelled(&self) -> bool {
        let since = (self.base.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ok_ms.load(Ordering::Acquire));
        Duration::from_millis(since) > self.config.session_timeout * 4 / 5
    }

    /// Records a heartbeat answered (sent at `sent_ms`) and wakes a paused reader.
    fn answered(&self, sent_ms: u64) {
        self.last_ok_ms.store(sent_ms, Ordering::Release);
        if let Some(waker) = self.paused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            waker.wake();
        }
    }

    fn emit(&self, kind: RebalanceKind, partitions: Vec<Partition>) {
        if !partitions.is_empty() {
            let _ = self.events.try_send(RebalanceEvent {
                at: Instant::now().into_std(),
                kind,
                partitions,
            });
        }
    }
}

/// 32 hex digits no other member will pick.
fn random_member_id() -> String {
    let random = sluice_protocol::entropy::random_u64;
    format!("{:016x}{:016x}", random(), random())
}

/// Sends a partition's records, tagged with its lease, into the member's stream.
struct LeaseSink {
    lease: u64,
    records: mpsc::Sender<(u64, Result<ConsumerRecord, ClientError>)>,
}

impl RecordSink for LeaseSink {
    async fn send(&self, item: Result<ConsumerRecord, ClientError>) -> bool {
        self.records.send((self.lease, item)).await.is_ok()
    }
}

/// A member of a consumer group: a `Stream` of the records of the partitions it owns.
pub struct GroupConsumer {
    shared: Arc<Shared>,
    records: mpsc::Receiver<(u64, Result<ConsumerRecord, ClientError>)>,
    driver: Option<JoinHandle<()>>,
    events: Option<mpsc::Receiver<RebalanceEvent>>,
    /// The last record handed out (lease, offset): processed once the next is asked for.
    pending: Option<(u64, u64)>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupConsumer({})", self.shared.group)
    }
}

impl GroupConsumer {
    pub(crate) fn start(
        client: Client,
        config: ConsumerConfig,
        group: &str,
        subscription: Subscription,
    ) -> Result<Self, ClientError> {
        if group.is_empty() {
            return Err(ClientError::InvalidArgument("an empty group name".into()));
        }
        let (records_tx, records) = mpsc::channel(config.buffer_records.max(1));
        // Bounded: events nobody reads are dropped past this many.
        let (events_tx, events) = mpsc::channel(EVENTS_BUFFERED);
        let mut config = config;
        config.session_timeout = config
            .session_timeout
            .clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX);
        let shared = Arc::new(Shared {
            client,
            group: group.to_string(),
            own_id: random_member_id(),
            config,
            subscription,
            state: Mutex::new(State {
                member_id: String::new(),
                member_epoch: 0,
                owned: BTreeMap::new(),
                leases: BTreeMap::new(),
                next_lease: 1,
            }),
            commit_lock: tokio::sync::Mutex::new(()),
            events: events_tx,
            records: records_tx,
            close: Notify::new(),
            last_ok_ms: AtomicU64::new(0),
            paused: Mutex::new(None),
            base: Instant::now(),
        });
        let driver = tokio::spawn(drive(Arc::clone(&shared)));
        Ok(Self {
            shared,
            records,
            driver: Some(driver),
            events: Some(events),
            pending: None,
        })
    }

    /// The member's assignment changes, in order (once; later calls get `None`).
    pub fn rebalance_events(&mut self) -> Option<mpsc::Receiver<RebalanceEvent>> {
        self.events.take()
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> Vec<Partition> {
        self.shared.state().owned.keys().cloned().collect()
    }

    /// The member id the coordinator gave (empty until joined).
    pub fn member_id(&self) -> String {
        self.shared.state().member_id.clone()
    }

    /// Marks the last record handed out as processed.
    fn settle_pending(&mut self) {
        if let Some((lease, offset)) = self.pending.take() {
            settle(&mut self.shared.state(), lease, offset);
        }
    }

    /// Commits everything handed out so far (the caller processed it), and waits until
    /// the commit is durable.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.settle_pending();
        commit_owned(&self.shared).await
    }

    /// Commits everything handed out so far without waiting; a failure is only logged
    /// by the next commit's outcome.
    pub fn commit_async(&mut self) {
        self.settle_pending();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let _ = commit_owned(&shared).await;
        });
    }

    /// Commits these offsets (each the next offset to read) of partitions this member owns.
    pub async fn commit_offsets(&self, offsets: &[(Partition, u64)]) -> Result<(), ClientError> {
        commit(&self.shared, offsets.to_vec()).await
    }

    /// Commits what was processed, leaves the group (a static member keeps its partitions
    /// until the session timeout), and stops.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.settle_pending();
        self.shared.close.notify_one();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
        Ok(())
    }
}

/// Records `offset` of the partition holding `lease` as processed, if it still owns it.
fn settle(state: &mut State, lease: u64, offset: u64) {
    if let Some(processed) = state.leases.get_mut(&lease) {
        *processed = Some(offset + 1);
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
        for (_, o) in std::mem::take(&mut self.shared.state().owned) {
            o.reader.abort();
        }
    }
}

impl Stream for GroupConsumer {
    type Item = Result<ConsumerRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Maybe expelled: nothing is handed out (another member may own the partitions now)
        // and nothing is taken from the buffer, so nothing is skipped if the member was not;
        // the next answered heartbeat wakes this (or the partitions are lost, their records
        // dropped as stale).
        if self.shared.maybe_expelled() {
            self.settle_pending();
            *self.shared.paused.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(cx.waker().clone());
            if self.shared.maybe_expelled() {
                return Poll::Pending;
            }
        }
        loop {
            let (lease, item) = match self.records.poll_recv(cx) {
                Poll::Ready(Some(next)) => next,
                Poll::Ready(None) => {
                    self.settle_pending();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    self.settle_pending();
                    return Poll::Pending;
                }
            };
            match item {
                Ok(record) => {
                    // One lock per record: the previous one is processed, and a revoked
                    // (or re-assigned) partition's leftovers are never handed out.
                    let pending = self.pending.take();
                    let current = {
                        let mut state = self.shared.state();
                        if let Some((l, offset)) = pending {
                            settle(&mut state, l, offset);
                        }
                        state.leases.contains_key(&lease)
                    };
                    if !current {
                        continue;
                    }
                    self.pending = Some((lease, record.offset));
                    return Poll::Ready(Some(Ok(record)));
                }
                Err(e) => {
                    self.settle_pending();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Commits the processed offsets of the owned partitions that moved since their last
/// commit. The snapshot is taken under the commit lock, so a later snapshot is never
/// committed before an earlier one.
async fn commit_owned(shared: &Shared) -> Result<(), ClientError> {
    let _serial = commit_turn(shared).await?;
    let offsets: Vec<(Partition, u64)> = {
        let state = shared.state();
        state
            .owned
            .iter()
            .filter_map(|(tp, o)| {
                state
                    .processed(o)
                    .filter(|p| o.committed != Some(*p))
                    .map(|p| (tp.clone(), p))
            })
            .collect()
    };
    send_commit(shared, offsets).await
}

/// Commits `offsets` with the member's id and epoch (one commit at a time); records them
/// as committed. With nothing to commit it still waits for a commit in flight, so a
/// release reported after it never overtakes that commit.
async fn commit(shared: &Shared, offsets: Vec<(Partition, u64)>) -> Result<(), ClientError> {
    let _serial = commit_turn(shared).await?;
    send_commit(shared, offsets).await
}

/// This member's turn to commit, waited for at most a third of the session (the heartbeats
/// may be waiting behind it).
async fn commit_turn(shared: &Shared) -> Result<tokio::sync::MutexGuard<'_, ()>, ClientError> {
    tokio::time::timeout(shared.config.session_timeout / 3, shared.commit_lock.lock())
        .await
        .map_err(|_| unavailable("another commit held the way for a third of the session"))
}

/// Sends one commit; the caller holds the commit lock.
async fn send_commit(shared: &Shared, offsets: Vec<(Partition, u64)>) -> Result<(), ClientError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let (member_id, member_epoch) = {
        let state = shared.state();
        (state.member_id.clone(), state.member_epoch)
    };
    if member_id.is_empty() {
        // Not a member now (fenced, or not joined yet): the commit would not be fenced.
        return Err(ClientError::Refused {
            reason: Some(Reason::UnknownMember),
            code: tonic::Code::FailedPrecondition,
            message: format!("not a member of group {} now", shared.group),
            retry_after_ms: None,
        });
    }
    let request = CommitOffsetsRequest {
        group: shared.group.clone(),
        member_id,
        member_epoch,
        offsets: offsets
            .iter()
            .map(|((topic, partition), offset)| OffsetCommit {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                leader_epoch: 0,
                metadata: String::new(),
            })
            .collect(),
    };
    let sent = shared.client.at_coordinator(&shared.group, |mut c| {
        let r = request.clone();
        async move { c.commit_offsets(r).await }
    });
    // Bounded well inside the session: a commit must not stall the heartbeats for long.
    match tokio::time::timeout(shared.config.session_timeout / 3, sent).await {
        Ok(answer) => answer?,
        Err(_) => return Err(unavailable("no commit answer in a third of the session")),
    };
    let mut state = shared.state();
    for (tp, offset) in offsets {
        if let Some(o) = state.owned.get_mut(&tp) {
            o.committed = Some(offset);
        }
    }
    Ok(())
}

fn unavailable(message: &str) -> ClientError {
    ClientError::Refused {
        reason: Some(Reason::Unavailable),
        code: tonic::Code::Unavailable,
        message: message.to_string(),
        retry_after_ms: None,
    }
}

/// Stops reading `partitions`, hands out none of their records from here on, and returns
/// their processed offsets.
fn stop(shared: &Shared, partitions: &[Partition]) -> Vec<(Partition, u64)> {
    let mut state = shared.state();
    let mut positions = Vec::new();
    for tp in partitions {
        if let Some(o) = state.owned.remove(tp) {
            o.reader.abort();
            let processed = state.leases.remove(&o.lease).flatten();
            if let Some(p) = processed.filter(|p| o.committed != Some(*p)) {
                positions.push((tp.clone(), p));
            }
        }
    }
    positions
}

/// Where each newly assigned partition starts: its committed offset, else the reset policy.
async fn start_positions(
    shared: &Shared,
    partitions: &[Partition],
) -> Result<Vec<(Partition, u64, bool)>, ClientError> {
    let request = FetchOffsetsRequest {
        group: shared.group.clone(),
        partitions: partitions
            .iter()
            .map(|(topic, partition)| TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect(),
    };
    let committed: BTreeMap<Partition, u64> = shared
        .client
        .at_coordinator(&shared.group, |mut c| {
            let r = request.clone();
            async move { c.fetch_offsets(r).await }
        })
        .await?
        .offsets
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.offset))
        .collect();
    let reset = match shared.config.auto_offset_reset {
        AutoOffsetReset::Earliest => Offset::Earliest,
        AutoOffsetReset::Latest => Offset::Latest,
    };
    let resolver = shared.client.consumer(shared.config.clone());
    let mut starts = Vec::with_capacity(partitions.len());
    for tp in partitions {
        match committed.get(tp) {
            Some(offset) => {
                // A commit outside the log is out of range, and follows the reset policy as
                // in Kafka: below the log start (retention removed it) from the earliest
                // record; past the high watermark (a topic deleted and created again) as
                // if nothing were committed.
                let earliest = resolver.resolve(&tp.0, tp.1, Offset::Earliest).await?;
                let latest = resolver.resolve(&tp.0, tp.1, Offset::Latest).await?;
                if *offset > latest {
                    starts.push((
                        tp.clone(),
                        resolver.resolve(&tp.0, tp.1, reset).await?,
                        false,
                    ));
                } else {
                    starts.push((tp.clone(), (*offset).max(earliest), true));
                }
            }
            None => starts.push((
                tp.clone(),
                resolver.resolve(&tp.0, tp.1, reset).await?,
                false,
            )),
        }
    }
    Ok(starts)
}

/// Starts reading newly assigned partitions.
async fn take(shared: &Arc<Shared>, partitions: Vec<Partition>) -> Result<(), ClientError> {
    if partitions.is_empty() {
        return Ok(());
    }
    // Bounded well inside the session: the heartbeats wait while this runs.
    let starts = tokio::time::timeout(
        shared.config.session_timeout / 3,
        start_positions(shared, &partitions),
    )
    .await
    .map_err(|_| unavailable("no start positions in a third of the session"))??;
    let mut state = shared.state();
    for (tp, from, from_commit) in starts {
        let (lease, reader) = start_reader(shared, &mut state, &tp, from, None);
        state.owned.insert(
            tp,
            Owned {
                lease,
                start: from,
                committed: from_commit.then_some(from),
                reader,
            },
        );
    }
    drop(state);
    shared.emit(RebalanceKind::Assigned, partitions);
    Ok(())
}

/// Starts reading `tp` from `from` under a new lease (processed up to `processed`).
fn start_reader(
    shared: &Shared,
    state: &mut State,
    tp: &Partition,
    from: u64,
    processed: Option<u64>,
) -> (u64, JoinHandle<()>) {
    let lease = state.next_lease;
    state.next_lease += 1;
    state.leases.insert(lease, processed);
    let sink = LeaseSink {
        lease,
        records: shared.records.clone(),
    };
    let reader = tokio::spawn(read_partition(
        shared.client.clone(),
        shared.config.clone(),
        tp.0.clone(),
        tp.1,
        from,
        sink,
    ));
    (lease, reader)
}

/// Starts again, after what was processed, the readers that ended (an error they handed
/// to the stream, or their retries ran out): an owned partition is never left unread.
fn restart_ended_readers(shared: &Shared) {
    let mut state = shared.state();
    let ended: Vec<(Partition, u64, u64)> = state
        .owned
        .iter()
        .filter(|(_, o)| o.reader.is_finished())
        .map(|(tp, o)| (tp.clone(), o.lease, o.start))
        .collect();
    for (tp, old, start) in ended {
        // A new lease: what the old reader left in the buffer is dropped, not handed out
        // twice, since the new reader reads it again.
        let processed = state.leases.remove(&old).flatten();
        let from = processed.unwrap_or(start);
        let (lease, reader) = start_reader(shared, &mut state, &tp, from, processed);
        if let Some(o) = state.owned.get_mut(&tp) {
            o.reader = reader;
            o.lease = lease;
        }
    }
}

/// Drops every partition without committing (the member was fenced or cut off).
fn lose_all(shared: &Shared) {
    let lost: Vec<Partition> = shared.state().owned.keys().cloned().collect();
    stop(shared, &lost);
    let mut state = shared.state();
    state.member_id.clear();
    state.member_epoch = 0;
    drop(state);
    shared.emit(RebalanceKind::Lost, lost);
}

async fn heartbeat(shared: &Shared, epoch: Option<i32>) -> Result<HeartbeatResponse, ClientError> {
    let (member_id, member_epoch, owned) = {
        let state = shared.state();
        let owned = state
            .owned
            .keys()
            .map(|(topic, partition)| TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect();
        // Not a member now: join, under this member's own id.
        let member_id = if state.member_id.is_empty() {
            shared.own_id.clone()
        } else {
            state.member_id.clone()
        };
        (member_id, epoch.unwrap_or(state.member_epoch), owned)
    };
    let (topics, topic_pattern) = match &shared.subscription {
        Subscription::Topics(t) => (t.clone(), String::new()),
        Subscription::Pattern(p) => (Vec::new(), p.clone()),
    };
    let request = HeartbeatRequest {
        group: shared.group.clone(),
        member_id,
        member_epoch,
        instance_id: shared.config.instance_id.clone().unwrap_or_default(),
        topics,
        topic_pattern,
        owned,
        session_timeout_ms: shared
            .config
            .session_timeout
            .as_millis()
            .min(u32::MAX as u128) as u32,
        // Parked at the coordinator until something changes: rebalances take round trips.
        wait: epoch.is_none(),
    };
    let call = async {
        let channel = shared.client.coordinator(&shared.group).await?;
        Ok::<_, ClientError>(
            shared
                .client
                .groups_client(channel)
                .heartbeat(request)
                .await?
                .into_inner(),
        )
    };
    match tokio::time::timeout(HEARTBEAT_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(unavailable("no heartbeat answer in time")),
    }
}

/// The membership loop: heartbeats, follows the assignment, auto-commits, and on close
/// commits and leaves.
async fn drive(shared: Arc<Shared>) {
    let mut last_commit = Instant::now();
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.close.notified() => {
                leave(&shared).await;
                return;
            }
        }
        if let Some(every) = shared.config.auto_commit_interval
            && last_commit.elapsed() >= every
        {
            last_commit = Instant::now();
            if let Err(e) = commit_owned(&shared).await {
                tracing::debug!(group = %shared.group, error = %e, "auto-commit failed");
            }
        }
        let sent_ms = shared.base.elapsed().as_millis() as u64;
        let answer = tokio::select! {
            answer = heartbeat(&shared, None) => answer,
            () = shared.close.notified() => {
                leave(&shared).await;
                return;
            }
        };
        match answer {
            Ok(answer) => {
                failures = 0;
                shared.answered(sent_ms);
                wait = follow(&shared, answer).await;
            }
            Err(e)
                if matches!(
                    e.reason(),
                    Some(Reason::UnknownMember | Reason::StaleMemberEpoch)
                ) =>
            {
                // Fenced: whatever it owned is someone else's now. Rejoin.
                lose_all(&shared);
                wait = Duration::ZERO;
            }
            Err(e) if e.reason() == Some(Reason::InvalidRequest) => {
                // Not something a retry fixes (a bad subscription): hand it to the reader.
                lose_all(&shared);
                // Handed to the reader as space frees (its partitions are gone), unless the
                // member is closed first.
                tokio::select! {
                    _ = shared.records.send((0, Err(e))) => {}
                    () = shared.close.notified() => {}
                }
                return;
            }
            Err(e) => {
                // The coordinator moving, loading or unreachable, or anything else a later
                // attempt may get past.
                tracing::debug!(group = %shared.group, error = %e, "heartbeat failed");
                failures += 1;
                wait = backoff(failures);
                if shared.maybe_expelled() && !shared.state().owned.is_empty() {
                    // Expelled by now, or nearly: stop before another owner starts.
                    lose_all(&shared);
                }
            }
        }
    }
}

/// Moves to what a heartbeat answered: stops, commits and (at the next heartbeat, sent
/// at once) releases revoked partitions, starts assigned ones; returns when to heartbeat next.
async fn follow(shared: &Arc<Shared>, answer: HeartbeatResponse) -> Duration {
    {
        let mut state = shared.state();
        state.member_id = answer.member_id.clone();
        state.member_epoch = answer.member_epoch;
    }
    let assigned: BTreeSet<Partition> = answer
        .assignment
        .iter()
        .map(|t| (t.topic.clone(), t.partition))
        .collect();
    let owned: BTreeSet<Partition> = shared.state().owned.keys().cloned().collect();
    let revoked: Vec<Partition> = owned.difference(&assigned).cloned().collect();
    let added: Vec<Partition> = assigned.difference(&owned).cloned().collect();
    let mut wait = Duration::from_millis(u64::from(answer.heartbeat_interval_ms.max(10)));
    if !revoked.is_empty() {
        let positions = stop(shared, &revoked);
        shared.emit(RebalanceKind::Revoked, revoked);
        if let Err(e) = commit(shared, positions).await {
            tracing::debug!(group = %shared.group, error = %e, "commit on revoke failed");
        }
        // Report the release at once: another member waits for it.
        wait = Duration::ZERO;
    }
    restart_ended_readers(shared);
    if let Err(e) = take(shared, added).await {
        tracing::debug!(group = %shared.group, error = %e, "starting assigned partitions failed");
        // Perhaps a topic this client has not heard of yet.
        let _ = shared.client.refresh_metadata().await;
        wait = wait.max(TAKE_RETRY);
    }
    wait
}

/// Commits what was processed and leaves the group.
async fn leave(shared: &Shared) {
    let owned: Vec<Partition> = shared.state().owned.keys().cloned().collect();
    let positions = stop(shared, &owned);
    if let Err(e) = commit(shared, positions).await {
        tracing::debug!(group = %shared.group, error = %e, "commit on close failed");
    }
    shared.emit(RebalanceKind::Revoked, owned);
    let epoch = if shared.config.instance_id.is_some() {
        STATIC_LEAVE_EPOCH
    } else {
        LEAVE_EPOCH
    };
    if !shared.state().member_id.is_empty() {
        let _ = heartbeat(shared, Some(epoch)).await;
    }
}
