//! The raw produce protocol without the SDK: a client and `acks=all` requests of pre-built
//! batches, for benchmarks that measure the broker alone.

use bytes::Bytes;
use sluice_protocol::v1::producer_client::ProducerClient;
use sluice_protocol::v1::{Acks, ProduceRequest};
use tonic::transport::Channel;

/// A raw producer client with the same HTTP/2 windows the SDK uses, accepting the largest
/// messages.
pub async fn connect(address: &str) -> ProducerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("address")
        .initial_stream_window_size(sluice_protocol::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(sluice_protocol::HTTP2_CONNECTION_WINDOW_BYTES)
        .connect()
        .await
        .expect("connect");
    ProducerClient::new(channel).max_encoding_message_size(sluice_protocol::MESSAGE_BYTES_MAX)
}

/// An `acks=all` produce of `batch` to `topic`/`partition`.
pub fn request(topic: &str, partition: u32, batch: Bytes) -> ProduceRequest {
    ProduceRequest {
        topic: topic.to_string(),
        partition,
        batch,
        acks: Acks::All as i32,
        request_id: 0,
    }
}
