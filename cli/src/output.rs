//! Printing: aligned text tables, JSON documents, and record bytes as JSON.

use std::io::Write;

use base64::Engine;
use serde_json::{Value, json};
use sluice_client::{ClusterDescription, TopicDescription};

/// Prints rows as columns aligned to their widest cell; the first row is the header.
pub fn table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count() + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Prints one JSON document.
pub fn json_line(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    writeln!(out, "{value}")
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": ...}`; null when absent.
pub fn bytes_json(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
        },
    }
}

/// A topic as JSON.
pub fn topic_json(topic: &TopicDescription) -> Value {
    let configs: serde_json::Map<String, Value> = topic
        .configs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "name": topic.name,
        "replication_factor": topic.replication_factor,
        "configs": configs,
        "partitions": topic.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "leader": p.leader,
            "leader_term": p.leader_term,
            "replicas": p.replicas,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "status": p.status,
            "error": p.error,
            "leader_address": p.leader_address,
            "in_sync_replicas": p.in_sync_replicas,
            "target_replicas": p.target_replicas,
        })).collect::<Vec<_>>(),
    })
}

/// The cluster as JSON (without its topics).
pub fn cluster_json(cluster: &ClusterDescription) -> Value {
    json!({
        "controller": cluster.controller,
        "controller_leader": cluster.controller,
        "cluster_id": cluster.cluster_id,
        "version": cluster.version,
        "nodes": cluster.nodes.iter().map(|n| json!({
            "id": n.node_id,
            "node_id": n.node_id,
            "address": n.address,
            "raft_address": n.raft_address,
            "alive": n.alive,
            "controller_voter": n.controller_voter,
        })).collect::<Vec<_>>(),
        "topics": cluster.topics.len(),
    })
}
