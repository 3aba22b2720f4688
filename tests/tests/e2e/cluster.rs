//! A cluster of three real `sluiced` processes on loopback: forming with the cluster flags,
//! RF=3 replication served through any node, the internal port's secret, and failover under
//! idempotent `acks=all` load (kill -9, SIGSTOP, rolling restarts) checked by logcheck.
//! `SLUICE_LONG=1` runs more rounds of each fault.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_protocol::internal::v1 as pb;
use sluice_protocol::internal::v1::raft_client::RaftClient;
use sluice_protocol::{LEADER_HINT_KEY, StatusInfo};
use sluice_tests::logcheck::{self, Attempt, History, Outcome, Read};
use sluice_tests::{TestBroker, TestCluster};
use tonic::metadata::BinaryMetadataValue;

use crate::{raw_producer, read_all, runtime};

/// Fault rounds per test: a few in CI, more with `SLUICE_LONG=1`.
fn rounds(ci: usize, long: usize) -> usize {
    if std::env::var_os("SLUICE_LONG").is_some() {
        long
    } else {
        ci
    }
}

async fn connect(cluster: &TestCluster, node: usize) -> Client {
    Client::connect([cluster.nodes[node].address.as_str()])
        .await
        .expect("connect")
}

/// Any live node's client (the test's clients bootstrap from every node).
pub(crate) async fn connect_any(cluster: &TestCluster) -> Client {
    Client::connect(cluster.addresses()).await.expect("connect")
}

/// A partition's leader id as the cluster reports it, waiting (bounded) for one that is
/// not `except`.
pub(crate) async fn leader_of(
    client: &Client,
    topic: &str,
    partition: u32,
    except: Option<u64>,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = client.admin().describe_topic(topic).await
            && let Some(p) = t.partitions.get(partition as usize)
            && p.leader != 0
            && Some(p.leader) != except
        {
            return p.leader;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The batches of one replica of a partition, segment after segment: each segment's
/// batches up to the first place that holds no batch header (space reserved past the end).
/// Replicas cut segments where their own sizes say, so only the batches are compared.
fn replica_log(node: &TestBroker, topic: &str, partition: u32) -> Vec<u8> {
    let dir = node.data_dir().join(topic).join(partition.to_string());
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    let mut bytes = Vec::new();
    for segment in segments {
        let data = std::fs::read(&segment).unwrap_or_default();
        let mut at = 0usize;
        while let Some(rest) = data.get(at..) {
            let Ok(header) = sluice_storage::BatchHeader::decode(rest) else {
                break;
            };
            let len = header.batch_len() as usize;
            let Some(batch) = rest.get(..len).filter(|_| len > 0) else {
                break;
            };
            bytes.extend_from_slice(batch);
            at += len;
        }
    }
    bytes
}

#[test]
fn three_nodes_form_one_cluster_and_replicate_through_any_node() {
    let cluster = TestCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut cluster_ids = HashSet::new();
        for node in 0..3 {
            let described = connect(&cluster, node)
                .await
                .admin()
                .describe_cluster()
                .await
                .expect("describe cluster");
            assert_eq!(described.nodes.len(), 3, "node {node}: {described:?}");
            assert!(
                described
                    .nodes
                    .iter()
                    .all(|n| n.alive && !n.raft_address.is_empty())
            );
            assert_eq!(
                described
                    .nodes
                    .iter()
                    .filter(|n| n.controller_voter)
                    .count(),
                3
            );
            assert_ne!(described.controller, 0);
            cluster_ids.insert(described.cluster_id);
        }
        assert_eq!(cluster_ids.len(), 1, "one cluster, one id: {cluster_ids:?}");
        assert!(cluster_ids.iter().all(|id| id.len() == 32));

        let admin = connect(&cluster, 2).await;
        let created = admin
            .admin()
            .create_topic("events", 3, 3, Default::default())
            .await
            .expect("create RF=3 through node 3");
        let leaders: HashSet<u64> = created.partitions.iter().map(|p| p.leader).collect();
        for p in &created.partitions {
            assert_eq!(p.replicas.len(), 3);
            assert_ne!(p.leader, 0);
        }
        let over_replication = admin
            .admin()
            .create_topic("too-many", 1, 4, Default::default())
            .await;
        assert!(over_replication.is_err(), "RF 4 on 3 nodes");
        assert!(leaders.len() >= 2, "leaders spread: {created:?}");

        let producer_client = connect(&cluster, 1).await;
        let producer = producer_client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let mut history = History::default();
        let mut sends = Vec::new();
        for i in 0..3000u64 {
            let value = format!("v{i}");
            let partition = (i % 3) as u32;
            let delivery = producer
                .enqueue(
                    ProducerRecord::new("events")
                        .partition(partition)
                        .value(value.clone()),
                )
                .await
                .expect("enqueue");
            sends.push((partition, i, value, delivery));
        }
        for (partition, sequence, value, delivery) in sends {
            let outcome = match delivery.wait().await {
                Ok(sent) => Outcome::Acked(sent.offset),
                Err(_) => Outcome::Unknown,
            };
            history.attempts.push(Attempt {
                partition,
                producer: 0,
                sequence,
                value,
                outcome,
            });
        }
        let reader = connect(&cluster, 0).await;
        let records = read_all(&reader, "events", 3, 3000, Duration::from_secs(60)).await;
        history.reads.extend(records.iter().map(Read::of));
        let report = logcheck::check(&history);
        assert!(report.is_clean(), "{report}");
        assert!(
            history
                .attempts
                .iter()
                .all(|a| matches!(a.outcome, Outcome::Acked(_))),
            "every produce on a healthy cluster is acknowledged"
        );

        // A node that does not lead a partition points at the one that does.
        let described = reader
            .admin()
            .describe_topic("events")
            .await
            .expect("describe");
        let p0 = &described.partitions[0];
        assert!(!p0.leader_address.is_empty());
        let follower = (1..=3u64).find(|n| *n != p0.leader).expect("a follower");
        let mut raw = raw_producer(&cluster.nodes[follower as usize - 1].address).await;
        let refused = raw
            .produce(sluice_protocol::v1::ProduceRequest {
                topic: "events".into(),
                partition: 0,
                batch: Default::default(),
                ..Default::default()
            })
            .await
            .expect_err("a follower refuses produce");
        let info = StatusInfo::of(&refused);
        assert_eq!(
            info.reason,
            Some(sluice_protocol::Reason::NotLeader),
            "{refused:?}"
        );
        let hint = refused
            .metadata()
            .get(LEADER_HINT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(hint.as_deref(), Some(p0.leader_address.as_str()));
    });

    // Every replica holds the same bytes once the followers have caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    for partition in 0..3 {
        loop {
            let logs: Vec<Vec<u8>> = cluster
                .nodes
                .iter()
                .map(|n| replica_log(n, "events", partition))
                .collect();
            if !logs[0].is_empty() && logs.iter().all(|l| *l == logs[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of events/{partition} differ: {:?} bytes",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The controller's current vote (term) on `raft_address`, asked with the secret: a vote
/// request for term 0 changes nothing and its answer carries the voter's vote.
async fn controller_term(raft_address: &str, secret: &[u8]) -> u64 {
    let mut client = RaftClient::connect(format!("http://{raft_address}"))
        .await
        .expect("raft port");
    let mut request = tonic::Request::new(pb::VoteRequest {
        group_id: 0,
        vote: Some(pb::Vote {
            term: 0,
            node_id: 99,
            committed: false,
        }),
        last_log_id: None,
    });
    request.metadata_mut().insert_bin(
        "sluice-cluster-secret-bin",
        BinaryMetadataValue::from_bytes(secret),
    );
    let answer = client.vote(request).await.expect("an authenticated vote");
    answer.into_inner().vote.map_or(0, |v| v.term)
}

fn forged_vote(term: u64) -> pb::VoteRequest {
    pb::VoteRequest {
        group_id: 0,
        vote: Some(pb::Vote {
            term,
            node_id: 99,
            committed: false,
        }),
        last_log_id: Some(pb::LogId {
            term,
            leader: 99,
            index: 1_000_000,
        }),
    }
}

#[test]
fn internal_calls_must_prove_the_cluster_secret() {
    let cluster = TestCluster::start(1);
    let node = &cluster.nodes[0];
    let raft_address = node.raft_address().expect("raft address");
    let secret = std::fs::read(&cluster.secret_file).expect("secret");
    let secret = secret.trim_ascii_end().to_vec();
    let rt = runtime();
    rt.block_on(async {
        let before = controller_term(&raft_address, &secret).await;
        assert!(before > 0, "the controller has a term");

        // The client port does not serve the internal service at all.
        let mut on_client_port = RaftClient::connect(format!("http://{}", node.address))
            .await
            .expect("client port");
        let refused = on_client_port
            .vote(forged_vote(before + 100))
            .await
            .expect_err("no Raft on the client port");
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

        let mut raft = RaftClient::connect(format!("http://{raft_address}"))
            .await
            .expect("raft port");
        let refused = raft
            .vote(forged_vote(before + 100))
            .await
            .expect_err("a vote without the secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let mut wrong = tonic::Request::new(forged_vote(before + 100));
        wrong.metadata_mut().insert_bin(
            "sluice-cluster-secret-bin",
            BinaryMetadataValue::from_bytes(b"not-the-cluster-secret"),
        );
        let refused = raft.vote(wrong).await.expect_err("a wrong secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let append = pb::AppendEntriesRequest {
            group_id: 0,
            vote: Some(pb::Vote {
                term: before + 100,
                node_id: 99,
                committed: true,
            }),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let refused = raft
            .append_entries(append.clone())
            .await
            .expect_err("entries without the secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = raft
            .forward_controller_command(pb::ForwardRequest {
                command: b"\"AllocateProducerId\"".to_vec().into(),
                hops: 0,
            })
            .await
            .expect_err("a controller command without the secret");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            controller_term(&raft_address, &secret).await,
            before,
            "refused calls changed nothing"
        );

        // The probe sees a change when there is one: the same entries, with the secret,
        // depose the leader and move the term.
        let mut proven = tonic::Request::new(append);
        proven.metadata_mut().insert_bin(
            "sluice-cluster-secret-bin",
            BinaryMetadataValue::from_bytes(&secret),
        );
        let _ = raft.append_entries(proven).await;
        assert!(controller_term(&raft_address, &secret).await >= before + 100);
    });
}

/// Idempotent `acks=all` producers, one per partition, each sending values in order until
/// told to stop; every attempt's outcome is recorded for logcheck.
pub(crate) struct Load {
    history: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Creates `topic` (RF=3) and starts the load on it, once `acks` are in.
    pub(crate) async fn on_new_topic(
        cluster: &TestCluster,
        topic: &str,
        partitions: u32,
        acks: usize,
    ) -> Self {
        connect_any(cluster)
            .await
            .admin()
            .create_topic(topic, partitions, 3, Default::default())
            .await
            .expect("create");
        let load = Self::start(cluster, topic, partitions).await;
        load.progress(acks, "the start").await;
        load
    }

    async fn start(cluster: &TestCluster, topic: &str, partitions: u32) -> Self {
        let history: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for partition in 0..partitions {
            let client = connect_any(cluster).await;
            let config = ProducerConfig {
                retries: 1000,
                retry_backoff: Duration::from_millis(100),
                request_timeout: Duration::from_secs(10),
                ..ProducerConfig::default()
            };
            let producer = client.producer(config).await.expect("producer");
            let (history, stop, topic) =
                (Arc::clone(&history), Arc::clone(&stop), topic.to_string());
            tasks.push(tokio::spawn(async move {
                for sequence in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let value = format!("p{partition}-{sequence}");
                    let sent = producer
                        .send(
                            ProducerRecord::new(topic.as_str())
                                .partition(partition)
                                .value(value.clone()),
                        )
                        .await;
                    let outcome = match sent {
                        Ok(m) => Outcome::Acked(m.offset),
                        Err(_) => Outcome::Unknown,
                    };
                    history.lock().expect("history").push(Attempt {
                        partition,
                        producer: partition,
                        sequence,
                        value,
                        outcome,
                    });
                }
            }));
        }
        Self {
            history,
            stop,
            tasks,
        }
    }

    /// Acknowledgements so far on partition 0 (whose leader the tests fault).
    fn acked(&self) -> usize {
        self.history
            .lock()
            .expect("history")
            .iter()
            .filter(|a| a.partition == 0 && matches!(a.outcome, Outcome::Acked(_)))
            .count()
    }

    /// Waits (bounded) until `more` acknowledgements on partition 0 beyond the count now.
    pub(crate) async fn progress(&self, more: usize, what: &str) -> Duration {
        let started = Instant::now();
        let target = self.acked() + more;
        while self.acked() < target {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no progress after {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    pub(crate) async fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(120), task).await;
        }
        self.history.lock().expect("history").clone()
    }
}

/// Reads every partition back through any node and checks the history.
pub(crate) async fn check_history(
    cluster: &TestCluster,
    topic: &str,
    partitions: u32,
    attempts: Vec<Attempt>,
) {
    let report = history_report(cluster, topic, partitions, attempts).await;
    assert!(report.is_clean(), "{report}");
    assert!(report.counts.0 > 0);
}

/// Reads every partition back through any node and checks the history against it.
pub(crate) async fn history_report(
    cluster: &TestCluster,
    topic: &str,
    partitions: u32,
    attempts: Vec<Attempt>,
) -> logcheck::Report {
    let client = connect_any(cluster).await;
    // Each partition's high watermark as its serving leader knows it: a serving leader has
    // applied everything committed before its term; followers (and a restarted node whose
    // group has no leader yet) may know less.
    let mut high = vec![0u64; partitions as usize];
    for (partition, h) in high.iter_mut().enumerate() {
        // A follower may still name the leader of before a restart: ask the named node
        // until it says it serves the partition itself (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        let p = loop {
            let leader = leader_of(&client, topic, partition as u32, None).await;
            let described = connect(cluster, node_index(leader))
                .await
                .admin()
                .describe_topic(topic)
                .await
                .expect("describe");
            let p = described.partitions[partition].clone();
            if p.leader == leader {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{partition} has no serving leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        *h = p.high_watermark - p.log_start_offset;
    }
    let total: u64 = high.iter().sum();
    let records = read_all(
        &client,
        topic,
        partitions,
        total as usize,
        Duration::from_secs(60),
    )
    .await;
    let history = History {
        attempts,
        reads: records.iter().map(Read::of).collect(),
    };
    let report = logcheck::check(&history);
    eprintln!("logcheck: {report}");
    report
}

pub(crate) fn node_index(id: u64) -> usize {
    id as usize - 1
}

#[test]
fn killing_the_leader_under_idempotent_load_loses_and_duplicates_nothing() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let load = rt.block_on(Load::on_new_topic(&cluster, "kills", 2, 200));
    let mut failovers = Vec::new();
    for round in 0..rounds(3, 20) {
        let leader =
            rt.block_on(async { leader_of(&connect_any(&cluster).await, "kills", 0, None).await });
        cluster.nodes[node_index(leader)].kill9();
        let killed = Instant::now();
        rt.block_on(async {
            load.progress(1, &format!("killing leader {leader} (round {round})"))
                .await;
        });
        failovers.push(killed.elapsed());
        cluster.nodes[node_index(leader)].restart();
        rt.block_on(load.progress(100, "the restart"));
    }
    failovers.sort();
    eprintln!("kill -9 of the leader to the next acknowledgement: {failovers:?}");
    rt.block_on(async {
        let attempts = load.finish().await;
        check_history(&cluster, "kills", 2, attempts).await;
    });
}

#[test]
fn a_paused_leader_and_a_rolling_restart_lose_and_duplicate_nothing() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let load = rt.block_on(Load::on_new_topic(&cluster, "pauses", 2, 200));
    for round in 0..rounds(1, 5) {
        let leader =
            rt.block_on(async { leader_of(&connect_any(&cluster).await, "pauses", 0, None).await });
        let paused = &cluster.nodes[node_index(leader)];
        paused.signal("STOP");
        // Past the election timeout (0.5–0.6 s, after a lease as long): the others elect a
        // new leader and serve.
        rt.block_on(async {
            load.progress(100, &format!("pausing leader {leader} (round {round})"))
                .await;
        });
        paused.signal("CONT");
        rt.block_on(load.progress(100, "resuming the old leader"));
    }
    for node in 0..3 {
        assert!(
            cluster.nodes[node].stop(),
            "node {} stops cleanly",
            node + 1
        );
        cluster.nodes[node].restart();
        rt.block_on(load.progress(100, &format!("restarting node {}", node + 1)));
    }
    rt.block_on(async {
        let attempts = load.finish().await;
        check_history(&cluster, "pauses", 2, attempts).await;
    });
}

#[test]
fn a_data_dir_refuses_another_node_id_and_another_clusters_node() {
    let mut cluster = TestCluster::start(3);
    assert!(cluster.nodes[2].stop());
    let node3 = cluster.nodes[2].data_dir().to_path_buf();
    let mut args: Vec<String> = cluster.nodes[2].extra_args().to_vec();

    // The same data dir under another node id.
    let at = args
        .iter()
        .position(|a| a == "--node-id")
        .expect("--node-id");
    args[at + 1] = "2".into();
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, log) = sluice_tests::start_expecting_refusal(&node3, &arg_refs);
    assert_eq!(code, Some(1), "refused: {log}");
    assert!(log.contains("belongs to node 3, not node 2"), "{log}");
    args[at + 1] = "3".into();

    // Node 3's place taken by the data of a node 3 of another cluster.
    let other = tempfile::tempdir().expect("temp dir");
    let other_dir = other.path().join("data");
    let other_raft = format!("127.0.0.1:{}", sluice_tests::free_port());
    let other_secret = other.path().join("secret");
    std::fs::write(&other_secret, "another-clusters-secret-0123").expect("secret");
    let mut other_node = TestBroker::start_in(
        &other_dir,
        &[
            "--node-id",
            "3",
            "--raft-listen",
            &other_raft,
            "--initial-cluster",
            &format!("3={other_raft}"),
            "--cluster-secret-file",
            other_secret.to_str().expect("path"),
        ],
    );
    let stopped = other_node.stop();
    let log = std::fs::read_to_string(other_dir.with_extension("log")).unwrap_or_default();
    assert!(stopped, "the other cluster's node stops cleanly:\n{log}");
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, log) = sluice_tests::start_expecting_refusal(&other_dir, &arg_refs);
    assert_eq!(code, Some(1), "refused: {log}");
    assert!(log.contains("belongs to another cluster"), "{log}");

    // A cluster flag without the secret file.
    let (code, log) = sluice_tests::start_expecting_refusal(
        &node3,
        &[
            "--node-id",
            "3",
            "--initial-cluster",
            &cluster.initial_cluster,
        ],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--raft-listen") || log.contains("--cluster-secret-file"),
        "{log}"
    );

    // The right node on its own data rejoins.
    cluster.nodes[2].restart();
    let rt = runtime();
    rt.block_on(async {
        let described = connect(&cluster, 2)
            .await
            .admin()
            .describe_cluster()
            .await
            .expect("describe");
        assert!(described.nodes.iter().all(|n| n.alive), "{described:?}");
    });
}

/// A partition as `node` itself describes it (its own replica's offsets).
async fn local_view(
    cluster: &TestCluster,
    node: usize,
    topic: &str,
) -> sluice_client::PartitionDescription {
    connect(cluster, node)
        .await
        .admin()
        .describe_topic(topic)
        .await
        .expect("describe")
        .partitions[0]
        .clone()
}

#[test]
fn a_follower_behind_the_log_start_catches_up_by_snapshot_with_the_leaders_offsets() {
    let mut cluster = TestCluster::start_with(3, &["--housekeeping-interval-secs", "1"]);
    let rt = runtime();
    let (follower, leader) = rt.block_on(async {
        let client = connect_any(&cluster).await;
        let configs = [("segment.bytes", "65536"), ("retention.bytes", "200000")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        client
            .admin()
            .create_topic("purged", 1, 3, configs)
            .await
            .expect("create");
        let leader = leader_of(&client, "purged", 0, None).await;
        let follower = (1..=3u64).find(|n| *n != leader).expect("a follower");
        (follower, leader)
    });
    assert!(cluster.nodes[node_index(follower)].stop());
    rt.block_on(async {
        let client = connect(&cluster, node_index(leader)).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let value = vec![b'x'; 1000];
        for _ in 0..3000 {
            producer
                .enqueue(
                    ProducerRecord::new("purged")
                        .partition(0)
                        .value(value.clone()),
                )
                .await
                .expect("enqueue");
        }
        producer.flush().await.expect("flush");
        // Retention runs every second: wait (bounded) until it moved the log start.
        let deadline = Instant::now() + Duration::from_secs(30);
        while local_view(&cluster, node_index(leader), "purged")
            .await
            .log_start_offset
            == 0
        {
            assert!(Instant::now() < deadline, "retention never purged");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    cluster.nodes[node_index(follower)].restart();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ours = local_view(&cluster, node_index(follower), "purged").await;
            let theirs = local_view(&cluster, node_index(leader), "purged").await;
            if ours.high_watermark == theirs.high_watermark && ours.high_watermark > 0 {
                assert!(ours.log_start_offset >= theirs.log_start_offset, "{ours:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the follower never caught up: {ours:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // What comes after the snapshot lands at the same offsets on both.
        let producer = connect(&cluster, node_index(leader))
            .await
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        for i in 0..100 {
            producer
                .send(
                    ProducerRecord::new("purged")
                        .partition(0)
                        .value(format!("after-{i}")),
                )
                .await
                .expect("produce after the catch-up");
        }
    });
    // Batches carry their offsets and Raft positions: the follower's log is the leader's
    // log from where the follower's starts, byte for byte.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ours = replica_log(&cluster.nodes[node_index(follower)], "purged", 0);
        let theirs = replica_log(&cluster.nodes[node_index(leader)], "purged", 0);
        if !ours.is_empty() && theirs.ends_with(&ours) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's {} bytes are not the end of the leader's {}",
            ours.len(),
            theirs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until the cluster as node `node` describes it satisfies `ready`.
pub(crate) async fn wait_cluster(
    cluster: &TestCluster,
    node: usize,
    what: &str,
    ready: impl Fn(&sluice_client::ClusterDescription) -> bool,
) -> sluice_client::ClusterDescription {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = connect(cluster, node)
            .await
            .admin()
            .describe_cluster()
            .await;
        if let Ok(d) = &described
            && ready(d)
        {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "{what}: {described:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn nodes_that_join_become_controller_voters_up_to_three() {
    let mut cluster = TestCluster::start(1);
    let rt = runtime();
    for _ in 0..2 {
        let joined = cluster.join();
        assert_eq!(joined + 1, cluster.nodes.len());
    }
    rt.block_on(async {
        let described = wait_cluster(&cluster, 2, "three voters", |d| {
            d.nodes.len() == 3 && d.nodes.iter().all(|n| n.alive && n.controller_voter)
        })
        .await;
        assert_ne!(described.controller, 0);
    });
    // A fourth node hosts replicas but does not vote in the controller.
    cluster.join();
    rt.block_on(async {
        let described = wait_cluster(&cluster, 3, "four nodes", |d| {
            d.nodes.len() == 4 && d.nodes.iter().all(|n| n.alive)
        })
        .await;
        assert_eq!(
            described
                .nodes
                .iter()
                .filter(|n| n.controller_voter)
                .count(),
            3,
            "{described:?}"
        );
        // RF=4 now fits, and the controller's quorum survives the first node's loss.
        let client = connect(&cluster, 3).await;
        let created = client
            .admin()
            .create_topic("wide", 1, 4, Default::default())
            .await
            .expect("RF=4 on four nodes");
        assert_eq!(created.partitions[0].replicas.len(), 4);
    });
    cluster.nodes[0].kill9();
    rt.block_on(async {
        let client = connect(&cluster, 1).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        producer
            .send(ProducerRecord::new("wide").value("after node 1 died"))
            .await
            .expect("the cluster serves without its founder");
    });
}

/// Waits (bounded) until no partition of `topic` is being moved, and returns it.
pub(crate) async fn wait_moved(client: &Client, topic: &str) -> sluice_client::TopicDescription {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let described = client.admin().describe_topic(topic).await;
        if let Ok(t) = &described
            && t.partitions
                .iter()
                .all(|p| p.target_replicas.is_empty() && p.leader != 0)
        {
            return t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "moves did not finish: {described:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn replicas_move_to_a_joined_node_and_off_a_decommissioned_one_under_load() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let load = rt.block_on(Load::on_new_topic(&cluster, "moves", 2, 100));
    let joined = cluster.join();
    let new_id = joined as u64 + 1;
    rt.block_on(async {
        let client = connect(&cluster, joined).await;
        wait_cluster(&cluster, joined, "the new node registered", |d| {
            d.nodes.iter().any(|n| n.node_id == new_id && n.alive)
        })
        .await;
        // Partition 0 leaves node 2 for the new node.
        let moving = client
            .admin()
            .reassign_partition("moves", 0, &[new_id, 1, 3])
            .await
            .expect("reassign");
        let p0 = &moving.partitions[0];
        assert!(
            p0.target_replicas == [new_id, 1, 3] || p0.replicas == [new_id, 1, 3],
            "the move is recorded (or done already): {p0:?}"
        );
        let moved = wait_moved(&client, "moves").await;
        assert_eq!(moved.partitions[0].replicas, [new_id, 1, 3]);
        load.progress(100, "moving partition 0").await;

        // Node 1 leaves: every replica it holds moves, and it stops voting.
        let moved = client
            .admin()
            .decommission_node(1)
            .await
            .expect("decommission");
        assert_eq!(moved.len(), 2, "{moved:?}");
        let after = wait_moved(&client, "moves").await;
        for p in &after.partitions {
            assert!(!p.replicas.contains(&1), "{after:?}");
            assert_eq!(p.replicas.len(), 3);
        }
        let described = wait_cluster(&cluster, joined, "node 1 retired", |d| {
            d.nodes
                .iter()
                .any(|n| n.node_id == 1 && n.decommissioned && !n.controller_voter)
        })
        .await;
        assert_eq!(
            described
                .nodes
                .iter()
                .filter(|n| n.controller_voter)
                .count(),
            3,
            "another node votes instead: {described:?}"
        );
        load.progress(100, "decommissioning node 1").await;
        let attempts = load.finish().await;
        check_history(&cluster, "moves", 2, attempts).await;
    });
    // The decommissioned node deleted the replicas it no longer holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.nodes[0].data_dir().join("moves").exists() {
        assert!(Instant::now() < deadline, "node 1 kept the moved replicas");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn one_record_batch(value: &[u8]) -> bytes::Bytes {
    let mut b = sluice_storage::BatchBuilder::new(sluice_storage::Compression::None);
    b.push(sluice_storage::batch::NewRecord {
        key: None,
        value: Some(value),
        timestamp: 1,
        headers: &[],
    });
    b.build().expect("batch")
}

#[test]
fn acks_leader_answers_at_the_leaders_fsync_and_acks_all_at_the_quorum() {
    let cluster = TestCluster::start(3);
    let rt = runtime();
    let leader = rt.block_on(async {
        let client = connect_any(&cluster).await;
        client
            .admin()
            .create_topic("acks", 1, 3, Default::default())
            .await
            .expect("create");
        leader_of(&client, "acks", 0, None).await
    });
    let followers: Vec<usize> = (1..=3u64)
        .filter(|n| *n != leader)
        .map(node_index)
        .collect();
    for f in &followers {
        cluster.nodes[*f].signal("STOP");
    }
    let produce = |acks: sluice_protocol::v1::Acks, value: &'static [u8]| {
        let address = cluster.nodes[node_index(leader)].address.clone();
        async move {
            let mut raw = raw_producer(&address).await;
            let request = sluice_protocol::v1::ProduceRequest {
                topic: "acks".into(),
                partition: 0,
                batch: one_record_batch(value),
                acks: acks as i32,
                request_id: 1,
            };
            tokio::time::timeout(Duration::from_secs(3), raw.produce(request)).await
        }
    };
    rt.block_on(async {
        // No follower can answer: only the leader's own fsync is behind this answer.
        let answered = produce(sluice_protocol::v1::Acks::Leader, b"leader-only")
            .await
            .expect("acks=leader is answered without a quorum")
            .expect("produced");
        assert_eq!(answered.into_inner().base_offset, 0);
        let waiting = produce(sluice_protocol::v1::Acks::All, b"needs-a-quorum").await;
        assert!(waiting.is_err(), "acks=all waits for a quorum: {waiting:?}");
    });
    for f in &followers {
        cluster.nodes[*f].signal("CONT");
    }
    // The resumed followers may elect one of themselves, whose log lacks both entries: an
    // acks=leader record is lost with its leader's log, as Kafka's acks=1. Either way the
    // partition goes on, and what it holds is in order.
    rt.block_on(async {
        let client = connect_any(&cluster).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        producer
            .send(ProducerRecord::new("acks").value("after"))
            .await
            .expect("acks=all after the followers are back");
        let end = leader_of(&client, "acks", 0, None).await;
        let end = local_view(&cluster, node_index(end), "acks")
            .await
            .high_watermark;
        let records = read_all(&client, "acks", 1, end as usize, Duration::from_secs(30)).await;
        let values: Vec<&[u8]> = records
            .iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(values.last(), Some(&&b"after"[..]), "{values:?}");
        let expected: [&[u8]; 3] = [b"leader-only", b"needs-a-quorum", b"after"];
        assert!(
            values.iter().all(|v| expected.contains(v)) && values.len() <= 3,
            "{values:?}"
        );
    });
}

/// A tmpfs of `bytes` mounted over `dir` (holding a copy of what `dir` held), unmounted
/// when dropped; `None` where mounting is not allowed (not root).
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount_over(dir: &std::path::Path, bytes: u64) -> Option<Self> {
        let saved = dir.with_extension("saved");
        let run = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .is_ok_and(|s| s.success())
        };
        let (d, s) = (dir.to_str()?, saved.to_str()?);
        if !run(&["cp", "-a", d, s]) {
            return None;
        }
        let size = format!("size={bytes}");
        if !run(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", d]) {
            return None;
        }
        let disk = Self {
            dir: dir.to_path_buf(),
        };
        let copied = run(&["sh", "-c", &format!("cp -a {s}/. {d}/ && rm -rf {s}")]);
        copied.then_some(disk)
    }

    /// Fills all but `spare` bytes with a file; returns its path.
    fn fill(&self, spare: u64) -> std::path::PathBuf {
        let filler = self.dir.join("filler");
        let stat = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .expect("df");
        let avail: u64 = String::from_utf8_lossy(&stat.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("available bytes");
        let size = avail.saturating_sub(spare);
        let ok = std::process::Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&filler)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "fallocate {size}");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_follower_with_a_full_disk_refuses_appends_and_catches_up_once_space_is_back() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let (leader, follower) = rt.block_on(async {
        let client = connect_any(&cluster).await;
        let configs = [("segment.bytes", "1048576")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        client
            .admin()
            .create_topic("full", 1, 3, configs)
            .await
            .expect("create");
        let leader = leader_of(&client, "full", 0, None).await;
        (
            leader,
            (1..=3u64).find(|n| *n != leader).expect("a follower"),
        )
    });
    let f = node_index(follower);
    assert!(cluster.nodes[f].stop());
    let dir = cluster.nodes[f].data_dir().to_path_buf();
    let Some(disk) = SmallDisk::mount_over(&dir, 64 << 20) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    cluster.nodes[f].restart();
    let filler = disk.fill(256 << 10);
    rt.block_on(async {
        let client = connect(&cluster, node_index(leader)).await;
        sluice_tests::produce_copies(&client, "full", vec![b'y'; 1000], 4000)
            .await
            .expect("the other two replicas commit without the full one");
    });
    // The follower says when it refuses (a group stopped by a storage error would not).
    let log_file = cluster.nodes[f].data_dir().with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_file)
        .unwrap_or_default()
        .contains("refused appends: no room for them")
    {
        assert!(
            Instant::now() < deadline,
            "the full follower never refused an append"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ours = replica_log(&cluster.nodes[f], "full", 0).len();
    let theirs = replica_log(&cluster.nodes[node_index(leader)], "full", 0).len();
    assert!(
        ours < theirs,
        "the full follower is behind: {ours} of {theirs} bytes"
    );
    std::fs::remove_file(&filler).expect("free the space");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ours = replica_log(&cluster.nodes[f], "full", 0);
        let theirs = replica_log(&cluster.nodes[node_index(leader)], "full", 0);
        if ours == theirs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's group did not catch up once space was back: {} of {} bytes",
            ours.len(),
            theirs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.nodes[f].kill9();
    drop(disk);
}

#[test]
fn a_whole_cluster_restarts_at_once_and_keeps_its_records() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let attempts = rt.block_on(async {
        let load = Load::on_new_topic(&cluster, "restart", 3, 300).await;
        load.finish().await
    });
    for node in &mut cluster.nodes {
        assert!(node.stop());
    }
    cluster.restart_all();
    rt.block_on(async {
        wait_cluster(&cluster, 2, "every node back", |d| {
            d.nodes.len() == 3 && d.nodes.iter().all(|n| n.alive) && d.controller != 0
        })
        .await;
        check_history(&cluster, "restart", 3, attempts).await;
    });
}

/// Offset → (key, value) of every record one replica holds.
fn replica_records(
    node: &TestBroker,
    topic: &str,
) -> std::collections::BTreeMap<u64, (Option<bytes::Bytes>, Option<bytes::Bytes>)> {
    let bytes = replica_log(node, topic, 0);
    let mut records = std::collections::BTreeMap::new();
    let mut at = 0usize;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        let Ok(header) = sluice_storage::BatchHeader::decode(rest) else {
            break;
        };
        let len = header.batch_len() as usize;
        let batch = bytes::Bytes::copy_from_slice(&rest[..len.min(rest.len())]);
        if let Ok(batch) = sluice_storage::Batch::decode(batch)
            && !batch.header().attributes.is_control()
            && let Ok(list) = batch.records_vec()
        {
            for r in list {
                records.insert(r.offset, (r.key, r.value));
            }
        }
        at += len.max(1);
    }
    records
}

/// Key → the offset of its newest record.
fn newest_per_key(
    records: &std::collections::BTreeMap<u64, (Option<bytes::Bytes>, Option<bytes::Bytes>)>,
) -> std::collections::BTreeMap<Option<bytes::Bytes>, u64> {
    records
        .iter()
        .map(|(offset, (key, _))| (key.clone(), *offset))
        .collect()
}

#[test]
fn a_replica_added_after_compaction_takes_the_leaders_offsets() {
    let cluster = TestCluster::start_with(3, &["--housekeeping-interval-secs", "1"]);
    let rt = runtime();
    rt.block_on(async {
        let client = connect_any(&cluster).await;
        let configs = [
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let created = client
            .admin()
            .create_topic("keyed", 1, 1, configs)
            .await
            .expect("create");
        let first = created.partitions[0].replicas[0];
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        // Small batches, written until the cleaner (every second) has shrunk the log, as
        // in the single-node compaction test; bounded.
        let value = vec![b'k'; 200];
        let mut sent = 0u64;
        let mut compacted = false;
        for _ in 0..200 {
            for k in 0..50 {
                producer
                    .send(
                        ProducerRecord::new("keyed")
                            .key(format!("key-{k}"))
                            .value(value.clone()),
                    )
                    .await
                    .expect("send");
                sent += 1;
            }
            let size = local_view(&cluster, node_index(first), "keyed")
                .await
                .size_bytes;
            if sent > 1000 && size < sent * 270 / 2 {
                compacted = true;
                break;
            }
        }
        assert!(compacted, "no compaction pass shrank the log ({sent} sent)");
        let second = (1..=3u64).find(|n| *n != first).expect("another node");
        client
            .admin()
            .reassign_partition("keyed", 0, &[first, second])
            .await
            .expect("add a replica");
        wait_moved(&client, "keyed").await;
        // The new replica got the leader's (compacted) batches at their offsets. Each replica
        // then compacts on its own, where its own segment boundaries fall, so the bytes may
        // part; what must hold: no offset with two records, and the same newest record per
        // key on both.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let theirs = replica_records(&cluster.nodes[node_index(first)], "keyed");
            let ours = replica_records(&cluster.nodes[node_index(second)], "keyed");
            let disagree = ours
                .iter()
                .filter(|(offset, record)| theirs.get(*offset).is_some_and(|r| r != *record))
                .count();
            assert_eq!(disagree, 0, "an offset holds two records");
            if !ours.is_empty() && newest_per_key(&ours) == newest_per_key(&theirs) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new replica's newest records differ: {} of {} offsets",
                ours.len(),
                theirs.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
