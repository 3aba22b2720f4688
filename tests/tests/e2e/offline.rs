//! A partition whose stored data is damaged goes offline: it answers STORAGE_FAILED naming
//! the segment and offset, never a retriable "not open yet", and describe shows it offline.

use std::path::{Path, PathBuf};

use sluice_client::{ProducerConfig, ProducerRecord, Reason};
use sluice_protocol::StatusInfo;
use sluice_protocol::v1::ProduceRequest;
use sluice_storage::BatchHeader;
use sluice_tests::TestBroker;

use crate::{client_with_topic, describe_partition, raw_producer, runtime};

/// The first segment file of partition 0 of `topic`.
fn first_segment(data_dir: &Path, topic: &str) -> PathBuf {
    let dir = data_dir.join(topic).join("0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.into_iter().next().expect("a segment")
}

/// Flips one byte inside the records of the first data batch (not a Raft control batch).
fn flip_a_record_byte(segment: &Path) {
    let mut bytes = std::fs::read(segment).expect("read segment");
    let mut at = 0usize;
    loop {
        let header = BatchHeader::decode(&bytes[at..]).expect("a batch before the damage");
        if !header.attributes.is_control() && header.records_len > 8 {
            bytes[at + 85 + 4] ^= 0x20;
            break;
        }
        at += header.batch_len() as usize;
    }
    std::fs::write(segment, bytes).expect("write segment");
}

#[test]
fn damaged_synced_data_takes_the_partition_offline_with_a_clear_error() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "fragile", 2, &[]).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        for i in 0..20u32 {
            producer
                .send(
                    ProducerRecord::new("fragile")
                        .partition(i % 2)
                        .value(format!("value-{i}")),
                )
                .await
                .expect("acked");
        }
    });
    assert!(broker.stop(), "clean stop");
    flip_a_record_byte(&first_segment(broker.data_dir(), "fragile"));
    broker.restart();
    rt.block_on(async {
        let client = sluice_client::Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let damaged = describe_partition(&client, "fragile", 0).await;
        assert_eq!(damaged.status, "offline");
        assert!(
            damaged.error.contains("00000000000000000000.log"),
            "{}",
            damaged.error
        );
        assert!(damaged.error.contains("offset"), "{}", damaged.error);
        let healthy = describe_partition(&client, "fragile", 1).await;
        assert_eq!(healthy.status, "online");
        assert_eq!(
            healthy.high_watermark, 10,
            "the other partition serves as before"
        );

        let mut raw = raw_producer(&broker.address).await;
        let request = ProduceRequest {
            topic: "fragile".into(),
            partition: 0,
            batch: bytes::Bytes::new(),
            acks: 1,
            request_id: 0,
        };
        let status = raw.produce(request).await.expect_err("offline");
        assert_eq!(
            StatusInfo::of(&status).reason,
            Some(Reason::StorageFailed),
            "{status:?}"
        );
        assert!(status.message().contains("offline"), "{}", status.message());
    });
    // Nothing was cut: the damaged file is still there, whole, for an operator to look at.
    let segment = first_segment(broker.data_dir(), "fragile");
    assert!(std::fs::metadata(&segment).expect("segment").len() > 0);
}
