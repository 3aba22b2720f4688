//! Byte-rate quotas per principal (docs/security.md, "Quotas"): a principal over its rate
//! is answered THROTTLED with the time until it may go on, other principals are not slowed,
//! and the SDK producer delivers everything by honouring the hint.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{Client, ConnectOptions, Credentials, ProducerConfig, ProducerRecord};
use sluice_protocol::v1::{Acks, FetchPartition, FetchRequest, ProduceRequest};
use sluice_protocol::{Reason, StatusInfo};
use sluice_tests::TestBroker;

use crate::backpressure::batch_stamped;
use crate::{client_with_topic, raw_producer, runtime};

const ADMIN_PASSWORD: &str = "quota admin password 5";
const TENANT_PASSWORD: &str = "quota tenant password 8";

fn produce_request(topic: &str, batch: Bytes) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition: 0,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    }
}

#[test]
fn a_principal_over_its_default_rates_is_throttled_with_the_wait_as_its_hint() {
    let broker = TestBroker::start_with(&[
        "--quota-produce-bytes-per-sec",
        "100000",
        "--quota-fetch-bytes-per-sec",
        "100000",
    ]);
    let rt = runtime();
    rt.block_on(async {
        let _client = client_with_topic(&broker.address, "q", 1, &[]).await;
        let mut raw = raw_producer(&broker.address).await;
        // 64 KiB twice: the bucket's second of rate, then into debt; the third waits.
        for _ in 0..2 {
            raw.produce(produce_request("q", batch_stamped(64 * 1024, 1)))
                .await
                .expect("within the rate");
        }
        let refused = raw
            .produce(produce_request("q", batch_stamped(64 * 1024, 1)))
            .await
            .expect_err("over the rate");
        let info = StatusInfo::of(&refused);
        assert_eq!(info.reason, Some(Reason::Throttled), "{refused:?}");
        let wait = info.retry_after_ms.expect("a retry hint");
        // The debt is about 31 KB at 100 KB/s: about 300 ms, not the generic 100 ms hint.
        assert!((200..=400).contains(&wait), "hint {wait} ms: {refused:?}");
        tokio::time::sleep(Duration::from_millis(u64::from(wait) + 20)).await;
        raw.produce(produce_request("q", batch_stamped(1024, 1)))
            .await
            .expect("accepted once the debt is paid");

        // Fetch: a large read puts the principal in debt; the next fetch is refused.
        let mut consumer = sluice_protocol::v1::consumer_client::ConsumerClient::connect(format!(
            "http://{}",
            broker.address
        ))
        .await
        .expect("consumer");
        let fetch = FetchRequest {
            partitions: vec![FetchPartition {
                topic: "q".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
            }],
            max_bytes: 4 * 1024 * 1024,
            min_bytes: 0,
            max_wait_ms: 0,
        };
        let read = consumer.fetch(fetch.clone()).await.expect("first fetch");
        let bytes: usize = read.get_ref().partitions[0]
            .batches
            .iter()
            .map(Bytes::len)
            .sum();
        assert!(bytes > 100_000, "{bytes} bytes read");
        let refused = consumer
            .fetch(fetch)
            .await
            .expect_err("over the fetch rate");
        let info = StatusInfo::of(&refused);
        assert_eq!(info.reason, Some(Reason::Throttled), "{refused:?}");
        assert!(info.retry_after_ms.is_some_and(|ms| ms > 0), "{refused:?}");
    });
}

async fn login(address: &str, user: &str, password: &str) -> Client {
    let options = ConnectOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    };
    Client::connect_with([address], options)
        .await
        .expect("log in")
}

#[test]
fn one_tenants_quota_does_not_slow_another_and_the_sdk_waits_it_out() {
    let broker = TestBroker::start_secured(ADMIN_PASSWORD, &[]);
    let rt = runtime();
    rt.block_on(async {
        let admin = login(&broker.address, "admin", ADMIN_PASSWORD).await;
        admin
            .admin()
            .create_topic("shared", 1, 1, Default::default())
            .await
            .expect("create");
        admin
            .admin()
            .upsert_user("tenant", TENANT_PASSWORD, None)
            .await
            .expect("user");
        admin
            .admin()
            .create_acls(vec![sluice_client::AclEntry {
                principal: "User:tenant".into(),
                host: "*".into(),
                operation: "ALL".into(),
                resource_type: "TOPIC".into(),
                pattern_type: "LITERAL".into(),
                resource_name: "shared".into(),
                permission: "ALLOW".into(),
            }])
            .await
            .expect("acl");
        let rate = 1_000_000u64;
        admin
            .admin()
            .set_quota("User:tenant", Some(rate), None)
            .await
            .expect("set a quota");
        let (defaults, quotas) = admin.admin().list_quotas().await.expect("list");
        assert_eq!(defaults.produce_bytes_per_sec, None);
        assert_eq!(quotas.len(), 1, "{quotas:?}");
        assert_eq!(quotas[0].produce_bytes_per_sec, Some(rate));

        let tenant = login(&broker.address, "tenant", TENANT_PASSWORD).await;
        let value = vec![1u8; 10_000];
        let total = 400usize;
        let producer = tenant
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let started = Instant::now();
        let mut acks = Vec::new();
        for _ in 0..total {
            acks.push(
                producer
                    .enqueue(ProducerRecord::new("shared").value(value.clone()))
                    .await
                    .expect("queued"),
            );
        }
        for ack in acks {
            ack.wait().await.expect("delivered despite the quota");
        }
        let took = started.elapsed();
        // 4 MB at 1 MB/s, less the first second's bucket and the one request let into
        // debt (at most a 1 MiB batch): at least 2 s of waiting.
        assert!(took >= Duration::from_millis(1500), "4 MB in {took:?}");

        // The super-user has no quota: a burst of its own is not throttled.
        let producer = admin
            .producer(ProducerConfig {
                retries: 0,
                ..Default::default()
            })
            .await
            .expect("producer");
        for _ in 0..40 {
            producer
                .send(ProducerRecord::new("shared").value(value.clone()))
                .await
                .expect("not throttled");
        }
        admin
            .admin()
            .delete_quota("User:tenant")
            .await
            .expect("delete the quota");
    });
}
