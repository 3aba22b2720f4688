//! The one mapping of error reasons to gRPC status codes. Reason strings are stable: never
//! renamed, never reused (docs/protocol.md lists them).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key carrying the reason string on an error status.
pub const REASON_KEY: &str = "sluice-reason";
/// Metadata key carrying a retry delay in milliseconds (THROTTLED).
pub const RETRY_AFTER_MS_KEY: &str = "sluice-retry-after-ms";
/// Metadata key carrying the leader's client address (NOT_LEADER).
pub const LEADER_HINT_KEY: &str = "sluice-leader";

/// Why a request failed, in words a program can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The topic does not exist.
    UnknownTopic,
    /// The topic exists but not this partition.
    UnknownPartition,
    /// This broker does not lead the partition; retry at the leader.
    NotLeader,
    /// The batch exceeds the topic's `max.message.bytes`.
    RecordTooLarge,
    /// The batch failed its CRC or format checks.
    CorruptBatch,
    /// An idempotent producer skipped or reordered sequence numbers.
    OutOfOrderSequence,
    /// A newer epoch of this producer id exists.
    ProducerFenced,
    /// The offset is outside the partition's log.
    OffsetOutOfRange,
    /// Too many bytes in flight; retry after the hint.
    Throttled,
    /// A config key or value is not valid.
    InvalidConfig,
    /// The topic already exists.
    TopicExists,
    /// The request is malformed (missing fields, bad names, absurd sizes).
    InvalidRequest,
    /// The broker's disk is full.
    NoSpace,
    /// The partition's storage failed (fsync error, corruption) and refuses writes.
    StorageFailed,
    /// The broker is starting or shutting down, or the group has no leader yet.
    Unavailable,
    /// Anything else: a bug or an unexpected condition.
    Internal,
    /// This broker does not coordinate the group; retry at the coordinator (hint).
    NotCoordinator,
    /// The group does not know this member id (expelled, or the coordinator moved): rejoin.
    UnknownMember,
    /// The member's epoch is stale or it does not own the partition: it was fenced.
    StaleMemberEpoch,
    /// The operation needs a group without members.
    GroupNotEmpty,
    /// The group has no members and no committed offsets.
    UnknownGroup,
    /// The broker requires authentication and the call carried none.
    AuthenticationRequired,
    /// The credentials, proof or session token are wrong.
    AuthenticationFailed,
    /// The session token has expired: authenticate again.
    SessionExpired,
    /// The authenticated principal may not do this.
    PermissionDenied,
}

impl Reason {
    const ALL: [Reason; 25] = [
        Self::UnknownTopic,
        Self::UnknownPartition,
        Self::NotLeader,
        Self::RecordTooLarge,
        Self::CorruptBatch,
        Self::OutOfOrderSequence,
        Self::ProducerFenced,
        Self::OffsetOutOfRange,
        Self::Throttled,
        Self::InvalidConfig,
        Self::TopicExists,
        Self::InvalidRequest,
        Self::NoSpace,
        Self::StorageFailed,
        Self::Unavailable,
        Self::Internal,
        Self::NotCoordinator,
        Self::UnknownMember,
        Self::StaleMemberEpoch,
        Self::GroupNotEmpty,
        Self::UnknownGroup,
        Self::AuthenticationRequired,
        Self::AuthenticationFailed,
        Self::SessionExpired,
        Self::PermissionDenied,
    ];

    /// The stable reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownTopic => "UNKNOWN_TOPIC",
            Self::UnknownPartition => "UNKNOWN_PARTITION",
            Self::NotLeader => "NOT_LEADER",
            Self::RecordTooLarge => "RECORD_TOO_LARGE",
            Self::CorruptBatch => "CORRUPT_BATCH",
            Self::OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            Self::ProducerFenced => "PRODUCER_FENCED",
            Self::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            Self::Throttled => "THROTTLED",
            Self::InvalidConfig => "INVALID_CONFIG",
            Self::TopicExists => "TOPIC_EXISTS",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::NoSpace => "NO_SPACE",
            Self::StorageFailed => "STORAGE_FAILED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::NotCoordinator => "NOT_COORDINATOR",
            Self::UnknownMember => "UNKNOWN_MEMBER",
            Self::StaleMemberEpoch => "STALE_MEMBER_EPOCH",
            Self::GroupNotEmpty => "GROUP_NOT_EMPTY",
            Self::UnknownGroup => "UNKNOWN_GROUP",
            Self::AuthenticationRequired => "AUTHENTICATION_REQUIRED",
            Self::AuthenticationFailed => "AUTHENTICATION_FAILED",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::PermissionDenied => "PERMISSION_DENIED",
        }
    }

    /// Parses a reason string; `None` for one this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The gRPC status code the reason travels with.
    pub fn code(self) -> Code {
        match self {
            Self::UnknownTopic | Self::UnknownPartition | Self::UnknownGroup => Code::NotFound,
            Self::NotCoordinator
            | Self::UnknownMember
            | Self::StaleMemberEpoch
            | Self::GroupNotEmpty => Code::FailedPrecondition,
            Self::NotLeader | Self::OutOfOrderSequence | Self::ProducerFenced => {
                Code::FailedPrecondition
            }
            Self::RecordTooLarge
            | Self::CorruptBatch
            | Self::InvalidConfig
            | Self::InvalidRequest => Code::InvalidArgument,
            Self::OffsetOutOfRange => Code::OutOfRange,
            Self::Throttled | Self::NoSpace => Code::ResourceExhausted,
            Self::TopicExists => Code::AlreadyExists,
            Self::StorageFailed | Self::Internal => Code::Internal,
            Self::Unavailable => Code::Unavailable,
            Self::AuthenticationRequired | Self::AuthenticationFailed | Self::SessionExpired => {
                Code::Unauthenticated
            }
            Self::PermissionDenied => Code::PermissionDenied,
        }
    }

    /// Whether a client may retry the same request (after a delay or a metadata refresh).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            Self::NotLeader
                | Self::NotCoordinator
                | Self::Throttled
                | Self::Unavailable
                | Self::UnknownPartition
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a status with `reason`'s code and the reason in metadata.
pub fn status_with_reason(reason: Reason, message: impl Into<String>) -> Status {
    let mut status = Status::new(reason.code(), message);
    status
        .metadata_mut()
        .insert(REASON_KEY, MetadataValue::from_static(reason.as_str()));
    status
}

/// What a client can learn from an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// The reason, if the server sent one this build knows.
    pub reason: Option<Reason>,
    /// Retry delay, for THROTTLED.
    pub retry_after_ms: Option<u32>,
    /// The leader's address, for NOT_LEADER (the coordinator's for NOT_COORDINATOR).
    pub leader_hint: Option<String>,
}

impl StatusInfo {
    /// Reads the Sluice metadata of a status.
    pub fn of(status: &Status) -> Self {
        let get = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            reason: get(REASON_KEY).as_deref().and_then(Reason::parse),
            retry_after_ms: get(RETRY_AFTER_MS_KEY).and_then(|v| v.parse().ok()),
            leader_hint: get(LEADER_HINT_KEY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_a_status() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let status = status_with_reason(reason, "x");
            assert_eq!(status.code(), reason.code());
            assert_eq!(StatusInfo::of(&status).reason, Some(reason));
        }
    }
}
