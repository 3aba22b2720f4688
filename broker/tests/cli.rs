//! The `sluiced` command line: documented flags, clear errors. (Also makes `cargo test
//! --workspace` build the real binary for the system tests in `tests/`.)

use std::process::Command;

fn sluiced() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluiced"))
}

#[test]
fn help_documents_every_flag_with_its_env_var() {
    let out = sluiced()
        .arg("--help")
        .output()
        .expect("run sluiced --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--listen",
        "--metrics-listen",
        "--config",
        "--node-id",
        "SLUICE_DATA_DIR",
        "SLUICE_LISTEN",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_flags_and_bad_config_files_fail_with_a_message() {
    let out = sluiced()
        .arg("--listen")
        .arg("not-an-address")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "no_such_key = 1\n").expect("write config");
    let out = sluiced()
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_such_key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_plaintext_port_beyond_loopback_refuses_to_start_without_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sluiced()
        .args(["--listen", "0.0.0.0:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to serve gRPC without TLS")
            && stderr.contains("--insecure-allow-plaintext"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing written before refusing"
    );
}

/// The effective configuration of `args`, from `sluiced --print-config`.
fn printed_config(args: &[&str]) -> serde_json::Value {
    let out = sluiced()
        .arg("--print-config")
        .args(args)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("the configuration is one JSON document")
}

#[test]
fn dumped_defaults_show_loopback_quorum_fsync_acks_and_limits_and_a_deny_by_default_authorizer() {
    let defaults = printed_config(&[]);
    assert_eq!(defaults["version"], 1);
    assert_eq!(defaults["listen"], "127.0.0.1:9092");
    assert_eq!(defaults["durability"]["acks_default"], "all");
    assert!(
        defaults["durability"]["acks_all"]
            .as_str()
            .is_some_and(|s| s.contains("quorum") && s.contains("fsync")),
        "{defaults:#}"
    );
    assert_eq!(defaults["security"]["require_auth"], false);
    assert_eq!(
        defaults["security"]["plaintext_binds"],
        serde_json::json!([])
    );
    for limit in [
        "partition_inflight_bytes",
        "broker_inflight_bytes",
        "grpc_message_bytes_max",
        "fetch_bytes_max",
        "fetch_partitions_max",
        "partitions_per_topic_max",
    ] {
        assert!(
            defaults["limits"][limit].as_u64().is_some_and(|n| n > 0),
            "{limit}: {defaults:#}"
        );
    }
    assert_eq!(defaults["topic_defaults"]["max.message.bytes"], "1048576");
    let secured = printed_config(&["--require-auth", "--superuser", "admin"]);
    assert_eq!(secured["security"]["require_auth"], true);
    assert_eq!(secured["security"]["audit"], true);
    assert!(
        secured["security"]["authorizer"]
            .as_str()
            .is_some_and(|s| s.starts_with("deny-by-default")),
        "{secured:#}"
    );
    assert_eq!(
        secured["security"]["superusers"],
        serde_json::json!(["admin"])
    );
    let quota = printed_config(&["--quota-produce-bytes-per-sec", "1000"]);
    assert_eq!(quota["quotas"]["produce_bytes_per_sec"], 1000);
}
