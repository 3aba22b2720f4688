//! A partition's offsets wherever it lives: from the local replica when this node leads
//! it, else from its leader over the client API (lag and offset resets need them for
//! partitions the coordinator does not host).

use sluice_protocol::v1::consumer_client::ConsumerClient;
use sluice_protocol::v1::{ListOffsetsRequest, OffsetSpec};

use crate::error::BrokerError;
use crate::node::Node;

/// Which offset of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// The first offset at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// The offset `spec` names in `topic`/`partition`.
pub async fn offset(
    node: &Node,
    topic: &str,
    partition: u32,
    spec: Spec,
) -> Result<u64, BrokerError> {
    match node.partition(topic, partition) {
        Ok(p) if p.is_leader() => {
            let (start, high_watermark, _) = p.offsets()?;
            return match spec {
                Spec::Earliest => Ok(start),
                Spec::Latest => Ok(high_watermark),
                Spec::Timestamp(ts) => p.offset_for_timestamp(ts),
            };
        }
        _ => {}
    }
    let metadata = node.metadata();
    let leader = metadata
        .topics
        .get(topic)
        .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?
        .partitions
        .get(partition as usize)
        .ok_or_else(|| BrokerError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })?
        .leader
        .and_then(|l| metadata.node_address(l).map(str::to_string))
        .ok_or_else(|| {
            BrokerError::Unavailable(format!("{topic}/{partition} has no known leader"))
        })?;
    let channel = node.coordinator.channel(&leader)?;
    let (spec, timestamp_ms) = match spec {
        Spec::Earliest => (OffsetSpec::Earliest, 0),
        Spec::Latest => (OffsetSpec::Latest, 0),
        Spec::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
    };
    let mut request = tonic::Request::new(ListOffsetsRequest {
        topic: topic.to_string(),
        partition,
        spec: spec as i32,
        timestamp_ms,
    });
    // As a broker: the other broker may require authentication (--require-auth).
    let token = format!("Bearer {}", node.session_keys().broker_token());
    if let Ok(value) = token.parse() {
        request
            .metadata_mut()
            .insert(crate::auth::interceptor::AUTHORIZATION_KEY, value);
    }
    let answer = ConsumerClient::new(channel)
        .list_offsets(request)
        .await
        .map_err(|s| {
            BrokerError::Unavailable(format!(
                "offsets of {topic}/{partition} from its leader at {leader}: {}",
                s.message()
            ))
        })?;
    Ok(answer.into_inner().offset)
}
