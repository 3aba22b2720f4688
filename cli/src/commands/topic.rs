//! `sluice topic …`.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;
use sluice_client::{Client, TopicDescription};

use crate::args::{Format, TopicCommand};
use crate::failure::Failure;
use crate::output::{json_line, table, topic_json};

/// Splits `KEY=VALUE` pairs.
pub fn key_values(pairs: &[String], what: &str) -> Result<HashMap<String, String>, Failure> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::usage(format!("{what} {pair:?} is not KEY=VALUE"))),
        })
        .collect()
}

/// Runs a topic command.
pub async fn run(
    client: &Client,
    command: TopicCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let admin = client.admin();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replicas,
            configs,
        } => {
            let configs = key_values(&configs, "config")?;
            let topic = admin
                .create_topic(&name, partitions, replicas, configs)
                .await?;
            match format {
                Format::Json => json_line(out, &topic_json(&topic))?,
                Format::Text => writeln!(
                    out,
                    "created topic {} with {} partition(s)",
                    topic.name,
                    topic.partitions.len()
                )?,
            }
        }
        TopicCommand::List => {
            let mut topics = admin.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            match format {
                Format::Json => json_line(
                    out,
                    &json!(topics.iter().map(topic_json).collect::<Vec<_>>()),
                )?,
                Format::Text => {
                    let mut rows = vec![vec![
                        "NAME".to_string(),
                        "PARTITIONS".to_string(),
                        "REPLICAS".to_string(),
                    ]];
                    rows.extend(topics.iter().map(|t| {
                        vec![
                            t.name.clone(),
                            t.partitions.len().to_string(),
                            t.replication_factor.to_string(),
                        ]
                    }));
                    table(out, &rows)?;
                }
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            print_topic(&topic, format, out)?;
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return Err(Failure::usage("nothing to change: give --set or --delete"));
            }
            let set = key_values(&set, "config")?;
            let topic = admin.alter_topic_config(&name, set, delete).await?;
            print_topic(&topic, format, out)?;
        }
        TopicCommand::AddPartitions { name, count } => {
            if count == 0 {
                return Err(Failure::usage("--count must be at least 1"));
            }
            // Like rpk: --count is how many to add.
            let current = admin.describe_topic(&name).await?.partitions.len() as u32;
            let total = current
                .checked_add(count)
                .ok_or_else(|| Failure::usage("--count is too large"))?;
            let topic = admin.add_partitions(&name, total).await?;
            match format {
                Format::Json => json_line(out, &topic_json(&topic))?,
                Format::Text => writeln!(
                    out,
                    "topic {} now has {} partition(s)",
                    topic.name,
                    topic.partitions.len()
                )?,
            }
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            no_wait,
        } => {
            let mut topic = admin
                .reassign_partition(&name, partition, &replicas)
                .await?;
            if !no_wait {
                topic = wait_for(REASSIGN_WAIT, || async {
                    let topic = admin.describe_topic(&name).await?;
                    let done = topic.partitions.get(partition as usize).is_some_and(|p| {
                        p.target_replicas.is_empty() && p.replicas == replicas && p.leader != 0
                    });
                    Ok(done.then_some(topic))
                })
                .await?;
            }
            match format {
                Format::Json => json_line(out, &topic_json(&topic))?,
                Format::Text => {
                    let verb = if no_wait { "moving to" } else { "now on" };
                    writeln!(out, "{name}/{partition} {verb} replicas {replicas:?}")?
                }
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            match format {
                Format::Json => json_line(out, &json!({ "deleted": name }))?,
                Format::Text => writeln!(out, "deleted topic {name}")?,
            }
        }
    }
    Ok(())
}

fn print_topic(
    topic: &TopicDescription,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if format == Format::Json {
        json_line(out, &topic_json(topic))?;
        return Ok(());
    }
    writeln!(out, "NAME      {}", topic.name)?;
    writeln!(out, "REPLICAS  {}", topic.replication_factor)?;
    let mut configs: Vec<(&String, &String)> = topic.configs.iter().collect();
    configs.sort();
    if !configs.is_empty() {
        writeln!(out, "\nCONFIGS")?;
        let mut rows = vec![vec!["KEY".to_string(), "VALUE".to_string()]];
        rows.extend(
            configs
                .iter()
                .map(|(k, v)| vec![k.to_string(), v.to_string()]),
        );
        table(out, &rows)?;
    }
    writeln!(out, "\nPARTITIONS")?;
    let mut rows = vec![
        [
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "LOG-START",
            "HIGH-WATERMARK",
            "SIZE",
            "STATUS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    rows.extend(topic.partitions.iter().map(|p| {
        vec![
            p.partition.to_string(),
            p.leader.to_string(),
            format!("{:?}", p.replicas),
            p.log_start_offset.to_string(),
            p.high_watermark.to_string(),
            p.size_bytes.to_string(),
            if p.error.is_empty() {
                p.status.clone()
            } else {
                format!("{}: {}", p.status, p.error)
            },
        ]
    }));
    table(out, &rows)?;
    Ok(())
}

/// How long `topic reassign` and `cluster decommission` wait for moves to finish.
pub const REASSIGN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Polls `check` every 500 ms until it yields a value, or fails after `wait`.
pub async fn wait_for<T, F, Fut>(wait: std::time::Duration, check: F) -> Result<T, Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Failure>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::other(format!(
                "not finished within {wait:?}; it goes on in the background"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
