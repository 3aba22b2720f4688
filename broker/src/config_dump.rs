//! `sluiced --print-config`: the effective configuration as one JSON document (TESTPLAN
//! T25), with the guarantees its defaults give spelled out, so an operator (or a test) can
//! check what a broker would run with before it runs.

use serde_json::{Value, json};

use crate::config::BrokerConfig;
use crate::controller::TopicConfig;
use crate::limits;

/// The dump's format version.
pub const CONFIG_DUMP_VERSION: u32 = 1;

/// The effective configuration of `config`.
pub fn dump(config: &BrokerConfig) -> Value {
    json!({
        "version": CONFIG_DUMP_VERSION,
        "node_id": config.node_id,
        "data_dir": config.data_dir.display().to_string(),
        "listen": config.listen.to_string(),
        "metrics_listen": config.metrics_listen.to_string(),
        "advertised_addr": config.advertised_addr,
        "cluster": config.cluster.as_ref().map(|c| json!({
            "raft_listen": c.raft_listen.to_string(),
            "advertised_raft_addr": c.advertised_raft_addr,
            // Never the secret itself.
            "secret": "(set)",
        })),
        "durability": {
            "acks_default": "all",
            "acks_all": "committed by a quorum of the partition's replicas, each having fsynced it",
            "acks_leader": "fsynced by the partition's leader only (asked for per request)",
        },
        "security": security(config),
        "quotas": {
            "produce_bytes_per_sec": config.default_quota.produce_bytes_per_sec,
            "fetch_bytes_per_sec": config.default_quota.fetch_bytes_per_sec,
        },
        "limits": {
            "partition_inflight_bytes": config.partition_inflight_bytes,
            "broker_inflight_bytes": config.broker_inflight_bytes,
            "grpc_message_bytes_max": sluice_protocol::MESSAGE_BYTES_MAX,
            "fetch_bytes_max": limits::FETCH_BYTES_MAX,
            "fetch_partitions_max": limits::FETCH_PARTITIONS_MAX,
            "fetch_wait_ms_max": limits::FETCH_WAIT_MS_MAX,
            "partitions_per_topic_max": limits::PARTITIONS_PER_TOPIC_MAX,
            "topic_name_len_max": limits::TOPIC_NAME_LEN_MAX,
            "group_name_len_max": limits::GROUP_NAME_LEN_MAX,
            "group_request_items_max": limits::GROUP_REQUEST_ITEMS_MAX,
            "audit_queue_events_max": crate::audit::writer::QUEUE_EVENTS_MAX,
        },
        "topic_defaults": TopicConfig::resolve(&config.default_log, &Default::default())
            .map(|t| json!(t.describe()))
            .unwrap_or_else(|e| json!({ "error": e.to_string() })),
        "raft": {
            "heartbeat_ms": config.raft_timing.heartbeat_ms,
            "election_timeout_ms": config.raft_timing.election_timeout_ms,
        },
        "offsets_topic_partitions": config.offsets_topic_partitions,
        "housekeeping_interval_ms": config.housekeeping_interval.as_millis() as u64,
    })
}

fn security(config: &BrokerConfig) -> Value {
    let authorizer = if config.require_auth {
        "deny-by-default: a call no ACL allows is refused; super-users may do everything"
    } else {
        "off: without --require-auth every caller may do everything (loopback only unless --insecure-allow-plaintext or TLS with authentication)"
    };
    json!({
        "require_auth": config.require_auth,
        "authorizer": authorizer,
        "superusers": config.superusers,
        "audit": config.audit,
        "insecure_allow_plaintext": config.insecure_allow_plaintext,
        "plaintext_binds": config.plaintext_binds().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tls": {
            "client": config.tls.client.is_some(),
            "client_certificates_required": config.tls.client.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "raft": config.tls.raft.is_some(),
            "verifies_other_brokers_client_ports": config.tls.peer_ca.is_some(),
        },
        "scram_iterations_min": sluice_protocol::scram::ITERATIONS_MIN,
    })
}
