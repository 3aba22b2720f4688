//! Session tokens: what a SCRAM exchange hands out, checked on every later call by any
//! broker of the cluster without a lookup. A token is `base64url(version, expiry,
//! credential fingerprint, user, HMAC-SHA-256 over those)`, keyed by the cluster secret (or, on a single node without one,
//! by a key made at start, so a restart ends every session).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sluice_protocol::scram::{KEY_BYTES, constant_time_eq, hmac_sha256};

/// Milliseconds since the Unix epoch now (tokens are checked by every broker, so by the wall
/// clock; brokers' clocks are assumed within seconds of each other).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);

/// The token format's version byte.
const TOKEN_VERSION: u8 = 1;

/// Bytes of a credential's fingerprint in a token: a new password ends the old sessions.
pub const FINGERPRINT_BYTES: usize = 8;

/// The fingerprint of a credential's stored key.
pub fn fingerprint(stored_key: &[u8]) -> [u8; FINGERPRINT_BYTES] {
    let mut out = [0u8; FINGERPRINT_BYTES];
    out.copy_from_slice(&sluice_protocol::scram::sha256(stored_key)[..FINGERPRINT_BYTES]);
    out
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user: String,
    /// The fingerprint of the user's credential when the token was issued.
    pub fingerprint: [u8; FINGERPRINT_BYTES],
}

/// The user brokers call each other's client ports as (a super-user). No user may be named
/// so: names starting with `__` are the broker's.
pub const BROKER_USER: &str = "__broker";

/// The fingerprint of broker sessions (no credential stands behind them).
const BROKER_FINGERPRINT: [u8; FINGERPRINT_BYTES] = [0xff; FINGERPRINT_BYTES];

/// How long a broker's own session token lasts (minted per call).
const BROKER_SESSION_TTL: Duration = Duration::from_secs(60);

impl Session {
    /// The session brokers call each other's client ports with.
    pub fn broker() -> Self {
        Self {
            user: BROKER_USER.into(),
            fingerprint: BROKER_FINGERPRINT,
        }
    }

    /// Whether this is a broker's session.
    pub fn is_broker(&self) -> bool {
        self.user == BROKER_USER && self.fingerprint == BROKER_FINGERPRINT
    }
}

/// Longest user name a token carries (and a user may have).
pub const USER_NAME_BYTES_MAX: usize = 256;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this cluster, or altered.
    #[error("the session token is not valid")]
    Invalid,
    /// Past its expiry: authenticate again.
    #[error("the session token has expired")]
    Expired,
}

/// The key tokens are signed with.
#[derive(Clone)]
pub struct SessionKeys {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys")
    }
}

impl SessionKeys {
    /// Keys derived from the cluster secret (every broker of the cluster the same), or made
    /// now from `random` bytes on a single node.
    pub fn new(cluster_secret: Option<&[u8]>, random: [u8; KEY_BYTES]) -> Self {
        let key = match cluster_secret {
            Some(secret) => hmac_sha256(secret, b"sluice session tokens v1"),
            None => random,
        };
        Self { key }
    }

    /// A token for `session` valid until `now_ms + ttl`.
    pub fn issue(&self, session: &Session, now_ms: u64, ttl: Duration) -> String {
        let user = &session.user;
        let expiry = now_ms.saturating_add(ttl.as_millis() as u64);
        let mut body = Vec::with_capacity(1 + 8 + FINGERPRINT_BYTES + 2 + user.len() + KEY_BYTES);
        body.push(TOKEN_VERSION);
        body.extend_from_slice(&expiry.to_be_bytes());
        body.extend_from_slice(&session.fingerprint);
        body.extend_from_slice(&(user.len() as u16).to_be_bytes());
        body.extend_from_slice(user.as_bytes());
        let mac = hmac_sha256(&self.key, &body);
        body.extend_from_slice(&mac);
        B64.encode(body)
    }

    /// A token for a broker's call to another broker's client port: only brokers hold the
    /// key (derived from the cluster secret).
    pub fn broker_token(&self) -> String {
        self.issue(&Session::broker(), now_ms(), BROKER_SESSION_TTL)
    }

    /// The session a token was issued for, if it is this cluster's, unaltered and unexpired.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Session, TokenError> {
        // Bounded before decoding: a header of any size is refused cheaply.
        if token.len() > 4 * (11 + FINGERPRINT_BYTES + USER_NAME_BYTES_MAX + KEY_BYTES) / 3 + 4 {
            return Err(TokenError::Invalid);
        }
        let bytes = B64.decode(token).map_err(|_| TokenError::Invalid)?;
        let split = bytes
            .len()
            .checked_sub(KEY_BYTES)
            .ok_or(TokenError::Invalid)?;
        let (body, mac) = bytes.split_at(split);
        if !constant_time_eq(&hmac_sha256(&self.key, body), mac) {
            return Err(TokenError::Invalid);
        }
        let (&version, rest) = body.split_first().ok_or(TokenError::Invalid)?;
        let expiry = rest.get(..8).ok_or(TokenError::Invalid)?;
        let fingerprint = rest
            .get(8..8 + FINGERPRINT_BYTES)
            .ok_or(TokenError::Invalid)?;
        let rest = rest
            .get(8 + FINGERPRINT_BYTES..)
            .ok_or(TokenError::Invalid)?;
        let len = rest.get(..2).ok_or(TokenError::Invalid)?;
        let user = rest.get(2..).ok_or(TokenError::Invalid)?;
        let expiry = u64::from_be_bytes(expiry.try_into().map_err(|_| TokenError::Invalid)?);
        let len = u16::from_be_bytes(len.try_into().map_err(|_| TokenError::Invalid)?);
        if version != TOKEN_VERSION || user.len() != len as usize {
            return Err(TokenError::Invalid);
        }
        if now_ms >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(Session {
            user: String::from_utf8(user.to_vec()).map_err(|_| TokenError::Invalid)?,
            fingerprint: fingerprint.try_into().map_err(|_| TokenError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_it_expires_and_only_for_its_cluster() {
        let keys = SessionKeys::new(Some(b"a cluster secret of 16+"), [0; 32]);
        let alice = Session {
            user: "alice".into(),
            fingerprint: fingerprint(b"stored key"),
        };
        let token = keys.issue(&alice, 1_000, Duration::from_secs(10));
        assert_eq!(keys.verify(&token, 1_001), Ok(alice));
        assert_eq!(keys.verify(&token, 11_000), Err(TokenError::Expired));
        let other = SessionKeys::new(Some(b"another cluster's secret"), [0; 32]);
        assert_eq!(other.verify(&token, 1_001), Err(TokenError::Invalid));
        // Any byte changed is refused.
        let mut bytes = B64.decode(&token).expect("base64");
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert_eq!(
                keys.verify(&B64.encode(&bytes), 1_001),
                Err(TokenError::Invalid)
            );
            bytes[i] ^= 1;
        }
        // A broker's own session verifies as one, and no user session does.
        let broker = keys
            .verify(&keys.broker_token(), now_ms())
            .expect("a broker token");
        assert!(broker.is_broker());
        assert!(!keys.verify(&token, 1_001).expect("alice").is_broker());
        for junk in ["", "x", "!!!!", &"A".repeat(10_000)] {
            assert_eq!(keys.verify(junk, 0), Err(TokenError::Invalid));
        }
    }
}
