//! Produce many keyed records through the SDK and read them back, before and after a restart.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use sluice_client::partitioner::partition_for_key;
use sluice_client::{Client, ProducerConfig, ProducerRecord};
use sluice_tests::TestBroker;

use crate::{by_partition, read_all, runtime};

const PARTITIONS: u32 = 6;
const RECORDS: usize = 200_000;

#[test]
fn keyed_records_arrive_once_in_order_on_murmur2_partitions_and_survive_restart() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let acked: HashMap<(u32, u64), (String, String)> = rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        client
            .admin()
            .create_topic("events", PARTITIONS, 1, Default::default())
            .await
            .expect("create topic");
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let mut acked = HashMap::with_capacity(RECORDS);
        let mut pending = FuturesUnordered::new();
        for i in 0..RECORDS {
            let key = format!("key-{}", i % 5_000);
            let value = format!("value-{i}");
            let producer = producer.clone();
            pending.push(async move {
                let sent = producer
                    .send(
                        ProducerRecord::new("events")
                            .key(key.clone())
                            .value(value.clone()),
                    )
                    .await;
                (key, value, sent)
            });
            // Bounded in flight, as an application would.
            while pending.len() >= 4_096 {
                let (key, value, sent) = pending.next().await.expect("pending send");
                let sent = sent.expect("send");
                acked.insert((sent.partition, sent.offset), (key, value));
            }
        }
        while let Some((key, value, sent)) = pending.next().await {
            let sent = sent.expect("send");
            acked.insert((sent.partition, sent.offset), (key, value));
        }
        acked
    });
    assert_eq!(
        acked.len(),
        RECORDS,
        "every send got its own (partition, offset)"
    );
    for ((partition, _), (key, _)) in &acked {
        assert_eq!(
            *partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "{key} is where murmur2 puts it"
        );
    }
    let check = |records: &[sluice_client::ConsumerRecord]| {
        assert_eq!(records.len(), RECORDS);
        for (partition, list) in by_partition(records) {
            assert!(
                list.windows(2).all(|w| w[0].offset < w[1].offset),
                "partition {partition} in offset order"
            );
        }
        for r in records {
            let (key, value) = acked
                .get(&(r.partition, r.offset))
                .expect("every read record was acked there");
            assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
            assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
        }
    };
    let read_events = |address: &str| {
        rt.block_on(async {
            let client = Client::connect([address]).await.expect("connect");
            read_all(
                &client,
                "events",
                PARTITIONS,
                RECORDS,
                Duration::from_secs(120),
            )
            .await
        })
    };
    let first = read_events(&broker.address);
    check(&first);
    assert!(broker.stop(), "clean shutdown on SIGTERM");
    broker.restart();
    let second = read_events(&broker.address);
    check(&second);
}
