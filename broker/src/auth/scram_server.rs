//! The broker's side of SCRAM-SHA-256 exchanges: the exchanges in progress (bounded, each
//! used once and for 30 s at most), answers for unknown users that look like known ones, and
//! the throttle on failed attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_protocol::scram::{self, Credential, ScramError};

/// How long a client has between the two rounds.
pub const EXCHANGE_TTL: Duration = Duration::from_secs(10);
/// Exchanges in progress at once; more are refused (they cost memory before anyone has
/// authenticated).
pub const EXCHANGES_MAX: usize = 1024;
/// Exchanges in progress at once from one address, so one client cannot take every slot.
pub const EXCHANGES_PER_SOURCE_MAX: usize = 32;
/// Failed attempts per user and source address in a window before further attempts from
/// there are refused for the rest of it (per address, so a stranger cannot lock a user out
/// from everywhere).
pub const FAILURES_MAX: u32 = 5;
/// The failure window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Users whose failures are tracked at once (oldest windows are forgotten first).
const TRACKED_USERS_MAX: usize = 10_000;

/// Why an exchange did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The messages are wrong (or the proof is).
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// No such exchange: never started, expired, or already finished (a replay).
    #[error("no SCRAM exchange {0:?} in progress (expired, or already used)")]
    UnknownExchange(String),
    /// Too many exchanges in progress.
    #[error("too many authentications in progress; retry shortly")]
    Busy,
    /// Too many failures for this user lately.
    #[error("too many failed logins for this user; retry in {0:?}")]
    Throttled(Duration),
}

struct Exchange {
    user: String,
    source: Option<IpAddr>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None` for an unknown user: the exchange runs on and fails at the proof.
    credential: Option<Credential>,
    started: Instant,
}

struct Failures {
    count: u32,
    since: Instant,
}

/// Exchanges in progress and recent failures.
pub struct ScramServer {
    /// Keys the fake salts of unknown users.
    fake_salt_key: [u8; scram::KEY_BYTES],
    exchanges: Mutex<HashMap<String, Exchange>>,
    failures: Mutex<HashMap<(String, Option<IpAddr>), Failures>>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramServer")
    }
}

impl ScramServer {
    /// A server whose fake salts are keyed by `fake_salt_key` (random per process).
    pub fn new(fake_salt_key: [u8; scram::KEY_BYTES]) -> Self {
        Self {
            fake_salt_key,
            exchanges: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// The first round: `client_first` for a user whose credential `lookup` finds (or not),
    /// with `server_nonce` (random, printable) appended to the client's. Answers the
    /// server-first-message and the exchange's id.
    pub fn start(
        &self,
        client_first: &str,
        lookup: impl FnOnce(&str) -> Option<Credential>,
        server_nonce: &str,
        exchange_id: String,
        source: Option<IpAddr>,
    ) -> Result<(String, String), AuthError> {
        let first = scram::parse_client_first(client_first)?;
        self.check_throttle(&first.user, source)?;
        let credential = lookup(&first.user);
        // An unknown user gets a salt that is stable per name, so probing names learns
        // nothing from the answers.
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (
                scram::hmac_sha256(&self.fake_salt_key, first.user.as_bytes())[..16].to_vec(),
                scram::ITERATIONS_MIN,
            ),
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = scram::server_first(&nonce, &salt, iterations);
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        exchanges.retain(|_, e| e.started.elapsed() < EXCHANGE_TTL);
        let from_source = exchanges.values().filter(|e| e.source == source).count();
        if exchanges.len() >= EXCHANGES_MAX || from_source >= EXCHANGES_PER_SOURCE_MAX {
            return Err(AuthError::Busy);
        }
        exchanges.insert(
            exchange_id.clone(),
            Exchange {
                user: first.user,
                source,
                client_first_bare: first.bare,
                server_first: server_first.clone(),
                nonce,
                credential,
                started: Instant::now(),
            },
        );
        Ok((server_first, exchange_id))
    }

    /// The user exchange `exchange_id` claims to be, while it is in progress.
    pub fn user_of(&self, exchange_id: &str) -> Option<String> {
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exchange_id)
            .map(|e| e.user.clone())
    }

    /// The second round: checks the proof and answers the user and the
    /// server-final-message. The exchange ends here whatever the outcome.
    pub fn finish(
        &self,
        exchange_id: &str,
        client_final: &str,
    ) -> Result<(String, String), AuthError> {
        let exchange = self
            .exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exchange_id)
            .filter(|e| e.started.elapsed() < EXCHANGE_TTL)
            .ok_or_else(|| AuthError::UnknownExchange(exchange_id.chars().take(64).collect()))?;
        self.check_throttle(&exchange.user, exchange.source)?;
        let verified = match &exchange.credential {
            Some(credential) => scram::verify_client_final(
                credential,
                &exchange.client_first_bare,
                &exchange.server_first,
                &exchange.nonce,
                client_final,
            ),
            None => Err(ScramError::Failed),
        };
        match verified {
            Ok(server_final) => Ok((exchange.user, server_final)),
            Err(e) => {
                self.record_failure(&exchange.user, exchange.source);
                Err(e.into())
            }
        }
    }

    fn check_throttle(&self, user: &str, source: Option<IpAddr>) -> Result<(), AuthError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&(user.to_string(), source)) {
            Some(f) if f.count >= FAILURES_MAX && f.since.elapsed() < FAILURE_WINDOW => Err(
                AuthError::Throttled(FAILURE_WINDOW.saturating_sub(f.since.elapsed())),
            ),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, user: &str, source: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_string(), source);
        if failures.len() >= TRACKED_USERS_MAX && !failures.contains_key(&key) {
            failures.retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
            // Still full: the oldest window goes, never the new failure (recording nothing
            // would let a flood of made-up names switch the throttle off).
            let oldest = failures
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(k, _)| k.clone());
            if failures.len() >= TRACKED_USERS_MAX
                && let Some(oldest) = oldest
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= FAILURE_WINDOW {
            *entry = Failures {
                count: 0,
                since: Instant::now(),
            };
        }
        entry.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ScramServer {
        ScramServer::new([7; 32])
    }

    fn alice() -> Option<Credential> {
        Credential::new("secret", &[1; 16], 4096).ok()
    }

    /// A whole exchange as a client would run it.
    fn login(
        server: &ScramServer,
        password: &str,
        id: &str,
    ) -> Result<(String, String), AuthError> {
        let (first, bare) = scram::client_first("alice", "cnonce");
        let (server_first, id) = server.start(&first, |_| alice(), "snonce", id.into(), None)?;
        let answer = scram::client_final(password, &bare, "cnonce", &server_first)?;
        let (user, server_final) = server.finish(&id, &answer.message)?;
        assert_eq!(server_final, answer.expected_server_final);
        Ok((user, server_final))
    }

    #[test]
    fn an_exchange_authenticates_once_and_a_replay_is_refused() {
        let server = server();
        let (first, bare) = scram::client_first("alice", "cnonce");
        let (server_first, id) = server
            .start(&first, |_| alice(), "snonce", "x1".into(), None)
            .expect("start");
        let answer = scram::client_final("secret", &bare, "cnonce", &server_first).expect("final");
        assert_eq!(
            server.finish(&id, &answer.message).map(|(u, _)| u),
            Ok("alice".to_string())
        );
        assert!(matches!(
            server.finish(&id, &answer.message),
            Err(AuthError::UnknownExchange(_))
        ));
    }

    #[test]
    fn an_unknown_user_looks_like_a_known_one_and_fails_at_the_proof() {
        let server = server();
        let (first, _) = scram::client_first("mallory", "cnonce");
        let (one, _) = server
            .start(&first, |_| None, "s", "a".into(), None)
            .expect("start");
        let (two, _) = server
            .start(&first, |_| None, "s", "b".into(), None)
            .expect("start");
        assert_eq!(one, two, "the same fake salt each time");
        assert!(one.contains(",i=4096"));
        assert!(matches!(
            server.finish("a", "c=biws,r=cnonces,p=AAAA"),
            Err(AuthError::Scram(_))
        ));
    }

    #[test]
    fn failed_logins_are_throttled_per_user() {
        let server = server();
        for i in 0..FAILURES_MAX {
            assert!(matches!(
                login(&server, "wrong", &format!("f{i}")),
                Err(AuthError::Scram(ScramError::Failed))
            ));
        }
        assert!(matches!(
            login(&server, "secret", "ok"),
            Err(AuthError::Throttled(_))
        ));
    }

    #[test]
    fn exchanges_in_progress_are_bounded_per_source_and_in_all() {
        let server = server();
        let (first, _) = scram::client_first("alice", "cnonce");
        let one: Option<IpAddr> = "10.0.0.1".parse().ok();
        for i in 0..EXCHANGES_PER_SOURCE_MAX {
            server
                .start(&first, |_| alice(), "s", format!("a{i}"), one)
                .expect("start");
        }
        let more = server.start(&first, |_| alice(), "s", "more".into(), one);
        assert_eq!(more.map(|_| ()), Err(AuthError::Busy));
        for i in EXCHANGES_PER_SOURCE_MAX..EXCHANGES_MAX {
            let source = Some(IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]));
            server
                .start(&first, |_| alice(), "s", format!("b{i}"), source)
                .expect("start");
        }
        let full = server.start(&first, |_| alice(), "s", "full".into(), None);
        assert_eq!(full.map(|_| ()), Err(AuthError::Busy));
    }

    #[test]
    fn failures_from_one_address_do_not_lock_the_user_out_elsewhere() {
        let server = server();
        let (first, bare) = scram::client_first("alice", "cnonce");
        let attacker: Option<IpAddr> = "10.9.9.9".parse().ok();
        for i in 0..FAILURES_MAX {
            let (sf, id) = server
                .start(&first, |_| alice(), "s", format!("x{i}"), attacker)
                .expect("start");
            let wrong = scram::client_final("guess", &bare, "cnonce", &sf).expect("final");
            assert!(server.finish(&id, &wrong.message).is_err());
        }
        let throttled = server.start(&first, |_| alice(), "s", "y".into(), attacker);
        assert!(matches!(throttled, Err(AuthError::Throttled(_))));
        assert!(
            login(&server, "secret", "z").is_ok(),
            "another address still logs in"
        );
    }
}
