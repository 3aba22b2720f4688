//! SCRAM-SHA-256 logins and the session token every call then carries
//! (`authorization: Bearer TOKEN`), renewed before it expires.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use sluice_protocol::scram;
use sluice_protocol::v1::auth_client::AuthClient;
use sluice_protocol::v1::{ScramFinishRequest, ScramStartRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::error::ClientError;

/// A user's name and password, for brokers that require authentication.
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password (kept in memory to renew the session; never sent: SCRAM proves it).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The current session's header, shared by every call of one client.
#[derive(Clone, Default)]
pub struct SessionHeader {
    value: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl std::fmt::Debug for SessionHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionHeader")
    }
}

impl tonic::service::Interceptor for SessionHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = self.value.read().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

impl SessionHeader {
    fn set(&self, token: &str) -> Result<(), ClientError> {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Authentication("the session token is not valid ASCII".into())
        })?;
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    }
}

/// Logs in over `channel` and installs the session in `header`; answers how long it lasts.
pub(crate) async fn login(
    channel: Channel,
    credentials: &Credentials,
    header: &SessionHeader,
) -> Result<Duration, ClientError> {
    let nonce = scram::nonce().map_err(|e| ClientError::Authentication(e.to_string()))?;
    let (client_first, bare) = scram::client_first(&credentials.user, &nonce);
    let mut auth = AuthClient::new(channel);
    let started = auth
        .scram_start(ScramStartRequest { client_first })
        .await?
        .into_inner();
    let answer = scram::client_final(&credentials.password, &bare, &nonce, &started.server_first)
        .map_err(|e| ClientError::Authentication(format!("login: {e}")))?;
    let finished = auth
        .scram_finish(ScramFinishRequest {
            exchange_id: started.exchange_id,
            client_final: answer.message,
        })
        .await?
        .into_inner();
    // The server proves it knows the credential too: a broker that does not is refused.
    if !scram::constant_time_eq(
        finished.server_final.as_bytes(),
        answer.expected_server_final.as_bytes(),
    ) {
        return Err(ClientError::Authentication(
            "login: the broker's SCRAM signature is wrong (not the cluster's broker?)".into(),
        ));
    }
    header.set(&finished.token)?;
    Ok(Duration::from_millis(finished.expires_in_ms))
}

/// Renews the session at four fifths of each lifetime until the client is dropped; a failed
/// renewal is retried every few seconds (calls meanwhile answer SESSION_EXPIRED at worst).
pub(crate) fn renew_forever<C>(client: Weak<C>, first: Duration, renew: fn(&Arc<C>) -> RenewFuture)
where
    C: Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut wait = first.mul_f64(0.8);
        loop {
            tokio::time::sleep(wait).await;
            let Some(client) = client.upgrade() else {
                return;
            };
            wait = match renew(&client).await {
                Ok(lifetime) => lifetime.mul_f64(0.8),
                Err(_) => Duration::from_secs(5),
            };
        }
    });
}

/// A renewal in progress.
pub(crate) type RenewFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, ClientError>> + Send>>;
