//! The Rust client for Sluice.
//!
//! ```no_run
//! use sluice_client::{Client, ConsumerConfig, Offset, ProducerConfig, ProducerRecord};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), sluice_client::ClientError> {
//! let client = Client::connect(["127.0.0.1:9092"]).await?;
//! client.admin().create_topic("events", 6, 1, Default::default()).await?;
//!
//! let producer = client.producer(ProducerConfig::default()).await?;
//! let sent = producer.send(ProducerRecord::new("events").key("user-1").value("clicked")).await?;
//! println!("stored at partition {} offset {}", sent.partition, sent.offset);
//!
//! let mut consumer = client.consumer(ConsumerConfig::default());
//! consumer.assign("events", sent.partition, Offset::Earliest).await?;
//! let mut records = consumer.into_stream();
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```

mod admin;
mod connection;
mod consumer;
mod error;
mod group_consumer;
mod groups;
pub mod partitioner;
mod producer;
mod record_channel;
mod session;
mod users;

pub use admin::Admin;
pub use connection::{Client, ConnectOptions};
pub use consumer::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Offset};
pub use error::ClientError;
pub use group_consumer::{GroupConsumer, RebalanceEvent, RebalanceKind, Subscription};
pub use groups::ResetTo;
pub use producer::{
    Answered, Delivery, DeliveryQueue, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use session::Credentials;
pub use sluice_protocol::Reason;
pub use sluice_protocol::tls::{ClientTls, ClientTlsFiles, TlsError};
pub use sluice_protocol::v1::{
    Acks, AclEntry, ClusterDescription, CommittedOffset, GroupDescription, GroupListing,
    GroupPartition, MemberDescription, NodeDescription, PartitionDescription, QuotaEntry,
    TopicDescription, TopicPartition, UserDescription, WhoAmIResponse,
};
pub use sluice_storage::Compression;
pub use tonic::Code;
