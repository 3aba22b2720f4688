//! Credit-paced subscriptions and bounded memory.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::Client;
use sluice_protocol::MESSAGE_BYTES_MAX;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{Acks, Credit, ProduceRequest, SubscribeRequest, SubscribeStart};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{client_with_topic, runtime};

fn batch_of(bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    let value = vec![7u8; 1024];
    for _ in 0..bytes / 1024 {
        b.push(NewRecord {
            key: None,
            value: Some(&value),
            timestamp: 1,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

async fn produce(address: &str, topic: &str, batch: Bytes) -> Result<u64, tonic::Status> {
    let mut raw = ProducerClient::connect(format!("http://{address}"))
        .await
        .expect("raw producer")
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let request = ProduceRequest {
        topic: topic.into(),
        partition: 0,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    };
    raw.produce(request)
        .await
        .map(|r| r.into_inner().base_offset)
}

/// Opens a subscription from offset 0 with `credit`; returns the response stream and the
/// sender for more credit.
async fn subscribe(
    address: &str,
    topic: &str,
    credit: Credit,
) -> (
    tonic::Streaming<sluice_protocol::v1::SubscribeResponse>,
    mpsc::Sender<SubscribeRequest>,
) {
    let mut consumer = ConsumerClient::connect(format!("http://{address}"))
        .await
        .expect("raw consumer")
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(4);
    let start = SubscribeStart {
        topic: topic.into(),
        partition: 0,
        offset: 0,
    };
    tx.send(SubscribeRequest {
        kind: Some(Kind::Start(start)),
    })
    .await
    .expect("start");
    tx.send(SubscribeRequest {
        kind: Some(Kind::Credit(credit)),
    })
    .await
    .expect("credit");
    let responses = consumer
        .subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    (responses, tx)
}

#[test]
fn a_subscriber_granting_one_batch_receives_exactly_one_batch() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        client_with_topic(&broker.address, "paced", 1, &[]).await;
        for _ in 0..10 {
            produce(&broker.address, "paced", batch_of(4096))
                .await
                .expect("produce");
        }
        let (mut responses, credit) = subscribe(
            &broker.address,
            "paced",
            Credit {
                bytes: 1 << 30,
                batches: 1,
            },
        )
        .await;
        let first = responses.next().await.expect("a response").expect("ok");
        assert_eq!(first.batches.len(), 1);
        let more = tokio::time::timeout(Duration::from_millis(500), responses.next()).await;
        assert!(more.is_err(), "nothing more without more credit");
        credit
            .send(SubscribeRequest {
                kind: Some(Kind::Credit(Credit {
                    bytes: 1 << 30,
                    batches: 2,
                })),
            })
            .await
            .expect("credit");
        let second = responses.next().await.expect("a response").expect("ok");
        assert_eq!(second.batches.len(), 2, "exactly the credit granted");
    });
}

#[test]
fn a_stalled_subscriber_costs_no_buffered_copies_while_1_gib_is_produced() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let configs = [
            ("max.message.bytes".to_string(), (2 << 20).to_string()),
            ("segment.bytes".into(), (128u64 << 20).to_string()),
        ];
        client
            .admin()
            .create_topic("flood", 1, 1, configs.into_iter().collect())
            .await
            .expect("create");
        let batch = batch_of(1 << 20);
        produce(&broker.address, "flood", batch.clone())
            .await
            .expect("warm up");
        // Granted one batch, then silent for the rest of the test.
        let (mut responses, _credit) = subscribe(
            &broker.address,
            "flood",
            Credit {
                bytes: 4 << 20,
                batches: 1,
            },
        )
        .await;
        responses.next().await.expect("first batch").expect("ok");
        let baseline = broker.rss_anon_kib();
        let mut peak = baseline;
        let mut sent = 0u64;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        while sent < 1 << 30 {
            while in_flight.len() < 4 && sent < 1 << 30 {
                in_flight.push(produce(&broker.address, "flood", batch.clone()));
                sent += batch.len() as u64;
            }
            in_flight.next().await.expect("pending").expect("produce");
            peak = peak.max(broker.rss_anon_kib());
        }
        while let Some(done) = in_flight.next().await {
            done.expect("produce");
        }
        peak = peak.max(broker.rss_anon_kib());
        let growth_mib = (peak.saturating_sub(baseline)) / 1024;
        assert!(
            growth_mib < 64,
            "broker anonymous memory grew {growth_mib} MiB (baseline {} MiB)",
            baseline / 1024
        );
    });
}
