//! `sluice cluster info|health`.

use std::io::Write;

use serde_json::json;
use sluice_client::Client;

use crate::args::{ClusterCommand, Format};
use crate::commands::topic::{REASSIGN_WAIT, wait_for};
use crate::failure::Failure;
use crate::output::{cluster_json, json_line, table};

/// Runs a cluster command.
pub async fn run(
    client: &Client,
    command: ClusterCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if let ClusterCommand::Decommission { node, no_wait } = command {
        return decommission(client, node, no_wait, format, out).await;
    }
    let cluster = client.admin().describe_cluster().await?;
    match command {
        ClusterCommand::Info => match format {
            Format::Json => json_line(out, &cluster_json(&cluster))?,
            Format::Text => {
                writeln!(out, "CLUSTER     {}", cluster.cluster_id)?;
                writeln!(out, "VERSION     {}", cluster.version)?;
                writeln!(out, "CONTROLLER  {}", cluster.controller)?;
                writeln!(out, "TOPICS      {}", cluster.topics.len())?;
                writeln!(out, "\nNODES")?;
                let mut rows = vec![
                    ["ID", "ADDRESS", "RAFT ADDRESS", "ALIVE", "CONTROLLER"]
                        .map(String::from)
                        .to_vec(),
                ];
                rows.extend(cluster.nodes.iter().map(|n| {
                    let role = if n.node_id == cluster.controller {
                        "leader"
                    } else if n.controller_voter {
                        "voter"
                    } else {
                        "-"
                    };
                    vec![
                        n.node_id.to_string(),
                        n.address.clone(),
                        n.raft_address.clone(),
                        n.alive.to_string(),
                        role.to_string(),
                    ]
                }));
                table(out, &rows)?;
            }
        },
        ClusterCommand::Health => {
            // Node ids start at 1: a leader of 0 is no leader.
            let leaderless: Vec<String> = cluster
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .filter(|p| p.leader == 0)
                        .map(move |p| format!("{}/{}", t.name, p.partition))
                })
                .collect();
            let healthy = cluster.controller != 0 && leaderless.is_empty();
            match format {
                Format::Json => json_line(
                    out,
                    &json!({
                        "healthy": healthy,
                        "controller": cluster.controller,
                        "nodes": cluster.nodes.len(),
                        "leaderless_partitions": leaderless,
                    }),
                )?,
                Format::Text => {
                    writeln!(out, "HEALTHY                {healthy}")?;
                    writeln!(out, "CONTROLLER             {}", cluster.controller)?;
                    writeln!(out, "NODES                  {}", cluster.nodes.len())?;
                    writeln!(out, "LEADERLESS PARTITIONS  {}", leaderless.join(" "))?;
                }
            }
            if !healthy {
                return Err(Failure::other("the cluster is not healthy"));
            }
        }
        ClusterCommand::Decommission { .. } => {}
    }
    Ok(())
}

async fn decommission(
    client: &Client,
    node: u64,
    no_wait: bool,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let admin = client.admin();
    let moved = admin.decommission_node(node).await?;
    if !no_wait {
        wait_for(REASSIGN_WAIT, || async {
            let cluster = admin.describe_cluster().await?;
            let holds = cluster
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .any(|p| p.replicas.contains(&node) || !p.target_replicas.is_empty());
            Ok((!holds).then_some(()))
        })
        .await?;
    }
    match format {
        Format::Json => json_line(
            out,
            &json!({ "node": node, "moved": moved, "done": !no_wait }),
        )?,
        Format::Text => writeln!(
            out,
            "node {node}: {} partition(s) {}",
            moved.len(),
            if no_wait { "moving off" } else { "moved off" }
        )?,
    }
    Ok(())
}
