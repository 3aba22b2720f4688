//! `sluice consume`: records as lines (text) or one JSON object per record.

use std::io::Write;

use futures::{FutureExt, StreamExt};
use serde_json::json;
use sluice_client::{AutoOffsetReset, Client, ConsumerConfig, ConsumerRecord, Offset};

use crate::args::{ConsumeArgs, Format};
use crate::failure::Failure;
use crate::output::{bytes_json, json_line};

/// Parses `--from`: beginning, end, an offset, or @UNIX_MS.
pub fn parse_from(from: &str) -> Result<Offset, Failure> {
    parse_position("--from", from)
}

/// Parses a position given to `flag`: beginning (earliest), end (latest), an offset, or
/// @UNIX_MS.
pub fn parse_position(flag: &str, value: &str) -> Result<Offset, Failure> {
    match value {
        "beginning" | "earliest" => Ok(Offset::Earliest),
        "end" | "latest" => Ok(Offset::Latest),
        _ => {
            if let Some(ms) = value.strip_prefix('@') {
                ms.parse()
                    .map(Offset::Timestamp)
                    .map_err(|_| Failure::usage(format!("{flag} {value:?}: @ needs a time in ms")))
            } else {
                value.parse().map(Offset::At).map_err(|_| {
                    Failure::usage(format!(
                        "{flag} {value:?}: expected beginning, end, an offset or @UNIX_MS"
                    ))
                })
            }
        }
    }
}

/// Runs `sluice consume`.
pub async fn run(
    client: &Client,
    args: ConsumeArgs,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if let Some(group) = args.group.clone() {
        return consume_as_member(client, &group, args, format, out).await;
    }
    let from = parse_from(&args.from)?;
    let topic = client.admin().describe_topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|d| d.partition == p) => vec![p],
        Some(p) => {
            return Err(Failure::usage(format!(
                "topic {} has no partition {p}",
                args.topic
            )));
        }
        None => topic.partitions.iter().map(|d| d.partition).collect(),
    };
    let mut consumer = client.consumer(ConsumerConfig::default());
    for &partition in &partitions {
        if args.until_end {
            // The partition's stream ends at the high watermark it has now.
            let end = consumer
                .resolve(&args.topic, partition, Offset::Latest)
                .await?;
            consumer
                .assign_until(&args.topic, partition, from, end)
                .await?;
        } else {
            consumer.assign(&args.topic, partition, from).await?;
        }
    }
    if args.num == Some(0) {
        return Ok(());
    }
    let num = args.num;
    print_stream(consumer.into_stream(), num, out, |record, out| {
        print_record(record, &args, format, out)
    })
    .await
}

/// Prints `stream`'s records with `print` until it ends or `num` are printed, flushing
/// whenever no record is ready, so a pipe sees records as they come.
pub async fn print_stream<W: Write>(
    mut stream: impl futures::Stream<Item = Result<ConsumerRecord, sluice_client::ClientError>> + Unpin,
    num: Option<u64>,
    out: &mut W,
    mut print: impl FnMut(&ConsumerRecord, &mut W) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut printed = 0u64;
    loop {
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None => {
                out.flush()?;
                stream.next().await
            }
        };
        let Some(record) = next else { break };
        print(&record?, out)?;
        printed += 1;
        if num.is_some_and(|n| printed >= n) {
            break;
        }
    }
    out.flush()?;
    Ok(())
}

/// `consume --group`: a group member printing its partitions' records, committing what it
/// printed every 5 s and when it stops (after --num records, or on Ctrl-C / SIGTERM).
async fn consume_as_member(
    client: &Client,
    group: &str,
    args: ConsumeArgs,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let auto_offset_reset = match parse_from(&args.from)? {
        Offset::Earliest => AutoOffsetReset::Earliest,
        Offset::Latest => AutoOffsetReset::Latest,
        _ => {
            return Err(Failure::usage(
                "with --group, --from is beginning or end (where partitions without a committed offset start)",
            ));
        }
    };
    if args.partition.is_some() || args.until_end {
        return Err(Failure::usage(
            "with --group the group assigns partitions: --partition and --until-end do not apply",
        ));
    }
    // Fails early, with UNKNOWN_TOPIC, rather than waiting for an assignment.
    client.admin().describe_topic(&args.topic).await?;
    let config = ConsumerConfig {
        auto_offset_reset,
        instance_id: args.instance_id.clone(),
        ..ConsumerConfig::default()
    };
    let mut member = client
        .consumer(config)
        .subscribe(group, &[args.topic.as_str()])?;
    if args.num == Some(0) {
        member.close().await?;
        return Ok(());
    }
    let mut printed = 0u64;
    let stop = stop_signal();
    tokio::pin!(stop);
    let outcome = loop {
        let next = match member.next().now_or_never() {
            Some(next) => next,
            None => {
                out.flush()?;
                tokio::select! {
                    next = member.next() => next,
                    () = &mut stop => break Ok(()),
                }
            }
        };
        let Some(record) = next else { break Ok(()) };
        let record = match record {
            Ok(r) => r,
            Err(e) => break Err(Failure::from(e)),
        };
        print_record(&record, &args, format, out)?;
        printed += 1;
        if args.num.is_some_and(|n| printed >= n) {
            break Ok(());
        }
    };
    // What was printed reached the output before it is committed.
    out.flush()?;
    if outcome.is_ok() {
        member.commit().await?;
    }
    member.close().await?;
    outcome
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = interrupt.await;
}

fn print_record(
    record: &ConsumerRecord,
    args: &ConsumeArgs,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match format {
        Format::Json => {
            let headers: Vec<_> = record
                .headers
                .iter()
                .map(|(k, v)| json!({ "key": bytes_json(Some(k)), "value": bytes_json(v.as_deref()) }))
                .collect();
            json_line(
                out,
                &json!({
                    "topic": &*record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp": record.timestamp,
                    "key": bytes_json(record.key.as_deref()),
                    "value": bytes_json(record.value.as_deref()),
                    "headers": headers,
                }),
            )?;
        }
        Format::Text => {
            if args.print_headers {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(k),
                            String::from_utf8_lossy(v.as_deref().unwrap_or_default())
                        )
                    })
                    .collect();
                write!(out, "{}\t", headers.join(","))?;
            }
            if args.print_keys {
                out.write_all(record.key.as_deref().unwrap_or_default())?;
                out.write_all(b"\t")?;
            }
            out.write_all(record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_accepts_the_four_forms_and_refuses_the_rest() {
        assert_eq!(parse_from("beginning").ok(), Some(Offset::Earliest));
        assert_eq!(parse_from("end").ok(), Some(Offset::Latest));
        assert_eq!(parse_from("42").ok(), Some(Offset::At(42)));
        assert_eq!(
            parse_from("@1700000000000").ok(),
            Some(Offset::Timestamp(1_700_000_000_000))
        );
        for bad in ["", "-1", "@", "@x", "start"] {
            assert_eq!(parse_from(bad).map_err(|f| f.code).err(), Some(2), "{bad}");
        }
    }
}
