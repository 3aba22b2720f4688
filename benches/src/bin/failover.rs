//! Failover: on a 3-node loopback cluster under idempotent `acks=all` load, the time from
//! `kill -9` of a partition's leader to the next acknowledged produce on that partition,
//! over `FAILOVER_KILLS` kills (default 20), with the broker's default Raft timing.
//!
//! ```sh
//! cargo build --release --bins
//! cargo run --release -p sluice-benches --bin failover
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_tests::TestCluster;

/// Acknowledged produces so far, and when the last one came.
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    stop: AtomicBool,
}

async fn leader_of(client: &Client, topic: &str) -> Option<u64> {
    let described = client.admin().describe_topic(topic).await.ok()?;
    described
        .partitions
        .first()
        .map(|p| p.leader)
        .filter(|l| *l != 0)
}

/// Waits until `n` more produces are acknowledged; returns how long that took.
async fn more_acks(progress: &Progress, n: u64) -> Duration {
    let started = Instant::now();
    let target = progress.acked.load(Ordering::Relaxed) + n;
    while progress.acked.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // FAILOVER_ARGS="--raft-election-timeout-ms 300" tries other timing.
    let args = std::env::var("FAILOVER_ARGS").unwrap_or_default();
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut cluster = TestCluster::start_with(3, &args);
    let progress = Arc::new(Progress::default());
    runtime.block_on(async {
        let client = Client::connect(cluster.addresses()).await.expect("connect");
        client
            .admin()
            .create_topic("failover", 1, 3, Default::default())
            .await
            .expect("create");
        // The SDK's own retry pacing (what a user sees), only never giving up.
        let config = ProducerConfig {
            retries: 100_000,
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await.expect("producer");
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !progress.stop.load(Ordering::Relaxed) {
                let record = ProducerRecord::new("failover").value(format!("r{i}"));
                if producer.send(record).await.is_ok() {
                    progress.acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    });
    runtime.block_on(more_acks(&progress, 200));
    let mut samples = Vec::with_capacity(kills);
    for round in 0..kills {
        let leader = runtime.block_on(async {
            let client = Client::connect(cluster.addresses()).await.expect("connect");
            loop {
                if let Some(leader) = leader_of(&client, "failover").await {
                    return leader;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let index = leader as usize - 1;
        let survivor = cluster.nodes[(index + 1) % 3].address.clone();
        cluster.nodes[index].kill9();
        let killed = Instant::now();
        let (took, elected) = runtime.block_on(async {
            // When a surviving replica first names a new leader, beside the next ack.
            let watch = async {
                let client = Client::connect([survivor.as_str()]).await.ok()?;
                loop {
                    if let Some(l) = leader_of(&client, "failover").await
                        && l != leader
                    {
                        return Some(killed.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::join!(more_acks(&progress, 1), watch)
        });
        println!(
            "kill {round:>2}: leader {leader}, new leader named after {elected:?}, next ack after {took:?}"
        );
        samples.push(took);
        cluster.nodes[index].restart();
        runtime.block_on(more_acks(&progress, 200));
    }
    progress.stop.store(true, Ordering::Relaxed);
    // FAILOVER_LOGS=DIR keeps the nodes' logs (with SLUICE_TEST_LOG=info: the elections).
    if let Some(dir) = std::env::var_os("FAILOVER_LOGS") {
        for node in &cluster.nodes {
            let log = node.data_dir().with_extension("log");
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(&log, std::path::Path::new(&dir).join(name));
            }
        }
    }
    samples.sort();
    println!(
        "failover over {kills} kills (flags: {args:?}): p50 {:?} p99 {:?} max {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}
