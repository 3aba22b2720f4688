//! T24 on a real broker: 50 scripted security and admin events land in `__audit` exactly
//! once, structured, durable when the admin operation is answered (they survive `kill -9`),
//! and no API deletes, alters or writes the audit topic (docs/security.md, "Audit").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sluice_client::{Client, ConnectOptions, ConsumerConfig, Credentials, Offset, Reason};
use sluice_tests::TestBroker;

use crate::runtime;

const ADMIN_PASSWORD: &str = "audit admin password 41";
const ALICE_PASSWORD: &str = "alice audit password 93";
const AUDIT_TOPIC: &str = "__audit";

async fn login(
    address: &str,
    user: &str,
    password: &str,
) -> Result<Client, sluice_client::ClientError> {
    let options = ConnectOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    };
    Client::connect_with([address], options).await
}

fn acl_on(topic: &str) -> sluice_client::AclEntry {
    sluice_client::AclEntry {
        principal: "User:bob".into(),
        host: "*".into(),
        operation: "READ".into(),
        resource_type: "TOPIC".into(),
        pattern_type: "LITERAL".into(),
        resource_name: topic.into(),
        permission: "ALLOW".into(),
    }
}

/// Every event in `__audit`, read up to its high watermark as it is now.
async fn audit_events(client: &Client) -> Vec<Value> {
    let mut consumer = client.consumer(ConsumerConfig::default());
    let end = consumer
        .resolve(AUDIT_TOPIC, 0, Offset::Latest)
        .await
        .expect("the audit topic's end");
    consumer
        .assign_until(AUDIT_TOPIC, 0, Offset::Earliest, end)
        .await
        .expect("assign the audit topic");
    let mut stream = consumer.into_stream();
    let mut events = Vec::new();
    let read = async {
        while let Some(record) = stream.next().await {
            let record = record.expect("an audit record");
            let value = record.value.as_deref().unwrap_or_default();
            events.push(serde_json::from_slice(value).expect("an audit event is JSON"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the audit topic reads to its end");
    events
}

/// What the script below does, as (operation, resource, outcome) → how many times.
fn expected_events() -> BTreeMap<(String, String, String), usize> {
    let mut expected = BTreeMap::new();
    let mut add = |op: &str, resource: String, outcome: &str| {
        *expected
            .entry((op.to_string(), resource, outcome.to_string()))
            .or_insert(0) += 1;
    };
    add("user.bootstrap", "user:admin".into(), "ok");
    add("login", "user:admin".into(), "ok");
    for i in 0..10 {
        add("user.upsert", format!("user:user-{i}"), "ok");
        add("topic.create", format!("topic:t-{i}"), "ok");
        add(
            "acl.create",
            format!("acl:Allow User:bob from * Read Topic:t-{i} (Literal)"),
            "ok",
        );
    }
    for i in 0..4 {
        add(
            "topic.alter_config",
            format!("topic:t-{i} set {{\"retention.ms\": \"60000\"}} delete []"),
            "ok",
        );
    }
    add("topic.alter_config", "topic:__audit".into(), "denied");
    add("topic.delete", "topic:t-8".into(), "ok");
    add("topic.delete", "topic:t-9".into(), "ok");
    add("topic.delete", "topic:__audit".into(), "denied");
    add("login", "user:user-0".into(), "ok");
    for _ in 0..4 {
        add("login", "user:mallory".into(), "denied");
    }
    for i in 0..5 {
        add(
            "/sluice.v1.Admin/DescribeTopic",
            format!("topic:t-{i}"),
            "denied",
        );
    }
    expected
}

/// Runs the 50 events of [`expected_events`]; returns the super-user's client.
async fn script(address: &str) -> Client {
    let admin = login(address, "admin", ADMIN_PASSWORD)
        .await
        .expect("the bootstrap super-user logs in");
    let users = admin.admin();
    for i in 0..10 {
        users
            .upsert_user(&format!("user-{i}"), ALICE_PASSWORD, None)
            .await
            .expect("create a user");
        admin
            .admin()
            .create_topic(&format!("t-{i}"), 1, 1, HashMap::new())
            .await
            .expect("create a topic");
        users
            .create_acls(vec![acl_on(&format!("t-{i}"))])
            .await
            .expect("create an ACL");
    }
    let retention = HashMap::from([("retention.ms".to_string(), "60000".to_string())]);
    for i in 0..4 {
        admin
            .admin()
            .alter_topic_config(&format!("t-{i}"), retention.clone(), Vec::new())
            .await
            .expect("alter a topic");
    }
    let altered = admin
        .admin()
        .alter_topic_config(AUDIT_TOPIC, retention, Vec::new())
        .await;
    assert_eq!(
        altered.err().and_then(|e| e.reason()),
        Some(Reason::PermissionDenied),
        "the audit topic cannot be reconfigured, even by a super-user"
    );
    for name in ["t-8", "t-9"] {
        admin
            .admin()
            .delete_topic(name)
            .await
            .expect("delete a topic");
    }
    let deleted = admin.admin().delete_topic(AUDIT_TOPIC).await;
    assert_eq!(
        deleted.err().and_then(|e| e.reason()),
        Some(Reason::PermissionDenied),
        "the audit topic cannot be deleted, even by a super-user"
    );
    let user = login(address, "user-0", ALICE_PASSWORD)
        .await
        .expect("a created user logs in");
    for _ in 0..4 {
        let refused = login(address, "mallory", "not a password").await;
        assert_eq!(
            refused.err().and_then(|e| e.reason()),
            Some(Reason::AuthenticationFailed)
        );
    }
    for i in 0..5 {
        let denied = user.admin().describe_topic(&format!("t-{i}")).await;
        assert_eq!(
            denied.err().and_then(|e| e.reason()),
            Some(Reason::PermissionDenied)
        );
    }
    admin
}

fn tally(events: &[Value]) -> BTreeMap<(String, String, String), usize> {
    let mut seen = BTreeMap::new();
    for e in events {
        let field = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        *seen
            .entry((field("operation"), field("resource"), field("outcome")))
            .or_insert(0) += 1;
    }
    seen
}

fn assert_structured(events: &[Value]) {
    let ids: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.get("id").and_then(Value::as_str))
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique: {events:#?}");
    for e in events {
        for key in ["principal", "operation", "outcome", "request_id"] {
            let value = e.get(key).and_then(Value::as_str).unwrap_or_default();
            assert!(!value.is_empty(), "{key} is set in {e}");
        }
        // Only the broker's own acts (the bootstrap user) come from no address.
        let source = e.get("source").and_then(Value::as_str).unwrap_or_default();
        let by_broker = e.get("principal").and_then(Value::as_str) == Some("User:__broker");
        assert_eq!(source.is_empty(), by_broker, "{e}");
        assert!(
            e.get("time_ms").and_then(Value::as_i64).unwrap_or(0) > 0,
            "{e}"
        );
        assert_eq!(e.get("version").and_then(Value::as_u64), Some(1), "{e}");
        let outcome = e.get("outcome").and_then(Value::as_str).unwrap_or_default();
        let reason = e.get("reason").and_then(Value::as_str).unwrap_or_default();
        assert_eq!(
            outcome == "ok",
            reason.is_empty(),
            "a reason for every refusal: {e}"
        );
    }
}

#[test]
fn fifty_security_and_admin_events_are_recorded_once_and_survive_kill_9() {
    let mut broker = TestBroker::start_secured(ADMIN_PASSWORD, &[]);
    let address = broker.address.clone();
    let rt = runtime();
    let expected = expected_events();
    assert_eq!(expected.values().sum::<usize>(), 50);
    rt.block_on(async {
        let admin = script(&address).await;
        // Admin operations and successful logins were answered after their events were
        // durable: they are there at once. Refusals are noted without waiting.
        let durable: BTreeMap<_, _> = expected
            .iter()
            .filter(|((op, _, outcome), _)| outcome == "ok" || op.starts_with("topic."))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let first = tally(&audit_events(&admin).await);
        for (key, count) in &durable {
            assert_eq!(first.get(key), Some(count), "{key:?} present at the answer");
        }
        let started = Instant::now();
        let mut events = audit_events(&admin).await;
        while tally(&events) != expected && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            events = audit_events(&admin).await;
        }
        eprintln!(
            "all 50 events read back {:?} after the script",
            started.elapsed()
        );
        assert_eq!(tally(&events), expected, "{events:#?}");
        assert_structured(&events);
        let from_clients = events.iter().filter(|e| e["source"] == "127.0.0.1").count();
        assert_eq!(from_clients, 49, "{events:#?}");
    });
    broker.kill9();
    broker.restart();
    let address = broker.address.clone();
    rt.block_on(async {
        let admin = login(&address, "admin", ADMIN_PASSWORD)
            .await
            .expect("log in after the restart");
        let events = audit_events(&admin).await;
        let mut after = tally(&events);
        // The login just made is an event of its own.
        let relogin = (
            "login".to_string(),
            "user:admin".to_string(),
            "ok".to_string(),
        );
        if let Some(n) = after.get_mut(&relogin) {
            *n -= 1;
        }
        assert_eq!(after, expected, "after kill -9: {events:#?}");
        assert_structured(&events);
        let producer = admin
            .producer(sluice_client::ProducerConfig {
                retries: 0,
                ..Default::default()
            })
            .await
            .expect("a producer");
        let written = producer
            .send(sluice_client::ProducerRecord::new(AUDIT_TOPIC).value("forged"))
            .await;
        assert!(
            written.is_err(),
            "no client writes the audit topic: {written:?}"
        );
    });
}

#[test]
fn every_broker_of_a_cluster_records_into_the_one_audit_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = sluice_tests::secured_args(dir.path(), ADMIN_PASSWORD);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = sluice_tests::TestCluster::start_with(3, &flags);
    let rt = runtime();
    rt.block_on(async {
        // One client per broker: each broker records its own admin operation, and two of
        // the three do not lead `__audit/0`, so they write through its leader.
        for (i, address) in cluster.addresses().iter().enumerate() {
            let admin = login(address, "admin", ADMIN_PASSWORD)
                .await
                .expect("log in");
            admin
                .admin()
                .create_topic(&format!("n-{i}"), 1, 3, HashMap::new())
                .await
                .expect("create a topic");
        }
        let admin = login(&cluster.addresses()[0], "admin", ADMIN_PASSWORD)
            .await
            .expect("log in");
        let events = audit_events(&admin).await;
        let creators: BTreeMap<String, u64> = events
            .iter()
            .filter(|e| e["operation"] == "topic.create")
            .map(|e| {
                let resource = e["resource"].as_str().unwrap_or_default().to_string();
                (resource, e["node"].as_u64().unwrap_or_default())
            })
            .collect();
        assert_eq!(creators.len(), 3, "{events:#?}");
        let nodes: BTreeSet<u64> = creators.values().copied().collect();
        assert_eq!(nodes.len(), 3, "recorded by each broker: {creators:?}");
    });
}
