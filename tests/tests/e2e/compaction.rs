//! Compaction in a running broker: a pass runs beside producers (off the log's lock) and
//! leaves the newest value of every key at its offset.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::{ConsumerConfig, Offset, ProducerConfig, ProducerRecord};
use sluice_tests::TestBroker;

use crate::{client_with_topic, describe_partition, high_watermark, runtime};

#[test]
fn compaction_keeps_the_newest_value_per_key_while_producers_write() {
    let broker = TestBroker::start_with(&["--housekeeping-interval-secs", "1"]);
    runtime().block_on(async {
        let configs = [
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ];
        let client = client_with_topic(&broker.address, "table", 1, &configs).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let value = vec![b'v'; 200];
        let mut newest: HashMap<String, u64> = HashMap::new();
        let mut sent = 0u64;
        // Keep producing (50 keys over and over) until a pass has shrunk the log, so the
        // pass runs while the partition takes writes; bounded.
        let mut compacted = false;
        for round in 0..200u64 {
            for k in 0..50u64 {
                let key = format!("key-{k}");
                let mut payload = value.clone();
                payload.extend_from_slice(format!("-{round}").as_bytes());
                let record = ProducerRecord {
                    topic: "table".into(),
                    partition: Some(0),
                    key: Some(Bytes::from(key.clone())),
                    value: Some(Bytes::from(payload)),
                    ..ProducerRecord::default()
                };
                let delivered = producer.send(record).await.expect("send");
                newest.insert(key, delivered.offset);
                sent += 1;
            }
            let size = describe_partition(&client, "table", 0).await.size_bytes;
            // Uncompacted, every record (~270 bytes stored) stays.
            if round > 20 && size < sent * 270 / 2 {
                compacted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            compacted,
            "no compaction pass shrank the log ({sent} records sent)"
        );
        producer.flush().await.expect("flush");
        let end = high_watermark(&client, "table", 0).await;
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer
            .assign_until("table", 0, Offset::Earliest, end)
            .await
            .expect("assign");
        let mut stream = consumer.into_stream();
        let mut last_seen: HashMap<String, u64> = HashMap::new();
        let mut read = 0u64;
        let mut previous = None;
        let reading = async {
            while let Some(record) = stream.next().await {
                let record = record.expect("record");
                assert!(previous.is_none_or(|p| p < record.offset), "offsets ascend");
                previous = Some(record.offset);
                let key = String::from_utf8(record.key.expect("keyed").to_vec()).expect("utf8");
                last_seen.insert(key, record.offset);
                read += 1;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .expect("read to the end");
        assert_eq!(
            last_seen, newest,
            "the newest record of every key survives at its offset"
        );
        assert!(
            read < sent,
            "superseded records are gone: {read} of {sent} read"
        );
    });
}
