//! Pipelined produce over `ProduceStream` and the long-poll fetch.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::{Acks, FetchPartition, FetchRequest, ProduceRequest};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{client_with_topic, raw_producer, runtime};

fn batch(records: u32) -> Bytes {
    let mut b = BatchBuilder::new(Compression::Lz4);
    for i in 0..records {
        b.push(NewRecord {
            key: None,
            value: Some(format!("r{i}").as_bytes()),
            timestamp: 1,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

#[test]
fn a_produce_stream_answers_in_request_order_and_an_error_answers_only_its_request() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        client_with_topic(&broker.address, "piped", 1, &[]).await;
        let mut raw = raw_producer(&broker.address).await;
        let (tx, rx) = mpsc::channel(256);
        for request_id in 0..200u64 {
            let payload = if request_id == 100 {
                Bytes::from_static(b"not a batch")
            } else {
                batch(3)
            };
            let request = ProduceRequest {
                topic: "piped".into(),
                partition: 0,
                batch: payload,
                acks: Acks::All as i32,
                request_id,
            };
            tx.send(request).await.expect("queue");
        }
        drop(tx);
        let mut responses = raw
            .produce_stream(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let mut next_offset = 0;
        for request_id in 0..200u64 {
            let response = responses
                .next()
                .await
                .expect("a response per request")
                .expect("ok");
            assert_eq!(
                response.request_id, request_id,
                "answers come in request order"
            );
            if request_id == 100 {
                assert_eq!(
                    response.error.as_ref().map(|e| e.reason.as_str()),
                    Some("CORRUPT_BATCH")
                );
                continue;
            }
            assert!(response.error.is_none(), "{response:?}");
            assert_eq!(
                response.base_offset, next_offset,
                "offsets follow request order"
            );
            next_offset += 3;
        }
        assert!(
            responses.next().await.is_none(),
            "the stream ends after the last answer"
        );
    });
}

#[test]
fn a_fetch_at_the_high_watermark_waits_for_data_then_returns_early() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        client_with_topic(&broker.address, "polled", 1, &[]).await;
        let mut consumer = ConsumerClient::connect(format!("http://{}", broker.address))
            .await
            .expect("raw consumer");
        let fetch = FetchRequest {
            partitions: vec![FetchPartition {
                topic: "polled".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
            }],
            min_bytes: 1,
            max_bytes: 0,
            max_wait_ms: 10_000,
        };
        let address = broker.address.clone();
        let producer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut raw = ProducerClient::connect(format!("http://{address}"))
                .await
                .expect("raw");
            raw.produce(ProduceRequest {
                topic: "polled".into(),
                partition: 0,
                batch: batch(2),
                acks: Acks::All as i32,
                request_id: 0,
            })
            .await
            .expect("produce");
        });
        let started = Instant::now();
        let response = consumer
            .fetch(fetch.clone())
            .await
            .expect("fetch")
            .into_inner();
        let waited = started.elapsed();
        producer.await.expect("producer task");
        let partition = &response.partitions[0];
        assert_eq!(
            partition.batches.len(),
            1,
            "the long poll returned the new batch"
        );
        assert_eq!(partition.high_watermark, 2);
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(9),
            "returned on data, not on timeout: {waited:?}"
        );
        // Nothing new and a short wait: an empty answer when the wait is over.
        let empty = FetchRequest {
            partitions: vec![FetchPartition {
                offset: 2,
                ..fetch.partitions[0].clone()
            }],
            max_wait_ms: 100,
            ..fetch
        };
        let response = consumer.fetch(empty).await.expect("fetch").into_inner();
        assert!(response.partitions[0].batches.is_empty());
        assert!(response.partitions[0].error.is_none());
    });
}

#[test]
fn a_bounded_assignment_ends_its_stream_at_the_bound() {
    use sluice_client::{ConsumerConfig, Offset, ProducerConfig, ProducerRecord};
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = client_with_topic(&broker.address, "bounded", 2, &[]).await;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        for i in 0..10u32 {
            let record = ProducerRecord::new("bounded")
                .partition(0)
                .value(format!("v{i}"));
            producer.send(record).await.expect("send");
        }
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer
            .assign_until("bounded", 0, Offset::Earliest, 6)
            .await
            .expect("assign");
        // Partition 1 is empty: a bound at its high watermark (0) ends it at once.
        consumer
            .assign_until("bounded", 1, Offset::Earliest, 0)
            .await
            .expect("assign");
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            consumer.into_stream().collect::<Vec<_>>(),
        )
        .await
        .expect("the stream ends by itself");
        let offsets: Vec<u64> = read
            .into_iter()
            .map(|r| r.expect("record").offset)
            .collect();
        assert_eq!(offsets, (0..6).collect::<Vec<u64>>());
    });
}
