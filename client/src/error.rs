//! The client's error type.

use sluice_protocol::{Reason, StatusInfo};

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker refused the request.
    #[error("{}: {message}", reason.map_or("ERROR", Reason::as_str))]
    Refused {
        /// The stable reason, if the broker sent one this client knows.
        reason: Option<Reason>,
        /// gRPC status code.
        code: tonic::Code,
        /// The broker's sentence.
        message: String,
        /// For THROTTLED: when to retry.
        retry_after_ms: Option<u32>,
    },
    /// No broker could be reached.
    #[error("cannot connect to {brokers}: {message}")]
    Connect {
        /// The addresses tried.
        brokers: String,
        /// The last error.
        message: String,
    },
    /// A batch from the broker failed its checks.
    #[error("corrupt batch from the broker: {0}")]
    Corrupt(#[from] sluice_storage::DecodeError),
    /// The caller passed something invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// A login could not be completed on this side (the broker's own refusals are
    /// `Refused` with an authentication reason).
    #[error("authentication: {0}")]
    Authentication(String),
}

impl ClientError {
    /// The reason of a refusal.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Refused { reason, .. } => *reason,
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Refused {
                reason: Some(r), ..
            } => r.is_retriable(),
            // Transport failures surface as UNAVAILABLE without a reason, or as CANCELLED
            // when the connection closed under the call (a TLS peer refusing the client's
            // certificate after the handshake).
            Self::Refused {
                reason: None, code, ..
            } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let info = StatusInfo::of(&status);
        Self::Refused {
            reason: info.reason,
            code: status.code(),
            message: status.message().to_string(),
            retry_after_ms: info.retry_after_ms,
        }
    }
}

impl From<&sluice_protocol::v1::ErrorInfo> for ClientError {
    fn from(e: &sluice_protocol::v1::ErrorInfo) -> Self {
        Self::Refused {
            reason: Reason::parse(&e.reason),
            code: tonic::Code::from(e.code),
            message: e.message.clone(),
            retry_after_ms: (e.retry_after_ms > 0).then_some(e.retry_after_ms),
        }
    }
}
