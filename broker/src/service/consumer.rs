//! `sluice.v1.Consumer`: long-poll fetch, credit-paced subscribe, offset lookups.

use crate::authz::{Caller, authorize};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use sluice_protocol::v1::consumer_server::Consumer;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{
    Credit, FetchRequest, FetchResponse, FetchedPartition, ListOffsetsRequest, ListOffsetsResponse,
    OffsetSpec, SubscribeRequest, SubscribeResponse, SubscribeStart,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::BrokerError;
use crate::flow::quota::Direction;
use crate::limits::{FETCH_BYTES_MAX, FETCH_PARTITIONS_MAX, FETCH_WAIT_MS_MAX};
use crate::node::Node;
use crate::partition::Partition;

/// Bytes one subscribe read takes at most (credit permitting).
const SUBSCRIBE_READ_BYTES_MAX: u64 = 4 * 1024 * 1024;

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

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

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
        // Capacity 1: the broker holds at most one response it was allowed to send.
        let (tx, rx) = mpsc::channel(1);
        let quota = Quota {
            node: Arc::clone(&self.node),
            principal: caller.principal,
        };
        tokio::spawn(run_subscription(partition, quota, start, requests, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

/// Credit a subscriber has granted and not yet used.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    bytes: u64,
    batches: u32,
}

impl Held {
    fn add(&mut self, credit: Credit) {
        self.bytes = self.bytes.saturating_add(credit.bytes);
        self.batches = self.batches.saturating_add(credit.batches);
    }
}

/// Whose fetch quota a subscription's bytes count against.
struct Quota {
    node: Arc<Node>,
    principal: crate::auth::Principal,
}

impl Quota {
    /// Waits while the principal is over its fetch quota (the stream slows, it does not
    /// fail).
    async fn wait(&self) {
        let Some(rate) = self.node.quota_rate(Direction::Fetch, &self.principal) else {
            return;
        };
        let name = self.principal.to_string();
        if let Some(wait) = self.node.quotas.debt(Direction::Fetch, &name, rate) {
            crate::metrics::quota_throttled(Direction::Fetch);
            tokio::time::sleep(wait).await;
        }
    }

    fn charge(&self, bytes: u64) {
        self.node
            .charge_quota(Direction::Fetch, &self.principal, bytes);
    }
}

/// Sends batches from `start.offset` as credit allows. Reads nothing while the subscriber
/// grants nothing: a stalled consumer costs no buffered record copies.
async fn run_subscription(
    partition: Arc<Partition>,
    quota: Quota,
    start: SubscribeStart,
    mut requests: Streaming<SubscribeRequest>,
    responses: mpsc::Sender<Result<SubscribeResponse, Status>>,
) {
    let mut next = start.offset;
    let mut held = Held::default();
    let mut high_watermark = partition.watch_high_watermark();
    let mut open = true;
    loop {
        if held.bytes > 0 && held.batches > 0 && *high_watermark.borrow() > next {
            quota.wait().await;
            match send_within_credit(&partition, &mut next, &mut held, &responses).await {
                Ok(Some(sent)) => {
                    quota.charge(sent);
                    continue;
                }
                Ok(None) => {}
                Err(()) => return,
            }
        }
        tokio::select! {
            message = requests.message(), if open => match message {
                Ok(Some(SubscribeRequest { kind: Some(Kind::Credit(credit)) })) => held.add(credit),
                Ok(Some(_)) => {
                    let e = BrokerError::InvalidRequest("only credit may follow the start message".into());
                    let _ = responses.send(Err(e.into())).await;
                    return;
                }
                Ok(None) => open = false,
                Err(_) => return,
            },
            changed = high_watermark.changed() => if changed.is_err() { return },
            () = responses.closed() => return,
        }
        if !open && held.batches == 0 {
            return;
        }
    }
}

/// Sends what fits the held credit; the bytes sent, `Ok(None)` if the next batch does not
/// fit, `Err` if the subscriber is gone.
async fn send_within_credit(
    partition: &Partition,
    next: &mut u64,
    held: &mut Held,
    responses: &mpsc::Sender<Result<SubscribeResponse, Status>>,
) -> Result<Option<u64>, ()> {
    let read = match partition.read(*next, held.bytes.min(SUBSCRIBE_READ_BYTES_MAX) as usize) {
        Ok(read) => read,
        Err(e) => {
            let _ = responses.send(Err(e.into())).await;
            return Err(());
        }
    };
    let mut batches = Vec::new();
    let mut used = 0u64;
    for bytes in read.batches {
        let len = bytes.len() as u64;
        if used + len > held.bytes || batches.len() as u32 >= held.batches {
            break;
        }
        let Ok(header) = sluice_storage::BatchHeader::decode(&bytes) else {
            break;
        };
        used += len;
        *next = header.next_offset().max(*next);
        batches.push(bytes);
    }
    if batches.is_empty() {
        return Ok(None);
    }
    held.bytes -= used;
    held.batches -= batches.len() as u32;
    crate::metrics::fetched("subscribe", &partition.topic, used as usize);
    let response = SubscribeResponse {
        batches,
        high_watermark: read.high_watermark,
    };
    responses
        .send(Ok(response))
        .await
        .map(|()| Some(used))
        .map_err(|_| ())
}
