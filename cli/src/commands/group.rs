//! `sluice group list|describe|reset-offsets|delete`.

use std::io::Write;

use serde_json::{Value, json};
use sluice_client::{Client, GroupDescription, Offset, ResetTo, TopicPartition};

use crate::args::{Format, GroupCommand};
use crate::commands::consume::parse_position;
use crate::failure::Failure;
use crate::output::{json_line, table};

/// Parses `--to`: earliest, latest, an offset, or @UNIX_MS (the forms of `consume --from`).
pub fn parse_reset_to(to: &str) -> Result<ResetTo, Failure> {
    Ok(match parse_position("--to", to)? {
        Offset::Earliest => ResetTo::Earliest,
        Offset::Latest => ResetTo::Latest,
        Offset::At(offset) => ResetTo::Offset(offset),
        Offset::Timestamp(ms) => ResetTo::Timestamp(ms),
    })
}

fn names(partitions: &[TopicPartition]) -> Vec<String> {
    partitions
        .iter()
        .map(|p| format!("{}/{}", p.topic, p.partition))
        .collect()
}

/// The JSON form of a group description (a contract for scripts).
pub fn group_json(g: &GroupDescription) -> Value {
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "member_epoch": m.member_epoch,
                "topics": m.topics,
                "topic_pattern": m.topic_pattern,
                "assignment": names(&m.assignment),
                "revoking": names(&m.revoking),
                "target": names(&m.target),
            })
        })
        .collect();
    let partitions: Vec<Value> = g
        .partitions
        .iter()
        .map(|p| {
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.has_committed.then_some(p.committed_offset),
                "high_watermark": p.high_watermark,
                "lag": p.lag,
                "member_id": p.member_id,
                "error": p.error,
            })
        })
        .collect();
    json!({
        "group": g.group,
        "state": g.state,
        "coordinator": g.coordinator,
        "group_epoch": g.group_epoch,
        "members": members,
        "partitions": partitions,
    })
}

/// Runs a group command.
pub async fn run(
    client: &Client,
    command: GroupCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match command {
        GroupCommand::List => list(client, format, out).await,
        GroupCommand::Describe { group } => describe(client, &group, format, out).await,
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            partition,
        } => {
            let to = parse_reset_to(&to)?;
            let partitions: Vec<u32> = partition.into_iter().collect();
            let offsets = client
                .admin()
                .reset_group_offsets(&group, &topic, &partitions, to)
                .await?;
            print_reset(&group, &offsets, format, out)
        }
        GroupCommand::Delete { group } => {
            client.admin().delete_group(&group).await?;
            match format {
                Format::Json => json_line(out, &json!({ "deleted": group }))?,
                Format::Text => writeln!(out, "Deleted group {group}")?,
            }
            Ok(())
        }
    }
}

/// `group list`.
async fn list(client: &Client, format: Format, out: &mut impl Write) -> Result<(), Failure> {
    let groups = client.admin().list_groups().await?;
    match format {
        Format::Json => {
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.group,
                        "state": g.state,
                        "members": g.members,
                        "coordinator": g.coordinator,
                    })
                })
                .collect();
            json_line(out, &json!({ "groups": groups }))?;
        }
        Format::Text => {
            let mut rows = vec![
                ["GROUP", "STATE", "MEMBERS", "COORDINATOR"]
                    .map(String::from)
                    .to_vec(),
            ];
            rows.extend(groups.iter().map(|g| {
                vec![
                    g.group.clone(),
                    g.state.clone(),
                    g.members.to_string(),
                    g.coordinator.to_string(),
                ]
            }));
            table(out, &rows)?;
        }
    }
    Ok(())
}

/// `group describe G`.
async fn describe(
    client: &Client,
    group: &str,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let g = client.admin().describe_group(group).await?;
    if format == Format::Json {
        json_line(out, &group_json(&g))?;
        return Ok(());
    }
    writeln!(out, "GROUP        {}", g.group)?;
    writeln!(out, "STATE        {}", g.state)?;
    writeln!(out, "COORDINATOR  {}", g.coordinator)?;
    writeln!(out, "EPOCH        {}", g.group_epoch)?;
    writeln!(out, "\nMEMBERS")?;
    let mut rows = vec![
        ["MEMBER", "INSTANCE", "EPOCH", "ASSIGNMENT", "REVOKING"]
            .map(String::from)
            .to_vec(),
    ];
    rows.extend(g.members.iter().map(|m| {
        vec![
            m.member_id.clone(),
            dash_if_empty(&m.instance_id),
            m.member_epoch.to_string(),
            names(&m.assignment).join(","),
            names(&m.revoking).join(","),
        ]
    }));
    table(out, &rows)?;
    writeln!(out, "\nPARTITIONS")?;
    let mut rows = vec![
        [
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "HIGH-WATERMARK",
            "LAG",
            "MEMBER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    rows.extend(g.partitions.iter().map(|p| {
        let known = |v: u64| {
            if p.error.is_empty() {
                v.to_string()
            } else {
                "?".into()
            }
        };
        vec![
            p.topic.clone(),
            p.partition.to_string(),
            if p.has_committed {
                p.committed_offset.to_string()
            } else {
                "-".into()
            },
            known(p.high_watermark),
            known(p.lag),
            dash_if_empty(&p.member_id),
        ]
    }));
    table(out, &rows)?;
    Ok(())
}

fn dash_if_empty(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// What `group reset-offsets` wrote.
fn print_reset(
    group: &str,
    offsets: &[sluice_client::CommittedOffset],
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match format {
        Format::Json => {
            let offsets: Vec<Value> = offsets
                .iter()
                .map(|o| json!({"topic": o.topic, "partition": o.partition, "offset": o.offset}))
                .collect();
            json_line(out, &json!({ "group": group, "offsets": offsets }))?;
        }
        Format::Text => {
            let mut rows = vec![
                ["TOPIC", "PARTITION", "NEW-OFFSET"]
                    .map(String::from)
                    .to_vec(),
            ];
            rows.extend(offsets.iter().map(|o| {
                vec![
                    o.topic.clone(),
                    o.partition.to_string(),
                    o.offset.to_string(),
                ]
            }));
            table(out, &rows)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_accepts_the_four_forms_and_refuses_the_rest() {
        assert_eq!(parse_reset_to("earliest").ok(), Some(ResetTo::Earliest));
        assert_eq!(parse_reset_to("latest").ok(), Some(ResetTo::Latest));
        assert_eq!(parse_reset_to("7").ok(), Some(ResetTo::Offset(7)));
        assert_eq!(parse_reset_to("@5").ok(), Some(ResetTo::Timestamp(5)));
        for bad in ["", "-1", "@", "start"] {
            assert_eq!(
                parse_reset_to(bad).map_err(|f| f.code).err(),
                Some(2),
                "{bad}"
            );
        }
    }
}
