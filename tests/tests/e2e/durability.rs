//! `kill -9` during production: every acknowledged record is there after restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_tests::TestBroker;

use crate::{client_with_topic, read_all, runtime};

#[test]
fn acked_records_survive_kill_9_during_production() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let acked: Arc<Mutex<HashMap<(u32, u64), String>>> = Arc::default();
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "orders", 3, &[]).await;
        let config = ProducerConfig {
            retries: 0,
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await.expect("producer");
        for worker in 0..8 {
            let (producer, acked) = (producer.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                for i in 0.. {
                    let value = format!("w{worker}-{i}");
                    match producer
                        .send(
                            ProducerRecord::new("orders")
                                .key(format!("k{i}"))
                                .value(value.clone()),
                        )
                        .await
                    {
                        Ok(sent) => {
                            acked
                                .lock()
                                .expect("lock")
                                .insert((sent.partition, sent.offset), value);
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        // Let production run, then crash the broker mid-stream.
        let wait = async {
            while acked.lock().expect("lock").len() < 5_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("production makes progress");
    });
    broker.kill9();
    let acked = acked.lock().expect("lock").clone();
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
            total as usize >= acked.len(),
            "high watermarks cover every ack: {total} < {}",
            acked.len()
        );
        let records = read_all(
            &client,
            "orders",
            3,
            total as usize,
            Duration::from_secs(60),
        )
        .await;
        let stored: HashMap<(u32, u64), String> = records
            .iter()
            .map(|r| {
                (
                    (r.partition, r.offset),
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        for (at, value) in &acked {
            assert_eq!(
                stored.get(at),
                Some(value),
                "acked record at {at:?} survives kill -9"
            );
        }
    });
}
