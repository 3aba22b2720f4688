//! `Subscribe` as a plain gRPC client sees it, now that the broker writes its responses
//! itself (architecture decision 44): batches short and long arrive intact with the high
//! watermark, a refusal before the stream and an error during it carry their status and
//! reason, and a finished subscription ends cleanly.

use std::time::Duration;

use futures::StreamExt;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{Acks, Credit, ProduceRequest, SubscribeRequest, SubscribeStart};
use sluice_protocol::{MESSAGE_BYTES_MAX, Reason, StatusInfo};
use sluice_storage::Batch;
use sluice_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backpressure::batch_stamped;
use crate::{client_with_topic, raw_producer, runtime};

/// Batch sizes around the broker's share-or-copy line (16 KiB) and well past it.
const BATCH_BYTES: [usize; 5] = [1024, 15 * 1024, 16 * 1024, 200 * 1024, 4096];

/// The first message of a subscription of `topic`'s partition 0 from offset 0.
pub(crate) fn start(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        kind: Some(Kind::Start(SubscribeStart {
            topic: topic.into(),
            partition: 0,
            offset: 0,
        })),
    }
}

/// A credit message.
pub(crate) fn credit(bytes: u64, batches: u32) -> SubscribeRequest {
    SubscribeRequest {
        kind: Some(Kind::Credit(Credit { bytes, batches })),
    }
}

/// Opens `Subscribe` with `first` as the first messages; the call's result and the sender.
pub(crate) async fn open(
    address: &str,
    first: Vec<SubscribeRequest>,
) -> (
    Result<tonic::Streaming<sluice_protocol::v1::SubscribeResponse>, tonic::Status>,
    mpsc::Sender<SubscribeRequest>,
) {
    let mut consumer = ConsumerClient::connect(format!("http://{address}"))
        .await
        .expect("raw consumer")
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(4);
    for message in first {
        tx.send(message).await.expect("queued");
    }
    let call = consumer
        .subscribe(ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (call, tx)
}

#[test]
fn batches_short_and_long_arrive_intact_with_the_high_watermark() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        client_with_topic(&broker.address, "wire", 1, &[]).await;
        let mut producer = raw_producer(&broker.address).await;
        for (i, bytes) in BATCH_BYTES.iter().enumerate() {
            let request = ProduceRequest {
                topic: "wire".into(),
                partition: 0,
                batch: batch_stamped(*bytes, i as i64 + 1),
                acks: Acks::All as i32,
                request_id: 0,
            };
            producer.produce(request).await.expect("produce");
        }
        let records: u64 = BATCH_BYTES.iter().map(|b| (b / 1024) as u64).sum();
        let (call, _tx) = open(&broker.address, vec![start("wire"), credit(1 << 30, 1000)]).await;
        let mut responses = call.expect("subscribed");
        let (mut sizes, mut next, mut high_watermark) = (Vec::new(), 0u64, 0u64);
        while next < records {
            let response = tokio::time::timeout(Duration::from_secs(10), responses.next())
                .await
                .expect("a response in time")
                .expect("the stream is open")
                .expect("ok");
            high_watermark = response.high_watermark;
            for stored in response.batches {
                let batch = Batch::decode(stored).expect("a whole batch with a valid CRC");
                if batch.header().attributes.is_control() {
                    continue;
                }
                let values: Vec<_> = batch
                    .records_vec()
                    .expect("records")
                    .into_iter()
                    .map(|r| r.value.expect("a value"))
                    .collect();
                assert!(
                    values
                        .iter()
                        .all(|v| v.len() == 1024 && v.iter().all(|&b| b == 7))
                );
                assert_eq!(batch.header().base_offset, next, "in order, no gap");
                next += values.len() as u64;
                sizes.push(values.len() * 1024);
            }
        }
        assert_eq!(sizes, BATCH_BYTES.to_vec(), "every batch once, whole");
        assert!(
            high_watermark >= records,
            "the response carries the high watermark ({high_watermark}, {records} records)"
        );
    });
}

#[test]
fn refusals_and_stream_errors_carry_their_status_and_reason() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        client_with_topic(&broker.address, "wire", 1, &[]).await;
        // Before the stream: an unknown topic, and credit before the start.
        let (call, _tx) = open(&broker.address, vec![start("nowhere")]).await;
        let status = call.expect_err("unknown topic");
        assert_eq!(StatusInfo::of(&status).reason, Some(Reason::UnknownTopic));
        assert_eq!(status.code(), Reason::UnknownTopic.code());
        let (call, _tx) = open(&broker.address, vec![credit(1, 1)]).await;
        let status = call.expect_err("credit first");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(StatusInfo::of(&status).reason, Some(Reason::InvalidRequest));
        // During the stream: a second start message ends it with the status as trailers.
        let (call, tx) = open(&broker.address, vec![start("wire")]).await;
        let mut responses = call.expect("subscribed");
        tx.send(start("wire")).await.expect("sent");
        let item = tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("an answer in time")
            .expect("an item");
        let status = item.expect_err("a second start is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(StatusInfo::of(&status).reason, Some(Reason::InvalidRequest));
        // A subscriber that closes its side with no credit left gets a clean end.
        let (call, tx) = open(&broker.address, vec![start("wire")]).await;
        let mut responses = call.expect("subscribed");
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("an end in time");
        assert!(end.is_none(), "ended with OK trailers, got {end:?}");
    });
}
