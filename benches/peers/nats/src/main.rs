//! NATS JetStream publish throughput and ack latency, 1 KiB messages, many publishes in
//! flight (the shape of Sluice's `loadgen` peak: 256 tasks × a window of 4 sends).

use std::time::{Duration, Instant};

use bytes::Bytes;

#[tokio::main]
async fn main() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let tasks: usize = std::env::var("TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let window: usize = std::env::var("WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let replicas: usize = std::env::var("REPLICAS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let client = async_nats::connect(&url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream("bench").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "bench".into(),
        subjects: vec!["bench.>".into()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("stream");
    let payload = Bytes::from(vec![b'x'; 1024]);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (js, payload) = (js.clone(), payload.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut inflight = std::collections::VecDeque::new();
            while Instant::now() < deadline {
                while inflight.len() < window {
                    let sent = Instant::now();
                    match js.publish("bench.a", payload.clone()).await {
                        Ok(ack) => inflight.push_back((sent, ack)),
                        Err(_) => break,
                    }
                }
                if let Some((sent, ack)) = inflight.pop_front() {
                    if ack.await.is_ok() {
                        latencies.push(sent.elapsed());
                    }
                }
            }
            for (sent, ack) in inflight {
                if ack.await.is_ok() {
                    latencies.push(sent.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default();
    println!(
        "nats jetstream R{replicas}: {:.0} msg/s {:.1} MB/s  ack p50 {:.2} p99 {:.2} ms ({} acked)",
        all.len() as f64 / elapsed,
        all.len() as f64 * 1024.0 / elapsed / 1e6,
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        all.len()
    );
}
