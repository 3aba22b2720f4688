//! Restart to serving after `kill -9` (TESTPLAN T06): a release `sluiced` holding
//! `RESTART_BYTES` (default 1 GiB) in `RESTART_PARTITIONS` (default 50) partitions is killed
//! and started again; the time until it says it is ready (every local partition serves) is
//! reported against the same run's baseline: reading and CRC-ing every byte of its data
//! directory once, the least a restart that re-read everything would cost.
//!
//! `cargo build --release --bins && target/release/restart`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice_benches::raw_producer;
use sluice_client::Client;
use sluice_tests::TestBroker;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads and CRCs the first `prefix` bytes of every segment file under `dir` (the written
/// part; the rest is reserved space); returns the bytes read.
fn read_segments(dir: &Path, prefix: u64) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += read_segments(&path, prefix);
        } else if path.extension().is_some_and(|e| e == "log")
            && let Ok(file) = std::fs::File::open(&path)
        {
            let mut bytes = Vec::new();
            if std::io::Read::read_to_end(&mut std::io::Read::take(file, prefix), &mut bytes)
                .is_ok()
            {
                std::hint::black_box(crc32fast::hash(&bytes));
                total += bytes.len() as u64;
            }
        }
    }
    total
}

/// Drops the page cache (root only; a no-op elsewhere), so a measurement starts cold, as
/// after a power cut.
fn drop_page_cache() -> bool {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

async fn fill(address: &str, topic: &str, partitions: u32, bytes_each: u64) -> u64 {
    let batch = sluice_benches::workload::batch_bytes_of(1 << 20);
    let records = sluice_storage::BatchHeader::decode(&batch)
        .map(|h| u64::from(h.record_count))
        .unwrap_or(0);
    let batches = bytes_each.div_ceil(batch.len() as u64);
    let mut tasks = Vec::new();
    for partition in 0..partitions {
        let mut client = raw_producer::connect(address).await;
        let (batch, topic) = (batch.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..batches {
                let request = raw_producer::request(&topic, partition, batch.clone());
                client.produce(request).await.expect("produce");
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer task");
    }
    records * batches * u64::from(partitions)
}

async fn high_watermarks(address: &str, topic: &str) -> u64 {
    let client = Client::connect([address]).await.expect("connect");
    let topic = client
        .admin()
        .describe_topic(topic)
        .await
        .expect("describe");
    topic.partitions.iter().map(|p| p.high_watermark).sum()
}

fn main() {
    let partitions = env_or("RESTART_PARTITIONS", 50) as u32;
    let total = env_or("RESTART_BYTES", 1 << 30);
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let mut broker = TestBroker::start();
    let topic = "restart";
    let records = runtime.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let configs = [("max.message.bytes".to_string(), (8 << 20).to_string())];
        client
            .admin()
            .create_topic(topic, partitions, 1, configs.into_iter().collect())
            .await
            .expect("create");
        let filled = Instant::now();
        let records = fill(
            &broker.address,
            topic,
            partitions,
            total / u64::from(partitions),
        )
        .await;
        println!(
            "filled {} MiB in {partitions} partitions ({records} records) in {:.1} s",
            total >> 20,
            filled.elapsed().as_secs_f64()
        );
        records
    });
    broker.kill9();
    // Warm: the process died, the machine did not (page cache intact). Cold: after dropping
    // the page cache, as after a power cut (root only).
    for cold in [false, true] {
        let label = if cold { "cold" } else { "warm" };
        if cold && !drop_page_cache() {
            println!("{label}: cannot drop the page cache here; skipped");
            continue;
        }
        let read_start = Instant::now();
        let read = read_segments(broker.data_dir(), total / u64::from(partitions) + (4 << 20));
        let baseline = read_start.elapsed();
        if cold {
            drop_page_cache();
        }
        let restart_start = Instant::now();
        broker.restart();
        let restart = restart_start.elapsed();
        let served = runtime.block_on(high_watermarks(&broker.address, topic));
        assert_eq!(
            served, records,
            "every acknowledged record is served after the restart"
        );
        println!(
            "{label}: baseline read and CRC of {} MiB of segments {:.2} s; restart after kill -9 to serving {:.2} s (ratio {:.2}x)",
            read >> 20,
            baseline.as_secs_f64(),
            restart.as_secs_f64(),
            restart.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
        );
        broker.kill9();
    }
    broker.kill9();
    sluice_benches::cleanup::remove_dir_gently(broker.data_dir());
}
