//! The quota calls of `sluice.v1.Auth`: set, delete and list principals' byte-rate quotas
//! (super-users only; each change audited).

use sluice_protocol::v1::{
    DeleteQuotaRequest, DeleteQuotaResponse, ListQuotasRequest, ListQuotasResponse, QuotaEntry,
    SetQuotaRequest, SetQuotaResponse,
};
use tonic::{Request, Response, Status};

use super::auth::{AuthService, validate_user_name};
use crate::controller::ControllerCommand;
use crate::error::BrokerError;
use crate::flow::quota::QuotaLimits;

/// Refuses anything but `User:NAME` with a valid name, or `User:ANONYMOUS`.
fn validate_principal(principal: &str) -> Result<(), Status> {
    let Some(name) = principal.strip_prefix("User:") else {
        return Err(BrokerError::InvalidRequest(format!(
            "a quota's principal is User:NAME, got {}",
            crate::error::quote(principal)
        ))
        .into());
    };
    if name == "ANONYMOUS" {
        return Ok(());
    }
    validate_user_name(name)
}

fn entry(principal: String, limits: &QuotaLimits) -> QuotaEntry {
    QuotaEntry {
        principal,
        produce_bytes_per_sec: limits.produce_bytes_per_sec,
        fetch_bytes_per_sec: limits.fetch_bytes_per_sec,
    }
}

impl AuthService {
    /// `SetQuota`.
    pub(super) async fn set_quota_call(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        self.authorize(&request, "SetQuota")?;
        let quota = request
            .get_ref()
            .quota
            .clone()
            .ok_or_else(|| BrokerError::InvalidRequest("a quota to set is required".into()))?;
        validate_principal(&quota.principal)?;
        let limits = QuotaLimits {
            produce_bytes_per_sec: quota.produce_bytes_per_sec,
            fetch_bytes_per_sec: quota.fetch_bytes_per_sec,
        };
        let resource = format!(
            "quota:{} produce {:?} fetch {:?}",
            quota.principal, limits.produce_bytes_per_sec, limits.fetch_bytes_per_sec
        );
        let command = ControllerCommand::SetQuota {
            principal: quota.principal,
            limits,
        };
        self.propose(&request, "quota.set", &resource, command)
            .await?;
        Ok(Response::new(SetQuotaResponse {}))
    }

    /// `DeleteQuota`.
    pub(super) async fn delete_quota_call(
        &self,
        request: Request<DeleteQuotaRequest>,
    ) -> Result<Response<DeleteQuotaResponse>, Status> {
        self.authorize(&request, "DeleteQuota")?;
        let principal = request.get_ref().principal.clone();
        validate_principal(&principal)?;
        let resource = format!("quota:{principal}");
        let command = ControllerCommand::DeleteQuota { principal };
        self.propose(&request, "quota.delete", &resource, command)
            .await?;
        Ok(Response::new(DeleteQuotaResponse {}))
    }

    /// `ListQuotas`.
    pub(super) fn list_quotas_call(
        &self,
        request: &Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        self.authorize(request, "ListQuotas")?;
        let quotas = self
            .node
            .metadata()
            .quotas
            .iter()
            .map(|(principal, limits)| entry(principal.clone(), limits))
            .collect();
        Ok(Response::new(ListQuotasResponse {
            defaults: Some(entry(String::new(), &self.node.config().default_quota)),
            quotas,
        }))
    }
}
