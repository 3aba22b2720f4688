//! T18 and T19 on a real broker, measured as the broker's anonymous memory (`RssAnon`).
//! T19: 8 producers, each with 64 produce requests of 64 KiB in flight (faster than the
//! disk can take them), for 10 s in a 512 MiB memory cgroup: throttling answers and slower
//! acknowledgements, not buffering, and no kill. T18: 3 producers at 2 MB/s each, a
//! subscriber that reads about 50 KB/s and two normal consumers, for 20 s: memory bounded
//! by credit, the slow subscriber gets every batch in order once it asks, the others keep
//! up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::{Client, ConsumerConfig, Offset};
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{Acks, Credit, ProduceRequest, SubscribeRequest};
use sluice_protocol::{Reason, StatusInfo};
use sluice_tests::TestBroker;
use sluice_tests::memory_cgroup::MemoryCgroup;
use tonic::transport::Channel;

use crate::backpressure::subscribe;
use crate::{client_with_topic, high_watermark, raw_producer, runtime};

const BATCH_BYTES: usize = 64 << 10;

/// A batch of 1 KiB records stamped now (so time retention keeps it) or at 1970 (so
/// retention deletes closed segments at once, keeping a flood off the disk).
fn batch(bytes: usize, now: bool) -> Bytes {
    let timestamp = if now {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64)
    } else {
        1
    };
    crate::backpressure::batch_stamped(bytes, timestamp)
}

/// What the producers saw.
#[derive(Default)]
struct Produced {
    acked_bytes: AtomicU64,
    throttled: AtomicU64,
    other_errors: AtomicU64,
}

impl Produced {
    fn report(&self, load: Duration) -> String {
        let acked = self.acked_bytes.load(Ordering::Relaxed);
        format!(
            "{} MiB acknowledged in {load:?} ({:.1} MB/s), {} throttled answers",
            acked >> 20,
            acked as f64 / load.as_secs_f64() / 1e6,
            self.throttled.load(Ordering::Relaxed),
        )
    }
}

/// One request loop of one producer: produce `topic` until `stop`, one request every
/// `pace` at most, backing off as told when throttled.
async fn produce_loop(
    mut raw: ProducerClient<Channel>,
    topic: &'static str,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
    produced: Arc<Produced>,
) {
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(pace) = pace {
            tokio::time::sleep_until(next).await;
            next += pace;
        }
        let batch = batch(BATCH_BYTES, pace.is_some());
        let request = ProduceRequest {
            topic: topic.into(),
            partition: 0,
            batch: batch.clone(),
            acks: Acks::All as i32,
            request_id: 0,
        };
        match raw.produce(request).await {
            Ok(_) => {
                produced
                    .acked_bytes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(status) => {
                let info = StatusInfo::of(&status);
                let wait = if info.reason == Some(Reason::Throttled) {
                    produced.throttled.fetch_add(1, Ordering::Relaxed);
                    u64::from(info.retry_after_ms.unwrap_or(50))
                } else {
                    produced.other_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("produce: {:?} {}", status.code(), status.message());
                    50
                };
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

/// Samples process `pid`'s anonymous memory every 100 ms until `stop`; returns the peak.
async fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> u64 {
    sample_peak_every(pid, stop, Duration::from_millis(100)).await
}

/// Samples process `pid`'s anonymous memory every `every` until `stop`; returns the peak.
pub(crate) async fn sample_peak_every(pid: u32, stop: Arc<AtomicBool>, every: Duration) -> u64 {
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        peak = peak.max(sluice_tests::parse_rss_anon_kib(&status).unwrap_or(0));
        tokio::time::sleep(every).await;
    }
    peak
}

/// Runs `loops` request loops over `producers` connections to `broker` for `load`, with
/// whatever reads meanwhile; returns the peak anonymous memory.
async fn run_load(
    broker: &TestBroker,
    topic: &'static str,
    (producers, loops, pace): (usize, usize, Option<Duration>),
    load: Duration,
    stop: &Arc<AtomicBool>,
    produced: &Arc<Produced>,
) -> u64 {
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_peak(broker.pid(), Arc::clone(&sampler_stop)));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let raw = raw_producer(&broker.address).await;
        for _ in 0..loops {
            let (stop, produced) = (Arc::clone(stop), Arc::clone(produced));
            tasks.push(tokio::spawn(produce_loop(
                raw.clone(),
                topic,
                pace,
                stop,
                produced,
            )));
        }
    }
    tokio::time::sleep(load).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("producer loop");
    }
    sampler_stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler")
}

#[test]
fn a_producer_faster_than_the_disk_is_throttled_not_buffered_and_never_killed() {
    const LOAD: Duration = Duration::from_secs(10);
    // Declared before the broker, so the broker is gone when the cgroup is removed.
    let cgroup = MemoryCgroup::create(512 << 20);
    // Retention every second keeps the flood (GB/s on this disk) to a few hundred MiB on
    // disk: the batches are stamped 1970, so closed segments go at once.
    let broker = TestBroker::start_with(&["--housekeeping-interval-secs", "1"]);
    match &cgroup {
        Ok(cgroup) => cgroup.add(broker.pid()).expect("into the cgroup"),
        Err(why) => eprintln!("no memory cgroup here ({why}): memory is measured only"),
    }
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(Produced::default());
    let (baseline, peak) = rt.block_on(async {
        let segments = [("segment.bytes", "67108864")];
        client_with_topic(&broker.address, "flood", 1, &segments).await;
        let baseline = broker.rss_anon_kib();
        let shape = (8, 64, None);
        let peak = run_load(&broker, "flood", shape, LOAD, &stop, &produced).await;
        (baseline, peak)
    });
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "T19: {}; RssAnon baseline {} MiB, peak {} MiB (+{growth_mib} MiB), after {} MiB",
        produced.report(LOAD),
        baseline / 1024,
        peak / 1024,
        broker.rss_anon_kib() / 1024,
    );
    assert!(
        produced.acked_bytes.load(Ordering::Relaxed) > 0,
        "nothing acknowledged"
    );
    assert_eq!(
        produced.other_errors.load(Ordering::Relaxed),
        0,
        "errors besides THROTTLED"
    );
    assert!(growth_mib < 256, "anonymous memory grew {growth_mib} MiB");
    if let Ok(cgroup) = &cgroup {
        assert_eq!(cgroup.oom_kills(), 0, "the broker was killed for memory");
    }
    let alive = std::path::Path::new(&format!("/proc/{}", broker.pid())).exists();
    assert!(alive, "the broker is still running");
}

#[test]
fn a_slow_subscriber_costs_no_memory_beyond_its_credit_and_gets_every_batch() {
    const LOAD: Duration = Duration::from_secs(20);
    let broker = TestBroker::start();
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let end = Arc::new(AtomicU64::new(0));
    let produced = Arc::new(Produced::default());
    let (baseline, peak, slow, normal, high) = rt.block_on(async {
        client_with_topic(&broker.address, "slow", 1, &[]).await;
        let baseline = broker.rss_anon_kib();
        let slow = tokio::spawn(slow_subscriber(
            broker.address.clone(),
            Arc::clone(&stop),
            Arc::clone(&end),
        ));
        let normal: Vec<_> = (0..2)
            .map(|_| {
                let (stop, end) = (Arc::clone(&stop), Arc::clone(&end));
                tokio::spawn(normal_consumer(broker.address.clone(), stop, end))
            })
            .collect();
        // 2 MB/s each: one 64 KiB batch every 32 ms.
        let shape = (3, 1, Some(Duration::from_millis(32)));
        let peak = run_load(&broker, "slow", shape, LOAD, &stop, &produced).await;
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let high = high_watermark(&client, "slow", 0).await;
        end.store(high, Ordering::Relaxed);
        let slow = slow.await.expect("slow subscriber");
        let normal = futures::future::join_all(normal).await;
        (baseline, peak, slow, normal, high)
    });
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "T18: {}; RssAnon baseline {} MiB, peak {} MiB (+{growth_mib} MiB); the slow subscriber had read {} of {high} offsets when the load stopped",
        produced.report(LOAD),
        baseline / 1024,
        peak / 1024,
        slow.1,
    );
    assert_eq!(
        produced.other_errors.load(Ordering::Relaxed),
        0,
        "produce errors"
    );
    assert!(growth_mib < 64, "anonymous memory grew {growth_mib} MiB");
    assert_eq!(
        slow.0, high,
        "the slow subscriber got every batch once it asked"
    );
    assert!(
        slow.1 < high / 4,
        "the slow subscriber was slow: {} of {high}",
        slow.1
    );
    for got in normal {
        assert_eq!(
            got.expect("normal consumer"),
            high,
            "a normal consumer read everything"
        );
    }
}

/// A subscriber granting one batch at a time, one grant every 1.3 s (≈ 50 KB/s of 64 KiB
/// batches) until `stop`, then as much as it can take: returns the offset after the last
/// batch it got, and where it was when `stop` came.
async fn slow_subscriber(
    address: String,
    stop: Arc<AtomicBool>,
    end: Arc<AtomicU64>,
) -> (u64, u64) {
    let one = Credit {
        bytes: 1 << 20,
        batches: 1,
    };
    let (mut responses, credit) = subscribe(&address, "slow", one).await;
    let (mut next, mut at_stop) = (0u64, None);
    loop {
        let stopped = stop.load(Ordering::Relaxed);
        let target = end.load(Ordering::Relaxed);
        if stopped {
            at_stop.get_or_insert(next);
        }
        if target > 0 && next >= target {
            return (next, at_stop.unwrap_or(next));
        }
        if stopped && target == 0 {
            // The end is not known yet: waiting for a batch past it would wait for ever.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let response = tokio::time::timeout(Duration::from_secs(60), responses.next())
            .await
            .expect("the slow subscriber waited 60 s for a batch")
            .expect("stream open")
            .expect("subscribe response");
        // Credit is one batch at a time until the stop (the grant after it may arrive
        // while this answer is on its way, hence `at_stop`).
        assert!(
            at_stop.is_some() || response.batches.len() <= 1,
            "{} batches sent on a credit of one",
            response.batches.len()
        );
        for batch in &response.batches {
            let header = sluice_storage::BatchHeader::decode(batch).expect("a batch header");
            assert_eq!(header.base_offset, next, "a gap or reordering");
            next = header.next_offset();
        }
        let more = if stopped {
            Credit {
                bytes: 64 << 20,
                batches: 1000,
            }
        } else {
            tokio::time::sleep(Duration::from_millis(1300)).await;
            one
        };
        let _ = credit
            .send(SubscribeRequest {
                kind: Some(Kind::Credit(more)),
            })
            .await;
    }
}

/// Reads from the beginning as fast as it can until `stop` and the end are reached;
/// returns the offset after the last record read.
async fn normal_consumer(address: String, stop: Arc<AtomicBool>, end: Arc<AtomicU64>) -> u64 {
    let client = Client::connect([address.as_str()]).await.expect("connect");
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer
        .assign("slow", 0, Offset::Earliest)
        .await
        .expect("assign");
    let mut stream = consumer.into_stream();
    let mut next = 0u64;
    let started = Instant::now();
    loop {
        let target = end.load(Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) && target > 0 && next >= target {
            return next;
        }
        let bound = Duration::from_secs(150);
        assert!(
            started.elapsed() < bound,
            "a normal consumer fell behind for good"
        );
        let read = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        if let Ok(Some(record)) = read {
            let record = record.expect("record");
            assert_eq!(record.offset, next, "a gap or reordering");
            next = record.offset + 1;
        }
    }
}
