//! Idempotent produce over the raw protocol: retries return the original offsets, gaps are
//! refused, and the producer state survives a restart.

use bytes::Bytes;
use sluice_protocol::v1::{Acks, InitProducerIdRequest, ProduceRequest};
use sluice_protocol::{Reason, StatusInfo};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;

use crate::{client_with_topic, raw_producer, runtime};

fn batch(producer_id: u64, sequence: u32, records: u32) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).producer(producer_id, 0, sequence);
    for i in 0..records {
        b.push(NewRecord {
            key: None,
            value: Some(format!("{sequence}-{i}").as_bytes()),
            timestamp: 1,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

async fn new_producer_id(
    raw: &mut sluice_protocol::v1::producer_client::ProducerClient<tonic::transport::Channel>,
) -> u64 {
    raw.init_producer_id(InitProducerIdRequest {})
        .await
        .expect("producer id")
        .into_inner()
        .producer_id
}

fn request(batch: Bytes) -> ProduceRequest {
    ProduceRequest {
        topic: "idem".into(),
        partition: 0,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    }
}

#[test]
fn retried_batches_keep_their_offsets_gaps_are_refused_and_state_survives_restart() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let (producer_id, last) = rt.block_on(async {
        client_with_topic(&broker.address, "idem", 1, &[]).await;
        let mut raw = raw_producer(&broker.address).await;
        let producer_id = new_producer_id(&mut raw).await;
        let first = raw
            .produce(request(batch(producer_id, 0, 3)))
            .await
            .expect("first")
            .into_inner();
        assert!(!first.duplicate);
        let retry = raw
            .produce(request(batch(producer_id, 0, 3)))
            .await
            .expect("retry")
            .into_inner();
        assert!(retry.duplicate, "a retry is recognised");
        assert_eq!(
            retry.base_offset, first.base_offset,
            "a retry gets the original offset"
        );
        let gap = raw
            .produce(request(batch(producer_id, 5, 1)))
            .await
            .expect_err("gap");
        assert_eq!(
            StatusInfo::of(&gap).reason,
            Some(Reason::OutOfOrderSequence)
        );
        let second = raw
            .produce(request(batch(producer_id, 3, 2)))
            .await
            .expect("next in order")
            .into_inner();
        assert_eq!(second.base_offset, first.base_offset + 3);
        (producer_id, second.base_offset)
    });
    assert!(broker.stop());
    broker.restart();
    rt.block_on(async {
        let mut raw = raw_producer(&broker.address).await;
        let retry = raw
            .produce(request(batch(producer_id, 3, 2)))
            .await
            .expect("retry after restart")
            .into_inner();
        assert!(retry.duplicate, "producer state survived the restart");
        assert_eq!(retry.base_offset, last);
        let other = raw
            .init_producer_id(InitProducerIdRequest {})
            .await
            .expect("another id")
            .into_inner()
            .producer_id;
        assert_ne!(
            other, producer_id,
            "producer ids are never reused, even across restarts"
        );
    });
}

/// A batch of `records` records all with key `key`, stamped now: a producer expires
/// `producer.id.expiration.ms` after its newest record's timestamp, as in Kafka.
fn keyed_batch(producer_id: u64, sequence: u32, records: u32, key: &[u8]) -> Bytes {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as i64);
    let mut b = BatchBuilder::new(Compression::None).producer(producer_id, 0, sequence);
    for i in 0..records {
        b.push(NewRecord {
            key: Some(key),
            value: Some(format!("{sequence}-{i}").as_bytes()),
            timestamp: now_ms,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

/// Offsets of partition 0 of `idem` below `end`, as a consumer reads them.
async fn stored_offsets(client: &sluice_client::Client, end: u64) -> Vec<u64> {
    use futures::StreamExt;
    let mut consumer = client.consumer(sluice_client::ConsumerConfig::default());
    consumer
        .assign_until("idem", 0, sluice_client::Offset::Earliest, end)
        .await
        .expect("assign");
    let mut stream = consumer.into_stream();
    let mut offsets = Vec::new();
    while let Some(record) = stream.next().await {
        offsets.push(record.expect("record").offset);
    }
    offsets
}

#[test]
fn idempotence_survives_compaction_and_a_restart() {
    let mut broker = TestBroker::start_with(&["--housekeeping-interval-secs", "1"]);
    let rt = runtime();
    let configs = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "1024"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ];
    let (producer_id, first_offset, end) = rt.block_on(async {
        let client = client_with_topic(&broker.address, "idem", 1, &configs).await;
        let mut raw = raw_producer(&broker.address).await;
        let producer_id = new_producer_id(&mut raw).await;
        // Three records of one key: compaction keeps only the last, so the stored batch
        // ends with one record but still spans three offsets (and sequences).
        let first = raw
            .produce(request(keyed_batch(producer_id, 0, 3, b"k")))
            .await
            .expect("first")
            .into_inner();
        // Other keys behind it roll segments, so its segment is sealed and compactable.
        for i in 0..40u32 {
            let filler = keyed_batch(
                u64::MAX,
                0,
                1,
                format!("filler-{i:03}-{}", "x".repeat(100)).as_bytes(),
            );
            raw.produce(request(filler)).await.expect("filler");
        }
        let end = crate::high_watermark(&client, "idem", 0).await;
        let mut compacted = false;
        for _ in 0..200 {
            let offsets = stored_offsets(&client, end).await;
            if !offsets.contains(&first.base_offset) {
                assert!(
                    offsets.contains(&(first.base_offset + 2)),
                    "the newest of the key stays"
                );
                compacted = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(compacted, "no compaction pass ran");
        (producer_id, first.base_offset, end)
    });
    assert!(broker.stop());
    broker.restart();
    rt.block_on(async {
        let mut raw = raw_producer(&broker.address).await;
        let retry = raw
            .produce(request(keyed_batch(producer_id, 0, 3, b"k")))
            .await
            .expect("a retry of the compacted batch")
            .into_inner();
        assert!(retry.duplicate, "recognised after compaction and restart");
        assert_eq!(retry.base_offset, first_offset);
        let next = raw
            .produce(request(keyed_batch(producer_id, 3, 1, b"k")))
            .await
            .expect("the producer's next batch")
            .into_inner();
        assert!(!next.duplicate);
        assert_eq!(next.base_offset, end);
    });
}
