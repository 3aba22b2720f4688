//! The `sluice` command line against a real `sluiced`: the command contract, JSON output and
//! exit codes.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sluice_tests::TestBroker;

fn sluice(broker: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--brokers", broker])
        .args(args)
        .env_remove("SLUICE_BROKERS")
        .output()
        .expect("run sluice")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sluice failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sluice produce` with `input` on stdin.
fn produce(broker: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--brokers", broker, "produce"])
        .args(args)
        .env_remove("SLUICE_BROKERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice produce");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("sluice produce finishes")
}

fn json(out: &Output) -> Value {
    serde_json::from_str(ok_stdout(out).trim()).expect("one JSON document")
}

#[test]
fn topic_lifecycle() {
    let broker = TestBroker::start();
    let b = broker.address.as_str();
    let created = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "topic",
            "create",
            "events",
            "-p",
            "3",
            "-c",
            "retention.ms=3600000",
        ],
    ));
    assert_eq!(created["partitions"].as_array().map(Vec::len), Some(3));
    assert_eq!(created["configs"]["retention.ms"], "3600000");

    let listed = ok_stdout(&sluice(b, &["topic", "list"]));
    assert!(listed.lines().any(|l| l.starts_with("events ")), "{listed}");

    let altered = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "topic",
            "alter-config",
            "events",
            "--set",
            "retention.bytes=1048576",
        ],
    ));
    assert_eq!(altered["configs"]["retention.bytes"], "1048576");

    let grown = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "topic",
            "add-partitions",
            "events",
            "--count",
            "2",
        ],
    ));
    assert_eq!(grown["partitions"].as_array().map(Vec::len), Some(5));

    let described = ok_stdout(&sluice(b, &["topic", "describe", "events"]));
    assert!(described.contains("HIGH-WATERMARK"), "{described}");
    assert!(
        described.contains("STATUS") && described.contains("online"),
        "{described}"
    );
    let described = json(&sluice(
        b,
        &["--format", "json", "topic", "describe", "events"],
    ));
    assert_eq!(
        described["partitions"][0]["status"], "online",
        "{described}"
    );

    ok_stdout(&sluice(b, &["topic", "delete", "events"]));
    let listed = json(&sluice(b, &["--format", "json", "topic", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

#[test]
fn ten_thousand_keyed_lines_come_back_in_order_per_partition() {
    let broker = TestBroker::start();
    let b = broker.address.as_str();
    ok_stdout(&sluice(b, &["topic", "create", "lines", "-p", "4"]));
    let input: String = (0..10_000)
        .map(|i| format!("key-{}:value-{i}\n", i % 97))
        .collect();
    let produced = produce(
        b,
        &["lines", "--key-separator", ":", "--print-offsets"],
        input.as_bytes(),
    );
    let offsets = ok_stdout(&produced);
    assert_eq!(
        offsets.lines().count(),
        10_000,
        "one `partition offset` per line"
    );

    let out = sluice(
        b,
        &[
            "--format",
            "json",
            "consume",
            "lines",
            "--from",
            "beginning",
            "--num",
            "10000",
        ],
    );
    let text = ok_stdout(&out);
    let mut last_value: HashMap<String, i64> = HashMap::new();
    let mut last_offset: HashMap<u64, u64> = HashMap::new();
    let mut count = 0;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).expect("one JSON object per record");
        let key = record["key"].as_str().expect("key").to_string();
        let value = record["value"].as_str().expect("value");
        let n: i64 = value.trim_start_matches("value-").parse().expect("number");
        assert_eq!(key, format!("key-{}", n % 97), "key travels with its value");
        // One key lives on one partition, so its values arrive in input order.
        let previous = last_value.insert(key, n).unwrap_or(-1);
        assert!(n > previous, "record {n} after {previous}");
        let partition = record["partition"].as_u64().expect("partition");
        let offset = record["offset"].as_u64().expect("offset");
        if let Some(prev) = last_offset.insert(partition, offset) {
            assert!(
                offset > prev,
                "offsets increase within partition {partition}"
            );
        }
        count += 1;
    }
    assert_eq!(count, 10_000);

    let tail = ok_stdout(&sluice(
        b,
        &[
            "consume",
            "lines",
            "--from",
            "beginning",
            "--until-end",
            "--partition",
            "0",
        ],
    ));
    assert!(
        tail.lines().all(|l| l.starts_with("value-")),
        "text prints values"
    );
}

#[test]
fn exit_codes_say_refused_usage_or_unreachable() {
    let broker = TestBroker::start();
    let b = broker.address.as_str();
    let refused = sluice(b, &["topic", "describe", "missing"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNKNOWN_TOPIC"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    assert_eq!(sluice(b, &["topic", "create"]).status.code(), Some(2));
    assert_eq!(
        sluice(b, &["topic", "list", "--no-such-flag"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        sluice(b, &["consume", "x", "--from", "yesterday"])
            .status
            .code(),
        Some(2)
    );

    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let unreachable = sluice(&format!("127.0.0.1:{port}"), &["topic", "list"]);
    assert_eq!(unreachable.status.code(), Some(3));
}

#[test]
fn bench_reports_throughput_as_json() {
    let broker = TestBroker::start();
    let b = broker.address.as_str();
    let report = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "bench",
            "produce",
            "--records",
            "2000",
            "--partitions",
            "2",
            "--record-size",
            "100",
        ],
    ));
    assert_eq!(report["records"], 2000);
    assert!(
        report["records_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    let consumed = json(&sluice(
        b,
        &["--format", "json", "bench", "consume", "--records", "2000"],
    ));
    assert_eq!(consumed["records"], 2000);
    // Paced: the report says what was asked and what was sent, and how many latencies.
    let paced = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "bench",
            "produce",
            "--records",
            "400",
            "--rate",
            "1000",
            "--producers",
            "2",
            "--warmup",
            "0.1",
            "--record-size",
            "100",
        ],
    ));
    assert_eq!(paced["records"], 400);
    assert_eq!(paced["pace"]["requested_per_s"], 1000.0);
    let achieved = paced["pace"]["achieved_per_s"].as_f64().unwrap_or(0.0);
    assert!(achieved > 0.0 && achieved < 2000.0, "{paced}");
    // The first 0.1 s (about 100 records) are sent but not measured.
    let samples = paced["latency_samples"].as_u64().unwrap_or(0);
    assert!((200..400).contains(&samples), "{paced}");
}

#[test]
fn completions_are_printed_for_bash() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["completions", "bash"])
        .output()
        .expect("run sluice");
    assert!(ok_stdout(&out).contains("sluice"));
}

/// The Prometheus text the broker serves on `address`.
fn scrape(address: &str) -> String {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

#[test]
fn the_broker_exports_produce_partition_and_raft_metrics() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let broker = TestBroker::start_with(&["--metrics-listen", &metrics]);
    let b = broker.address.as_str();
    ok_stdout(&sluice(b, &["topic", "create", "observed", "-p", "2"]));
    ok_stdout(&produce(b, &["observed"], b"one\ntwo\nthree\n"));
    ok_stdout(&sluice(
        b,
        &["consume", "observed", "--from", "beginning", "--num", "3"],
    ));
    let wanted = [
        "sluice_produce_records_total{topic=\"observed\"} 3",
        "sluice_produce_latency_seconds",
        "sluice_fetch_bytes_total{topic=\"observed\"}",
        "sluice_partition_high_watermark{topic=\"observed\",partition=\"0\"}",
        "sluice_partition_segments",
        "sluice_raft_term{group=\"controller\"}",
        "sluice_raft_commit_index{group=\"observed/1\"}",
        "sluice_produce_inflight_bytes",
    ];
    // Gauges are sampled every 2 s: poll until all are there, bounded.
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&metrics);
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for w in wanted {
        assert!(text.contains(w), "metrics lack {w}:\n{text}");
    }
}

#[test]
fn cluster_commands_work_given_any_one_node() {
    let cluster = sluice_tests::TestCluster::start(3);
    let second = &cluster.nodes[1].address;
    let info = json(&sluice(second, &["--format", "json", "cluster", "info"]));
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{info}");
    for node in nodes {
        assert!(node["id"].as_u64().is_some_and(|id| (1..=3).contains(&id)));
        assert!(node["address"].as_str().is_some_and(|a| !a.is_empty()));
        assert!(node["raft_address"].as_str().is_some_and(|a| !a.is_empty()));
        assert_eq!(node["alive"], Value::Bool(true), "{info}");
    }
    assert!(info["controller_leader"].as_u64().is_some_and(|l| l > 0));
    let text = ok_stdout(&sluice(second, &["cluster", "info"]));
    assert!(
        text.contains("RAFT ADDRESS") && text.contains("leader"),
        "{text}"
    );

    // Created through one node, moved through another, described through the third.
    ok_stdout(&sluice(
        second,
        &["topic", "create", "spread", "-p", "2", "-r", "2"],
    ));
    let third = &cluster.nodes[2].address;
    let topic = json(&sluice(
        third,
        &["--format", "json", "topic", "describe", "spread"],
    ));
    let replicas: Vec<u64> = topic["partitions"][0]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let outsider = (1..=3u64)
        .find(|n| !replicas.contains(n))
        .expect("a node without it");
    let target = format!("{outsider},{}", replicas[0]);
    ok_stdout(&sluice(
        &cluster.nodes[0].address,
        &["topic", "reassign", "spread", "0", "--replicas", &target],
    ));
    let topic = json(&sluice(
        third,
        &["--format", "json", "topic", "describe", "spread"],
    ));
    assert_eq!(
        topic["partitions"][0]["replicas"],
        serde_json::json!([outsider, replicas[0]]),
        "{topic}"
    );
    let bad = sluice(
        third,
        &["topic", "reassign", "spread", "0", "--replicas", "9"],
    );
    assert!(!bad.status.success(), "an unknown node is refused");
}

#[test]
fn a_group_consumer_commits_what_it_printed_and_the_group_commands_show_it() {
    let broker = TestBroker::start();
    let b = broker.address.as_str();
    ok_stdout(&sluice(b, &["topic", "create", "gt", "--partitions", "2"]));
    let lines: String = (0..20).map(|i| format!("line-{i}\n")).collect();
    ok_stdout(&produce(b, &["gt"], lines.as_bytes()));
    // Two runs of one group: the second starts where the first's commit left off.
    let first = ok_stdout(&sluice(
        b,
        &[
            "consume",
            "gt",
            "--group",
            "cg",
            "--from",
            "beginning",
            "--num",
            "12",
        ],
    ));
    assert_eq!(first.lines().count(), 12);
    let second = ok_stdout(&sluice(
        b,
        &[
            "consume",
            "gt",
            "--group",
            "cg",
            "--from",
            "beginning",
            "--num",
            "8",
        ],
    ));
    let mut all: Vec<&str> = first.lines().chain(second.lines()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        20,
        "no record twice, none missed: {first}\n{second}"
    );

    let listed = json(&sluice(b, &["--format", "json", "group", "list"]));
    assert_eq!(listed["groups"][0]["group"], "cg", "{listed}");
    assert_eq!(listed["groups"][0]["state"], "empty");
    let described = json(&sluice(b, &["--format", "json", "group", "describe", "cg"]));
    let partitions = described["partitions"].as_array().expect("partitions");
    let lag: u64 = partitions
        .iter()
        .map(|p| p["lag"].as_u64().unwrap_or(99))
        .sum();
    assert_eq!(lag, 0, "{described}");
    let committed: u64 = partitions
        .iter()
        .map(|p| p["committed_offset"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(committed, 20);

    let reset = json(&sluice(
        b,
        &[
            "--format",
            "json",
            "group",
            "reset-offsets",
            "cg",
            "--topic",
            "gt",
            "--to",
            "earliest",
        ],
    ));
    assert_eq!(
        reset["offsets"].as_array().map(Vec::len),
        Some(2),
        "{reset}"
    );
    let bad = sluice(
        b,
        &[
            "group",
            "reset-offsets",
            "cg",
            "--topic",
            "gt",
            "--to",
            "soon",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "usage");
    let deleted = json(&sluice(b, &["--format", "json", "group", "delete", "cg"]));
    assert_eq!(deleted["deleted"], "cg");
    let gone = sluice(b, &["group", "describe", "cg"]);
    assert_eq!(gone.status.code(), Some(1), "UNKNOWN_GROUP");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("UNKNOWN_GROUP"));
}

#[test]
fn tls_flags_reach_a_tls_broker_and_their_env_vars_work_too() {
    use sluice_tests::certs::{LeafSpec, TestCa, listener_flags};
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "sluice-ca");
    let clients = TestCa::new(dir.path(), "client-ca");
    let server = ca.leaf("server", &LeafSpec::server("broker"));
    let alice = clients.leaf("alice", &LeafSpec::client("alice"));
    let flags = listener_flags("tls-", &server, Some(&clients.cert));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = TestBroker::start_with(&flags);
    let b = broker.address.as_str();
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca_file, cert, key) = (path(&ca.cert), path(&alice.cert), path(&alice.key));
    let tls = [
        "--tls-ca",
        ca_file.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-server-name",
        "localhost",
    ];
    let created = sluice(
        b,
        &[&tls[..], &["topic", "create", "t", "-p", "1"]].concat(),
    );
    ok_stdout(&created);
    // The same through the environment.
    let listed = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--brokers", b, "topic", "list"])
        .env_remove("SLUICE_BROKERS")
        .env("SLUICE_TLS_CA", &ca_file)
        .env("SLUICE_TLS_CERT", &cert)
        .env("SLUICE_TLS_KEY", &key)
        .output()
        .expect("run sluice");
    assert!(ok_stdout(&listed).contains('t'));
    // Without a client certificate the broker refuses: no connection (exit 3).
    let refused = sluice(b, &["--tls-ca", &ca_file, "topic", "list"]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    // An unreadable CA file is a usage error (exit 2) with one line naming it.
    let missing = sluice(b, &["--tls-ca", "/nonexistent/ca.pem", "topic", "list"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("TLS")
            && stderr.contains("/nonexistent/ca.pem")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// Runs `sluice` as `user` (password in SLUICE_PASSWORD) with `stdin`.
fn sluice_as(broker: &str, user: &str, password: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--brokers", broker, "--user", user])
        .args(args)
        .env_remove("SLUICE_BROKERS")
        .env("SLUICE_PASSWORD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("sluice finishes")
}

#[test]
fn users_are_managed_by_a_superuser_and_log_in_with_the_password_from_the_environment() {
    let broker = TestBroker::start_secured("admin-secret-1", &[]);
    let b = broker.address.as_str();
    let created = sluice_as(
        b,
        "admin",
        "admin-secret-1",
        &["user", "create", "bob"],
        b"bob-secret-2\n",
    );
    assert!(ok_stdout(&created).contains("bob"));
    let listed = sluice_as(
        b,
        "admin",
        "admin-secret-1",
        &["--format", "json", "user", "list"],
        b"",
    );
    let users = json(&listed);
    let names: Vec<&str> = users
        .as_array()
        .map(|a| a.iter().filter_map(|u| u["user"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["admin", "bob"]);
    let me = sluice_as(b, "bob", "bob-secret-2", &["user", "whoami"], b"");
    assert_eq!(ok_stdout(&me).trim(), "User:bob (scram)");
    // Anonymous: refused by the broker (exit 1), one line with the reason.
    let anonymous = sluice(b, &["topic", "list"]);
    assert_eq!(anonymous.status.code(), Some(1), "{anonymous:?}");
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        stderr.contains("AUTHENTICATION_REQUIRED") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // A wrong password: refused (exit 1).
    let wrong = sluice_as(b, "bob", "nope", &["topic", "list"], b"");
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    // --user without SLUICE_PASSWORD is a usage error (exit 2).
    let no_password = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--brokers", b, "--user", "bob", "topic", "list"])
        .env_remove("SLUICE_BROKERS")
        .env_remove("SLUICE_PASSWORD")
        .output()
        .expect("run sluice");
    assert_eq!(no_password.status.code(), Some(2), "{no_password:?}");
    // ACLs: bob may describe nothing until one allows it.
    let add = [
        "acl",
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "read",
        "--topic",
        "logs",
        "--prefixed",
    ];
    ok_stdout(&sluice_as(b, "admin", "admin-secret-1", &add, b""));
    let acls = json(&sluice_as(
        b,
        "admin",
        "admin-secret-1",
        &["--format", "json", "acl", "list"],
        b"",
    ));
    assert_eq!(acls[0]["principal"], "User:bob");
    assert_eq!(acls[0]["operation"], "READ");
    assert_eq!(acls[0]["pattern_type"], "PREFIXED");
    let removed = sluice_as(
        b,
        "admin",
        "admin-secret-1",
        &[&["--format", "json"][..], &add[..]]
            .concat()
            .iter()
            .map(|a| if *a == "add" { "remove" } else { a })
            .collect::<Vec<_>>(),
        b"",
    );
    assert_eq!(json(&removed)["deleted"], 1);
    // bob is no super-user.
    let denied = sluice_as(b, "bob", "bob-secret-2", &["user", "delete", "admin"], b"");
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"));
}

#[test]
fn quotas_are_set_listed_and_deleted_and_audit_tail_shows_the_changes() {
    let broker = TestBroker::start_secured(
        "admin-secret-3",
        &["--quota-fetch-bytes-per-sec", "5000000"],
    );
    let b = broker.address.as_str();
    let admin = |args: &[&str]| sluice_as(b, "admin", "admin-secret-3", args, b"");
    let set = [
        "quota",
        "set",
        "--principal",
        "User:bob",
        "--produce-bytes-per-sec",
        "1000",
    ];
    assert!(ok_stdout(&admin(&set)).contains("User:bob"));
    let table = ok_stdout(&admin(&["quota", "list"]));
    assert!(table.contains("(default)"), "{table}");
    assert!(table.contains("5000000"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("User:bob") && l.contains("1000")),
        "{table}"
    );
    let listed = json(&admin(&["--format", "json", "quota", "list"]));
    assert_eq!(listed["defaults"]["fetch_bytes_per_sec"], 5_000_000);
    assert_eq!(listed["quotas"][0]["principal"], "User:bob");
    assert_eq!(listed["quotas"][0]["fetch_bytes_per_sec"], Value::Null);
    // Neither rate given: a usage error.
    let usage = admin(&["quota", "set", "--principal", "User:bob"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    ok_stdout(&admin(&["quota", "delete", "--principal", "User:bob"]));
    let gone = admin(&["quota", "delete", "--principal", "User:bob"]);
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");

    let tail = ok_stdout(&admin(&["audit", "tail"]));
    let header = tail.lines().next().unwrap_or_default();
    assert_eq!(
        header,
        "TIME_MS\tPRINCIPAL\tSOURCE\tOPERATION\tRESOURCE\tOUTCOME\tREQUEST_ID\tREASON"
    );
    assert!(
        tail.lines()
            .any(|l| l.contains("\tquota.set\t") && l.contains("\tok\t")),
        "{tail}"
    );
    assert!(
        tail.lines()
            .any(|l| l.contains("\tquota.delete\t") && l.contains("\tfailed\t")),
        "{tail}"
    );
    let events = ok_stdout(&admin(&["--format", "json", "audit", "tail", "--num", "2"]));
    let first: Value = serde_json::from_str(events.lines().next().unwrap_or_default())
        .expect("a JSON event per line");
    assert_eq!(first["operation"], "user.bootstrap");
    assert_eq!(events.lines().count(), 2, "{events}");
}
