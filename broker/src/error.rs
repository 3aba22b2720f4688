//! The broker's error type. Each variant has exactly one reason string (status.rs maps it).

use std::fmt;

/// Bytes of a user's value an error message quotes. Error messages travel in gRPC
/// metadata, whose default limit is 8 KiB: a message repeating a hostile input whole would
/// make the client's own library fail with `RESOURCE_EXHAUSTED` instead of our reason.
pub const QUOTED_BYTES_MAX: usize = 100;

/// A user's value as an error message quotes it: escaped like `{:?}`, cut to
/// [`QUOTED_BYTES_MAX`] bytes (at a character boundary), with the full length after a cut.
pub struct Quoted<'a>(&'a str);

/// Quotes `value` for an error message; see [`Quoted`].
pub fn quote(value: &str) -> Quoted<'_> {
    Quoted(value)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if value.len() <= QUOTED_BYTES_MAX {
            return write!(f, "{value:?}");
        }
        let mut cut = QUOTED_BYTES_MAX;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        let head = value.get(..cut).unwrap_or_default();
        write!(f, "{head:?}… ({} bytes)", value.len())
    }
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// No such topic.
    #[error("topic {} does not exist", quote(.0))]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("topic {} has no partition {partition}", quote(.topic))]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
    },
    /// Another broker leads the group.
    #[error("this broker does not lead {}", quote(.what))]
    NotLeader {
        /// What was asked for.
        what: String,
        /// The leader's client address, if known.
        leader_hint: Option<String>,
    },
    /// The batch is larger than the topic allows.
    #[error("batch of {len} bytes exceeds max.message.bytes = {max}")]
    RecordTooLarge {
        /// Encoded batch length.
        len: u64,
        /// The topic's limit.
        max: u64,
    },
    /// The batch failed CRC or format checks.
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    /// Sequence gap or reordering from an idempotent producer.
    #[error("out of order sequence from producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: u64,
        /// What the broker expected.
        expected: u32,
        /// What arrived.
        got: u32,
    },
    /// An older epoch of the producer id.
    #[error("producer {0} was fenced by a newer epoch")]
    ProducerFenced(u64),
    /// Offset outside the log.
    #[error("offset {requested} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Asked for.
        requested: u64,
        /// First stored.
        log_start: u64,
        /// Next to be written.
        log_end: u64,
    },
    /// In-flight budget exhausted for longer than the request could wait.
    #[error("too many bytes in flight for {}; retry later", quote(.0))]
    Throttled(String),
    /// A config key or value is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The topic exists already.
    #[error("topic {} already exists", quote(.0))]
    TopicExists(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The disk is full.
    #[error("no space left on the broker's disk")]
    NoSpace,
    /// The partition's storage refuses writes (fsync failure, corruption).
    #[error("partition storage failed: {0}")]
    StorageFailed(String),
    /// Starting, shutting down, or no leader elected yet.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another broker coordinates the group.
    #[error("this broker does not coordinate group {}", quote(.group))]
    NotCoordinator {
        /// The group asked for.
        group: String,
        /// The coordinator's client address, if known.
        coordinator_hint: Option<String>,
    },
    /// The group does not know the member.
    #[error("group {} has no member {}: rejoin", quote(.group), quote(.member))]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id sent.
        member: String,
    },
    /// A fenced member: stale epoch, or a partition it does not own.
    #[error("stale member epoch: {0}")]
    StaleMemberEpoch(String),
    /// The group has members.
    #[error("group {} has active members", quote(.0))]
    GroupNotEmpty(String),
    /// The group has no members and no committed offsets.
    #[error("group {} does not exist", quote(.0))]
    UnknownGroup(String),
    /// The principal is over its byte-rate quota (answered THROTTLED with the wait).
    #[error("{principal} is over its {direction} quota; retry in {retry_after_ms} ms")]
    QuotaExceeded {
        /// Who.
        principal: String,
        /// `produce` or `fetch`.
        direction: &'static str,
        /// How long until the principal may go on.
        retry_after_ms: u32,
    },
    /// The authenticated principal may not do this (the authorizer, `--require-auth`).
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<sluice_storage::StorageError> for BrokerError {
    fn from(e: sluice_storage::StorageError) -> Self {
        use sluice_storage::StorageError as S;
        match e {
            S::NoSpace { .. } => Self::NoSpace,
            S::OffsetOutOfRange {
                requested,
                log_start,
                next,
            } => Self::OffsetOutOfRange {
                requested,
                log_start,
                log_end: next,
            },
            S::InvalidBatch(d) => Self::CorruptBatch(d.to_string()),
            S::Failed { .. } | S::Corruption { .. } | S::Invariant { .. } | S::Io { .. } => {
                Self::StorageFailed(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}
