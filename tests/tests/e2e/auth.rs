//! T22 and T25 on a real broker: SCRAM-SHA-256 logins, session tokens, `--require-auth`,
//! user management, principals from client certificates (docs/security.md).

use std::time::Duration;

use sluice_client::{Client, ClientError, ConnectOptions, Credentials, Reason};
use sluice_protocol::scram;
use sluice_protocol::v1::auth_client::AuthClient;
use sluice_protocol::v1::{ListTopicsRequest, ScramFinishRequest, ScramStartRequest};
use sluice_tests::TestBroker;
use tonic::transport::Channel;

use crate::{produce_values, read_all, runtime};

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const ALICE_PASSWORD: &str = "alice's pencil 7f3a";

fn credentials(user: &str, password: &str) -> ConnectOptions {
    ConnectOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    }
}

async fn login(address: &str, user: &str, password: &str) -> Result<Client, ClientError> {
    Client::connect_with([address], credentials(user, password)).await
}

/// A broker that requires authentication, with super-user `admin` bootstrapped.
fn secured_broker() -> TestBroker {
    TestBroker::start_secured(ADMIN_PASSWORD, &[])
}

async fn raw_channel(address: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn reason(e: &ClientError) -> Option<Reason> {
    e.reason()
}

#[test]
fn scram_sessions_open_the_broker_and_anonymous_or_forged_calls_are_refused() {
    let broker = secured_broker();
    let address = broker.address.clone();
    let rt = runtime();
    rt.block_on(async {
        let anonymous = Client::connect([address.as_str()]).await;
        assert_eq!(
            anonymous.as_ref().err().and_then(reason),
            Some(Reason::AuthenticationRequired),
            "{anonymous:?}"
        );
        let admin = login(&address, "admin", ADMIN_PASSWORD)
            .await
            .expect("the bootstrap super-user logs in");
        let me = admin.admin().who_am_i().await.expect("whoami");
        assert_eq!(
            (me.principal.as_str(), me.method.as_str()),
            ("User:admin", "scram")
        );
        admin
            .admin()
            .upsert_user("alice", ALICE_PASSWORD, None)
            .await
            .expect("a super-user creates a user");
        // With --require-auth the authorizer is on: alice needs an ACL for her topic.
        admin
            .admin()
            .create_acls(vec![acl("ALL", "LITERAL", "orders", "ALLOW")])
            .await
            .expect("an ACL");
        let alice = login(&address, "alice", ALICE_PASSWORD)
            .await
            .expect("alice");
        alice
            .admin()
            .create_topic("orders", 1, 1, Default::default())
            .await
            .expect("create");
        produce_values(&alice, "orders", "v", 5).await;
        assert_eq!(
            read_all(&alice, "orders", 1, 5, Duration::from_secs(10))
                .await
                .len(),
            5
        );
        let denied = alice
            .admin()
            .upsert_user("mallory", "x".repeat(12).as_str(), None)
            .await;
        assert_eq!(
            denied.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied)
        );
        let wrong = login(&address, "alice", "not alice's password").await;
        assert_eq!(
            wrong.err().as_ref().and_then(reason),
            Some(Reason::AuthenticationFailed)
        );
        let nobody = login(&address, "nobody", "whatever").await;
        assert_eq!(
            nobody.err().as_ref().and_then(reason),
            Some(Reason::AuthenticationFailed)
        );

        // A forged token, and a token for another cluster, are refused before the body.
        let mut request = tonic::Request::new(ListTopicsRequest {});
        request
            .metadata_mut()
            .insert("authorization", "Bearer AAAAforged".parse().expect("ascii"));
        let forged =
            sluice_protocol::v1::admin_client::AdminClient::new(raw_channel(&address).await)
                .list_topics(request)
                .await;
        assert_eq!(
            forged.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );

        // A new password ends the sessions opened with the old one.
        admin
            .admin()
            .upsert_user("alice", "alice's new pencil", None)
            .await
            .expect("a new password");
        let stale = alice.admin().list_topics().await;
        assert_eq!(
            stale.err().as_ref().and_then(reason),
            Some(Reason::AuthenticationFailed)
        );
        let alice = login(&address, "alice", "alice's new pencil")
            .await
            .expect("the new password");
        alice.admin().list_topics().await.expect("a fresh session");
        // Deleting a user ends its sessions.
        admin.admin().delete_user("alice").await.expect("delete");
        let after = alice.admin().list_topics().await;
        assert_eq!(
            after.err().as_ref().and_then(reason),
            Some(Reason::AuthenticationFailed)
        );
    });
    // The passwords are nowhere in the data dir (snapshots included) or the broker's log
    // (`data.log` beside the data dir; the operator's bootstrap file is the only other file).
    let log = broker.data_dir().with_extension("log");
    assert!(log.is_file(), "the broker's log at {}", log.display());
    for password in [ADMIN_PASSWORD, ALICE_PASSWORD, "alice's new pencil"] {
        let mut hits = grep(broker.data_dir(), password.as_bytes());
        hits.extend(grep(&log, password.as_bytes()));
        assert!(
            hits.is_empty(),
            "the plaintext password is stored in {hits:?}"
        );
    }
}

/// Files under `dir` that contain `needle`.
fn grep(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path);
        }
    }
    hits
}

#[test]
fn a_replayed_final_message_and_repeated_failures_are_refused() {
    let broker = secured_broker();
    let rt = runtime();
    rt.block_on(async {
        let mut auth = AuthClient::new(raw_channel(&broker.address).await);
        let (first, bare) = scram::client_first("admin", "clientnonce");
        let started = auth
            .scram_start(ScramStartRequest {
                client_first: first,
            })
            .await
            .expect("start")
            .into_inner();
        let answer =
            scram::client_final(ADMIN_PASSWORD, &bare, "clientnonce", &started.server_first)
                .expect("final");
        let finish = ScramFinishRequest {
            exchange_id: started.exchange_id,
            client_final: answer.message,
        };
        let done = auth
            .scram_finish(finish.clone())
            .await
            .expect("finish")
            .into_inner();
        assert_eq!(done.server_final, answer.expected_server_final);
        assert!(!done.token.is_empty());
        let replayed = auth.scram_finish(finish).await;
        assert_eq!(
            replayed.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );

        // Five wrong passwords, then even the right one waits out the window.
        for _ in 0..5 {
            let wrong = login(&broker.address, "admin", "guess").await;
            assert_eq!(
                wrong.err().as_ref().and_then(reason),
                Some(Reason::AuthenticationFailed)
            );
        }
        let throttled = login(&broker.address, "admin", ADMIN_PASSWORD).await;
        assert_eq!(
            throttled.err().as_ref().and_then(reason),
            Some(Reason::Throttled)
        );
    });
}

#[test]
fn a_client_certificate_authenticates_as_its_common_name() {
    use sluice_tests::certs::{LeafSpec, TestCa, listener_flags};
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "sluice-ca");
    let server = ca.leaf("server", &LeafSpec::server("broker"));
    let carol = ca.leaf("carol", &LeafSpec::client("carol"));
    let mut flags = listener_flags("tls-", &server, Some(&ca.cert));
    flags.push("--require-auth".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = TestBroker::start_with(&flags);
    let rt = runtime();
    rt.block_on(async {
        let tls = sluice_client::ClientTls::load(sluice_client::ClientTlsFiles {
            ca: ca.cert.clone(),
            cert: Some(carol.cert.clone()),
            key: Some(carol.key.clone()),
            server_name: None,
        })
        .expect("tls");
        let client = Client::connect_with(
            [broker.address.as_str()],
            ConnectOptions {
                tls: Some(tls),
                ..Default::default()
            },
        )
        .await
        .expect("a client certificate is authentication enough");
        let me = client.admin().who_am_i().await.expect("whoami");
        assert_eq!(
            (me.principal.as_str(), me.method.as_str()),
            ("User:carol", "mtls")
        );
        client
            .admin()
            .list_topics()
            .await
            .expect("an authenticated call");
    });
}

fn acl(operation: &str, pattern: &str, topic: &str, permission: &str) -> sluice_client::AclEntry {
    sluice_client::AclEntry {
        principal: "User:alice".into(),
        host: "*".into(),
        operation: operation.into(),
        resource_type: "TOPIC".into(),
        pattern_type: pattern.into(),
        resource_name: topic.into(),
        permission: permission.into(),
    }
}

async fn send(client: &Client, topic: &str) -> Result<(), ClientError> {
    let producer = client
        .producer(sluice_client::ProducerConfig {
            retries: 0,
            ..Default::default()
        })
        .await?;
    producer
        .send(sluice_client::ProducerRecord::new(topic).value("x"))
        .await
        .map(|_| ())
}

#[test]
fn acls_deny_by_default_allow_by_prefix_and_a_deny_wins() {
    let broker = secured_broker();
    let address = broker.address.clone();
    let rt = runtime();
    rt.block_on(async {
        let admin =
            admin_with_topics_and_alice(&address, &["orders-eu", "orders-secret", "payments"])
                .await;
        let alice = login(&address, "alice", ALICE_PASSWORD)
            .await
            .expect("alice");
        let denied = send(&alice, "orders-eu").await;
        assert_eq!(
            denied.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied),
            "no ACL: deny"
        );
        assert!(alice.admin().list_topics().await.expect("list").is_empty());

        admin
            .admin()
            .create_acls(vec![acl("WRITE", "PREFIXED", "orders", "ALLOW")])
            .await
            .expect("add");
        send(&alice, "orders-eu")
            .await
            .expect("allowed by the prefix");
        let visible: Vec<String> = alice
            .admin()
            .list_topics()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(
            visible,
            ["orders-eu", "orders-secret"],
            "write implies describe"
        );
        let other = send(&alice, "payments").await;
        assert_eq!(
            other.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied)
        );

        admin
            .admin()
            .create_acls(vec![acl("WRITE", "LITERAL", "orders-secret", "DENY")])
            .await
            .expect("add");
        let secret = send(&alice, "orders-secret").await;
        assert_eq!(
            secret.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied),
            "deny wins"
        );
        let read = alice.admin().delete_topic("orders-eu").await;
        assert_eq!(
            read.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied)
        );
        let grant = alice
            .admin()
            .create_acls(vec![acl("ALL", "LITERAL", "*", "ALLOW")])
            .await;
        assert_eq!(
            grant.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied),
            "only super-users manage ACLs"
        );

        let removed = admin
            .admin()
            .delete_acls(vec![acl("WRITE", "PREFIXED", "orders", "ALLOW")])
            .await
            .expect("remove");
        assert_eq!(removed, 1);
        let again = send(&alice, "orders-eu").await;
        assert_eq!(
            again.err().as_ref().and_then(reason),
            Some(Reason::PermissionDenied)
        );
        assert_eq!(admin.admin().list_acls().await.expect("list").len(), 1);
    });
}

#[test]
fn brokers_ask_each_other_for_offsets_as_brokers_under_require_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = sluice_tests::secured_args(dir.path(), ADMIN_PASSWORD);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = sluice_tests::TestCluster::start_with(3, &flags);
    let rt = runtime();
    rt.block_on(async {
        let admin = Client::connect_with(cluster.addresses(), credentials("admin", ADMIN_PASSWORD))
            .await
            .expect("admin");
        // Six partitions over three nodes: the group's coordinator leads some, not all.
        admin
            .admin()
            .create_topic("spread", 6, 3, Default::default())
            .await
            .expect("create");
        let leaders: std::collections::BTreeSet<u64> = admin
            .admin()
            .describe_topic("spread")
            .await
            .expect("describe")
            .partitions
            .iter()
            .map(|p| p.leader)
            .collect();
        assert!(
            leaders.len() > 1,
            "partitions led by one node only: {leaders:?}"
        );
        // Resetting asks each partition's leader for its offsets, broker to broker.
        let reset = admin
            .admin()
            .reset_group_offsets("g", "spread", &[], sluice_client::ResetTo::Latest)
            .await
            .expect("every leader answered the coordinator");
        assert_eq!(reset.len(), 6);
        let described = admin.admin().describe_group("g").await.expect("describe");
        let errors: Vec<&str> = described
            .partitions
            .iter()
            .map(|p| p.error.as_str())
            .filter(|e| !e.is_empty())
            .collect();
        assert!(errors.is_empty(), "lag from other leaders: {errors:?}");
    });
}

/// Logs in as the super-user, creates `topics` (one partition each) and the user alice
/// without any ACL; returns the super-user's client.
async fn admin_with_topics_and_alice(address: &str, topics: &[&str]) -> Client {
    let admin = login(address, "admin", ADMIN_PASSWORD)
        .await
        .expect("admin");
    for topic in topics {
        admin
            .admin()
            .create_topic(topic, 1, 1, Default::default())
            .await
            .expect("create");
    }
    admin
        .admin()
        .upsert_user("alice", ALICE_PASSWORD, None)
        .await
        .expect("alice");
    admin
}

fn group_acl(operation: &str, group: &str) -> sluice_client::AclEntry {
    sluice_client::AclEntry {
        resource_type: "GROUP".into(),
        ..acl(operation, "LITERAL", group, "ALLOW")
    }
}

#[test]
fn group_calls_that_name_topics_need_the_topic_too_and_metadata_shows_only_describable_topics() {
    let broker = secured_broker();
    let address = broker.address.clone();
    let rt = runtime();
    rt.block_on(async {
        let admin = admin_with_topics_and_alice(&address, &["mine", "secret"]).await;
        admin
            .admin()
            .create_acls(vec![
                group_acl("READ", "g"),
                acl("READ", "LITERAL", "mine", "ALLOW"),
            ])
            .await
            .expect("ACLs");
        let alice = login(&address, "alice", ALICE_PASSWORD)
            .await
            .expect("alice");
        // The group alone is not enough to move a topic's offsets (Kafka's rule).
        let refused = alice
            .admin()
            .reset_group_offsets("g", "secret", &[], sluice_client::ResetTo::Earliest)
            .await;
        assert_eq!(
            refused.as_ref().err().and_then(reason),
            Some(Reason::PermissionDenied),
            "{refused:?}"
        );
        alice
            .admin()
            .reset_group_offsets("g", "mine", &[], sluice_client::ResetTo::Earliest)
            .await
            .expect("the group and the topic: allowed");
        let cluster = alice.admin().describe_cluster().await.expect("metadata");
        let names: Vec<&str> = cluster.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["mine"],
            "metadata shows only what alice may describe"
        );
        let everything = admin.admin().describe_cluster().await.expect("metadata");
        assert!(everything.topics.iter().any(|t| t.name == "secret"));
    });
}
