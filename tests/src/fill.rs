//! Filling a topic with copies of one value, as benches and tests that need bulk data do.

use bytes::Bytes;
use sluice_client::{Client, ClientError, ProducerConfig, ProducerRecord};

/// Sends `count` copies of `value` to `topic` through one batching producer and waits until
/// every one is acknowledged (the first error, of an enqueue or of the flush, otherwise).
pub async fn produce_copies(
    client: &Client,
    topic: &str,
    value: impl Into<Bytes>,
    count: u64,
) -> Result<(), ClientError> {
    let value = value.into();
    let producer = client.producer(ProducerConfig::default()).await?;
    for _ in 0..count {
        producer
            .enqueue(ProducerRecord::new(topic).value(value.clone()))
            .await?;
    }
    producer.flush().await
}
