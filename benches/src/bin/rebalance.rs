//! Consumer groups: rebalance time (a member joins or leaves → every partition owned
//! again, as the coordinator reports it) for 6 and 60 partitions, and a 3-member group's
//! consume throughput against one plain consumer of the same topic, in the same run.
//!
//! ```sh
//! cargo build --release --bins
//! cargo run --release -p sluice-benches --bin rebalance
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_client::{
    AutoOffsetReset, Client, ConsumerConfig, GroupConsumer, Offset, ProducerConfig, ProducerRecord,
};
use sluice_tests::TestBroker;

/// Rounds of join and leave per partition count.
const ROUNDS: usize = 5;

fn config() -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        session_timeout: Duration::from_secs(10),
        ..ConsumerConfig::default()
    }
}

/// Waits until the group is stable with `members` members owning all `partitions`.
async fn settled(client: &Client, group: &str, members: usize, partitions: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(d) = client.admin().describe_group(group).await {
            let owned: usize = d.members.iter().map(|m| m.assignment.len()).sum();
            if d.state == "stable" && d.members.len() == members && owned == partitions {
                return Instant::now();
            }
        }
        assert!(Instant::now() < deadline, "{group} never settled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn join(client: &Client, group: &str, topic: &str) -> GroupConsumer {
    client
        .consumer(config())
        .subscribe(group, &[topic])
        .expect("subscribe")
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    (v[v.len() / 2], v[v.len() - 1])
}

async fn rebalance_times(client: &Client, partitions: u32) -> serde_json::Value {
    let topic = format!("rebalance-{partitions}");
    client
        .admin()
        .create_topic(&topic, partitions, 1, Default::default())
        .await
        .expect("create");
    let group = format!("g-{partitions}");
    let _a = join(client, &group, &topic);
    let _b = join(client, &group, &topic);
    settled(client, &group, 2, partitions as usize).await;
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let c = join(client, &group, &topic);
        joins.push(settled(client, &group, 3, partitions as usize).await - started);
        let started = Instant::now();
        c.close().await.expect("close");
        leaves.push(settled(client, &group, 2, partitions as usize).await - started);
    }
    let (join_p50, join_max) = median(joins);
    let (leave_p50, leave_max) = median(leaves);
    serde_json::json!({
        "partitions": partitions,
        "join_ms_p50": join_p50.as_secs_f64() * 1e3,
        "join_ms_max": join_max.as_secs_f64() * 1e3,
        "leave_ms_p50": leave_p50.as_secs_f64() * 1e3,
        "leave_ms_max": leave_max.as_secs_f64() * 1e3,
    })
}

/// Seconds for `members` members of a fresh group to consume `total` records of `topic`,
/// from the first record (joining is what the rebalance figures measure).
async fn group_consume(client: &Client, topic: &str, members: usize, total: u64) -> f64 {
    let group = format!("tput-{members}");
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..members {
        let mut member = join(client, &group, topic);
        let count = Arc::clone(&count);
        tasks.push(tokio::spawn(async move {
            while count.load(Ordering::Relaxed) < total {
                match tokio::time::timeout(Duration::from_millis(100), member.next()).await {
                    Ok(Some(r)) => {
                        r.expect("record");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            member.close().await.expect("close");
        }));
    }
    while count.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    elapsed
}

/// Seconds for one plain consumer assigned every partition to read `total` records, from
/// the first record.
async fn plain_consume(client: &Client, topic: &str, partitions: u32, total: u64) -> f64 {
    let mut consumer = client.consumer(config());
    for p in 0..partitions {
        consumer
            .assign(topic, p, Offset::Earliest)
            .await
            .expect("assign");
    }
    let mut stream = consumer.into_stream();
    stream.next().await.expect("open").expect("record");
    let started = Instant::now();
    let mut n = 1;
    while n < total {
        stream.next().await.expect("open").expect("record");
        n += 1;
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = TestBroker::start();
    runtime.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let mut results = Vec::new();
        for partitions in [6, 60] {
            results.push(rebalance_times(&client, partitions).await);
        }
        let total: u64 = std::env::var("REBALANCE_RECORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000_000);
        client
            .admin()
            .create_topic("tput", 6, 1, Default::default())
            .await
            .expect("create");
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let value = vec![b'x'; 100];
        let mut sends = Vec::new();
        for i in 0..total {
            sends.push(
                producer.send(
                    ProducerRecord::new("tput")
                        .key(format!("k{i}"))
                        .value(value.clone()),
                ),
            );
            if sends.len() == 10_000 {
                for s in futures::future::join_all(sends.drain(..)).await {
                    s.expect("acked");
                }
            }
        }
        for s in futures::future::join_all(sends).await {
            s.expect("acked");
        }
        let plain = plain_consume(&client, "tput", 6, total).await;
        let one = group_consume(&client, "tput", 1, total).await;
        let three = group_consume(&client, "tput", 3, total).await;
        let report = serde_json::json!({
            "rebalance": results,
            "throughput": {
                "records": total,
                "record_bytes": 100,
                "plain_consumer_records_per_s": total as f64 / plain,
                "group_of_1_vs_plain": plain / one,
                "group_of_3_vs_plain": plain / three,
            },
        });
        println!("{report}");
    });
}
