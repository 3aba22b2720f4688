//! `sluice.v1.Auth`: SCRAM-SHA-256 logins that hand out session tokens, and the users who
//! may log in (docs/security.md).

use std::sync::Arc;

use sluice_protocol::scram::{self, ITERATIONS_MIN, KEY_BYTES};
use sluice_protocol::v1::auth_server::Auth;
use sluice_protocol::v1::{
    AclEntry, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DeleteUserRequest, DeleteUserResponse, ListAclsRequest, ListAclsResponse, ListUsersRequest,
    ListUsersResponse, ScramFinishRequest, ScramFinishResponse, ScramStartRequest,
    ScramStartResponse, UpsertUserRequest, UpsertUserResponse, UserDescription, WhoAmIRequest,
    WhoAmIResponse,
};
use sluice_protocol::v1::{
    DeleteQuotaRequest, DeleteQuotaResponse, ListQuotasRequest, ListQuotasResponse,
    SetQuotaRequest, SetQuotaResponse,
};
use sluice_protocol::{RETRY_AFTER_MS_KEY, Reason, status_with_reason};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::interceptor::principal_of;
use crate::auth::scram_server::AuthError;
use crate::auth::session::{SESSION_TTL, Session, USER_NAME_BYTES_MAX, fingerprint, now_ms};
use crate::authz::{Acl, Caller, authorize};
use crate::controller::{ControllerCommand, ControllerResponse, UserCredential};
use crate::error::BrokerError;
use crate::node::Node;

/// The only mechanism.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Longest SCRAM message accepted.
const SCRAM_MESSAGE_BYTES_MAX: usize = 1024;

/// Serves `sluice.v1.Auth`.
pub struct AuthService {
    pub(super) node: Arc<Node>,
}

impl AuthService {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Checks the caller of `request` against the rule of Auth method `method`: user and
    /// ACL management need Alter (Describe to list) on the cluster, which super-users have.
    pub(super) fn authorize<T>(&self, request: &Request<T>, method: &str) -> Result<(), Status> {
        let path = format!("/sluice.v1.Auth/{method}");
        Ok(authorize(&self.node, &Caller::of(request), &path, "")?)
    }

    /// Applies `command`, then records it in the audit trail (durably, before the answer)
    /// as `operation` on `resource` by the caller of `request`.
    pub(super) async fn propose<T>(
        &self,
        request: &Request<T>,
        operation: &str,
        resource: &str,
        command: ControllerCommand,
    ) -> Result<(), Status> {
        let result = match self.node.propose(command).await {
            Ok(ControllerResponse::Refused { message, .. }) => {
                Err(BrokerError::InvalidRequest(message))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        let context = crate::audit::Context::of(request);
        Ok(self
            .node
            .audit()
            .admin(&context, operation, resource, result)
            .await?)
    }

    /// Records a login in the audit trail: a success durably (it opens a session), a
    /// failure without waiting (an attacker's failures must not queue writes).
    async fn audit_login<T>(
        &self,
        request: &Request<T>,
        user: &str,
        failure: Option<&AuthError>,
    ) -> Result<(), Status> {
        let audit = self.node.audit();
        if !audit.is_on() {
            return Ok(());
        }
        let mut context = crate::audit::Context::of(request);
        // The name claimed, proven or not: what an operator searches failures by.
        context.principal = crate::auth::Principal {
            name: user.to_string(),
            method: crate::auth::AuthMethod::Scram,
        };
        let resource = format!("user:{user}");
        match failure {
            None => {
                audit
                    .write(audit.event(&context, "login", &resource, Ok(())))
                    .await?
            }
            Some(e) => {
                let reason = auth_status(e);
                let reason = format!(
                    "{}: {}",
                    sluice_protocol::StatusInfo::of(&reason)
                        .reason
                        .map_or("UNAUTHENTICATED", |r| r.as_str()),
                    reason.message()
                );
                audit.note(audit.denied(&context, "login", &resource, reason));
            }
        }
        Ok(())
    }
}

fn auth_status(e: &AuthError) -> Status {
    match e {
        AuthError::Busy => status_with_reason(Reason::Throttled, e.to_string()),
        AuthError::Throttled(wait) => {
            let mut status = status_with_reason(Reason::Throttled, e.to_string());
            status.metadata_mut().insert(
                RETRY_AFTER_MS_KEY,
                MetadataValue::from(wait.as_millis().min(u128::from(u32::MAX)) as u32),
            );
            status
        }
        // One answer for every failed proof or message, so an unknown user and a known
        // one with a bad message look alike.
        AuthError::Scram(_) => {
            status_with_reason(Reason::AuthenticationFailed, "SCRAM authentication failed")
        }
        AuthError::UnknownExchange(_) => {
            status_with_reason(Reason::AuthenticationFailed, e.to_string())
        }
    }
}

fn too_long(what: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::from(BrokerError::InvalidRequest(format!(
            "{what} is longer than {max} bytes"
        ))));
    }
    Ok(())
}

/// A credential as the client sent it, checked: the mechanism, the minimums, the key sizes.
fn credential_of(request: &UpsertUserRequest) -> Result<UserCredential, Status> {
    let invalid = |m: String| Status::from(BrokerError::InvalidRequest(m));
    if request.mechanism != SCRAM_SHA_256 {
        return Err(invalid(format!(
            "mechanism {:?} is not supported; use {SCRAM_SHA_256}",
            request.mechanism
        )));
    }
    scram::check_strength(request.salt.len(), request.iterations)
        .map_err(|e| invalid(format!("{e} (at least {ITERATIONS_MIN} iterations)")))?;
    if request.stored_key.len() != KEY_BYTES || request.server_key.len() != KEY_BYTES {
        return Err(invalid("the keys must be 32 bytes (SHA-256)".into()));
    }
    Ok(UserCredential {
        salt: request.salt.to_vec(),
        iterations: request.iterations,
        stored_key: request.stored_key.to_vec(),
        server_key: request.server_key.to_vec(),
    })
}

/// Most entries one call may create or delete.
const ACLS_PER_CALL_MAX: usize = 1000;

/// The entries of a request, each checked.
/// ACLs as the audit trail names them.
fn acl_list(acls: &[Acl]) -> String {
    let described: Vec<String> = acls.iter().map(|a| format!("acl:{a}")).collect();
    described.join("; ")
}

fn acls_of(entries: &[AclEntry]) -> Result<Vec<Acl>, Status> {
    if entries.is_empty() || entries.len() > ACLS_PER_CALL_MAX {
        return Err(Status::from(BrokerError::InvalidRequest(format!(
            "give 1 to {ACLS_PER_CALL_MAX} ACL entries"
        ))));
    }
    entries
        .iter()
        .map(|e| Acl::from_entry(e).map_err(|m| Status::from(BrokerError::InvalidRequest(m))))
        .collect()
}

/// A user name: 1–256 bytes of printable characters.
pub fn validate_user_name(name: &str) -> Result<(), Status> {
    let printable = name.chars().all(|c| !c.is_control());
    // `User:*` in an ACL means every user, and ANONYMOUS is how no user prints.
    let reserved = name == "*" || name == "ANONYMOUS" || name.starts_with("__");
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX || !printable || reserved {
        return Err(Status::from(BrokerError::InvalidRequest(
            "a user name is 1 to 256 bytes of printable characters, not * or ANONYMOUS, not starting with __".into(),
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        self.set_quota_call(request).await
    }

    async fn delete_quota(
        &self,
        request: Request<DeleteQuotaRequest>,
    ) -> Result<Response<DeleteQuotaResponse>, Status> {
        self.delete_quota_call(request).await
    }

    async fn list_quotas(
        &self,
        request: Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        self.list_quotas_call(&request)
    }

    async fn scram_start(
        &self,
        request: Request<ScramStartRequest>,
    ) -> Result<Response<ScramStartResponse>, Status> {
        let client_first = &request.get_ref().client_first;
        too_long(
            "client-first-message",
            client_first,
            SCRAM_MESSAGE_BYTES_MAX,
        )?;
        let nonce = scram::nonce().map_err(|e| Status::internal(e.to_string()))?;
        let exchange_id = scram::nonce().map_err(|e| Status::internal(e.to_string()))?;
        let metadata = self.node.metadata();
        let lookup = |user: &str| metadata.users.get(user).and_then(UserCredential::scram);
        let source = Caller::of(&request).host;
        let started = self
            .node
            .scram()
            .start(client_first, lookup, &nonce, exchange_id, source);
        let (server_first, exchange_id) = match started {
            Ok(started) => started,
            Err(e) => {
                if let Ok(first) = scram::parse_client_first(client_first) {
                    self.audit_login(&request, &first.user, Some(&e)).await?;
                }
                return Err(auth_status(&e));
            }
        };
        Ok(Response::new(ScramStartResponse {
            server_first,
            exchange_id,
        }))
    }

    async fn scram_finish(
        &self,
        request: Request<ScramFinishRequest>,
    ) -> Result<Response<ScramFinishResponse>, Status> {
        let remote = request
            .extensions()
            .get::<crate::tls::ConnInfo>()
            .and_then(|c| c.remote);
        let r = request.get_ref();
        too_long(
            "client-final-message",
            &r.client_final,
            SCRAM_MESSAGE_BYTES_MAX,
        )?;
        let claimed = self.node.scram().user_of(&r.exchange_id);
        match self.node.scram().finish(&r.exchange_id, &r.client_final) {
            Ok((user, server_final)) => {
                tracing::info!(user, ?remote, "login succeeded");
                self.audit_login(&request, &user, None).await?;
                let Some(credential) = self.node.metadata().users.get(&user).cloned() else {
                    return Err(status_with_reason(
                        Reason::AuthenticationFailed,
                        "the user was deleted during the login",
                    ));
                };
                let session = Session {
                    user,
                    fingerprint: fingerprint(&credential.stored_key),
                };
                Ok(Response::new(ScramFinishResponse {
                    server_final,
                    token: self
                        .node
                        .session_keys()
                        .issue(&session, now_ms(), SESSION_TTL),
                    expires_in_ms: SESSION_TTL.as_millis() as u64,
                }))
            }
            Err(e) => {
                // Never the messages themselves: they carry the proof.
                tracing::warn!(?remote, error = %e, "login failed");
                if let Some(user) = claimed {
                    self.audit_login(&request, &user, Some(&e)).await?;
                }
                Err(auth_status(&e))
            }
        }
    }

    async fn upsert_user(
        &self,
        request: Request<UpsertUserRequest>,
    ) -> Result<Response<UpsertUserResponse>, Status> {
        self.authorize(&request, "UpsertUser")?;
        let r = request.get_ref();
        validate_user_name(&r.name)?;
        let credential = credential_of(r)?;
        self.propose(
            &request,
            "user.upsert",
            &format!("user:{}", r.name),
            ControllerCommand::UpsertUser {
                name: r.name.clone(),
                credential,
            },
        )
        .await?;
        tracing::info!(user = r.name, by = %principal_of(&request), "user created or updated");
        Ok(Response::new(UpsertUserResponse {}))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        self.authorize(&request, "DeleteUser")?;
        let name = request.get_ref().name.clone();
        validate_user_name(&name)?;
        self.propose(
            &request,
            "user.delete",
            &format!("user:{name}"),
            ControllerCommand::DeleteUser { name: name.clone() },
        )
        .await?;
        tracing::info!(user = name, by = %principal_of(&request), "user deleted");
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.authorize(&request, "ListUsers")?;
        let users = self
            .node
            .metadata()
            .users
            .iter()
            .map(|(name, c)| UserDescription {
                name: name.clone(),
                mechanism: SCRAM_SHA_256.into(),
                iterations: c.iterations,
            })
            .collect();
        Ok(Response::new(ListUsersResponse { users }))
    }

    async fn create_acls(
        &self,
        request: Request<CreateAclsRequest>,
    ) -> Result<Response<CreateAclsResponse>, Status> {
        self.authorize(&request, "CreateAcls")?;
        let acls = acls_of(&request.get_ref().acls)?;
        self.propose(
            &request,
            "acl.create",
            &acl_list(&acls),
            ControllerCommand::CreateAcls { acls: acls.clone() },
        )
        .await?;
        tracing::info!(?acls, by = %principal_of(&request), "ACLs created");
        Ok(Response::new(CreateAclsResponse {}))
    }

    async fn delete_acls(
        &self,
        request: Request<DeleteAclsRequest>,
    ) -> Result<Response<DeleteAclsResponse>, Status> {
        self.authorize(&request, "DeleteAcls")?;
        let acls = acls_of(&request.get_ref().acls)?;
        let present = self.node.metadata().acls.clone();
        let deleted = acls.iter().filter(|a| present.contains(a)).count() as u32;
        self.propose(
            &request,
            "acl.delete",
            &acl_list(&acls),
            ControllerCommand::DeleteAcls { acls: acls.clone() },
        )
        .await?;
        tracing::info!(?acls, by = %principal_of(&request), "ACLs deleted");
        Ok(Response::new(DeleteAclsResponse { deleted }))
    }

    async fn list_acls(
        &self,
        request: Request<ListAclsRequest>,
    ) -> Result<Response<ListAclsResponse>, Status> {
        self.authorize(&request, "ListAcls")?;
        let acls = self
            .node
            .metadata()
            .acls
            .iter()
            .map(Acl::to_entry)
            .collect();
        Ok(Response::new(ListAclsResponse { acls }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let principal = principal_of(&request);
        Ok(Response::new(WhoAmIResponse {
            principal: principal.to_string(),
            method: principal.method.name().into(),
        }))
    }
}
