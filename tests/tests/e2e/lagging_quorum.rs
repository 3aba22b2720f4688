//! T05 on real processes, the vote: a replica whose log was cut short on disk must not help
//! elect a lagging peer as if it were whole (Jepsen's 2025 NATS finding). The partition's
//! leader and one follower acknowledge records while the other follower is paused; the
//! acknowledging follower is stopped and its segment cut back to before those records; the
//! leader dies; the paused follower resumes beside the cut one. Neither holds the records,
//! so any leader the two elect loses them. The correct broker elects none until the old
//! leader is back; `sluiced-canary` with `cut-log-votes` (a broker that trusts the cut log)
//! must be caught losing them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::logcheck::Report;
use sluice_tests::{Program, TestCluster};

use crate::cluster::{Load, connect_any, history_report, node_index};
use crate::runtime;

const TOPIC: &str = "lagging";

/// Each segment file of the partition's replica in `data_dir` and where its written bytes
/// end (segments are preallocated with zeroes).
fn segment_ends(data_dir: &Path) -> HashMap<PathBuf, u64> {
    let dir = data_dir.join(TOPIC).join("0");
    let entries = std::fs::read_dir(&dir).expect("partition dir");
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x == "log"))
        .map(|f| {
            let bytes = std::fs::read(&f).expect("segment");
            let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            (f, end as u64)
        })
        .collect()
}

/// Cuts the replica's segments back to `ends`: segments rolled since are removed with their
/// indexes.
fn cut_back(data_dir: &Path, ends: &HashMap<PathBuf, u64>) {
    for (segment, _) in segment_ends(data_dir) {
        match ends.get(&segment) {
            Some(end) => std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .and_then(|f| f.set_len(*end))
                .expect("cut the segment"),
            None => {
                for ext in ["log", "index", "timeindex"] {
                    let _ = std::fs::remove_file(segment.with_extension(ext));
                }
            }
        }
    }
}

/// The leader id of partition 0 as any live node reports it, if one other than `except`
/// appears within `wait`.
async fn new_leader(cluster: &TestCluster, except: u64, wait: Duration) -> Option<u64> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let client = connect_any(cluster).await;
        if let Ok(t) = client.admin().describe_topic(TOPIC).await
            && let Some(p) = t.partitions.first()
            && p.leader != 0
            && p.leader != except
        {
            return Some(p.leader);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Runs the scenario with the cut follower running `program` (or `sluiced`) and reports the
/// history and any leader the two survivors elected while the old leader was down.
fn cut_replica_beside_a_lagging_one(program: Option<Program>) -> (Report, Option<u64>) {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let load = rt.block_on(Load::on_new_topic(&cluster, TOPIC, 1, 100));
    let leader = rt.block_on(async {
        crate::cluster::leader_of(&connect_any(&cluster).await, TOPIC, 0, None).await
    });
    let others: Vec<usize> = (0..3).filter(|i| *i != node_index(leader)).collect();
    let (lagging, cut) = (others[0], others[1]);
    cluster.nodes[lagging].signal("STOP");
    let ends = segment_ends(cluster.nodes[cut].data_dir());
    // Acknowledged by the leader and the cut follower only.
    rt.block_on(load.progress(200, "pausing a follower"));
    cluster.nodes[cut].stop();
    cut_back(cluster.nodes[cut].data_dir(), &ends);
    cluster.nodes[node_index(leader)].kill9();
    cluster.nodes[lagging].signal("CONT");
    if let Some(program) = program {
        cluster.nodes[cut].run_as(program);
    }
    cluster.nodes[cut].restart();
    // Past several election timeouts (0.5–0.6 s): a broker that lets the cut log vote
    // elects one of the two here.
    let elected = rt.block_on(new_leader(&cluster, leader, Duration::from_secs(6)));
    cluster.nodes[node_index(leader)].restart();
    rt.block_on(load.progress(100, "the old leader's return"));
    let report = rt.block_on(async {
        let attempts = load.finish().await;
        history_report(&cluster, TOPIC, 1, attempts).await
    });
    (report, elected)
}

#[test]
fn a_replica_cut_on_disk_never_votes_a_lagging_peer_in() {
    let (report, elected) = cut_replica_beside_a_lagging_one(None);
    assert!(report.is_clean(), "{report}");
    assert!(report.counts.0 > 0);
    assert_eq!(
        elected, None,
        "a leader without the acknowledged records was elected"
    );
}

/// The negative control: the same scenario with a cut follower that trusts its log.
#[test]
fn the_lagging_quorum_test_catches_a_broker_whose_cut_log_votes() {
    let canary = crate::canary_program("cut-log-votes");
    let (report, elected) = cut_replica_beside_a_lagging_one(Some(canary));
    eprintln!("canary: elected {elected:?}; {report}");
    assert!(
        elected.is_some() && !report.lost.is_empty(),
        "the canary went unnoticed: elected {elected:?}; {report}"
    );
}
