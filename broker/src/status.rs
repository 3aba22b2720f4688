//! The one mapping from broker errors to gRPC statuses and stable reason strings.

use sluice_protocol::v1::ErrorInfo;
use sluice_protocol::{LEADER_HINT_KEY, RETRY_AFTER_MS_KEY, Reason, status_with_reason};
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::error::BrokerError;
use crate::limits::{ERROR_MESSAGE_BYTES_MAX, THROTTLE_RETRY_AFTER_MS};

/// The error's sentence, cut to `ERROR_MESSAGE_BYTES_MAX`: user values are quoted short
/// where the sentence is made, and this bounds whatever else one may carry.
fn bounded_message(e: &BrokerError) -> String {
    let mut message = e.to_string();
    if message.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut cut = ERROR_MESSAGE_BYTES_MAX - '…'.len_utf8();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

impl BrokerError {
    /// The stable reason of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::UnknownTopic(_) => Reason::UnknownTopic,
            Self::UnknownPartition { .. } => Reason::UnknownPartition,
            Self::NotLeader { .. } => Reason::NotLeader,
            Self::RecordTooLarge { .. } => Reason::RecordTooLarge,
            Self::CorruptBatch(_) => Reason::CorruptBatch,
            Self::OutOfOrderSequence { .. } => Reason::OutOfOrderSequence,
            Self::ProducerFenced(_) => Reason::ProducerFenced,
            Self::OffsetOutOfRange { .. } => Reason::OffsetOutOfRange,
            Self::Throttled(_) | Self::QuotaExceeded { .. } => Reason::Throttled,
            Self::InvalidConfig(_) => Reason::InvalidConfig,
            Self::TopicExists(_) => Reason::TopicExists,
            Self::InvalidRequest(_) => Reason::InvalidRequest,
            Self::NoSpace => Reason::NoSpace,
            Self::StorageFailed(_) => Reason::StorageFailed,
            Self::Unavailable(_) => Reason::Unavailable,
            Self::Internal(_) => Reason::Internal,
            Self::NotCoordinator { .. } => Reason::NotCoordinator,
            Self::UnknownMember { .. } => Reason::UnknownMember,
            Self::StaleMemberEpoch(_) => Reason::StaleMemberEpoch,
            Self::GroupNotEmpty(_) => Reason::GroupNotEmpty,
            Self::UnknownGroup(_) => Reason::UnknownGroup,
            Self::PermissionDenied(_) => Reason::PermissionDenied,
        }
    }

    /// The retry hint of a THROTTLED answer.
    fn retry_after_ms(&self) -> Option<u32> {
        match self {
            Self::Throttled(_) => Some(THROTTLE_RETRY_AFTER_MS),
            Self::QuotaExceeded { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    fn leader_hint(&self) -> Option<&str> {
        match self {
            Self::NotLeader { leader_hint, .. } => leader_hint.as_deref(),
            Self::NotCoordinator {
                coordinator_hint, ..
            } => coordinator_hint.as_deref(),
            _ => None,
        }
    }

    /// The gRPC status for a unary call, with reason and hints in metadata.
    pub fn to_status(&self) -> Status {
        let mut status = status_with_reason(self.reason(), bounded_message(self));
        if let Some(ms) = self.retry_after_ms() {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS_KEY, MetadataValue::from(ms));
        }
        if let Some(hint) = self
            .leader_hint()
            .and_then(|h| MetadataValue::try_from(h).ok())
        {
            status.metadata_mut().insert(LEADER_HINT_KEY, hint);
        }
        status
    }

    /// The same error for one item of a streamed or batched response.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.reason().code() as i32,
            reason: self.reason().as_str().to_string(),
            message: bounded_message(self),
            retry_after_ms: self.retry_after_ms().unwrap_or(0),
            leader_hint: self.leader_hint().unwrap_or_default().to_string(),
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        e.to_status()
    }
}
