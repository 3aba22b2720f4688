//! Bad input of every kind gets its documented reason and changes nothing stored.

use std::collections::HashMap;
use std::io::Write;

use sluice_client::{Client, Reason};
use sluice_protocol::StatusInfo;
use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::{FetchPartition, FetchRequest, ProduceRequest};
use sluice_storage::batch::NewRecord;
use sluice_storage::{BatchBuilder, Compression};
use sluice_tests::TestBroker;

use crate::{raw_producer, runtime};

fn small_batch() -> bytes::Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(NewRecord {
        key: Some(b"k"),
        value: Some(&[1u8; 2000]),
        timestamp: 1,
        headers: &[],
    });
    b.build().expect("batch")
}

fn produce_request(topic: &str, partition: u32, batch: bytes::Bytes, acks: i32) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition,
        batch,
        acks,
        request_id: 0,
    }
}

fn reason(status: &tonic::Status) -> Option<Reason> {
    StatusInfo::of(status).reason
}

fn configs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn bad_input_gets_its_reason_and_the_log_is_unchanged() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let admin = client.admin();
        admin
            .create_topic("strict", 2, 1, configs(&[("max.message.bytes", "1024")]))
            .await
            .expect("create");
        let mut raw = raw_producer(&broker.address).await;
        let mut tiny = BatchBuilder::new(Compression::None);
        tiny.push(NewRecord {
            key: None,
            value: Some(b"ok"),
            timestamp: 1,
            headers: &[],
        });
        raw.produce(produce_request(
            "strict",
            0,
            tiny.build().expect("batch"),
            1,
        ))
        .await
        .expect("a valid produce");
        let before = admin.describe_topic("strict").await.expect("describe");

        let mut corrupt = small_batch().to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let e = raw
            .produce(produce_request("strict", 0, corrupt.into(), 1))
            .await
            .expect_err("corrupt");
        assert_eq!(reason(&e), Some(Reason::CorruptBatch), "{e:?}");
        let e = raw
            .produce(produce_request(
                "strict",
                0,
                bytes::Bytes::from_static(b"garbage"),
                1,
            ))
            .await
            .expect_err("garbage batch");
        assert_eq!(reason(&e), Some(Reason::CorruptBatch));
        let e = raw
            .produce(produce_request("strict", 0, small_batch(), 1))
            .await
            .expect_err("too large");
        assert_eq!(reason(&e), Some(Reason::RecordTooLarge));
        let e = raw
            .produce(produce_request("nope", 0, small_batch(), 1))
            .await
            .expect_err("unknown topic");
        assert_eq!(reason(&e), Some(Reason::UnknownTopic));
        let e = raw
            .produce(produce_request("strict", 9, small_batch(), 1))
            .await
            .expect_err("unknown partition");
        assert_eq!(reason(&e), Some(Reason::UnknownPartition));
        let e = raw
            .produce(produce_request("strict", 0, small_batch(), 99))
            .await
            .expect_err("unknown acks");
        assert_eq!(reason(&e), Some(Reason::InvalidRequest));

        for bad in [
            configs(&[("no.such.config", "1")]),
            configs(&[("segment.bytes", "12")]),
            configs(&[("retention.ms", "soon")]),
        ] {
            let e = admin
                .create_topic("bad-config", 1, 1, bad)
                .await
                .expect_err("invalid config");
            assert_eq!(e.reason(), Some(Reason::InvalidConfig), "{e}");
        }
        let e = admin
            .create_topic("too-many-replicas", 1, 3, HashMap::new())
            .await
            .expect_err("rf 3 on one node");
        assert_eq!(e.reason(), Some(Reason::InvalidConfig));
        let e = admin
            .create_topic("strict", 1, 1, HashMap::new())
            .await
            .expect_err("exists");
        assert_eq!(e.reason(), Some(Reason::TopicExists));
        let e = admin
            .create_topic("bad/name", 1, 1, HashMap::new())
            .await
            .expect_err("bad name");
        assert_eq!(e.reason(), Some(Reason::InvalidRequest));
        let e = admin
            .create_topic("zero", 0, 1, HashMap::new())
            .await
            .expect_err("zero partitions");
        assert_eq!(e.reason(), Some(Reason::InvalidConfig));

        let mut consumer = ConsumerClient::connect(format!("http://{}", broker.address))
            .await
            .expect("raw consumer");
        let fetch = FetchRequest {
            partitions: vec![FetchPartition {
                topic: "strict".into(),
                partition: 0,
                offset: 1_000,
                max_bytes: 0,
            }],
            min_bytes: 1,
            max_bytes: 0,
            max_wait_ms: 0,
        };
        let response = consumer.fetch(fetch).await.expect("fetch").into_inner();
        let error = response.partitions[0].error.as_ref().expect("out of range");
        assert_eq!(error.reason, "OFFSET_OUT_OF_RANGE");

        // Garbage on the gRPC port is dropped; the broker keeps serving.
        let mut socket = std::net::TcpStream::connect(&broker.address).expect("tcp");
        let _ = socket.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096));
        drop(socket);

        let after = admin
            .describe_topic("strict")
            .await
            .expect("describe after");
        assert_eq!(
            after.partitions, before.partitions,
            "nothing stored changed"
        );
        assert!(
            admin
                .list_topics()
                .await
                .expect("list")
                .iter()
                .all(|t| t.name == "strict"),
            "no half-created topics"
        );
    });
}
