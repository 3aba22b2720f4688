//! Authorization (docs/security.md): ACLs in the controller, the deny-by-default authorizer
//! that `--require-auth` turns on, and the rule each RPC is checked by.

pub mod acl;
pub mod rules;
pub mod wire;

pub use acl::{Acl, Operation, PatternType, Permission, ResourceType};
pub use rules::{Rule, rule_for};

use crate::auth::Principal;
use crate::error::BrokerError;
use crate::node::Node;

/// Whether `principal` may do `operation` on `resource_name` of `resource_type`: always
/// without `--require-auth` (no authorizer), always for a super-user, else by the ACLs.
pub fn permits(
    node: &Node,
    principal: &Principal,
    host: Option<std::net::IpAddr>,
    operation: Operation,
    resource_type: ResourceType,
    resource_name: &str,
) -> bool {
    if !node.config().require_auth || node.is_superuser(principal) {
        return true;
    }
    if !principal.is_authenticated() {
        return false;
    }
    let who = principal.to_string();
    let host = host.map(|h| h.to_canonical().to_string());
    acl::allowed(
        &node.metadata().acls,
        &acl::Request {
            principal: &who,
            host: host.as_deref(),
            operation,
            resource_type,
            resource_name,
        },
    )
}

/// Who called and from where: what authorization needs, taken from a request before its
/// message is consumed.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated principal (anonymous if none).
    pub principal: Principal,
    /// The client's address.
    pub host: Option<std::net::IpAddr>,
    /// The client's `x-request-id`, for the audit trail.
    pub request_id: Option<String>,
}

impl Caller {
    /// The caller of `request`, as the interceptor and the listener recorded it.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self {
            principal: crate::auth::interceptor::principal_of(request),
            host: request
                .extensions()
                .get::<crate::tls::ConnInfo>()
                .and_then(|c| c.remote)
                .map(|a| a.ip()),
            request_id: crate::audit::request_id_of(request.metadata()),
        }
    }

    /// The audit context of this caller.
    pub fn audit_context(&self) -> crate::audit::Context {
        crate::audit::Context {
            principal: self.principal.clone(),
            source: self.host,
            request_id: self.request_id.clone(),
        }
    }
}

/// Checks `caller` against the rule of `method` (its full gRPC path) for `resource_name`
/// (unused by rules that name none): PERMISSION_DENIED naming what was refused, and a
/// warning in the log.
pub fn authorize(
    node: &Node,
    caller: &Caller,
    method: &str,
    resource_name: &str,
) -> Result<(), BrokerError> {
    // Without --require-auth there is no authorizer: the produce and fetch paths pay for
    // nothing more than this check (handlers never name a brokers-only method).
    if !node.config().require_auth {
        return Ok(());
    }
    let decided = decide(node, caller, method, resource_name);
    if let Err(e) = &decided {
        let audit = node.audit();
        let resource = match rules::rule(method) {
            Rule::On(_, ResourceType::Topic) => format!("topic:{resource_name}"),
            Rule::On(_, ResourceType::Group) => format!("group:{resource_name}"),
            Rule::On(_, ResourceType::Cluster) => rules::CLUSTER.to_string(),
            _ => String::new(),
        };
        audit.note(audit.event(&caller.audit_context(), method, &resource, Err(e)));
    }
    decided
}

/// Checks, as Kafka does for group calls that name topics, that `caller` may do `operation`
/// on each of `topics` as part of `method`: PERMISSION_DENIED naming the first refused,
/// noted in the audit trail.
pub fn authorize_topics<'a>(
    node: &Node,
    caller: &Caller,
    method: &str,
    operation: Operation,
    topics: impl IntoIterator<Item = &'a str>,
) -> Result<(), BrokerError> {
    if !node.config().require_auth {
        return Ok(());
    }
    for topic in topics {
        if permits(
            node,
            &caller.principal,
            caller.host,
            operation,
            ResourceType::Topic,
            topic,
        ) {
            continue;
        }
        let e = BrokerError::PermissionDenied(format!(
            "{} may not {operation:?} Topic {topic:?} (needed by {method})",
            caller.principal
        ));
        let audit = node.audit();
        audit.note(audit.event(
            &caller.audit_context(),
            method,
            &format!("topic:{topic}"),
            Err(&e),
        ));
        return Err(e);
    }
    Ok(())
}

/// The authorizer's answer for `caller` calling `method` on `resource_name`.
fn decide(
    node: &Node,
    caller: &Caller,
    method: &str,
    resource_name: &str,
) -> Result<(), BrokerError> {
    let (operation, resource_type) = match rules::rule(method) {
        Rule::Public => return Ok(()),
        // The interceptor refuses anonymous calls first; checked again so a service that
        // only identifies its callers cannot let one through.
        Rule::Authenticated | Rule::Filtered(..) => {
            if !caller.principal.is_authenticated() {
                return Err(BrokerError::PermissionDenied(format!(
                    "{method} needs an authenticated caller"
                )));
            }
            return Ok(());
        }
        Rule::SuperUser => {
            if node.is_superuser(&caller.principal) {
                return Ok(());
            }
            tracing::warn!(principal = %caller.principal, host = ?caller.host, method, "denied: super-users only");
            return Err(BrokerError::PermissionDenied(format!(
                "{} may not call {method}: super-users only (--superuser)",
                caller.principal
            )));
        }
        Rule::On(operation, resource_type) => (operation, resource_type),
        Rule::Broker => {
            return Err(BrokerError::PermissionDenied(format!(
                "{method} is for brokers only"
            )));
        }
    };
    let resource_name = match resource_type {
        ResourceType::Cluster => rules::CLUSTER,
        _ => resource_name,
    };
    if permits(
        node,
        &caller.principal,
        caller.host,
        operation,
        resource_type,
        resource_name,
    ) {
        return Ok(());
    }
    let principal = &caller.principal;
    tracing::warn!(%principal, host = ?caller.host, ?operation, ?resource_type, resource_name, "denied");
    Err(BrokerError::PermissionDenied(format!(
        "{principal} may not {operation:?} {resource_type:?} {resource_name:?}"
    )))
}
