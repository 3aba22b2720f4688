//! Hostile inputs get short errors: every status and `ErrorInfo` stays under 1 KiB, so a
//! default client sees the broker's reason instead of its own library's
//! `RESOURCE_EXHAUSTED` for oversized metadata.

use std::collections::HashMap;

use futures::StreamExt;
use sluice_client::Reason;
use sluice_protocol::StatusInfo;
use sluice_protocol::v1::admin_client::AdminClient;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::{
    AlterTopicConfigRequest, CreateTopicRequest, DescribeTopicRequest, ErrorInfo, FetchPartition,
    FetchRequest, ProduceRequest,
};
use sluice_tests::TestBroker;

use crate::runtime;

/// Largest status or `ErrorInfo` a hostile input may cause, message and metadata together.
const ERROR_BYTES_MAX: usize = 1024;

fn status_bytes(status: &tonic::Status) -> usize {
    let metadata: usize = status
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    status.message().len() + metadata
}

fn check_status(what: &str, status: &tonic::Status, reason: Reason) {
    assert_eq!(
        StatusInfo::of(status).reason,
        Some(reason),
        "{what}: {} bytes, code {:?}",
        status.message().len(),
        status.code()
    );
    assert!(
        status_bytes(status) < ERROR_BYTES_MAX,
        "{what}: {} bytes",
        status_bytes(status)
    );
}

fn check_info(what: &str, info: &ErrorInfo, reason: Reason) {
    assert_eq!(info.reason, reason.as_str(), "{what}");
    let size = info.reason.len() + info.message.len() + info.leader_hint.len();
    assert!(size < ERROR_BYTES_MAX, "{what}: {size} bytes");
}

#[test]
fn hostile_inputs_get_their_reason_in_a_short_error() {
    let broker = TestBroker::start();
    let url = format!("http://{}", broker.address);
    let long = "x".repeat(1_000_000);
    let long_utf8 = "é".repeat(500_000);
    runtime().block_on(async {
        // Default clients: tonic's own limits, as a user's would be.
        let mut admin = AdminClient::connect(url.clone()).await.expect("admin");
        let mut producer = ProducerClient::connect(url.clone())
            .await
            .expect("producer");
        let mut consumer = ConsumerClient::connect(url).await.expect("consumer");
        for name in [&long, &long_utf8] {
            let create = CreateTopicRequest {
                name: name.clone(),
                partitions: 1,
                replication_factor: 1,
                configs: HashMap::new(),
            };
            let status = admin.create_topic(create).await.expect_err("refused");
            check_status("create, long name", &status, Reason::InvalidRequest);
            let describe = DescribeTopicRequest { name: name.clone() };
            let status = admin.describe_topic(describe).await.expect_err("refused");
            check_status("describe, long name", &status, Reason::UnknownTopic);
        }
        for configs in [
            HashMap::from([(long.clone(), "1".to_string())]),
            HashMap::from([("retention.ms".to_string(), long.clone())]),
            HashMap::from([("cleanup.policy".to_string(), long_utf8.clone())]),
        ] {
            let create = CreateTopicRequest {
                name: "hostile".into(),
                partitions: 1,
                replication_factor: 1,
                configs: configs.clone(),
            };
            let status = admin.create_topic(create).await.expect_err("refused");
            check_status("create, long config", &status, Reason::InvalidConfig);
        }
        admin
            .create_topic(CreateTopicRequest {
                name: "hostile".into(),
                partitions: 1,
                replication_factor: 1,
                configs: HashMap::new(),
            })
            .await
            .expect("create");
        let alter = AlterTopicConfigRequest {
            name: "hostile".into(),
            set: HashMap::from([(long.clone(), long.clone())]),
            delete: vec![long.clone()],
        };
        let status = admin.alter_topic_config(alter).await.expect_err("refused");
        check_status("alter, long config", &status, Reason::InvalidConfig);

        let produce = ProduceRequest {
            topic: long.clone(),
            partition: 0,
            batch: bytes::Bytes::new(),
            acks: 1,
            request_id: 7,
        };
        let status = producer
            .produce(produce.clone())
            .await
            .expect_err("refused");
        check_status("produce, long topic", &status, Reason::UnknownTopic);
        let mut answers = producer
            .produce_stream(futures::stream::iter([produce]))
            .await
            .expect("stream")
            .into_inner();
        let answer = answers.next().await.expect("an answer").expect("answer");
        let info = answer.error.expect("an error");
        check_info("produce stream, long topic", &info, Reason::UnknownTopic);

        let fetch = FetchRequest {
            partitions: vec![FetchPartition {
                topic: long.clone(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
            }],
            min_bytes: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        };
        match consumer.fetch(fetch).await {
            Err(status) => check_status("fetch, long topic", &status, Reason::UnknownTopic),
            Ok(response) => {
                for p in response.into_inner().partitions {
                    let info = p.error.expect("an error for an unknown topic");
                    check_info("fetch, long topic", &info, Reason::UnknownTopic);
                }
            }
        }
    });
}
