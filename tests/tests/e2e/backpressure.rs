//! Credit-paced subscriptions and bounded memory.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::Client;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{Acks, Credit, ProduceRequest, SubscribeRequest};
use sluice_protocol::{MESSAGE_BYTES_MAX, Reason, StatusInfo};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;
use tokio::sync::mpsc;

use crate::{client_with_topic, high_watermark, raw_producer, runtime};

/// A batch of `bytes` / 1 KiB records stamped `timestamp` (ms).
pub(crate) fn batch_stamped(bytes: usize, timestamp: i64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    let value = vec![7u8; 1024];
    for _ in 0..bytes / 1024 {
        b.push(NewRecord {
            key: None,
            value: Some(&value),
            timestamp,
            headers: &[],
        });
    }
    b.build().expect("batch")
}

fn batch_of(bytes: usize) -> Bytes {
    batch_stamped(bytes, 1)
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
pub(crate) async fn subscribe(
    address: &str,
    topic: &str,
    credit: Credit,
) -> (
    tonic::Streaming<sluice_protocol::v1::SubscribeResponse>,
    mpsc::Sender<SubscribeRequest>,
) {
    let first = vec![
        crate::subscribe_wire::start(topic),
        crate::subscribe_wire::credit(credit.bytes, credit.batches),
    ];
    let (call, tx) = crate::subscribe_wire::open(address, first).await;
    (call.expect("subscribe"), tx)
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

/// A raw unary produce of `batch` to partition 0 of `topic`, with a deadline if given.
async fn produce_within(
    raw: &mut ProducerClient<tonic::transport::Channel>,
    topic: &str,
    batch: Bytes,
    deadline: Option<Duration>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ProduceRequest {
        topic: topic.into(),
        partition: 0,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    });
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    raw.produce(request).await.map(|_| ())
}

#[test]
fn unary_produces_that_wait_out_their_deadline_are_throttled_with_a_hint_and_never_stored() {
    // 1 MiB in flight per partition (the least allowed): a 4 MiB batch takes all of it, so
    // such batches are admitted one group commit (a write and fsync of 4 MiB) at a time.
    let broker = TestBroker::start_with(&["--partition-inflight-bytes", "1048576"]);
    runtime().block_on(async {
        let configs = [("max.message.bytes", "8388608")];
        let client = client_with_topic(&broker.address, "tight", 1, &configs).await;
        let raw = raw_producer(&broker.address).await;
        let (big, big_records) = (batch_of(4 << 20), 4096u64);
        let (probe, probe_records) = (batch_of(1024), 1u64);
        const BLOCKERS: u64 = 64;
        // 64 big batches without a deadline keep the budget taken for a while...
        let mut blockers = futures::stream::FuturesUnordered::new();
        for _ in 0..BLOCKERS {
            let (mut raw, big) = (raw.clone(), big.clone());
            blockers.push(async move { produce_within(&mut raw, "tight", big, None).await });
        }
        let blockers = tokio::spawn(async move {
            while let Some(done) = blockers.next().await {
                done.expect("a produce without a deadline waits for budget");
            }
        });
        // ...while small produces with a 150 ms deadline queue behind them (admission is
        // first come, first served): those that cannot get budget in time are answered
        // THROTTLED a little before the deadline. The broker answers a quarter of the
        // deadline early: 30 ms deadlines left too little for a loaded CI machine.
        let (mut acked, mut throttled, mut unknown) = (0u64, 0u64, 0u64);
        let mut raw = raw.clone();
        for _ in 0..2000 {
            if blockers.is_finished() {
                break;
            }
            let deadline = Some(Duration::from_millis(150));
            match produce_within(&mut raw, "tight", probe.clone(), deadline).await {
                Ok(()) => acked += 1,
                Err(status) => {
                    let info = StatusInfo::of(&status);
                    if info.reason == Some(Reason::Throttled) {
                        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                        assert!(info.retry_after_ms.is_some_and(|ms| ms > 0), "{status:?}");
                        throttled += 1;
                    } else if matches!(
                        status.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ) {
                        // Admitted, then out of time: stored or not, the caller cannot know.
                        unknown += 1;
                    } else {
                        panic!("a produce under pressure got {status:?}");
                    }
                }
            }
        }
        blockers.await.expect("blockers");
        assert!(
            throttled > 0,
            "{acked} acked, {throttled} throttled, {unknown} timed out"
        );
        let stored = high_watermark(&client, "tight", 0).await - BLOCKERS * big_records;
        assert!(
            stored >= acked * probe_records && stored <= (acked + unknown) * probe_records,
            "{stored} small batches stored: {acked} acked, {unknown} timed out, {throttled} throttled"
        );
    });
}
