//! `sluice.v1.Producer`: unary and streamed produce, and producer ids.

use crate::authz::{Caller, authorize};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use sluice_protocol::v1::producer_server::Producer;
use sluice_protocol::v1::{
    Acks, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
};
use sluice_storage::Batch;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::deadline::wait_before_deadline;
use crate::controller::{ControllerCommand, ControllerResponse};
use crate::error::BrokerError;
use crate::flow::produce_budget::{self, AdmitError};
use crate::flow::quota::Direction;
use crate::limits::THROTTLE_WAIT_DEFAULT;
use crate::node::Node;

/// Requests one produce stream may have in flight; the byte budgets usually bind first.
const STREAM_INFLIGHT_MAX: usize = 256;

/// Serves `sluice.v1.Producer`.
pub struct ProducerService {
    node: Arc<Node>,
}

impl ProducerService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// A validated produce, holding its budget, ready to queue.
struct Admitted {
    partition: Arc<crate::partition::Partition>,
    batch: Batch,
    permits: Vec<OwnedSemaphorePermit>,
    request_id: u64,
    /// acks=leader: answered at the leader's fsync, not at the commit.
    leader_ack: bool,
}

/// Validates a request and takes its share of the broker's and the partition's budgets,
/// waiting at most `wait` (`None`: as long as it takes, for streams).
async fn admit(
    node: &Node,
    caller: &Caller,
    message: ProduceRequest,
    wait: Option<Duration>,
) -> Result<Admitted, BrokerError> {
    // Another broker's audit writer appends through the leader of `__audit`.
    let broker_audit = message.topic == crate::audit::AUDIT_TOPIC
        && caller.principal.method == crate::auth::AuthMethod::Broker;
    if message.topic.starts_with("__") && !broker_audit {
        return Err(BrokerError::InvalidRequest(format!(
            "{} is an internal topic: only the broker writes it",
            crate::error::quote(&message.topic)
        )));
    }
    let partition = node.partition(&message.topic, message.partition)?;
    partition.require_leader()?;
    let acks = Acks::try_from(message.acks)
        .map_err(|_| BrokerError::InvalidRequest(format!("unknown acks value {}", message.acks)))?;
    let batch =
        Batch::decode(message.batch).map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
    if batch.header().attributes.is_control() || batch.header().record_count == 0 {
        return Err(BrokerError::InvalidRequest(
            "a produced batch must be a data batch with records".into(),
        ));
    }
    let max = partition.config().max_message_bytes;
    if batch.len() as u64 > max {
        return Err(BrokerError::RecordTooLarge {
            len: batch.len() as u64,
            max,
        });
    }
    // After the size check, so an oversized batch is never decompressed.
    batch
        .validate_produced()
        .map_err(|e| BrokerError::CorruptBatch(e.to_string()))?;
    let len = batch.len();
    // Before the budget: a principal over its quota holds none of the broker's bytes.
    node.admit_quota(Direction::Produce, &caller.principal, len as u64)?;
    let budgets = [&node.broker_budget, partition.budget()];
    let permits = produce_budget::admit(&budgets, len, wait)
        .await
        .map_err(|e| match e {
            AdmitError::Throttled => {
                crate::metrics::produce_throttled(&message.topic);
                BrokerError::Throttled(format!("{}/{}", message.topic, message.partition))
            }
            AdmitError::Closed => BrokerError::Unavailable("broker is shutting down".into()),
        })?;
    Ok(Admitted {
        partition,
        batch,
        permits,
        request_id: message.request_id,
        leader_ack: acks == Acks::Leader,
    })
}

async fn complete(admitted: Admitted) -> Result<ProduceResponse, BrokerError> {
    let produced = admitted
        .partition
        .produce(admitted.batch, admitted.permits, admitted.leader_ack)
        .await?;
    Ok(produced_response(admitted.request_id, produced))
}

fn produced_response(request_id: u64, p: crate::partition::Produced) -> ProduceResponse {
    ProduceResponse {
        request_id,
        base_offset: p.base_offset,
        log_append_time_ms: p.log_append_time_ms,
        duplicate: p.duplicate,
        error: None,
    }
}

fn error_response(request_id: u64, e: &BrokerError) -> ProduceResponse {
    ProduceResponse {
        request_id,
        error: Some(e.to_error_info()),
        ..ProduceResponse::default()
    }
}

type ResponseFuture = Pin<Box<dyn std::future::Future<Output = ProduceResponse> + Send>>;

/// Admits and queues one stream request; the returned future answers it.
async fn queue_stream_request(
    node: &Node,
    caller: &Caller,
    message: ProduceRequest,
) -> ResponseFuture {
    let request_id = message.request_id;
    // Each message names its topic: each is authorized, before any budget is taken.
    if let Err(e) = authorize(node, caller, PRODUCE_STREAM, &message.topic) {
        return Box::pin(std::future::ready(error_response(request_id, &e)));
    }
    let started = Instant::now();
    let topic = message.topic.clone();
    let queued = async {
        let admitted = admit(node, caller, message, None).await?;
        let size = (admitted.batch.header().record_count, admitted.batch.len());
        let answer = admitted
            .partition
            .enqueue(admitted.batch, admitted.permits, admitted.leader_ack)
            .await?;
        Ok::<_, BrokerError>((size, answer))
    }
    .await;
    Box::pin(async move {
        let ((records, bytes), result) = match queued {
            Ok((size, answer)) => (
                size,
                answer.await.unwrap_or_else(|_| {
                    Err(BrokerError::Unavailable("partition writer stopped".into()))
                }),
            ),
            Err(e) => ((0, 0), Err(e)),
        };
        crate::metrics::produce_answered(&topic, records, bytes, started, result.is_ok());
        match result {
            Ok(produced) => produced_response(request_id, produced),
            Err(e) => error_response(request_id, &e),
        }
    })
}

/// Drives one produce stream: reads requests only while budget allows (so HTTP/2 flow
/// control pushes back on the client) and answers in request order.
async fn drive_stream(
    node: Arc<Node>,
    caller: Caller,
    mut requests: Streaming<ProduceRequest>,
    responses: mpsc::Sender<Result<ProduceResponse, Status>>,
) {
    let mut in_flight: FuturesOrdered<ResponseFuture> = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            message = requests.message(), if reading && in_flight.len() < STREAM_INFLIGHT_MAX => match message {
                Ok(Some(message)) => {
                    // Queued here, in request order, so offsets follow the stream's order;
                    // only the answers are awaited concurrently. Queued batches reach the
                    // writer (and free their budget) while this loop waits for budget.
                    let future = queue_stream_request(&node, &caller, message).await;
                    in_flight.push_back(future);
                }
                Ok(None) => reading = false,
                Err(status) => {
                    let _ = responses.send(Err(status)).await;
                    return;
                }
            },
            Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                if responses.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

const PRODUCE: &str = "/sluice.v1.Producer/Produce";
const PRODUCE_STREAM: &str = "/sluice.v1.Producer/ProduceStream";

#[tonic::async_trait]
impl Producer for ProducerService {
    async fn init_producer_id(
        &self,
        _request: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        match self
            .node
            .propose(ControllerCommand::AllocateProducerId)
            .await?
        {
            ControllerResponse::ProducerId(producer_id) => {
                Ok(Response::new(InitProducerIdResponse {
                    producer_id,
                    producer_epoch: 0,
                }))
            }
            other => {
                Err(BrokerError::Internal(format!("unexpected controller answer {other:?}")).into())
            }
        }
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let caller = Caller::of(&request);
        authorize(&self.node, &caller, PRODUCE, &request.get_ref().topic)?;
        let wait = wait_before_deadline(&request, THROTTLE_WAIT_DEFAULT);
        let started = Instant::now();
        let message = request.into_inner();
        let topic = message.topic.clone();
        let admitted = admit(&self.node, &caller, message, Some(wait)).await;
        let (records, bytes) = admitted
            .as_ref()
            .map_or((0, 0), |a| (a.batch.header().record_count, a.batch.len()));
        let result = match admitted {
            Ok(admitted) => complete(admitted).await,
            Err(e) => Err(e),
        };
        crate::metrics::produce_answered(&topic, records, bytes, started, result.is_ok());
        Ok(Response::new(result?))
    }

    type ProduceStreamStream = Pin<Box<dyn Stream<Item = Result<ProduceResponse, Status>> + Send>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_INFLIGHT_MAX);
        let caller = Caller::of(&request);
        tokio::spawn(drive_stream(
            Arc::clone(&self.node),
            caller,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
