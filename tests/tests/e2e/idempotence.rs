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
        let producer_id = raw
            .init_producer_id(InitProducerIdRequest {})
            .await
            .expect("producer id")
            .into_inner()
            .producer_id;
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
