//! T13: a node replaced by an empty disk at the same address. Raft counts votes by node
//! id, so the empty node must never take its old place: with the only other node that
//! holds the acknowledged records down and the third node lagging, an empty node 3 and
//! the lagging one would elect a leader without those records. The empty disk is refused
//! under its old id, joins as a new node, the old id is decommissioned, and nothing
//! acknowledged is lost.

use std::collections::HashSet;
use std::time::Duration;

use sluice_client::Client;
use sluice_tests::{TestBroker, TestCluster, free_port};

use crate::cluster::{leader_of, node_index, wait_cluster, wait_moved};
use crate::{produce_values, read_all, rf3_topic, runtime};

const TOPIC: &str = "wiped";

#[test]
fn an_empty_disk_never_takes_a_nodes_place_and_joins_as_a_new_node() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let leader = rt.block_on(async {
        let client = rf3_topic(&cluster, TOPIC, 1).await;
        produce_values(&client, TOPIC, "before", 20).await;
        node_index(leader_of(&client, TOPIC, 0, None).await)
    });
    let wiped = (leader + 1) % 3;
    let lagging = (leader + 2) % 3;
    // The lagging node misses everything from here on; the leader and `wiped` commit it.
    cluster.nodes[lagging].signal("STOP");
    rt.block_on(async {
        let client = Client::connect([cluster.nodes[leader].address.as_str()])
            .await
            .expect("connect");
        produce_values(&client, TOPIC, "acked", 200).await;
    });
    cluster.nodes[wiped].kill9();
    let disk = cluster.nodes[wiped].data_dir().to_path_buf();
    std::fs::remove_dir_all(&disk).expect("wipe");
    cluster.nodes[leader].kill9();
    cluster.nodes[lagging].signal("CONT");

    // The empty disk under its old id: the lagging node (alive, started) refuses it, and
    // it stays empty, so a second try is refused too.
    let old_args: Vec<String> = cluster.nodes[wiped].extra_args().to_vec();
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    for attempt in 0..2 {
        let (code, log) = sluice_tests::start_expecting_refusal(&disk, &old_args);
        assert_eq!(code, Some(1), "attempt {attempt} not refused: {log}");
        assert!(log.contains("its data is lost"), "attempt {attempt}: {log}");
    }

    cluster.nodes[leader].restart();
    let new_id = cluster.nodes.len() as u64 + 1;
    let seed = cluster.nodes[leader].raft_address().expect("raft address");
    let (listen, raft_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let secret = cluster.secret_file.display().to_string();
    let id = new_id.to_string();
    let new_args = [
        "--node-id",
        &id,
        "--listen",
        &listen,
        "--raft-listen",
        &raft_listen,
        "--join",
        &seed,
        "--cluster-secret-file",
        &secret,
    ];
    cluster.nodes.push(TestBroker::start_in(&disk, &new_args));
    let old_id = wiped as u64 + 1;
    rt.block_on(async {
        wait_cluster(&cluster, leader, "the disk joined as a new node", |d| {
            d.nodes.iter().any(|n| n.node_id == new_id && n.alive)
        })
        .await;
        let client = Client::connect([cluster.nodes[leader].address.as_str()])
            .await
            .expect("connect");
        client
            .admin()
            .decommission_node(old_id)
            .await
            .expect("decommission the lost node");
        let moved = wait_moved(&client, TOPIC).await;
        let replicas = &moved.partitions[0].replicas;
        assert!(!replicas.contains(&old_id), "{moved:?}");
        assert!(replicas.contains(&new_id), "{moved:?}");
        check_every_value_once(&client).await;
    });
}

/// Every value produced is read back exactly once.
async fn check_every_value_once(client: &Client) {
    let high = crate::high_watermark(client, TOPIC, 0).await;
    let records = read_all(client, TOPIC, 1, high as usize, Duration::from_secs(60)).await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let distinct: HashSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "duplicates in {values:?}");
    for (prefix, n) in [("before", 20), ("acked", 200)] {
        for i in 0..n {
            let value = format!("{prefix}-{i}");
            assert!(distinct.contains(&value), "{value} lost");
        }
    }
}
