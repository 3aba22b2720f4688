//! Users who may log in (SCRAM-SHA-256), managed through [`crate::Admin`]: the password is
//! turned into its salted keys here, so it never reaches a broker.

use sluice_protocol::scram::{self, Credential, ITERATIONS_MIN};
use sluice_protocol::v1::{
    AclEntry, CreateAclsRequest, DeleteAclsRequest, DeleteUserRequest, ListAclsRequest,
    ListUsersRequest, UpsertUserRequest, UserDescription, WhoAmIRequest, WhoAmIResponse,
};
use sluice_protocol::v1::{DeleteQuotaRequest, ListQuotasRequest, QuotaEntry, SetQuotaRequest};

use crate::admin::Admin;
use crate::error::ClientError;

/// The mechanism every user has.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

impl Admin {
    /// Creates user `name` with `password`, or replaces its password (`iterations` ≥ 4096;
    /// `None` for 4096).
    pub async fn upsert_user(
        &self,
        name: &str,
        password: &str,
        iterations: Option<u32>,
    ) -> Result<(), ClientError> {
        let salt: [u8; 16] =
            scram::secret_bytes().map_err(|e| ClientError::Authentication(e.to_string()))?;
        let credential = Credential::new(password, &salt, iterations.unwrap_or(ITERATIONS_MIN))
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        self.client()
            .auth_client()
            .upsert_user(UpsertUserRequest {
                name: name.to_string(),
                mechanism: SCRAM_SHA_256.into(),
                salt: credential.salt.into(),
                iterations: credential.iterations,
                stored_key: credential.stored_key.to_vec().into(),
                server_key: credential.server_key.to_vec().into(),
            })
            .await?;
        Ok(())
    }

    /// Deletes user `name`; its sessions end.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.client()
            .auth_client()
            .delete_user(DeleteUserRequest {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Every user (names and parameters, never keys).
    pub async fn list_users(&self) -> Result<Vec<UserDescription>, ClientError> {
        Ok(self
            .client()
            .auth_client()
            .list_users(ListUsersRequest {})
            .await?
            .into_inner()
            .users)
    }

    /// Who this client is authenticated as.
    pub async fn who_am_i(&self) -> Result<WhoAmIResponse, ClientError> {
        Ok(self
            .client()
            .auth_client()
            .who_am_i(WhoAmIRequest {})
            .await?
            .into_inner())
    }
}

impl Admin {
    /// Adds access control entries (the broker's authorizer is on with `--require-auth`).
    pub async fn create_acls(&self, acls: Vec<AclEntry>) -> Result<(), ClientError> {
        self.client()
            .auth_client()
            .create_acls(CreateAclsRequest { acls })
            .await?;
        Ok(())
    }

    /// Removes exactly these entries; answers how many existed.
    pub async fn delete_acls(&self, acls: Vec<AclEntry>) -> Result<u32, ClientError> {
        Ok(self
            .client()
            .auth_client()
            .delete_acls(DeleteAclsRequest { acls })
            .await?
            .into_inner()
            .deleted)
    }

    /// Every access control entry.
    pub async fn list_acls(&self) -> Result<Vec<AclEntry>, ClientError> {
        Ok(self
            .client()
            .auth_client()
            .list_acls(ListAclsRequest {})
            .await?
            .into_inner()
            .acls)
    }
}

impl Admin {
    /// Sets `principal`'s byte rates (bytes per second per broker): `None` keeps the
    /// brokers' default, `Some(0)` lifts it.
    pub async fn set_quota(
        &self,
        principal: &str,
        produce_bytes_per_sec: Option<u64>,
        fetch_bytes_per_sec: Option<u64>,
    ) -> Result<(), ClientError> {
        let quota = QuotaEntry {
            principal: principal.to_string(),
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
        };
        self.client()
            .auth_client()
            .set_quota(SetQuotaRequest { quota: Some(quota) })
            .await?;
        Ok(())
    }

    /// Removes `principal`'s own quotas: the brokers' defaults apply again.
    pub async fn delete_quota(&self, principal: &str) -> Result<(), ClientError> {
        self.client()
            .auth_client()
            .delete_quota(DeleteQuotaRequest {
                principal: principal.to_string(),
            })
            .await?;
        Ok(())
    }

    /// The answering broker's default rates, and every principal's own.
    pub async fn list_quotas(&self) -> Result<(QuotaEntry, Vec<QuotaEntry>), ClientError> {
        let answer = self
            .client()
            .auth_client()
            .list_quotas(ListQuotasRequest {})
            .await?
            .into_inner();
        Ok((answer.defaults.unwrap_or_default(), answer.quotas))
    }
}
