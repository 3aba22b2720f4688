//! End-to-end tests against real `sluiced` processes.

mod audit;
mod auth;
mod backpressure;
mod bad_input;
mod cluster;
mod compaction;
mod corruption;
mod durability;
mod error_size;
mod groups;
mod idempotence;
mod lagging_quorum;
mod malformed_batches;
mod memory;
mod offline;
mod partitions;
mod pipelined_producer;
mod preauth;
mod produce_consume;
mod quotas;
mod restart_cost;
mod retention;
mod returning_follower;
mod streams;
mod subscribe_wire;
mod tls;
mod topic_identity;
mod wiped;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use sluice_client::{
    Client, ConsumerConfig, ConsumerRecord, Offset, PartitionDescription, ProducerConfig,
    ProducerRecord,
};
use sluice_protocol::MESSAGE_BYTES_MAX;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_tests::TestCluster;
use tonic::transport::Channel;

/// The tests' `sluiced-canary` with the canaries `names` (comma-separated) armed: a broker
/// deliberately broken for a fault test's negative control.
pub fn canary_program(names: &str) -> sluice_tests::Program {
    sluice_tests::Program {
        binary: std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluiced-canary")),
        env: vec![("SLUICE_CANARIES".into(), names.into())],
    }
}

/// A runtime for one test: the tests are synchronous around the broker process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client connected to `address`, with `topic` created (`configs` as key/value pairs).
pub async fn client_with_topic(
    address: &str,
    topic: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) -> Client {
    let client = Client::connect([address]).await.expect("connect");
    let configs = configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    client
        .admin()
        .create_topic(topic, partitions, 1, configs)
        .await
        .expect("create topic");
    client
}

/// `topic`'s partition `partition` as the admin API describes it.
pub async fn describe_partition(
    client: &Client,
    topic: &str,
    partition: usize,
) -> PartitionDescription {
    let topic = client
        .admin()
        .describe_topic(topic)
        .await
        .expect("describe");
    topic
        .partitions
        .get(partition)
        .cloned()
        .unwrap_or_else(|| panic!("{} has no partition {partition}", topic.name))
}

/// The high watermark of `topic`'s partition `partition`.
pub async fn high_watermark(client: &Client, topic: &str, partition: usize) -> u64 {
    describe_partition(client, topic, partition)
        .await
        .high_watermark
}

/// A raw producer stub on `address`, accepting the largest messages.
pub async fn raw_producer(address: &str) -> ProducerClient<Channel> {
    let client = ProducerClient::connect(format!("http://{address}"))
        .await
        .expect("raw producer");
    client.max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// Reads `expected` records from every partition of `topic` from the beginning, failing
/// the test if they do not arrive within `timeout`.
pub async fn read_all(
    client: &Client,
    topic: &str,
    partitions: u32,
    expected: usize,
    timeout: Duration,
) -> Vec<ConsumerRecord> {
    let mut consumer = client.consumer(ConsumerConfig::default());
    for p in 0..partitions {
        consumer
            .assign(topic, p, Offset::Earliest)
            .await
            .expect("assign");
    }
    let mut stream = consumer.into_stream();
    let mut records = Vec::with_capacity(expected);
    let read = async {
        while records.len() < expected {
            match stream.next().await {
                Some(record) => records.push(record.expect("record")),
                None => break,
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| panic!("read only {} of {expected} records", records.len()));
    records
}

/// Records per partition, in the order they were read.
pub fn by_partition(records: &[ConsumerRecord]) -> HashMap<u32, Vec<&ConsumerRecord>> {
    let mut map: HashMap<u32, Vec<&ConsumerRecord>> = HashMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r);
    }
    map
}

/// Produces `prefix-0` … `prefix-(n-1)` to `topic` with a producer of its own.
pub async fn produce_values(client: &Client, topic: &str, prefix: &str, n: usize) {
    let producer = client
        .producer(ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..n {
        producer
            .send(ProducerRecord::new(topic).value(format!("{prefix}-{i}")))
            .await
            .expect("acked");
    }
}

/// A client of every node of `cluster`, with `topic` created at replication factor 3.
pub async fn rf3_topic(cluster: &TestCluster, topic: &str, partitions: u32) -> Client {
    let client = Client::connect(cluster.addresses()).await.expect("connect");
    client
        .admin()
        .create_topic(topic, partitions, 3, Default::default())
        .await
        .expect("create");
    client
}
