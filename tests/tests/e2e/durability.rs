//! `kill -9` during production: every acknowledged record is there after restart, once,
//! where it was acknowledged (logcheck).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_tests::TestBroker;
use sluice_tests::logcheck::{self, Attempt, History, Outcome, Read};

use crate::{client_with_topic, read_all, runtime};

#[test]
fn acked_records_survive_kill_9_during_production() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "orders", 3, &[]).await;
        let config = ProducerConfig {
            retries: 0,
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await.expect("producer");
        for worker in 0..8u32 {
            let (producer, attempts) = (producer.clone(), Arc::clone(&attempts));
            let partition = worker % 3;
            tokio::spawn(async move {
                for i in 0.. {
                    let value = format!("w{worker}-{i}");
                    let sent = producer
                        .send(
                            ProducerRecord::new("orders")
                                .partition(partition)
                                .key(format!("k{i}"))
                                .value(value.clone()),
                        )
                        .await;
                    let outcome = match &sent {
                        Ok(m) => Outcome::Acked(m.offset),
                        Err(_) => Outcome::Unknown,
                    };
                    attempts.lock().expect("lock").push(Attempt {
                        partition,
                        producer: worker,
                        sequence: i,
                        value,
                        outcome,
                    });
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
        // Let production run, then crash the broker mid-stream.
        let wait = async {
            while attempts.lock().expect("lock").len() < 5_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("production makes progress");
    });
    broker.kill9();
    // Each worker's last send fails with the connection and ends the worker: wait (bounded)
    // until all eight have recorded it.
    let ended = || {
        attempts
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.outcome == Outcome::Unknown)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ended() < 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let attempts = attempts.lock().expect("lock").clone();
    let acked = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .count();
    broker.restart();
    rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect after crash");
        let total: u64 = client
            .admin()
            .describe_topic("orders")
            .await
            .expect("describe")
            .partitions
            .iter()
            .map(|p| p.high_watermark - p.log_start_offset)
            .sum();
        assert!(
            total as usize >= acked,
            "high watermarks cover every ack: {total} < {acked}"
        );
        let records = read_all(
            &client,
            "orders",
            3,
            total as usize,
            Duration::from_secs(60),
        )
        .await;
        let history = History {
            attempts,
            reads: records.iter().map(Read::of).collect(),
        };
        let report = logcheck::check(&history);
        assert!(report.is_clean(), "{report}");
    });
}
