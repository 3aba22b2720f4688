//! Load generator: produce throughput and latency, and end-to-end latency, through a real
//! `sluiced` (acks=all, fsync), on one partition and on six, next to the storage-only append
//! rate measured in the same run.
//!
//! ```sh
//! cargo build --release --bins
//! cargo run --release -p sluice-benches --bin loadgen -- [seconds]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sluice_benches::cleanup::remove_dir_gently;
use sluice_benches::latency_floor::{Floor, storage_latency_floor};
use sluice_benches::raw_producer;
use sluice_benches::samples::Samples;
use sluice_benches::workload::{RECORD_BYTES, batch_64k};
use sluice_client::{
    Client, ConsumerConfig, DeliveryQueue, Offset, ProducerConfig, ProducerRecord,
};
use sluice_storage::{Compression, Log, LogConfig, RaftPosition};
use sluice_tests::TestBroker;
use tokio::sync::Mutex;

/// Sending tasks, as many application tasks would have (`LOADGEN_SENDERS`).
const SENDERS_DEFAULT: usize = 256;
/// Sends each task keeps in flight (`LOADGEN_WINDOW`).
const WINDOW_DEFAULT: usize = 32;
/// How late past its first due send a paced task wakes (it then sends all that is due).
const PACE_SLACK: Duration = Duration::from_millis(3);
/// Seconds of each paced (latency) run unless `LOADGEN_PACED_SECONDS` says otherwise.
const PACED_SECONDS_DEFAULT: f64 = 30.0;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Records per second the storage engine alone sustains: 64 KiB batches of 1 KiB records,
/// synced every 1 MiB, as the broker's group commit would.
fn storage_only_rate(seconds: f64) -> f64 {
    let dir = tempfile::tempdir().expect("dir");
    let config = LogConfig {
        segment_bytes: 256 << 20,
        retention_bytes: Some(512 << 20),
        retention_ms: None,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(dir.path(), config).expect("open");
    let batches: Vec<_> = (0..16).map(|i| batch_64k(i, Compression::None)).collect();
    let records_per_batch = batches[0].header().record_count as u64;
    let start = Instant::now();
    let (mut records, mut index, mut since_sync) = (0u64, 0u64, 0usize);
    while start.elapsed().as_secs_f64() < seconds {
        let batch = &batches[index as usize % batches.len()];
        index += 1;
        log.append(
            batch,
            RaftPosition {
                term: 1,
                leader: 1,
                index,
            },
        )
        .expect("append");
        records += records_per_batch;
        since_sync += batch.len();
        if since_sync >= 1 << 20 {
            log.sync().expect("sync");
            since_sync = 0;
        }
        if log.segment_count() > 3 {
            log.apply_retention().expect("retention");
        }
    }
    log.sync().expect("sync");
    let rate = records as f64 / start.elapsed().as_secs_f64();
    drop(log);
    remove_dir_gently(dir.path());
    rate
}

struct RunResult {
    records_per_s: f64,
    /// Records the consumer received per second during the run (0 without a consumer).
    consumed_per_s: f64,
    produce_us: Vec<u64>,
    e2e_us: Vec<u64>,
}

/// Produces for `seconds` with `LOADGEN_SENDERS` tasks of `LOADGEN_WINDOW` sends, optionally paced to `rate`
/// records/s; with `consume`, a consumer reads everything and measures end-to-end latency.
async fn run(
    client: &Client,
    topic: &str,
    partitions: u32,
    seconds: f64,
    rate: Option<f64>,
    consume: bool,
) -> RunResult {
    let mut config = ProducerConfig::default();
    if let Some(ms) = std::env::var("LOADGEN_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.linger = Duration::from_millis(ms);
    }
    if let Some(bytes) = std::env::var("LOADGEN_BATCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_bytes = bytes;
    }
    let producer = client.producer(config).await.expect("producer");
    // LOADGEN_TRACE=FILE writes every paced record's send time and latency (µs) there.
    let trace_path = std::env::var_os("LOADGEN_TRACE").filter(|_| rate.is_some());
    let trace = trace_path.is_some();
    let epoch = Instant::now();
    let mut consumer = client.consumer(ConsumerConfig::default());
    for p in 0..partitions {
        consumer
            .assign(topic, p, Offset::Latest)
            .await
            .expect("assign");
    }
    let e2e = Arc::new(Mutex::new(Samples::new()));
    let consumed = Arc::new(AtomicU64::new(0));
    let reader = consume.then(|| {
        let (e2e, consumed) = (Arc::clone(&e2e), Arc::clone(&consumed));
        let mut stream = consumer.into_stream();
        tokio::spawn(async move {
            while let Some(Ok(record)) = stream.next().await {
                consumed.fetch_add(1, Ordering::Relaxed);
                if let Some(key) = record.key.as_ref().and_then(|v| v.get(..8)) {
                    let sent = u64::from_le_bytes(key.try_into().unwrap_or_default());
                    let now = epoch.elapsed().as_micros() as u64;
                    e2e.lock().await.push(now.saturating_sub(sent));
                }
            }
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let mut senders = Vec::new();
    let start = Instant::now();
    let (senders_n, window_n) = (
        env_or("LOADGEN_SENDERS", SENDERS_DEFAULT),
        env_or("LOADGEN_WINDOW", WINDOW_DEFAULT),
    );
    for task in 0..senders_n {
        let (producer, stop, sent, topic) = (
            producer.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
            topic.to_string(),
        );
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            let mut latencies = Samples::new();
            // (send time since `epoch`, latency) of each answer, with LOADGEN_TRACE only.
            let mut traced = Samples::new();
            let interval = rate.map(|r| Duration::from_secs_f64(senders_n as f64 / r));
            let mut next = Instant::now()
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(task as f64 / senders_n as f64)
                });
            let mut i = 0u64;
            // Sends in the order they were made. Answers are read from the front without a
            // future per send, and each latency ends when the client library received the
            // answer, so neither the pacing nor this loop stretches it.
            let mut window: DeliveryQueue<Instant> = DeliveryQueue::new();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let answered = if stopping || window.len() >= window_n {
                    window.pop_oldest().await
                } else {
                    window.pop_answered()
                };
                if let Some(answered) = answered {
                    if answered.result.is_err() {
                        return (latencies, traced);
                    }
                    let latency = answered.answered_at.saturating_duration_since(answered.tag);
                    latencies.push(latency.as_micros() as u64);
                    if trace {
                        let sent = answered.tag.saturating_duration_since(epoch);
                        traced.push((sent.as_micros() as u64, latency.as_micros() as u64));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if stopping {
                    break;
                }
                if let Some(interval) = interval {
                    // A paced task sleeps only when its next send is not yet due, and then
                    // PACE_SLACK past it, sending everything due on waking: each of the 256
                    // tasks wakes a few hundred times a second instead of once per record,
                    // which left the load generator less CPU for the broker (two cores).
                    if next > Instant::now() {
                        tokio::time::sleep_until((next + PACE_SLACK).into()).await;
                    }
                    next += interval;
                }
                // The send time travels in the key (the value is a shared payload, as an
                // application that already holds its bytes would send).
                let sent_at = epoch.elapsed().as_micros() as u64;
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&sent_at.to_le_bytes());
                key[8..].copy_from_slice(&(((task as u64) << 40) | i).to_le_bytes());
                i += 1;
                let record = ProducerRecord {
                    topic: topic.clone(),
                    key: Some(Bytes::copy_from_slice(&key)),
                    value: Some(payload.clone()),
                    ..ProducerRecord::default()
                };
                let t0 = Instant::now();
                match producer.enqueue(record).await {
                    Ok(delivery) => window.push(delivery, t0),
                    Err(_) => break,
                }
            }
            (latencies, traced)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut produce_us = Samples::new();
    let mut traced = Samples::new();
    for s in senders {
        let (latencies, task_traced) = s.await.unwrap_or_default();
        produce_us.append(latencies);
        traced.append(task_traced);
    }
    if let Some(path) = &trace_path {
        write_trace(path, epoch, &mut traced.into_vec());
    }
    let mut produce_us = produce_us.into_vec();
    let elapsed = start.elapsed().as_secs_f64();
    let consumed_per_s = consumed.load(Ordering::Relaxed) as f64 / elapsed;
    if let Some(reader) = reader {
        tokio::time::sleep(Duration::from_millis(500)).await;
        reader.abort();
    }
    produce_us.sort_unstable();
    // The reader is stopped: take its samples rather than copy them.
    let mut e2e_us = std::mem::take(&mut *e2e.lock().await).into_vec();
    e2e_us.sort_unstable();
    RunResult {
        records_per_s: sent.load(Ordering::Relaxed) as f64 / elapsed,
        consumed_per_s,
        produce_us,
        e2e_us,
    }
}

/// Writes `send_us latency_us` lines in send order, to find when slow sends happened; the
/// first line gives the wall-clock time (µs since the Unix epoch) that send times count from.
fn write_trace(path: &std::ffi::OsStr, epoch: Instant, traced: &mut [(u64, u64)]) {
    use std::io::Write;
    traced.sort_unstable();
    let epoch_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(epoch.elapsed());
    let written = std::fs::File::create(path).and_then(|file| {
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "# epoch_unix_us {}", epoch_wall.as_micros())?;
        for (sent, latency) in traced.iter() {
            writeln!(out, "{sent} {latency}")?;
        }
        out.flush()
    });
    if let Err(e) = written {
        println!("trace not written: {e}");
    }
}

/// Broker capacity without the SDK's per-record work: `in_flight` raw produce requests of a
/// pre-built batch of 1 KiB records per partition, for `seconds`. Returns records/s and the
/// sorted request latencies (µs).
async fn run_raw(
    address: &str,
    topic: &str,
    partitions: u32,
    seconds: f64,
    in_flight: usize,
) -> RunResult {
    let batch = sluice_benches::workload::batch_bytes_of(1 << 20);
    let records = sluice_storage::BatchHeader::decode(&batch)
        .map(|h| h.record_count)
        .unwrap_or(0) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..partitions {
        for _ in 0..in_flight {
            let (stop, sent, batch, topic) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                batch.clone(),
                topic.to_string(),
            );
            let mut client = sluice_benches::raw_producer::connect(address).await;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let request = raw_producer::request(&topic, partition, batch.clone());
                    if client.produce(request).await.is_err() {
                        break;
                    }
                    latencies.push(t0.elapsed().as_micros() as u64);
                    sent.fetch_add(records, Ordering::Relaxed);
                }
                latencies
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut produce_us = Vec::new();
    for t in tasks {
        produce_us.extend(t.await.unwrap_or_default());
    }
    produce_us.sort_unstable();
    RunResult {
        records_per_s: sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        consumed_per_s: 0.0,
        produce_us,
        e2e_us: Vec::new(),
    }
}

/// One raw produce of a one-record batch at a time: the broker's round trip with nothing
/// queued (group commit of one, fsync, Raft commit and apply), for `count` requests.
async fn run_serial(address: &str, topic: &str, count: usize) -> RunResult {
    let batch = sluice_benches::workload::batch_bytes_of(1);
    let mut client = sluice_benches::raw_producer::connect(address).await;
    let mut produce_us = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t0 = Instant::now();
        let request = raw_producer::request(topic, 0, batch.clone());
        if client.produce(request).await.is_err() {
            break;
        }
        produce_us.push(t0.elapsed().as_micros() as u64);
    }
    let records_per_s = produce_us.len() as f64 / start.elapsed().as_secs_f64();
    produce_us.sort_unstable();
    RunResult {
        records_per_s,
        consumed_per_s: 0.0,
        produce_us,
        e2e_us: Vec::new(),
    }
}

fn report(label: &str, r: &RunResult, baseline: f64) {
    let p = |v: &[u64], q| percentile(v, q) as f64 / 1000.0;
    let e2e = if r.e2e_us.is_empty() {
        String::new()
    } else {
        format!(
            "  consumed {:>8.0} rec/s ({:.2}x)  e2e p50 {:>6.2} p99 {:>6.2} ms",
            r.consumed_per_s,
            r.consumed_per_s / baseline,
            p(&r.e2e_us, 0.5),
            p(&r.e2e_us, 0.99),
        )
    };
    println!(
        "{label:<40} {:>8.0} rec/s {:>6.1} MB/s  ratio {:>5.2}x  produce p50 {:>6.2} p99 {:>6.2} p99.9 {:>6.2} ms{e2e}",
        r.records_per_s,
        r.records_per_s * RECORD_BYTES as f64 / 1e6,
        r.records_per_s / baseline,
        p(&r.produce_us, 0.5),
        p(&r.produce_us, 0.99),
        p(&r.produce_us, 0.999),
    );
}

/// Runs and prints the storage engine's latency floor at `rate` (see `latency_floor`).
fn report_floor(rate: f64, seconds: f64) -> Option<Floor> {
    match storage_latency_floor(rate, seconds) {
        Ok(f) => {
            println!(
                "{:<40} {:>8.0} rec/s {:>6.1} MB/s  (latency floor)  p50 {:>6.2} p99 {:>6.2} p99.9 {:>6.2} ms  slowest fsync {:.1} ms",
                "  storage only, same rate, group commit",
                f.records_per_s,
                f.records_per_s * RECORD_BYTES as f64 / 1e6,
                f.p50_ms,
                f.p99_ms,
                f.p999_ms,
                f.slowest_sync_ms,
            );
            Some(f)
        }
        Err(e) => {
            println!("storage latency floor failed: {e}");
            None
        }
    }
}

/// TLS for a run: the broker's flags and the SDK's settings, with the files they name.
struct Tls {
    flags: Vec<String>,
    client: Arc<sluice_client::ClientTls>,
    _dir: tempfile::TempDir,
}

impl Tls {
    /// TLS settings if `LOADGEN_TLS` is set.
    fn from_env() -> Option<Self> {
        std::env::var_os("LOADGEN_TLS")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = sluice_tests::certs::TestCa::new(dir.path(), "loadgen-ca");
        let leaf = ca.leaf("broker", &sluice_tests::certs::LeafSpec::server("broker"));
        let client = sluice_client::ClientTls::load(sluice_client::ClientTlsFiles {
            ca: ca.cert.clone(),
            cert: None,
            key: None,
            server_name: None,
        })
        .expect("client TLS");
        Some(Self {
            flags: sluice_tests::certs::listener_flags("tls-", &leaf, None),
            client,
            _dir: dir,
        })
    }
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    // A p99 over a few seconds is all or nothing: one slow spell of the shared disk (a
    // 15-20 ms fsync every half minute or so) either falls in the run or not. Paced runs
    // last long enough to count such spells at the rate they come (docs/benchmarks.md).
    let paced_seconds = std::env::var("LOADGEN_PACED_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(PACED_SECONDS_DEFAULT)
        .max(seconds);
    let baseline = storage_only_rate(seconds.min(5.0));
    println!(
        "storage-only append (64 KiB batches, sync every 1 MiB): {baseline:.0} records/s ({:.1} MB/s)",
        baseline * RECORD_BYTES as f64 / 1e6
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // LOADGEN_PARTITIONS=6 runs one partition count only.
    let counts: Vec<u32> = match std::env::var("LOADGEN_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![1, 6],
    };
    // LOADGEN_REPLICAS=1,3 also runs the produce peak and half-rate with RF=3 on a 3-node
    // loopback cluster (same disk, same 2 cores) after the single node's runs.
    let replicas: Vec<u32> = std::env::var("LOADGEN_REPLICAS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1]);
    for &rf in replicas.iter().filter(|&&rf| rf > 1) {
        for &partitions in &counts {
            let cluster = sluice_tests::TestCluster::start(rf as usize);
            runtime.block_on(async {
                let client = Client::connect(cluster.addresses()).await.expect("connect");
                let topic = format!("load-rf{rf}-{partitions}");
                let configs = [("max.message.bytes".to_string(), (8 << 20).to_string())];
                client
                    .admin()
                    .create_topic(&topic, partitions, rf, configs.into_iter().collect())
                    .await
                    .expect("create");
                let label = |what: &str| format!("RF={rf}, {partitions} partition(s), {what}");
                let peak = run(&client, &topic, partitions, seconds, None, false).await;
                report(&label("SDK produce, peak"), &peak, baseline);
                let half_rate = Some(peak.records_per_s / 2.0);
                let half = run(&client, &topic, partitions, paced_seconds, half_rate, false).await;
                report(&label("SDK produce, half of peak"), &half, baseline);
            });
            drop(cluster);
        }
    }
    if !replicas.contains(&1) {
        return;
    }
    for partitions in counts {
        // LOADGEN_METRICS=HOST:PORT serves the broker's metrics there, to scrape mid-run.
        let mut flags: Vec<String> = Vec::new();
        if let Ok(address) = std::env::var("LOADGEN_METRICS") {
            flags.extend(["--metrics-listen".to_string(), address]);
        }
        // LOADGEN_TLS=1: TLS on the client port (a fresh CA and certificate), the SDK over it.
        let tls = Tls::from_env();
        flags.extend(tls.iter().flat_map(|t| t.flags.clone()));
        // LOADGEN_BROKER_FLAGS="--cached-tail-bytes 0": more broker flags, for an A/B.
        if let Ok(more) = std::env::var("LOADGEN_BROKER_FLAGS") {
            flags.extend(more.split_whitespace().map(str::to_string));
        }
        let mut broker =
            TestBroker::start_with(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        runtime.block_on(async {
            let options = sluice_client::ConnectOptions {
                tls: tls.as_ref().map(|t| Arc::clone(&t.client)),
                ..Default::default()
            };
            let client = Client::connect_with([broker.address.as_str()], options)
                .await
                .expect("connect");
            let topic = format!("load-{partitions}");
            let mut configs = vec![("max.message.bytes".to_string(), (8 << 20).to_string())];
            if let Ok(bytes) = std::env::var("LOADGEN_SEGMENT_BYTES") {
                configs.push(("segment.bytes".to_string(), bytes));
            }
            client
                .admin()
                .create_topic(&topic, partitions, 1, configs.into_iter().collect())
                .await
                .expect("create");
            // The serial run's raw gRPC client speaks plaintext only.
            if partitions == 1 && tls.is_none() {
                let serial = run_serial(&broker.address, &topic, 500).await;
                report("1 partition, one record at a time", &serial, baseline);
            }
            if std::env::var_os("LOADGEN_SERIAL_ONLY").is_some() {
                return;
            }
            let label = |what: &str| format!("{partitions} partition(s), {what}");
            // LOADGEN_RATE=N paces one produce run to N records/s and stops there
            // (for profiling one load level).
            if let Some(rate) = std::env::var("LOADGEN_RATE")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
            {
                // A warm-up as long as the peak run that precedes the half-rate run normally.
                let _ = run(&client, &topic, partitions, seconds, None, false).await;
                if std::env::var_os("LOADGEN_NO_FLOOR").is_none() {
                    report_floor(rate, paced_seconds);
                }
                let paced = run(
                    &client,
                    &topic,
                    partitions,
                    paced_seconds,
                    Some(rate),
                    false,
                )
                .await;
                report(
                    &label(&format!("SDK produce, {rate:.0} records/s")),
                    &paced,
                    baseline,
                );
                return;
            }
            let peak = run(&client, &topic, partitions, seconds, None, false).await;
            report(&label("SDK produce, peak"), &peak, baseline);
            let half_rate = Some(peak.records_per_s / 2.0);
            report_floor(peak.records_per_s / 2.0, paced_seconds);
            let half = run(&client, &topic, partitions, paced_seconds, half_rate, false).await;
            report(&label("SDK produce, half of peak"), &half, baseline);
            if std::env::var_os("LOADGEN_PRODUCE_ONLY").is_some() {
                return;
            }
            let e2e = run(&client, &topic, partitions, seconds, None, true).await;
            report(&label("SDK produce + consume, peak"), &e2e, baseline);
            let e2e_half_rate = Some(e2e.records_per_s / 2.0);
            let e2e_half = run(
                &client,
                &topic,
                partitions,
                paced_seconds,
                e2e_half_rate,
                true,
            )
            .await;
            report(&label("SDK produce + consume, half"), &e2e_half, baseline);
            let raw = run_raw(&broker.address, &topic, partitions, seconds, 4).await;
            report(&label("raw 1 MiB batches, 4 in flight"), &raw, baseline);
        });
        // Freed a step at a time, so the next partition count does not start in the stall
        // of unlinking gigabytes at once.
        broker.kill9();
        remove_dir_gently(broker.data_dir());
    }
}
