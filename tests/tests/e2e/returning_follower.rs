//! A follower cut off from its peers, and back: it must not unseat the leader (the log half
//! of pre-vote, `raft::standing`). Three real `sluiced` processes in network namespaces of
//! their own (`sluice_tests::netns`); one follower of an RF 3 partition is isolated while
//! records are produced, so it falls behind, then the network heals. A replica that stood
//! for election while it could not win would come back with a higher term, and the leader
//! would step down at its first answer: the partition's leader and term must stay what they
//! were, and the follower must catch up. Needs `CAP_NET_ADMIN` (CI runs as root); without
//! it the test says so and passes. About 20 s per test.

use std::time::{Duration, Instant};

use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_tests::netns::Network;
use sluice_tests::{Program, TestCluster};

use crate::cluster::{connect_any, leader_of, node_index};
use crate::{describe_partition, runtime};

const TOPIC: &str = "returning";
/// How long the follower is cut off: several election timeouts and leader leases.
const CUT_OFF: Duration = Duration::from_secs(5);
/// Bound on the follower catching up after the heal.
const CATCH_UP: Duration = Duration::from_secs(30);

/// What was seen of the partition's leadership from the leader's own node.
struct Seen {
    /// (leader, term) before the cut.
    before: (u64, u64),
    /// Every different (leader, term) the leader's node showed from the cut on.
    changes: Vec<(u64, u64)>,
    /// Whether the follower was in sync again within [`CATCH_UP`].
    caught_up: bool,
}

/// The leader's (leader, term) and in-sync replicas, as its own node describes them.
async fn leadership(client: &Client) -> ((u64, u64), Vec<u64>) {
    let p = describe_partition(client, TOPIC, 0).await;
    ((p.leader, p.leader_term), p.in_sync_replicas)
}

/// Produces one record (acks=all) and notes the leadership; returns whether it changed.
async fn step(
    producer: &sluice_client::Producer,
    leader_client: &Client,
    seen: &mut Seen,
    n: u64,
) -> Vec<u64> {
    let record = ProducerRecord::new(TOPIC)
        .partition(0)
        .value(format!("r{n}"));
    // A failed send is no finding here; the leadership is.
    let _ = tokio::time::timeout(Duration::from_secs(3), producer.send(record)).await;
    let (now, in_sync) = leadership(leader_client).await;
    if seen.changes.last().copied().unwrap_or(seen.before) != now {
        seen.changes.push(now);
    }
    in_sync
}

/// The scenario; `follower_program` runs instead of `sluiced` on the follower to be cut off
/// (restarted as such before the cut).
fn cut_off_a_follower_and_heal(follower_program: Option<Program>) -> Option<Seen> {
    let network = match Network::create(3) {
        Ok(network) => network,
        Err(why) => {
            eprintln!("skipped: network namespaces cannot be made here ({why})");
            return None;
        }
    };
    let mut cluster = TestCluster::start_in_network(&network, 3, &[]);
    let rt = runtime();
    let leader = rt.block_on(async {
        let client = connect_any(&cluster).await;
        client
            .admin()
            .create_topic(TOPIC, 1, 3, Default::default())
            .await
            .expect("create");
        node_index(leader_of(&client, TOPIC, 0, None).await)
    });
    let follower = (leader + 1) % 3;
    if let Some(program) = follower_program {
        let node = &mut cluster.nodes[follower];
        assert!(node.stop(), "the follower did not stop cleanly");
        node.run_as(program);
        node.restart();
    }
    let leader_id = leader as u64 + 1;
    let follower_id = follower as u64 + 1;
    rt.block_on(async {
        let leader_client = Client::connect([cluster.nodes[leader].address.clone()])
            .await
            .expect("connect to the leader");
        let client = connect_any(&cluster).await;
        let config = ProducerConfig {
            request_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await.expect("producer");
        let mut seen = Seen {
            before: (0, 0),
            changes: Vec::new(),
            caught_up: false,
        };
        // Everyone in sync first, so the follower's lag comes from the cut alone.
        let start = Instant::now();
        let mut n = 0;
        loop {
            let ((l, term), in_sync) = leadership(&leader_client).await;
            if l == leader_id && in_sync.contains(&follower_id) {
                seen.before = (l, term);
                break;
            }
            assert!(start.elapsed() < CATCH_UP, "the follower never got in sync");
            let _ = step(&producer, &leader_client, &mut seen, n).await;
            n += 1;
        }
        network.isolate(follower);
        let cut = Instant::now();
        while cut.elapsed() < CUT_OFF {
            let _ = step(&producer, &leader_client, &mut seen, n).await;
            n += 1;
        }
        network.heal();
        let healed = Instant::now();
        while healed.elapsed() < CATCH_UP && !seen.caught_up {
            let in_sync = step(&producer, &leader_client, &mut seen, n).await;
            seen.caught_up = in_sync.contains(&follower_id);
            n += 1;
        }
        eprintln!(
            "leader {leader_id}, follower {follower_id}: {n} records; leadership {:?} then {:?}; caught up {} after healing",
            seen.before,
            seen.changes,
            seen.caught_up
        );
        Some(seen)
    })
}

#[test]
fn a_follower_cut_off_and_back_does_not_unseat_the_leader() {
    let Some(seen) = cut_off_a_follower_and_heal(None) else {
        return;
    };
    assert!(seen.before.1 > 0, "no leader term before the cut");
    assert!(
        seen.changes.is_empty(),
        "the leadership changed from {:?}: {:?}",
        seen.before,
        seen.changes
    );
    assert!(
        seen.caught_up,
        "the follower did not catch up after healing"
    );
}

/// The negative control: a follower that stands whenever its timer fires (openraft's own
/// behaviour) comes back with a higher term and unseats the leader.
#[test]
fn the_returning_follower_test_catches_a_replica_that_stands_without_asking() {
    let canary = crate::canary_program("stand-without-asking");
    let Some(seen) = cut_off_a_follower_and_heal(Some(canary)) else {
        return;
    };
    assert!(
        !seen.changes.is_empty(),
        "the canary went unnoticed: the leadership stayed {:?}",
        seen.before
    );
}
