//! Decides who a call comes from, from its headers only (before any body is read), and
//! under `--require-auth` refuses an anonymous one with UNAUTHENTICATED.

use std::sync::Arc;

use sluice_protocol::{Reason, status_with_reason};
use tonic::{Request, Status};

use super::session::{TokenError, fingerprint};
use super::{AuthMethod, Principal};
use crate::node::Node;
use crate::tls::ConnInfo;

/// The metadata key of the session token: `authorization: Bearer TOKEN`.
pub const AUTHORIZATION_KEY: &str = "authorization";

/// The interceptor in front of a service.
#[derive(Clone)]
pub struct Authenticate {
    node: Arc<Node>,
    /// Whether an anonymous call is refused here (`--require-auth`; never on the Auth
    /// service, where sessions begin).
    enforce: bool,
}

impl Authenticate {
    /// An interceptor that refuses anonymous calls when the broker requires authentication.
    pub fn required(node: Arc<Node>) -> Self {
        let enforce = node.config().require_auth;
        Self { node, enforce }
    }

    /// An interceptor that only identifies the caller (the Auth service's).
    pub fn identify_only(node: Arc<Node>) -> Self {
        Self {
            node,
            enforce: false,
        }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if let Some(value) = request.metadata().get(AUTHORIZATION_KEY) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    unauthenticated(
                        Reason::AuthenticationFailed,
                        "the authorization header is not `Bearer TOKEN`",
                    )
                })?;
            return self.session_user(token);
        }
        let certified = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.principal.as_deref())
            .cloned();
        Ok(certified.unwrap_or_else(Principal::anonymous))
    }

    fn session_user(&self, token: &str) -> Result<Principal, Status> {
        let session = self
            .node
            .session_keys()
            .verify(token, crate::auth::session::now_ms())
            .map_err(|e| match e {
                TokenError::Expired => unauthenticated(Reason::SessionExpired, &e.to_string()),
                TokenError::Invalid => {
                    unauthenticated(Reason::AuthenticationFailed, &e.to_string())
                }
            })?;
        if session.is_broker() {
            return Ok(Principal {
                name: session.user,
                method: AuthMethod::Broker,
            });
        }
        // A deleted user's sessions end with it, and a changed password ends the sessions
        // opened with the old one.
        let current = self
            .node
            .metadata()
            .users
            .get(&session.user)
            .map(|c| fingerprint(&c.stored_key));
        if current != Some(session.fingerprint) {
            return Err(unauthenticated(
                Reason::AuthenticationFailed,
                "the session's user no longer exists or has a new password",
            ));
        }
        Ok(Principal {
            name: session.user,
            method: AuthMethod::Scram,
        })
    }
}

fn unauthenticated(reason: Reason, message: &str) -> Status {
    status_with_reason(reason, message.to_string())
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = match self.principal(&request) {
            Ok(principal) => principal,
            Err(status) => {
                self.audit_refusal(&request, &status);
                return Err(status);
            }
        };
        if self.enforce && !principal.is_authenticated() {
            let status = unauthenticated(
                Reason::AuthenticationRequired,
                "this broker requires authentication: a client certificate or a SCRAM session (sluice --user)",
            );
            self.audit_refusal(&request, &status);
            return Err(status);
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

impl Authenticate {
    /// Notes a refused authentication in the audit trail (without waiting: an anonymous
    /// flood must not queue writes behind it).
    fn audit_refusal(&self, request: &Request<()>, status: &Status) {
        let audit = self.node.audit();
        if !audit.is_on() {
            return;
        }
        let context = crate::audit::Context {
            principal: Principal::anonymous(),
            source: request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.remote)
                .map(|a| a.ip()),
            request_id: crate::audit::request_id_of(request.metadata()),
        };
        let reason = sluice_protocol::StatusInfo::of(status)
            .reason
            .map_or("UNAUTHENTICATED", |r| r.as_str());
        let reason = format!("{reason}: {}", status.message());
        audit.note(audit.denied(&context, "authenticate", "", reason));
    }
}

/// The principal the interceptor found for `request` (anonymous if none ran).
pub fn principal_of<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}
