//! One audit record (docs/formats/audit.md): a JSON object, versioned, as the value of a
//! record of `__audit` whose key is the event's id.

use serde::{Deserialize, Serialize};

/// The record format's version; readers refuse a newer one.
pub const AUDIT_FORMAT_VERSION: u32 = 1;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It was done.
    Ok,
    /// The authorizer or authentication refused it.
    Denied,
    /// It was allowed but failed (bad input, a conflict, unavailable).
    Failed,
}

/// A security or admin event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The record format's version ([`AUDIT_FORMAT_VERSION`]).
    pub version: u32,
    /// Unique per event: the node, its process start and a counter (`N-START-SEQ`).
    pub id: String,
    /// When the broker decided, in ms since the epoch.
    pub time_ms: i64,
    /// Who: `User:NAME`, `User:ANONYMOUS`, or for a failed login the name it claimed.
    pub principal: String,
    /// The client's address, if known.
    pub source: String,
    /// What, as `noun.verb`: `login`, `topic.create`, `acl.delete`, or the gRPC method of a
    /// denied call.
    pub operation: String,
    /// On what: `topic:NAME`, `group:NAME`, `user:NAME`, `cluster`, or empty.
    pub resource: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, when not ok: the error's reason and message.
    pub reason: String,
    /// The request's id: the client's `x-request-id` header, else the event id.
    pub request_id: String,
    /// The broker that decided.
    pub node: u64,
}

/// An audit record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditDecodeError {
    /// Not the JSON of an event.
    #[error("not an audit event: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer broker.
    #[error("audit format version {0} is newer than this reader's ({AUDIT_FORMAT_VERSION})")]
    Version(u32),
}

impl AuditEvent {
    /// Its record value.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record value.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuditDecodeError> {
        let event: Self = serde_json::from_slice(bytes)?;
        if event.version > AUDIT_FORMAT_VERSION {
            return Err(AuditDecodeError::Version(event.version));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            version: AUDIT_FORMAT_VERSION,
            id: "1-5-7".into(),
            time_ms: 1_700_000_000_000,
            principal: "User:alice".into(),
            source: "127.0.0.1".into(),
            operation: "topic.create".into(),
            resource: "topic:orders".into(),
            outcome: Outcome::Ok,
            reason: String::new(),
            request_id: "r-1".into(),
            node: 1,
        }
    }

    #[test]
    fn an_event_reads_back_as_written() {
        let e = event();
        assert_eq!(AuditEvent::decode(&e.encode()).expect("decodes"), e);
    }

    #[test]
    fn bad_bytes_and_newer_versions_are_typed_errors() {
        assert!(matches!(
            AuditEvent::decode(b"\xff{"),
            Err(AuditDecodeError::Json(_))
        ));
        let mut e = event();
        e.version = AUDIT_FORMAT_VERSION + 1;
        assert!(matches!(
            AuditEvent::decode(&e.encode()),
            Err(AuditDecodeError::Version(_))
        ));
    }
}
