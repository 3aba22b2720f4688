//! One `Subscribe` stream: batches from the start offset as the subscriber's credit allows,
//! read only when credit is held (a stalled consumer costs no buffered record copies).
//!
//! The subscription is a stream the response body polls itself, not a task feeding a
//! channel: each response then wakes one task fewer on its way to HTTP/2 (issue 18, fan-out),
//! and nothing is read ahead of what HTTP/2 will take.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_protocol::v1::subscribe_request::Kind;
use sluice_protocol::v1::{Credit, SubscribeRequest, SubscribeResponse, SubscribeStart};
use tokio::sync::watch;
use tonic::{Status, Streaming};

use crate::error::BrokerError;
use crate::flow::quota::Direction;
use crate::node::Node;
use crate::partition::Partition;

/// Bytes one subscribe read takes at most (credit permitting).
const SUBSCRIBE_READ_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The responses of one subscription; an error ends them.
pub type Responses = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

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
pub struct Quota {
    node: Arc<Node>,
    principal: crate::auth::Principal,
}

impl Quota {
    /// `principal`'s fetch quota on `node`.
    pub fn new(node: Arc<Node>, principal: crate::auth::Principal) -> Self {
        Self { node, principal }
    }

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

/// A subscription between two responses.
struct Subscription {
    partition: Arc<Partition>,
    quota: Quota,
    requests: Streaming<SubscribeRequest>,
    high_watermark: watch::Receiver<u64>,
    /// The next offset to send.
    next: u64,
    held: Held,
    /// The subscriber may still send credit.
    open: bool,
}

/// What a subscription does next.
enum Step {
    Send(SubscribeResponse),
    Fail(Status),
    End,
}

/// The responses of a subscription from `start.offset`, paced by the credit `requests`
/// grant (the start message already taken from them).
pub fn responses(
    partition: Arc<Partition>,
    quota: Quota,
    start: SubscribeStart,
    requests: Streaming<SubscribeRequest>,
) -> Responses {
    let high_watermark = partition.watch_high_watermark();
    let subscription = Subscription {
        partition,
        quota,
        requests,
        high_watermark,
        next: start.offset,
        held: Held::default(),
        open: true,
    };
    Box::pin(futures::stream::unfold(
        Some(subscription),
        |state| async move {
            let mut subscription = state?;
            match subscription.step().await {
                Step::Send(response) => Some((Ok(response), Some(subscription))),
                Step::Fail(status) => Some((Err(status), None)),
                Step::End => None,
            }
        },
    ))
}

impl Subscription {
    /// Waits until a response fits the held credit, the subscription fails, or it ends
    /// (the subscriber closed its side with no batch credit left, or went away).
    async fn step(&mut self) -> Step {
        loop {
            if self.held.bytes > 0
                && self.held.batches > 0
                && *self.high_watermark.borrow() > self.next
            {
                self.quota.wait().await;
                match self.take_within_credit() {
                    Ok(Some(response)) => return Step::Send(response),
                    Ok(None) => {}
                    Err(status) => return Step::Fail(status),
                }
            }
            tokio::select! {
                message = self.requests.message(), if self.open => match message {
                    Ok(Some(SubscribeRequest { kind: Some(Kind::Credit(credit)) })) => {
                        self.held.add(credit);
                    }
                    Ok(Some(_)) => {
                        let e = BrokerError::InvalidRequest(
                            "only credit may follow the start message".into(),
                        );
                        return Step::Fail(e.into());
                    }
                    Ok(None) => self.open = false,
                    Err(_) => return Step::End,
                },
                changed = self.high_watermark.changed() => if changed.is_err() {
                    return Step::End;
                },
            }
            if !self.open && self.held.batches == 0 {
                return Step::End;
            }
        }
    }

    /// Reads what fits the held credit and deducts it; `None` if the next batch does not
    /// fit.
    fn take_within_credit(&mut self) -> Result<Option<SubscribeResponse>, Status> {
        let budget = self.held.bytes.min(SUBSCRIBE_READ_BYTES_MAX) as usize;
        let read = self.partition.read(self.next, budget)?;
        let mut batches = Vec::new();
        let mut used = 0u64;
        for bytes in read.batches {
            let len = bytes.len() as u64;
            if used + len > self.held.bytes || batches.len() as u32 >= self.held.batches {
                break;
            }
            let Ok(header) = sluice_storage::BatchHeader::decode(&bytes) else {
                break;
            };
            used += len;
            self.next = header.next_offset().max(self.next);
            batches.push(bytes);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        self.held.bytes -= used;
        self.held.batches -= batches.len() as u32;
        crate::metrics::fetched("subscribe", &self.partition.topic, used as usize);
        self.quota.charge(used);
        Ok(Some(SubscribeResponse {
            batches,
            high_watermark: read.high_watermark,
        }))
    }
}
