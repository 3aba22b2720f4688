//! Prints every record of a topic from the beginning, as `partition offset key value`.
//!
//! `cargo run -p sluice-client --example consumer -- 127.0.0.1:9092 events`

use futures::StreamExt;
use sluice_client::{Client, ConsumerConfig, Offset};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "events".into());
    let client = Client::connect([broker]).await?;
    let partitions = client
        .admin()
        .describe_topic(&topic)
        .await?
        .partitions
        .len() as u32;
    let mut consumer = client.consumer(ConsumerConfig::default());
    for partition in 0..partitions {
        consumer.assign(&topic, partition, Offset::Earliest).await?;
    }
    let mut records = consumer.into_stream();
    while let Some(record) = records.next().await {
        let record = record?;
        let text = |b: Option<&bytes::Bytes>| {
            b.map_or("null".to_string(), |b| {
                String::from_utf8_lossy(b).into_owned()
            })
        };
        println!(
            "{} {} {} {}",
            record.partition,
            record.offset,
            text(record.key.as_ref()),
            text(record.value.as_ref())
        );
    }
    Ok(())
}
