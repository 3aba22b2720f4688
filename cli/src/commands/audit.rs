//! `sluice audit tail`: the events of `__audit`, as a table's rows or JSON lines.

use std::io::Write;

use serde_json::Value;
use sluice_client::{Client, ConsumerConfig, ConsumerRecord, Offset};

use crate::args::{AuditCommand, Format};
use crate::commands::consume::{parse_from, print_stream};
use crate::failure::Failure;
use crate::output::json_line;

/// The internal topic of the audit trail.
const AUDIT_TOPIC: &str = "__audit";

/// The text columns, in order, and the event fields they show.
const COLUMNS: [&str; 8] = [
    "time_ms",
    "principal",
    "source",
    "operation",
    "resource",
    "outcome",
    "request_id",
    "reason",
];

/// Runs an audit command.
pub async fn run(
    client: &Client,
    command: AuditCommand,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let AuditCommand::Tail { from, follow, num } = command;
    let from = parse_from(&from)?;
    if let Err(e) = client.admin().describe_topic(AUDIT_TOPIC).await {
        if e.reason() == Some(sluice_client::Reason::UnknownTopic) {
            return Err(Failure::other(
                "no audit trail yet: brokers record one with --require-auth or --audit, from their first event",
            ));
        }
        return Err(e.into());
    }
    let mut consumer = client.consumer(ConsumerConfig::default());
    if follow {
        consumer.assign(AUDIT_TOPIC, 0, from).await?;
    } else {
        let end = consumer.resolve(AUDIT_TOPIC, 0, Offset::Latest).await?;
        consumer.assign_until(AUDIT_TOPIC, 0, from, end).await?;
    }
    if format == Format::Text {
        writeln!(out, "{}", COLUMNS.join("\t").to_uppercase())?;
    }
    if num == Some(0) {
        return Ok(());
    }
    print_stream(consumer.into_stream(), num, out, |record, out| {
        print_event(record, format, out)
    })
    .await
}

/// Prints one event; a record that is not an event's JSON is printed as the error it is,
/// not skipped (the trail must show everything it holds).
fn print_event(
    record: &ConsumerRecord,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let value = record.value.as_deref().unwrap_or_default();
    let event: Value = match serde_json::from_slice(value) {
        Ok(event) => event,
        Err(e) => serde_json::json!({
            "offset": record.offset,
            "error": format!("not an audit event: {e}"),
        }),
    };
    match format {
        Format::Json => json_line(out, &event)?,
        Format::Text => {
            let cells: Vec<String> = COLUMNS
                .iter()
                .map(|c| match event.get(c) {
                    Some(Value::String(s)) => s.replace(['\t', '\n'], " "),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                })
                .collect();
            writeln!(out, "{}", cells.join("\t"))?;
        }
    }
    Ok(())
}
