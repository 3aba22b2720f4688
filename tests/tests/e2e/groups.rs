//! Consumer groups against real brokers: partitions shared one owner at a time, every
//! record processed across members leaving, joining and crashing, static members keeping
//! their partitions, fencing of stale commits, and commits surviving a coordinator's
//! `kill -9` (TESTPLAN T16).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_client::{
    Client, ConsumerConfig, GroupConsumer, ProducerConfig, ProducerRecord, Reason, RebalanceKind,
};
use sluice_protocol::v1::consumer_groups_client::ConsumerGroupsClient;
use sluice_protocol::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, FindCoordinatorRequest, FindCoordinatorResponse,
    HeartbeatRequest, OffsetCommit, ResetOffsetsRequest, TopicPartition, reset_offsets_request::To,
};
use sluice_tests::logcheck::{self, Attempt, History, Outcome, Read};
use sluice_tests::{TestBroker, TestCluster};

use super::{rf3_topic, runtime};

type Tp = (String, u32);

/// One member's ownership periods of each partition: (from, until) instants.
type Periods = Arc<Mutex<Vec<(String, Tp, Instant, Option<Instant>)>>>;

/// Follows a member's rebalance events into `periods`.
fn track(name: &str, member: &mut GroupConsumer, periods: &Periods) {
    let mut events = member.rebalance_events().expect("events once");
    let (name, periods) = (name.to_string(), Arc::clone(periods));
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let mut p = periods.lock().expect("periods");
            for tp in e.partitions {
                match e.kind {
                    RebalanceKind::Assigned => p.push((name.clone(), tp, e.at, None)),
                    RebalanceKind::Revoked | RebalanceKind::Lost => {
                        if let Some(open) = p
                            .iter_mut()
                            .rev()
                            .find(|(n, t, _, end)| *n == name && *t == tp && end.is_none())
                        {
                            open.3 = Some(e.at);
                        }
                    }
                }
            }
        }
    });
}

/// Closes `name`'s open periods at `at` (a crashed member sends no event).
fn end_periods(name: &str, periods: &Periods, at: Instant) {
    for p in periods.lock().expect("periods").iter_mut() {
        if p.0 == name && p.3.is_none() {
            p.3 = Some(at);
        }
    }
}

/// Fails if two members' ownership periods of one partition overlap.
fn check_one_owner(periods: &Periods) {
    let periods = periods.lock().expect("periods").clone();
    let far = Instant::now() + Duration::from_secs(3600);
    for (i, a) in periods.iter().enumerate() {
        for b in periods.iter().skip(i + 1) {
            if a.1 != b.1 || a.0 == b.0 {
                continue;
            }
            let (a_end, b_end) = (a.3.unwrap_or(far), b.3.unwrap_or(far));
            assert!(
                a_end <= b.2 || b_end <= a.2,
                "{:?} had two owners at once: {} and {}",
                a.1,
                a.0,
                b.0
            );
        }
    }
}

/// What every member processed: (member, partition, offset, value).
type Processed = Arc<Mutex<Vec<(String, u32, u64, String)>>>;

/// A member that processes records into `processed` and commits every `commit_every`
/// records; returns how many it processed since its last commit when it stops.
struct Worker {
    stop: tokio::sync::oneshot::Sender<bool>,
    done: tokio::task::JoinHandle<usize>,
}

fn member_config(session: Duration) -> ConsumerConfig {
    ConsumerConfig {
        auto_commit_interval: None,
        auto_offset_reset: sluice_client::AutoOffsetReset::Earliest,
        session_timeout: session,
        ..ConsumerConfig::default()
    }
}

fn spawn_worker(
    client: &Client,
    name: &str,
    group: &str,
    topic: &str,
    processed: &Processed,
    periods: &Periods,
) -> Worker {
    let mut member = client
        .consumer(member_config(Duration::from_secs(3)))
        .subscribe(group, &[topic])
        .expect("subscribe");
    track(name, &mut member, periods);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<bool>();
    let (name, processed) = (name.to_string(), Arc::clone(processed));
    let done = tokio::spawn(async move {
        let mut uncommitted = 0usize;
        loop {
            tokio::select! {
                graceful = &mut stopped => {
                    if graceful.unwrap_or(true) {
                        member.close().await.expect("close");
                    } else {
                        // A crash: no commit, no leave; the coordinator expels it later.
                        drop(member);
                    }
                    return uncommitted;
                }
                next = member.next() => {
                    let Some(record) = next else { return uncommitted };
                    let record = record.expect("record");
                    let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).to_string();
                    processed.lock().expect("processed").push((name.clone(), record.partition, record.offset, value));
                    uncommitted += 1;
                    if uncommitted >= 200 {
                        member.commit().await.expect("commit");
                        uncommitted = 0;
                    }
                }
            }
        }
    });
    Worker { stop, done }
}

impl Worker {
    async fn stop(self, graceful: bool) -> usize {
        let _ = self.stop.send(graceful);
        self.done.await.expect("worker")
    }
}

async fn wait_processed(processed: &Processed, at_least: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let distinct = processed
            .lock()
            .expect("processed")
            .iter()
            .map(|p| &p.3)
            .collect::<BTreeSet<_>>()
            .len();
        if distinct >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {distinct} of {at_least} processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_group_processes_every_record_once_owned_across_leaving_joining_and_crashing_members() {
    let cluster = TestCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let total = 100_000usize;
        let client = rf3_topic(&cluster, "work", 6).await;
        let processed: Processed = Arc::default();
        let periods: Periods = Arc::default();
        let producer_client = client.clone();
        let producing = tokio::spawn(async move {
            let producer = producer_client
                .producer(ProducerConfig::default())
                .await
                .expect("producer");
            let mut attempts = Vec::with_capacity(total);
            for chunk in 0..100 {
                let sends: Vec<_> = (0..total / 100)
                    .map(|i| {
                        let n = chunk * (total / 100) + i;
                        producer.send(
                            ProducerRecord::new("work")
                                .key(format!("k{n}"))
                                .value(format!("v{n}")),
                        )
                    })
                    .collect();
                for (i, s) in futures::future::join_all(sends)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    let acked = s.expect("acked");
                    let n = chunk * (total / 100) + i;
                    // Sends in flight together have no order among them: a lane each.
                    attempts.push(Attempt {
                        partition: acked.partition,
                        producer: n as u32,
                        sequence: 0,
                        value: format!("v{n}"),
                        outcome: Outcome::Acked(acked.offset),
                    });
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            attempts
        });
        let a = spawn_worker(&client, "a", "g", "work", &processed, &periods);
        let b = spawn_worker(&client, "b", "g", "work", &processed, &periods);
        let c = spawn_worker(&client, "c", "g", "work", &processed, &periods);
        wait_processed(&processed, total / 5, "three members").await;
        let _ = c.stop(true).await;
        wait_processed(&processed, 2 * total / 5, "after c left").await;
        let d = spawn_worker(&client, "d", "g", "work", &processed, &periods);
        wait_processed(&processed, 3 * total / 5, "after d joined").await;
        let crash_window = a.stop(false).await;
        end_periods("a", &periods, Instant::now());
        let a2 = spawn_worker(&client, "a2", "g", "work", &processed, &periods);
        let attempts = producing.await.expect("producer");
        wait_processed(&processed, total, "after a crashed and restarted").await;
        for w in [b, d, a2] {
            w.stop(true).await;
        }
        check_one_owner(&periods);
        let processed = processed.lock().expect("processed").clone();
        let mut seen: HashMap<(u32, u64), Vec<&str>> = HashMap::new();
        for (member, partition, offset, _) in &processed {
            seen.entry((*partition, *offset)).or_default().push(member);
        }
        let duplicates: Vec<_> = seen.iter().filter(|(_, m)| m.len() > 1).collect();
        for (at, members) in &duplicates {
            let distinct: BTreeSet<_> = members.iter().collect();
            assert_eq!(
                distinct.len(),
                members.len(),
                "{at:?} processed twice by one member: {members:?}"
            );
        }
        // Graceful moves re-deliver at most the one record in a member's hands per
        // partition; a crash re-delivers what it processed since its last commit.
        let moves = periods
            .lock()
            .expect("periods")
            .iter()
            .filter(|p| p.3.is_some())
            .count();
        assert!(
            duplicates.len() <= crash_window + moves,
            "{} duplicates exceed the uncommitted window ({crash_window}) + moves ({moves})",
            duplicates.len()
        );
        let values: BTreeSet<&str> = processed.iter().map(|p| p.3.as_str()).collect();
        assert_eq!(values.len(), total, "every record processed");
        // The history checker over what the members processed: nothing acknowledged lost,
        // nothing read at another offset than acknowledged, no offset with two values.
        let reads = processed
            .iter()
            .map(|(_, partition, offset, value)| Read {
                partition: *partition,
                offset: *offset,
                value: value.clone(),
            })
            .collect();
        let report = logcheck::check(&History { attempts, reads });
        assert!(report.is_clean(), "{report}");
        let description = client.admin().describe_group("g").await.expect("describe");
        assert_eq!(description.state, "empty", "{description:?}");
        let committed: u64 = description
            .partitions
            .iter()
            .map(|p| p.committed_offset)
            .sum();
        assert_eq!(
            committed, total as u64,
            "final commits cover every record: {description:?}"
        );
    });
}

#[test]
fn a_static_member_restarting_within_the_session_timeout_keeps_its_partitions() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = super::client_with_topic(&broker.address, "s", 4, &[]).await;
        let config = |instance: &str| ConsumerConfig {
            instance_id: Some(instance.to_string()),
            session_timeout: Duration::from_secs(20),
            ..member_config(Duration::from_secs(20))
        };
        let periods: Periods = Arc::default();
        let mut a = client
            .consumer(config("a"))
            .subscribe("sg", &["s"])
            .expect("a");
        track("a", &mut a, &periods);
        let mut b = client
            .consumer(config("b"))
            .subscribe("sg", &["s"])
            .expect("b");
        let stable = |client: Client| async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(d) = client.admin().describe_group("sg").await
                    && d.state == "stable"
                    && d.members.len() == 2
                {
                    return d;
                }
                assert!(Instant::now() < deadline, "the group never settled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let before = stable(client.clone()).await;
        let b_had = poll_assignment(&mut b, 2).await;
        b.close().await.expect("static leave");
        let events_before = periods.lock().expect("periods").len();
        let mut b2 = client
            .consumer(config("b"))
            .subscribe("sg", &["s"])
            .expect("b again");
        let b2_has = poll_assignment(&mut b2, 2).await;
        assert_eq!(
            b_had, b2_has,
            "the restarted static member got its partitions back"
        );
        let after = stable(client.clone()).await;
        assert_eq!(before.group_epoch, after.group_epoch, "no rebalance");
        assert_eq!(
            periods.lock().expect("periods").len(),
            events_before,
            "member a saw no change"
        );
        b2.close().await.expect("close");
        a.close().await.expect("close");
    });
}

/// Polls the member's stream (so it runs) until it owns `n` partitions.
async fn poll_assignment(member: &mut GroupConsumer, n: usize) -> Vec<Tp> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let owned = member.assignment();
        if owned.len() == n {
            return owned;
        }
        assert!(
            Instant::now() < deadline,
            "owns {owned:?}, expected {n} partitions"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), member.next()).await;
    }
}

async fn groups_stub(address: &str) -> ConsumerGroupsClient<tonic::transport::Channel> {
    ConsumerGroupsClient::connect(format!("http://{address}"))
        .await
        .expect("groups client")
}

fn reason(status: &tonic::Status) -> Option<Reason> {
    sluice_protocol::StatusInfo::of(status).reason
}

fn join(group: &str, topic: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        group: group.into(),
        member_epoch: 0,
        topics: vec![topic.into()],
        session_timeout_ms: 30_000,
        ..HeartbeatRequest::default()
    }
}

fn tps(topic: &str, partitions: &[u32]) -> Vec<TopicPartition> {
    partitions
        .iter()
        .map(|p| TopicPartition {
            topic: topic.into(),
            partition: *p,
        })
        .collect()
}

fn commit(
    group: &str,
    member: &str,
    epoch: i32,
    topic: &str,
    partition: u32,
    offset: u64,
) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        offsets: vec![OffsetCommit {
            topic: topic.into(),
            partition,
            offset,
            ..OffsetCommit::default()
        }],
    }
}

#[test]
fn stale_generation_commits_and_changes_to_a_group_with_members_are_refused() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let _client = super::client_with_topic(&broker.address, "f", 2, &[]).await;
        let mut stub = groups_stub(&broker.address).await;
        let a = stub
            .heartbeat(join("fg", "f"))
            .await
            .expect("a joins")
            .into_inner();
        assert_eq!(a.assignment.len(), 2);
        let b = stub
            .heartbeat(join("fg", "f"))
            .await
            .expect("b joins")
            .into_inner();
        assert!(b.assignment.is_empty(), "nothing free until a releases");
        // a hears of the revocation, commits it (allowed while revoking), then releases.
        let mut hb = join("fg", "f");
        hb.member_id = a.member_id.clone();
        hb.member_epoch = a.member_epoch;
        hb.owned = tps("f", &[0, 1]);
        let a2 = stub
            .heartbeat(hb.clone())
            .await
            .expect("a heartbeat")
            .into_inner();
        assert_eq!(a2.assignment.len(), 1);
        let kept = a2.assignment[0].partition;
        let given = 1 - kept;
        stub.commit_offsets(commit("fg", &a.member_id, a2.member_epoch, "f", given, 0))
            .await
            .expect("a revoking member commits what it gives up");
        hb.member_epoch = a2.member_epoch;
        hb.owned = tps("f", &[kept]);
        stub.heartbeat(hb).await.expect("a releases");
        // Now the partition is b's: a's commit of it is stale.
        let refused = stub
            .commit_offsets(commit("fg", &a.member_id, a2.member_epoch, "f", given, 0))
            .await
            .expect_err("stale");
        assert_eq!(
            reason(&refused),
            Some(Reason::StaleMemberEpoch),
            "{refused:?}"
        );
        let refused = stub
            .commit_offsets(commit("fg", "nobody", 1, "f", kept, 0))
            .await
            .expect_err("unknown member");
        assert_eq!(reason(&refused), Some(Reason::UnknownMember), "{refused:?}");
        let refused = stub
            .commit_offsets(commit("fg", "", 0, "f", kept, 0))
            .await
            .expect_err("a plain commit to a group with members");
        assert_eq!(reason(&refused), Some(Reason::GroupNotEmpty), "{refused:?}");
        let reset = ResetOffsetsRequest {
            group: "fg".into(),
            topic: "f".into(),
            partitions: vec![],
            to: Some(To::Earliest(true)),
        };
        let refused = stub
            .reset_offsets(reset.clone())
            .await
            .expect_err("members");
        assert_eq!(reason(&refused), Some(Reason::GroupNotEmpty), "{refused:?}");
        let refused = stub
            .delete_group(sluice_protocol::v1::DeleteGroupRequest { group: "fg".into() })
            .await
            .expect_err("members");
        assert_eq!(reason(&refused), Some(Reason::GroupNotEmpty), "{refused:?}");
        // Once both leave, the reset is taken.
        for (id, epoch) in [(&a.member_id, -1), (&b.member_id, -1)] {
            let mut leave = join("fg", "f");
            leave.member_id = id.clone();
            leave.member_epoch = epoch;
            stub.heartbeat(leave).await.expect("leave");
        }
        let reset = stub.reset_offsets(reset).await.expect("reset").into_inner();
        assert_eq!(reset.offsets.len(), 2);
    });
}

#[test]
fn acknowledged_commits_survive_killing_the_coordinator_and_never_go_backwards() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        rf3_topic(&cluster, "c", 6).await;
        let (coordinator, found) = coordinator_of(&cluster, "cg").await;
        // A commit at another broker names the coordinator.
        let other = (coordinator + 1) % 3;
        let mut elsewhere = groups_stub(&cluster.nodes[other].address).await;
        let refused = elsewhere
            .commit_offsets(commit("cg", "", 0, "c", 0, 1))
            .await
            .expect_err("not the coordinator");
        assert_eq!(
            reason(&refused),
            Some(Reason::NotCoordinator),
            "{refused:?}"
        );
        assert_eq!(
            sluice_protocol::StatusInfo::of(&refused)
                .leader_hint
                .as_deref(),
            Some(found.address.as_str())
        );
        // A member on a client that bootstraps from the survivors commits rising offsets.
        let survivors = all_but(&cluster, coordinator);
        let member_client = Client::connect(&survivors).await.expect("connect");
        let mut member = member_client
            .consumer(member_config(Duration::from_secs(5)))
            .subscribe("cg", &["c"])
            .expect("subscribe");
        // A second member: ownership must not overlap across the coordinator's failover.
        let periods: Periods = Arc::default();
        track("a", &mut member, &periods);
        poll_assignment(&mut member, 6).await;
        let mut other = member_client
            .consumer(member_config(Duration::from_secs(5)))
            .subscribe("cg", &["c"])
            .expect("subscribe");
        track("b", &mut other, &periods);
        poll_assignment(&mut other, 3).await;
        poll_assignment(&mut member, 3).await;
        let acked: Arc<Mutex<BTreeMap<u32, u64>>> = Arc::default();
        let watcher_client = Client::connect(&survivors).await.expect("connect");
        let watching = watch_commits(watcher_client, "cg");
        let mut next = 1u64;
        let mut killed = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next <= 200 {
            assert!(Instant::now() < deadline, "commits stalled at {next}");
            let owned = member.assignment();
            if owned.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(50), member.next()).await;
                continue;
            }
            let offsets: Vec<(Tp, u64)> = owned.iter().map(|tp| (tp.clone(), next)).collect();
            match member.commit_offsets(&offsets).await {
                Ok(()) => {
                    let now_acked = {
                        let mut acked = acked.lock().expect("acked");
                        for (tp, o) in &offsets {
                            acked.insert(tp.1, *o);
                        }
                        acked.clone()
                    };
                    next += 1;
                    if next == 50 && !killed {
                        // Right after an acknowledged commit: the new coordinator has it.
                        cluster.nodes[coordinator].kill9();
                        killed = true;
                        check_committed(&survivors[0], &now_acked).await;
                    }
                }
                Err(e) => {
                    // Fenced by the new coordinator: rejoin happens in the background.
                    assert!(
                        matches!(
                            e.reason(),
                            Some(Reason::UnknownMember | Reason::StaleMemberEpoch)
                        ) || e.is_retriable(),
                        "{e}"
                    );
                    let _ = tokio::time::timeout(Duration::from_millis(50), member.next()).await;
                }
            }
        }
        watching.finish().await;
        let acked = acked.lock().expect("acked").clone();
        check_committed(&survivors[0], &acked).await;
        member.close().await.expect("close");
        other.close().await.expect("close");
        check_one_owner(&periods);
    });
}

/// Asks the group's (possibly new) coordinator through `address` for the committed offsets
/// and fails unless each partition's is exactly `acked`'s.
async fn check_committed(address: &str, acked: &BTreeMap<u32, u64>) {
    let mut stub = groups_stub(address).await;
    let mut answer = None;
    for _ in 0..200 {
        let found = stub
            .find_coordinator(FindCoordinatorRequest { group: "cg".into() })
            .await;
        // Right after the kill a broker may still name the dead coordinator.
        let address = found.map(|f| format!("http://{}", f.into_inner().address));
        if let Ok(address) = address
            && let Ok(mut at) = ConsumerGroupsClient::connect(address).await
        {
            let request = FetchOffsetsRequest {
                group: "cg".into(),
                partitions: vec![],
            };
            if let Ok(r) = at.fetch_offsets(request).await {
                answer = Some(r.into_inner());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetched = answer.expect("the coordinator answers");
    for (partition, offset) in acked {
        let got = fetched
            .offsets
            .iter()
            .find(|o| o.partition == *partition)
            .map(|o| o.offset);
        assert_eq!(
            got,
            Some(*offset),
            "c/{partition}: the last acknowledged commit"
        );
    }
}

#[test]
fn a_pattern_subscription_picks_up_new_topics_and_partitions_and_never_internal_ones() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = super::client_with_topic(&broker.address, "pat-a", 2, &[]).await;
        client
            .admin()
            .create_topic("other", 3, 1, Default::default())
            .await
            .expect("create");
        let mut member = client
            .consumer(member_config(Duration::from_secs(10)))
            .subscribe_pattern("pg", "pat-.*|__consumer_offsets")
            .expect("subscribe");
        let owned = poll_assignment(&mut member, 2).await;
        assert!(owned.iter().all(|(t, _)| t == "pat-a"), "{owned:?}");
        client
            .admin()
            .create_topic("pat-b", 1, 1, Default::default())
            .await
            .expect("create");
        poll_assignment(&mut member, 3).await;
        client
            .admin()
            .add_partitions("pat-a", 4)
            .await
            .expect("grow");
        let owned = poll_assignment(&mut member, 5).await;
        assert!(
            owned.iter().all(|(t, _)| t.starts_with("pat-")),
            "neither other nor an internal topic: {owned:?}"
        );
        member.close().await.expect("close");
    });
}

#[test]
fn after_a_coordinator_failover_partitions_move_only_once_their_old_owner_stopped_reading() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        rf3_topic(&cluster, "h", 4).await;
        // Member b, driven by hand: it owns every partition and then falls silent, as a
        // member still within its session would when its coordinator dies.
        let (coordinator, found) = coordinator_of(&cluster, "hg").await;
        let mut at = groups_stub(&found.address).await;
        let mut hb = join("hg", "h");
        hb.session_timeout_ms = 5000;
        let mut b = at.heartbeat(hb.clone()).await;
        for _ in 0..50 {
            if b.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            b = at.heartbeat(hb.clone()).await;
        }
        let mut b = b.expect("b joins").into_inner();
        hb.member_id = b.member_id.clone();
        // A young cluster's leaderships may have churned: then even the first coordinator
        // takes its takeover grace before handing anything out.
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.assignment.len() < 4 {
            assert!(
                Instant::now() < deadline,
                "b never got the partitions: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            hb.member_epoch = b.member_epoch;
            hb.owned = b.assignment.clone();
            b = at
                .heartbeat(hb.clone())
                .await
                .expect("b stays")
                .into_inner();
        }
        hb.member_epoch = b.member_epoch;
        hb.owned = tps("h", &[0, 1, 2, 3]);
        let last_sent = Instant::now();
        at.heartbeat(hb).await.expect("b stays");
        // b's SDK would stop reading 4/5 of its session after that heartbeat was sent.
        let b_stops = last_sent + Duration::from_millis(4000);
        cluster.nodes[coordinator].kill9();

        let survivors = all_but(&cluster, coordinator);
        let member_client = Client::connect(&survivors).await.expect("connect");
        let periods: Periods = Arc::default();
        let mut a = member_client
            .consumer(member_config(Duration::from_secs(5)))
            .subscribe("hg", &["h"])
            .expect("subscribe");
        track("a", &mut a, &periods);
        poll_assignment(&mut a, 4).await;
        let first = periods
            .lock()
            .expect("periods")
            .iter()
            .map(|p| p.2)
            .min()
            .expect("a was assigned");
        assert!(
            first >= b_stops,
            "a got partitions {:?} before b stopped reading them",
            b_stops.saturating_duration_since(first)
        );
        a.close().await.expect("close");
    });
}

/// Samples a group's committed offsets until finished, failing the test (at `finish`) if a
/// partition's commit ever goes backwards or vanishes.
struct CommitWatcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn watch_commits(client: Client, group: &str) -> CommitWatcher {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, group) = (Arc::clone(&stop), group.to_string());
    let task = tokio::spawn(async move {
        let mut seen: BTreeMap<Tp, u64> = BTreeMap::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(d) = client.admin().describe_group(&group).await {
                let now: BTreeMap<Tp, u64> = d
                    .partitions
                    .iter()
                    .filter(|p| p.has_committed)
                    .map(|p| ((p.topic.clone(), p.partition), p.committed_offset))
                    .collect();
                for (tp, before) in &seen {
                    let after = now.get(tp).copied();
                    assert!(
                        after.is_some_and(|a| a >= *before),
                        "{tp:?}'s commit went from {before} to {after:?}"
                    );
                }
                seen = now;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    CommitWatcher { stop, task }
}

impl CommitWatcher {
    async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task
            .await
            .expect("committed offsets never went backwards");
    }
}

/// The index of the node coordinating `group`, and its address.
async fn coordinator_of(cluster: &TestCluster, group: &str) -> (usize, FindCoordinatorResponse) {
    let mut stub = groups_stub(&cluster.nodes[0].address).await;
    let found = stub
        .find_coordinator(FindCoordinatorRequest {
            group: group.into(),
        })
        .await
        .expect("coordinator")
        .into_inner();
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.address == found.address)
        .expect("a node coordinates");
    (index, found)
}

/// Every node's client address but node `except`'s.
fn all_but(cluster: &TestCluster, except: usize) -> Vec<String> {
    cluster
        .addresses()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .map(|(_, a)| a)
        .collect()
}

fn rounds(ci: usize, long: usize) -> usize {
    if std::env::var_os("SLUICE_LONG").is_some() {
        long
    } else {
        ci
    }
}

#[test]
fn a_group_under_member_churn_keeps_one_owner_and_processes_every_record() {
    // TESTPLAN T16: members crash (dropped without a commit or a leave) one after another
    // while records flow; CI runs a few crashes, SLUICE_LONG=1 two minutes of them.
    let (crashes, every) = (rounds(4, 12), Duration::from_secs(rounds(2, 10) as u64));
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = super::client_with_topic(&broker.address, "churn", 8, &[]).await;
        let processed: Processed = Arc::default();
        let periods: Periods = Arc::default();
        let stop_producing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producing = {
            let (client, stop) = (client.clone(), Arc::clone(&stop_producing));
            tokio::spawn(async move {
                let producer = client
                    .producer(ProducerConfig::default())
                    .await
                    .expect("producer");
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sends: Vec<_> = (n..n + 200)
                        .map(|i| producer.send(ProducerRecord::new("churn").key(format!("k{i}")).value(format!("v{i}"))))
                        .collect();
                    for s in futures::future::join_all(sends).await {
                        s.expect("acked");
                    }
                    n += 200;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n
            })
        };
        let watcher = watch_commits(client.clone(), "churn-g");
        let mut workers: Vec<(String, Worker)> = (0..4)
            .map(|i| {
                let name = format!("m{i}");
                let w = spawn_worker(&client, &name, "churn-g", "churn", &processed, &periods);
                (name, w)
            })
            .collect();
        let mut window = 0usize;
        for round in 0..crashes {
            tokio::time::sleep(every).await;
            let (name, victim) = workers.remove(round % workers.len());
            window += victim.stop(false).await;
            end_periods(&name, &periods, Instant::now());
            let name = format!("m{}", 4 + round);
            let w = spawn_worker(&client, &name, "churn-g", "churn", &processed, &periods);
            workers.push((name, w));
        }
        stop_producing.store(true, std::sync::atomic::Ordering::Relaxed);
        let total = producing.await.expect("producer") as usize;
        wait_processed(&processed, total, "after the churn").await;
        for (_, w) in workers {
            w.stop(true).await;
        }
        watcher.finish().await;
        check_one_owner(&periods);
        let processed = processed.lock().expect("processed").clone();
        let values: BTreeSet<&str> = processed.iter().map(|p| p.3.as_str()).collect();
        assert_eq!(values.len(), total, "every record processed");
        let mut seen: HashMap<(u32, u64), usize> = HashMap::new();
        for (_, partition, offset, _) in &processed {
            *seen.entry((*partition, *offset)).or_default() += 1;
        }
        let duplicates = seen.values().filter(|n| **n > 1).count();
        let moves = periods.lock().expect("periods").iter().filter(|p| p.3.is_some()).count();
        assert!(
            duplicates <= window + moves,
            "{duplicates} duplicates exceed the crashed members' uncommitted windows ({window}) + moves ({moves})"
        );
    });
}

#[test]
fn a_commit_past_the_end_of_a_topic_created_again_follows_the_reset_policy() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = super::client_with_topic(&broker.address, "again", 1, &[]).await;
        super::produce_values(&client, "again", "old", 10).await;
        let mut member = client
            .consumer(member_config(Duration::from_secs(10)))
            .subscribe("ag", &["again"])
            .expect("subscribe");
        for _ in 0..10 {
            member.next().await.expect("open").expect("record");
        }
        member.commit().await.expect("commit");
        member.close().await.expect("close");
        client.admin().delete_topic("again").await.expect("delete");
        client
            .admin()
            .create_topic("again", 1, 1, Default::default())
            .await
            .expect("create again");
        // A new producer: sequence numbers belong to the old topic's partitions.
        super::produce_values(&client, "again", "new", 3).await;
        // The group's commit (10) is past the new topic's end (3): read from the earliest.
        let mut member = client
            .consumer(member_config(Duration::from_secs(10)))
            .subscribe("ag", &["again"])
            .expect("subscribe");
        let first = tokio::time::timeout(Duration::from_secs(20), member.next())
            .await
            .expect("a record in time")
            .expect("open")
            .expect("record");
        assert_eq!(first.offset, 0);
        assert_eq!(first.value.as_deref(), Some(&b"new-0"[..]));
        member.close().await.expect("close");
    });
}
