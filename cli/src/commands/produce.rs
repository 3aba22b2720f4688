//! `sluice produce`: one record per line of standard input, flushed at end of input.

use std::io::Write;

use bytes::Bytes;
use serde_json::json;
use sluice_client::{Client, DeliveryQueue, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{acks, compression};
use crate::args::{Format, ProduceArgs};
use crate::failure::Failure;
use crate::output::json_line;

/// Records unanswered before reading more input: enough to fill batches, few enough to stop
/// early on a refusal.
const IN_FLIGHT: usize = 16 * 1024;

/// Runs `sluice produce`.
pub async fn run(
    client: &Client,
    args: ProduceArgs,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let headers: Vec<(Bytes, Option<Bytes>)> = super::topic::key_values(&args.headers, "header")?
        .into_iter()
        .map(|(k, v)| (Bytes::from(k), Some(Bytes::from(v))))
        .collect();
    let config = ProducerConfig {
        acks: acks(args.acks),
        compression: compression(args.compression),
        ..ProducerConfig::default()
    };
    let producer = client.producer(config).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
    let mut pending = DeliveryQueue::new();
    let mut produced = 0u64;
    let mut print = |sent: sluice_client::RecordMetadata| -> Result<(), Failure> {
        produced += 1;
        if args.print_offsets {
            match format {
                Format::Json => json_line(
                    out,
                    &json!({ "partition": sent.partition, "offset": sent.offset }),
                )?,
                Format::Text => writeln!(out, "{} {}", sent.partition, sent.offset)?,
            }
        }
        Ok(())
    };
    while let Some(line) = lines.next_segment().await? {
        let (key, value) = match &args.key_separator {
            Some(sep) => split_key(&line, sep.as_bytes()),
            None => (None, line.as_slice()),
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: headers.clone(),
            timestamp: None,
        };
        // Enqueued here, one after another, so a partition keeps the input's order.
        pending.push(producer.enqueue(record).await?, ());
        while let Some(answered) = pending.pop_answered() {
            print(answered.result?)?;
        }
        if pending.len() >= IN_FLIGHT
            && let Some(answered) = pending.pop_oldest().await
        {
            print(answered.result?)?;
        }
    }
    producer.flush().await?;
    while let Some(answered) = pending.pop_oldest().await {
        print(answered.result?)?;
    }
    if !args.print_offsets && format == Format::Json {
        json_line(out, &json!({ "produced": produced }))?;
    }
    Ok(())
}

/// Splits a line at the first `sep`: no separator means no key.
fn split_key<'a>(line: &'a [u8], sep: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if sep.is_empty() {
        return (None, line);
    }
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn splits_at_the_first_separator_only() {
        assert_eq!(
            split_key(b"user-1:a:b", b":"),
            (Some(&b"user-1"[..]), &b"a:b"[..])
        );
        assert_eq!(split_key(b"no-key", b":"), (None, &b"no-key"[..]));
        assert_eq!(split_key(b"k::v", b"::"), (Some(&b"k"[..]), &b"v"[..]));
    }
}
