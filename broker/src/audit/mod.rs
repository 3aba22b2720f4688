//! The audit trail (docs/security.md, "Audit"): security and admin events as records of the
//! internal topic `__audit`, which no API deletes, alters or writes. On when the broker
//! authenticates (`--require-auth`) or with `--audit`.

pub mod event;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub use event::{AuditEvent, Outcome};
use writer::AuditSender;

use crate::auth::Principal;
use crate::controller::{ControllerCommand, ControllerResponse};
use crate::error::BrokerError;
use crate::node::Node;

/// The internal topic holding the audit trail.
pub const AUDIT_TOPIC: &str = "__audit";
/// Its one partition: one order for every event.
pub const AUDIT_PARTITION: u32 = 0;
/// The request metadata key a client may name its request by.
pub const REQUEST_ID_KEY: &str = "x-request-id";
/// The longest request id kept from a client.
const REQUEST_ID_BYTES_MAX: usize = 128;

/// The node's audit trail: off, or a queue to its writer.
#[derive(Debug)]
pub struct Audit {
    sender: Option<AuditSender>,
    node: u64,
    /// Process start (ms): ids stay unique across restarts of the node.
    start_ms: i64,
    sequence: AtomicU64,
}

/// Who asked, from where, under which request id: taken from a request before its
/// message is consumed.
#[derive(Debug, Clone)]
pub struct Context {
    /// The caller.
    pub principal: Principal,
    /// The caller's address.
    pub source: Option<std::net::IpAddr>,
    /// The client's `x-request-id`, if it sent a printable one.
    pub request_id: Option<String>,
}

impl Context {
    /// The context of `request`.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self {
            principal: crate::auth::interceptor::principal_of(request),
            source: request
                .extensions()
                .get::<crate::tls::ConnInfo>()
                .and_then(|c| c.remote)
                .map(|a| a.ip()),
            request_id: request_id_of(request.metadata()),
        }
    }
}

/// The client's request id, if printable and short.
pub fn request_id_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= REQUEST_ID_BYTES_MAX)
        .map(str::to_string)
}

/// A principal as the audit trail names it.
pub fn principal_name(principal: &Principal) -> String {
    if principal.is_authenticated() {
        principal.to_string()
    } else {
        "User:ANONYMOUS".to_string()
    }
}

impl Audit {
    /// An audit trail that records nothing.
    pub fn off(node: u64) -> Self {
        Self {
            sender: None,
            node,
            start_ms: crate::groups::shard::now_ms(),
            sequence: AtomicU64::new(0),
        }
    }

    /// An audit trail writing through `sender`.
    pub fn on(node: u64, sender: AuditSender) -> Self {
        Self {
            sender: Some(sender),
            ..Self::off(node)
        }
    }

    /// Whether events are recorded.
    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// An event of `context` doing `operation` on `resource`.
    pub fn event(
        &self,
        context: &Context,
        operation: &str,
        resource: &str,
        result: Result<(), &BrokerError>,
    ) -> AuditEvent {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{sequence}", self.node, self.start_ms);
        let (outcome, reason) = match result {
            Ok(()) => (Outcome::Ok, String::new()),
            Err(e) => {
                let outcome = match e {
                    BrokerError::PermissionDenied(_) => Outcome::Denied,
                    _ => Outcome::Failed,
                };
                (outcome, format!("{}: {e}", e.reason().as_str()))
            }
        };
        AuditEvent {
            version: event::AUDIT_FORMAT_VERSION,
            request_id: context.request_id.clone().unwrap_or_else(|| id.clone()),
            id,
            time_ms: crate::groups::shard::now_ms(),
            principal: principal_name(&context.principal),
            source: context.source.map(|s| s.to_string()).unwrap_or_default(),
            operation: operation.to_string(),
            resource: resource.to_string(),
            outcome,
            reason,
            node: self.node,
        }
    }

    /// An event of an authentication refused for `reason`.
    pub fn denied(
        &self,
        context: &Context,
        operation: &str,
        resource: &str,
        reason: String,
    ) -> AuditEvent {
        let mut event = self.event(context, operation, resource, Ok(()));
        event.outcome = Outcome::Denied;
        event.reason = reason;
        event
    }

    /// Records `event` without waiting (denials, refused authentications).
    pub fn note(&self, event: AuditEvent) {
        if let Some(sender) = &self.sender {
            sender.note(event);
        }
    }

    /// Records `event` and waits until it is durable.
    pub async fn write(&self, event: AuditEvent) -> Result<(), BrokerError> {
        match &self.sender {
            Some(sender) => sender.write(event).await,
            None => Ok(()),
        }
    }

    /// Records the outcome of an admin operation durably, then hands `result` back: a done
    /// operation whose event could not be written is answered UNAVAILABLE (it was done;
    /// the trail must not miss it silently).
    pub async fn admin<T>(
        &self,
        context: &Context,
        operation: &str,
        resource: &str,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        // Sent on to the leader or coordinator: attempted there, and audited there.
        let redirected = matches!(
            result,
            Err(BrokerError::NotLeader { .. } | BrokerError::NotCoordinator { .. })
        );
        if !self.is_on() || redirected {
            return result;
        }
        let event = self.event(context, operation, resource, result.as_ref().map(|_| ()));
        match (self.write(event).await, result) {
            (Ok(()), result) => result,
            (Err(e), Ok(_)) => Err(BrokerError::Unavailable(format!(
                "{operation} {resource} was done, but its audit record could not be written: {e}"
            ))),
            (Err(e), Err(original)) => {
                tracing::error!(error = %e, operation, resource, "audit record lost");
                Err(original)
            }
        }
    }
}

impl Audit {
    /// Records an admin operation refused with `error` (durably), and hands the error back.
    pub async fn refused(
        &self,
        context: &Context,
        operation: &str,
        resource: &str,
        error: BrokerError,
    ) -> BrokerError {
        match self
            .admin::<()>(context, operation, resource, Err(error))
            .await
        {
            Err(e) => e,
            Ok(()) => BrokerError::Internal("an audited refusal came back as a success".into()),
        }
    }
}

impl Node {
    /// Creates `__audit` on first use (one partition, replication factor min(3, live
    /// nodes), the broker's default retention).
    pub async fn audit_topic(&self) -> Result<(), BrokerError> {
        if self.metadata().topics.contains_key(AUDIT_TOPIC) {
            return Ok(());
        }
        let nodes = self.placement_nodes(1).await?;
        let command = ControllerCommand::CreateTopic {
            name: AUDIT_TOPIC.to_string(),
            partitions: 1,
            replication_factor: nodes.len().min(3) as u32,
            configs: BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]),
            nodes,
        };
        match self.propose(command).await? {
            ControllerResponse::Refused { reason, message } if reason != "TOPIC_EXISTS" => {
                return Err(BrokerError::Internal(format!(
                    "creating {AUDIT_TOPIC}: {message}"
                )));
            }
            ControllerResponse::Refused { .. } => {}
            _ => tracing::info!(topic = AUDIT_TOPIC, "created the audit topic"),
        }
        self.reconcile().await;
        self.wait_topic_ready(AUDIT_TOPIC).await
    }
}
