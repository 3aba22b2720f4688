//! Produces keyed lines from stdin (`key:value` or just `value`) to a topic.
//!
//! `cargo run -p sluice-client --example producer -- 127.0.0.1:9092 events < lines.txt`

use std::io::BufRead;

use sluice_client::{Client, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "events".into());
    let client = Client::connect([broker]).await?;
    if client.admin().describe_topic(&topic).await.is_err() {
        client
            .admin()
            .create_topic(&topic, 3, 1, Default::default())
            .await?;
    }
    let producer = client.producer(ProducerConfig::default()).await?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let record = match line.split_once(':') {
            Some((key, value)) => ProducerRecord::new(&topic)
                .key(key.to_string())
                .value(value.to_string()),
            None => ProducerRecord::new(&topic).value(line),
        };
        let sent = producer.send(record).await?;
        println!("{} {}", sent.partition, sent.offset);
    }
    producer.flush().await?;
    Ok(())
}
