//! `sluice quota set|delete|list`: principals' byte-rate quotas.

use std::io::Write;

use serde_json::json;
use sluice_client::{Client, QuotaEntry};

use crate::args::{Format, QuotaCommand};
use crate::failure::Failure;
use crate::output::{json_line, table};

/// Runs a quota command.
pub async fn run(
    client: &Client,
    command: QuotaCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let admin = client.admin();
    match command {
        QuotaCommand::Set {
            principal,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
        } => {
            if produce_bytes_per_sec.is_none() && fetch_bytes_per_sec.is_none() {
                return Err(Failure::usage(
                    "give --produce-bytes-per-sec, --fetch-bytes-per-sec or both",
                ));
            }
            admin
                .set_quota(&principal, produce_bytes_per_sec, fetch_bytes_per_sec)
                .await?;
            if format == Format::Text {
                writeln!(out, "set the quotas of {principal}")?;
            }
        }
        QuotaCommand::Delete { principal } => {
            admin.delete_quota(&principal).await?;
            if format == Format::Text {
                writeln!(out, "deleted the quotas of {principal}")?;
            }
        }
        QuotaCommand::List => {
            let (defaults, quotas) = admin.list_quotas().await?;
            match format {
                Format::Json => json_line(
                    out,
                    &json!({
                        "defaults": entry_json(&defaults),
                        "quotas": quotas.iter().map(entry_json).collect::<Vec<_>>(),
                    }),
                )?,
                Format::Text => {
                    let mut rows = vec![vec![
                        "PRINCIPAL".to_string(),
                        "PRODUCE_BYTES_PER_SEC".to_string(),
                        "FETCH_BYTES_PER_SEC".to_string(),
                    ]];
                    // A default left unset is no limit.
                    let defaults = QuotaEntry {
                        principal: "(default)".into(),
                        produce_bytes_per_sec: defaults.produce_bytes_per_sec.or(Some(0)),
                        fetch_bytes_per_sec: defaults.fetch_bytes_per_sec.or(Some(0)),
                    };
                    rows.extend(std::iter::once(&defaults).chain(&quotas).map(|q| {
                        vec![
                            q.principal.clone(),
                            rate(q.produce_bytes_per_sec),
                            rate(q.fetch_bytes_per_sec),
                        ]
                    }));
                    table(out, &rows)?;
                }
            }
        }
    }
    Ok(())
}

/// A rate as the table shows it: `-` for unset (the default applies), `unlimited` for 0.
fn rate(value: Option<u64>) -> String {
    match value {
        None => "-".into(),
        Some(0) => "unlimited".into(),
        Some(n) => n.to_string(),
    }
}

fn entry_json(q: &QuotaEntry) -> serde_json::Value {
    json!({
        "principal": q.principal,
        "produce_bytes_per_sec": q.produce_bytes_per_sec,
        "fetch_bytes_per_sec": q.fetch_bytes_per_sec,
    })
}
