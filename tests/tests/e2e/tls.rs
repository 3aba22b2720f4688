//! T21 on real processes: TLS on the client port, mutual TLS, broker identity on the
//! internal port, certificate reload on SIGHUP (docs/security.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientTls, ClientTlsFiles, ConnectOptions};
use sluice_protocol::internal::v1::raft_client::RaftClient;
use sluice_tests::certs::{LeafSpec, TestCa, listener_flags};
use sluice_tests::{TestBroker, TestCluster};

use crate::{produce_values, read_all, runtime};

/// TLS client settings trusting `ca`, with a client certificate if given.
fn tls(ca: &Path, identity: Option<&sluice_tests::certs::Leaf>) -> Arc<ClientTls> {
    ClientTls::load(ClientTlsFiles {
        ca: ca.to_path_buf(),
        cert: identity.map(|l| l.cert.clone()),
        key: identity.map(|l| l.key.clone()),
        server_name: None,
    })
    .expect("client TLS settings")
}

async fn connect(address: &str, tls: Option<Arc<ClientTls>>) -> Result<Client, String> {
    Client::connect_with(
        [address],
        ConnectOptions {
            tls,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())
}

/// Whether a client with `tls` can list topics at `address` (a refused handshake may only
/// show on the first call, so the call is made, not just the connection).
async fn works(address: &str, tls: Option<Arc<ClientTls>>) -> Result<(), String> {
    let client = connect(address, tls).await?;
    client
        .admin()
        .list_topics()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn start_tls(args: &[String]) -> TestBroker {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestBroker::start_with(&args)
}

#[test]
fn the_client_port_serves_tls_and_refuses_plaintext_and_bad_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "sluice-ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let good = ca.leaf("good", &LeafSpec::server("broker"));
    let broker = start_tls(&listener_flags("tls-", &good, None));
    let plain = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = connect(&broker.address, Some(tls(&ca.cert, None)))
            .await
            .expect("a TLS client connects");
        client
            .admin()
            .create_topic("secure", 1, 1, Default::default())
            .await
            .expect("create over TLS");
        produce_values(&client, "secure", "v", 10).await;
        assert_eq!(
            read_all(&client, "secure", 1, 10, Duration::from_secs(10))
                .await
                .len(),
            10
        );
        assert!(
            works(&broker.address, None).await.is_err(),
            "a plaintext client on the TLS port"
        );
        assert!(
            works(&plain.address, Some(tls(&ca.cert, None)))
                .await
                .is_err(),
            "a TLS client on a plaintext port"
        );
        assert!(
            works(&broker.address, Some(tls(&other_ca.cert, None)))
                .await
                .is_err(),
            "a server certificate from an untrusted CA"
        );
    });
    // Each bad server certificate on a broker of its own.
    let bad = [
        ("expired", (2000, 2001), &["127.0.0.1", "localhost"][..]),
        (
            "not-yet-valid",
            (3900, 4000),
            &["127.0.0.1", "localhost"][..],
        ),
        ("wrong-san", (2000, 4000), &["other.example"][..]),
    ];
    for (name, years, sans) in bad {
        let spec = LeafSpec {
            name: "broker",
            sans,
            years,
            ..LeafSpec::server("broker")
        };
        let leaf = ca.leaf(name, &spec);
        let broker = start_tls(&listener_flags("tls-", &leaf, None));
        let refused = rt.block_on(works(&broker.address, Some(tls(&ca.cert, None))));
        assert!(refused.is_err(), "a server certificate {name} was accepted");
    }
}

#[test]
fn a_port_with_a_client_ca_requires_a_valid_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "sluice-ca");
    let clients = TestCa::new(dir.path(), "client-ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let server = ca.leaf("server", &LeafSpec::server("broker"));
    let broker = start_tls(&listener_flags("tls-", &server, Some(&clients.cert)));
    let alice = clients.leaf("alice", &LeafSpec::client("alice"));
    let mallory = other.leaf("mallory", &LeafSpec::client("mallory"));
    let expired = clients.leaf(
        "expired-client",
        &LeafSpec {
            years: (2000, 2001),
            ..LeafSpec::client("bob")
        },
    );
    let rt = runtime();
    rt.block_on(async {
        works(&broker.address, Some(tls(&ca.cert, Some(&alice))))
            .await
            .expect("a client certificate from the client CA is accepted");
        for (what, identity) in [
            ("no client certificate", None),
            ("a client certificate from another CA", Some(&mallory)),
            ("an expired client certificate", Some(&expired)),
        ] {
            assert!(
                works(&broker.address, Some(tls(&ca.cert, identity)))
                    .await
                    .is_err(),
                "{what} was accepted"
            );
        }
    });
}

/// Polls (bounded) until `check` gives `want`.
async fn eventually<F, Fut>(what: &str, want: bool, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while check().await != want {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn sighup_reloads_the_certificates_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old_ca = TestCa::new(dir.path(), "old-ca");
    let new_ca = TestCa::new(dir.path(), "new-ca");
    let live = old_ca.leaf("live", &LeafSpec::server("broker"));
    let broker = start_tls(&listener_flags("tls-", &live, None));
    let rt = runtime();
    rt.block_on(async {
        works(&broker.address, Some(tls(&old_ca.cert, None)))
            .await
            .expect("the first certificate serves");
        // A broken key file is refused and the old certificate stays.
        std::fs::write(&live.key, "not a key").expect("break the key");
        broker.signal("HUP");
        let rotated = new_ca.leaf("rotated", &LeafSpec::server("broker"));
        works(&broker.address, Some(tls(&old_ca.cert, None)))
            .await
            .expect(
                "a failed reload keeps the old certificate (and SIGHUP does not stop the broker)",
            );
        std::fs::copy(&rotated.cert, &live.cert).expect("rotate the certificate");
        std::fs::copy(&rotated.key, &live.key).expect("rotate the key");
        broker.signal("HUP");
        let address = broker.address.clone();
        eventually("the new certificate is served after SIGHUP", true, || {
            let address = address.clone();
            let ca = new_ca.cert.clone();
            async move { works(&address, Some(tls(&ca, None))).await.is_ok() }
        })
        .await;
        assert!(
            works(&broker.address, Some(tls(&old_ca.cert, None)))
                .await
                .is_err(),
            "the old certificate is no longer served"
        );
    });
    assert!(broker.is_running());
}

#[test]
fn brokers_speak_mutual_tls_and_refuse_client_certificates_on_the_internal_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster_ca = TestCa::new(dir.path(), "cluster-ca");
    let client_ca = TestCa::new(dir.path(), "client-ca");
    let broker = cluster_ca.leaf("broker", &LeafSpec::broker("broker"));
    let alice = client_ca.leaf("alice", &LeafSpec::client("alice"));
    // A certificate from the cluster's CA that is not a broker's: it passes the handshake
    // but not the cluster secret.
    let insider = cluster_ca.leaf("insider", &LeafSpec::client("insider"));
    let mut args = listener_flags("raft-tls-", &broker, Some(&cluster_ca.cert));
    // The client port: TLS with client certificates from the client CA; brokers verify each
    // other's client ports (group coordination) by the cluster CA.
    args.extend(listener_flags("tls-", &broker, Some(&client_ca.cert)));
    args.extend([
        "--tls-ca".to_string(),
        cluster_ca.cert.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_with(3, &args);
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(
            cluster.addresses(),
            ConnectOptions {
                tls: Some(tls(&cluster_ca.cert, Some(&alice))),
                ..Default::default()
            },
        )
        .await
        .expect("connect with a client certificate");
        client
            .admin()
            .create_topic("replicated", 2, 3, Default::default())
            .await
            .expect("an RF 3 topic over internal mutual TLS");
        produce_values(&client, "replicated", "v", 20).await;
        assert_eq!(
            read_all(&client, "replicated", 2, 20, Duration::from_secs(20))
                .await
                .len(),
            20
        );
        let raft = cluster.nodes[0].raft_address().expect("raft address");
        // Refused by TLS: no gRPC call is served, so the cluster secret is never reached.
        for (what, identity, ca) in [
            ("plaintext", None, None),
            ("no client certificate", None, Some(&cluster_ca.cert)),
            (
                "a client's certificate",
                Some(&alice),
                Some(&cluster_ca.cert),
            ),
        ] {
            let outcome = internal_vote(&raft, ca.map(|ca| tls(ca, identity))).await;
            assert!(
                !served(outcome),
                "the internal port served a Vote with {what}: {outcome:?}"
            );
        }
        let refused = internal_vote(&raft, Some(tls(&cluster_ca.cert, Some(&insider)))).await;
        assert_eq!(
            refused,
            Err(tonic::Code::Unauthenticated),
            "a certificate of the cluster CA without the cluster secret"
        );
    });
}

/// A Vote on the internal port at `address`, without the cluster secret: the status code
/// (`Unavailable` if no connection was made).
async fn internal_vote(address: &str, tls: Option<Arc<ClientTls>>) -> Result<(), tonic::Code> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| tonic::Code::InvalidArgument)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let channel = sluice_protocol::transport::connect(endpoint, tls)
        .await
        .map_err(|_| tonic::Code::Unavailable)?;
    RaftClient::new(channel)
        .vote(sluice_protocol::internal::v1::VoteRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

/// Whether the internal service itself answered (the cluster-secret check refuses with
/// these), rather than the connection failing first.
fn served(outcome: Result<(), tonic::Code>) -> bool {
    matches!(
        outcome,
        Ok(()) | Err(tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition)
    )
}
