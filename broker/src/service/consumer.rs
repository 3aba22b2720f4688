//! `sluice.v1.Consumer`: long-poll fetch, credit-paced subscribe, offset lookups.

use crate::authz::{Caller, authorize};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_protocol::v1::consumer_server::Consumer;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{
    FetchRequest, FetchResponse, FetchedPartition, ListOffsetsRequest, ListOffsetsResponse,
    OffsetSpec, SubscribeRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::error::BrokerError;
use crate::flow::quota::Direction;
use crate::limits::{FETCH_BYTES_MAX, FETCH_PARTITIONS_MAX, FETCH_WAIT_MS_MAX};
use crate::node::Node;
use crate::partition::Partition;
use crate::service::subscription::{self, Quota};

/// Serves `sluice.v1.Consumer`.
pub struct ConsumerService {
    node: Arc<Node>,
}

impl ConsumerService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn validate_fetch(request: &FetchRequest) -> Result<(), BrokerError> {
    if request.partitions.is_empty() || request.partitions.len() > FETCH_PARTITIONS_MAX {
        return Err(BrokerError::InvalidRequest(format!(
            "a fetch names 1 to {FETCH_PARTITIONS_MAX} partitions"
        )));
    }
    if request.max_wait_ms > FETCH_WAIT_MS_MAX {
        return Err(BrokerError::InvalidRequest(format!(
            "max_wait_ms above {FETCH_WAIT_MS_MAX}"
        )));
    }
    if request.max_bytes > FETCH_BYTES_MAX {
        return Err(BrokerError::InvalidRequest(format!(
            "max_bytes above {FETCH_BYTES_MAX}"
        )));
    }
    Ok(())
}

fn leader_partition(node: &Node, topic: &str, index: u32) -> Result<Arc<Partition>, BrokerError> {
    let partition = node.partition(topic, index)?;
    partition.require_leader()?;
    Ok(partition)
}

impl ConsumerService {
    /// One pass over every requested partition; returns the response and its byte count.
    fn fetch_once(&self, request: &FetchRequest) -> (FetchResponse, usize) {
        let total_max = if request.max_bytes == 0 {
            1024 * 1024
        } else {
            request.max_bytes
        } as usize;
        let mut remaining = total_max;
        let mut bytes = 0;
        let mut partitions = Vec::with_capacity(request.partitions.len());
        for wanted in &request.partitions {
            let cap = if wanted.max_bytes == 0 {
                total_max
            } else {
                wanted.max_bytes as usize
            };
            let result = leader_partition(&self.node, &wanted.topic, wanted.partition)
                .and_then(|p| p.read(wanted.offset, cap.min(remaining.max(1))));
            let mut fetched = FetchedPartition {
                topic: wanted.topic.clone(),
                partition: wanted.partition,
                ..Default::default()
            };
            match result {
                Ok(read) => {
                    let n = read.bytes();
                    bytes += n;
                    remaining = remaining.saturating_sub(n);
                    fetched.high_watermark = read.high_watermark;
                    fetched.log_start_offset = read.log_start_offset;
                    fetched.batches = read.batches;
                }
                Err(e) => fetched.error = Some(e.to_error_info()),
            }
            partitions.push(fetched);
        }
        (FetchResponse { partitions }, bytes)
    }
}

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let caller = Caller::of(&request);
        for wanted in &request.get_ref().partitions {
            authorize(
                &self.node,
                &caller,
                "/sluice.v1.Consumer/Fetch",
                &wanted.topic,
            )?;
        }
        let request = request.into_inner();
        validate_fetch(&request)?;
        // A principal over its fetch quota waits its debt out before reading anything.
        self.node
            .admit_quota(Direction::Fetch, &caller.principal, 0)?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            let (response, bytes) = self.fetch_once(&request);
            if bytes >= request.min_bytes.max(1) as usize || tokio::time::Instant::now() >= deadline
            {
                for p in &response.partitions {
                    let n = p.batches.iter().map(bytes::Bytes::len).sum();
                    crate::metrics::fetched("fetch", &p.topic, n);
                }
                self.node
                    .charge_quota(Direction::Fetch, &caller.principal, bytes as u64);
                return Ok(Response::new(response));
            }
            // Wait for any requested partition's high watermark to move, or the deadline.
            let mut watches: FuturesUnordered<_> = request
                .partitions
                .iter()
                .filter_map(|w| self.node.partition(&w.topic, w.partition).ok())
                .map(|p| {
                    let mut watch = p.watch_high_watermark();
                    async move { watch.changed().await }
                })
                .collect();
            if watches.is_empty() {
                return Ok(Response::new(response));
            }
            let _ = tokio::time::timeout_at(deadline, watches.next()).await;
        }
    }

    type SubscribeStream = subscription::Responses;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request);
        let mut requests = request.into_inner();
        let start = match requests.message().await? {
            Some(SubscribeRequest {
                kind: Some(Kind::Start(start)),
            }) => start,
            _ => {
                return Err(BrokerError::InvalidRequest(
                    "a subscription starts with a start message".into(),
                )
                .into());
            }
        };
        authorize(
            &self.node,
            &caller,
            "/sluice.v1.Consumer/Subscribe",
            &start.topic,
        )?;
        let partition = leader_partition(&self.node, &start.topic, start.partition)?;
        let quota = Quota::new(Arc::clone(&self.node), caller.principal);
        Ok(Response::new(subscription::responses(
            partition, quota, start, requests,
        )))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let topic = &request.get_ref().topic;
        authorize(
            &self.node,
            &Caller::of(&request),
            "/sluice.v1.Consumer/ListOffsets",
            topic,
        )?;
        let request = request.into_inner();
        let partition = leader_partition(&self.node, &request.topic, request.partition)?;
        let (log_start_offset, high_watermark, _) = partition.offsets()?;
        let spec = OffsetSpec::try_from(request.spec).map_err(|_| {
            BrokerError::InvalidRequest(format!("unknown offset spec {}", request.spec))
        })?;
        let offset = match spec {
            OffsetSpec::Earliest => log_start_offset,
            OffsetSpec::Latest | OffsetSpec::Unspecified => high_watermark,
            OffsetSpec::Timestamp => partition.offset_for_timestamp(request.timestamp_ms)?,
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset,
            high_watermark,
        }))
    }
}
