//! Retention through Raft: the broker snapshots the partition and asks openraft to purge,
//! then whole segments go; the log start moves and survives a restart.

use std::time::Duration;

use bytes::Bytes;
use sluice_client::Client;
use sluice_protocol::v1::{Acks, ProduceRequest};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;

use crate::{
    client_with_topic, describe_partition, high_watermark, raw_producer, read_all, runtime,
};

fn batch() -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    let value = vec![3u8; 1000];
    for _ in 0..16 {
        b.push(NewRecord {
            key: None,
            value: Some(&value),
            timestamp: 1,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

async fn produce(address: &str, count: usize) {
    let mut raw = raw_producer(address).await;
    for _ in 0..count {
        let request = ProduceRequest {
            topic: "short".into(),
            partition: 0,
            batch: batch(),
            acks: Acks::All as i32,
            request_id: 0,
        };
        raw.produce(request).await.expect("produce");
    }
}

#[test]
fn retention_purges_through_raft_and_the_log_start_survives_restart() {
    let mut broker = TestBroker::start_with(&["--housekeeping-interval-secs", "1"]);
    let rt = runtime();
    let log_start = rt.block_on(async {
        let configs = [("segment.bytes", "65536"), ("retention.bytes", "200000")];
        let client = client_with_topic(&broker.address, "short", 1, &configs).await;
        produce(&broker.address, 150).await; // ~2.4 MB in 16 KiB batches
        // A pass may run mid-production and leave newer segments for the next pass: wait
        // (bounded) for the pass that sees the whole log.
        let mut partition = describe_partition(&client, "short", 0).await;
        for _ in 0..100 {
            if partition.log_start_offset > 0 && partition.size_bytes < 600_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            partition = describe_partition(&client, "short", 0).await;
        }
        let log_start = partition.log_start_offset;
        assert!(
            log_start > 0,
            "retention moved the log start: {partition:?}"
        );
        assert!(
            partition.size_bytes < 600_000,
            "old segments are gone: {partition:?}"
        );
        // Writes and reads go on after the purge.
        produce(&broker.address, 5).await;
        let end = high_watermark(&client, "short", 0).await;
        let records = read_all(
            &client,
            "short",
            1,
            (end - log_start) as usize,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(records.first().map(|r| r.offset), Some(log_start));
        log_start
    });
    assert!(broker.stop());
    broker.restart();
    rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect after restart");
        let partition = describe_partition(&client, "short", 0).await;
        assert!(
            partition.log_start_offset >= log_start,
            "the purge survived the restart"
        );
        assert_eq!(
            partition.high_watermark,
            155 * 16,
            "every committed record is still counted"
        );
        produce(&broker.address, 1).await;
    });
}
