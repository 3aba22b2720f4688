//! Fan-out (issue 18): one producer at a fixed rate and 1, 4 and 16 consumers of the same
//! partition at its head, each on its own connection. Reports each consumer's rate and the
//! broker's CPU, in total and per consumer, against the same broker with the producer alone.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/fanout                 # 20 MB/s of 1 KiB records, 10 s per step
//! FANOUT_RATE_MB=50 FANOUT_SECONDS=20 target/release/fanout
//! FANOUT_STEPS="0 16" target/release/fanout   # only these consumer counts
//! FANOUT_GROUPS=1 target/release/fanout        # consumers as group members, a group each
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::StreamExt;
use sluice_client::{
    AutoOffsetReset, Client, ClientError, ConsumerConfig, ConsumerRecord, Offset, ProducerConfig,
    ProducerRecord,
};
use sluice_tests::TestBroker;

const TOPIC: &str = "fanout";
const RECORD_BYTES: usize = 1024;
/// How often the producer sends its share of the rate.
const TICK: Duration = Duration::from_millis(10);
/// Time for consumers to subscribe and the rate to settle before measuring.
const WARMUP: Duration = Duration::from_secs(2);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rate_mb = env_u64("FANOUT_RATE_MB", 20);
    let seconds = env_u64("FANOUT_SECONDS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = TestBroker::start_with(&[]);
    runtime.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        client
            .admin()
            .create_topic(TOPIC, 1, 1, Default::default())
            .await
            .expect("create");
    });
    // FANOUT_GROUPS=1: each consumer is the one member of its own consumer group (offsets
    // auto-committed, heartbeats), instead of a consumer assigned the partition.
    let groups = env_u64("FANOUT_GROUPS", 0) != 0;
    println!(
        "producer: {rate_mb} MB/s of {RECORD_BYTES} B records; {seconds} s per step; consumers {}",
        if groups { "in groups" } else { "assigned" }
    );
    let mut alone = None;
    // FANOUT_STEPS="0 16": only these consumer counts (e.g. to profile one).
    let steps: Vec<usize> = std::env::var("FANOUT_STEPS")
        .ok()
        .map(|v| {
            v.split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![0, 1, 4, 16]);
    for consumers in steps {
        let step = runtime.block_on(run_step(&broker, rate_mb, consumers, seconds, groups));
        let cpu = step.broker_cores;
        let base: f64 = *alone.get_or_insert(cpu);
        let rates: Vec<String> = step
            .consumer_mb_s
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect();
        println!(
            "{consumers:>2} consumers: produced {:.1} MB/s, broker {cpu:.3} cores ({:.3} above the producer alone, {:.4} per consumer); consumer MB/s [{}]",
            step.produced_mb_s,
            cpu - base,
            if consumers == 0 {
                0.0
            } else {
                (cpu - base) / consumers as f64
            },
            rates.join(", ")
        );
    }
}

/// What one step measured.
struct Step {
    produced_mb_s: f64,
    broker_cores: f64,
    consumer_mb_s: Vec<f64>,
}

async fn run_step(
    broker: &TestBroker,
    rate_mb: u64,
    consumers: usize,
    seconds: u64,
    groups: bool,
) -> Step {
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..consumers {
        let counter = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&counter));
        let group = groups.then(|| format!("fanout-{consumers}-{i}"));
        tasks.push(tokio::spawn(consume(
            broker.address.clone(),
            group,
            counter,
            Arc::clone(&stop),
        )));
    }
    let producing = tokio::spawn(produce(
        broker.address.clone(),
        rate_mb,
        WARMUP + Duration::from_secs(seconds),
    ));
    tokio::time::sleep(WARMUP).await;
    let (cpu_before, started) = (broker.cpu_time(), Instant::now());
    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let produced = producing.await.expect("producer");
    let elapsed = started.elapsed().as_secs_f64();
    let broker_cores = (broker.cpu_time() - cpu_before).as_secs_f64() / elapsed;
    let consumer_mb_s = counters
        .iter()
        .zip(before)
        .map(|(c, b)| (c.load(Ordering::Relaxed) - b) as f64 / elapsed / 1e6)
        .collect();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    Step {
        produced_mb_s: produced as f64 / elapsed / 1e6,
        broker_cores,
        consumer_mb_s,
    }
}

/// Produces `rate_mb` MB/s for `duration`; the bytes produced after the warm-up.
async fn produce(address: String, rate_mb: u64, duration: Duration) -> u64 {
    let client = Client::connect([address.as_str()]).await.expect("connect");
    let producer = client
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    let value = bytes::Bytes::from(vec![b'x'; RECORD_BYTES]);
    let per_tick =
        (rate_mb * 1_000_000 / RECORD_BYTES as u64 * TICK.as_millis() as u64 / 1000).max(1);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let mut measured = 0u64;
    while started.elapsed() < duration {
        ticks.tick().await;
        for _ in 0..per_tick {
            producer
                .enqueue(ProducerRecord::new(TOPIC).value(value.clone()))
                .await
                .expect("queued");
        }
        if started.elapsed() >= WARMUP {
            measured += per_tick * RECORD_BYTES as u64;
        }
    }
    producer.flush().await.expect("acknowledged");
    measured
}

/// Reads from the head until stopped, counting value bytes: assigned the partition, or as
/// the member of `group`.
async fn consume(
    address: String,
    group: Option<String>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let client = Client::connect([address.as_str()]).await.expect("connect");
    let config = ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Latest,
        ..ConsumerConfig::default()
    };
    let mut stream: std::pin::Pin<
        Box<dyn Stream<Item = Result<ConsumerRecord, ClientError>> + Send>,
    > = match group {
        Some(group) => Box::pin(
            client
                .consumer(config)
                .subscribe(&group, &[TOPIC])
                .expect("subscribe"),
        ),
        None => {
            let mut consumer = client.consumer(config);
            consumer
                .assign(TOPIC, 0, Offset::Latest)
                .await
                .expect("assign");
            Box::pin(consumer.into_stream())
        }
    };
    while let Some(record) = stream.next().await {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let record = record.expect("a record");
        let n = record.value.as_ref().map_or(0, |v| v.len() as u64);
        bytes.fetch_add(n, Ordering::Relaxed);
    }
}
