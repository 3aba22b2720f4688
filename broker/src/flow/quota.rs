//! Byte-rate quotas per principal (docs/security.md, "Quotas"), as Kafka's
//! `producer_byte_rate` and `consumer_byte_rate`: each principal has a token bucket per
//! broker for produce and one for fetch, holding one second of its rate. A request is let
//! through while the bucket is not in debt and charged its bytes (a request larger than the
//! bucket is never refused for ever, it leaves the bucket in debt); a principal in debt is
//! answered THROTTLED with the time until the debt is paid, and a subscription waits it out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Which traffic a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes produced.
    Produce,
    /// Bytes fetched or streamed to consumers.
    Fetch,
}

/// A principal's rates, in bytes per second; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Produce bytes per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Fetch bytes per second.
    pub fetch_bytes_per_sec: Option<u64>,
}

impl QuotaLimits {
    /// The rate for `direction`.
    pub fn rate(&self, direction: Direction) -> Option<u64> {
        match direction {
            Direction::Produce => self.produce_bytes_per_sec,
            Direction::Fetch => self.fetch_bytes_per_sec,
        }
        .filter(|&r| r > 0)
    }
}

/// Buckets kept before idle full ones are dropped.
const BUCKETS_SOFT_MAX: usize = 10_000;

struct Bucket {
    /// Bytes that may still pass; negative while in debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + rate * elapsed).min(rate);
        self.last = now;
    }
}

/// Every principal's buckets on this broker.
#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<(Direction, String), Bucket>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Quotas")
    }
}

impl Quotas {
    /// How long `principal` must wait before more `direction` traffic at `rate` (bytes per
    /// second); `None` if it may go on now.
    pub fn debt(&self, direction: Direction, principal: &str, rate: u64) -> Option<Duration> {
        let rate = rate as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get_mut(&(direction, principal.to_string()))?;
        bucket.refill(rate, now);
        (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / rate))
    }

    /// Charges `bytes` of `direction` traffic to `principal` at `rate`.
    pub fn charge(&self, direction: Direction, principal: &str, rate: u64, bytes: u64) {
        let rate = rate as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= BUCKETS_SOFT_MAX {
            // Full buckets hold nothing worth keeping: a new one starts full too.
            buckets.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate
            });
        }
        let bucket = buckets
            .entry((direction, principal.to_string()))
            .or_insert(Bucket {
                tokens: rate,
                last: now,
            });
        bucket.refill(rate, now);
        bucket.tokens -= bytes as f64;
    }

    /// Charges `bytes` unless `principal` is in debt: then the wait, and nothing charged.
    pub fn admit(
        &self,
        direction: Direction,
        principal: &str,
        rate: u64,
        bytes: u64,
    ) -> Result<(), Duration> {
        if let Some(wait) = self.debt(direction, principal, rate) {
            return Err(wait);
        }
        self.charge(direction, principal, rate, bytes);
        Ok(())
    }
}

impl crate::node::Node {
    /// The rate `principal` is held to for `direction` here: its own quota (`sluice quota
    /// set`), else the broker's default (`--quota-*-bytes-per-sec`); `None` for no limit.
    /// Brokers (the audit writer) are never limited.
    pub fn quota_rate(
        &self,
        direction: Direction,
        principal: &crate::auth::Principal,
    ) -> Option<u64> {
        if principal.method == crate::auth::AuthMethod::Broker {
            return None;
        }
        let default = self.config.default_quota.rate(direction);
        let metadata = self.metadata();
        if metadata.quotas.is_empty() {
            return default;
        }
        let own = metadata
            .quotas
            .get(&principal.to_string())
            .and_then(|l| match direction {
                Direction::Produce => l.produce_bytes_per_sec,
                Direction::Fetch => l.fetch_bytes_per_sec,
            });
        // An own rate of 0 lifts the broker's default.
        own.or(default).filter(|&r| r > 0)
    }

    /// Charges `bytes` of `direction` traffic already served to `principal`.
    pub fn charge_quota(
        &self,
        direction: Direction,
        principal: &crate::auth::Principal,
        bytes: u64,
    ) {
        if let Some(rate) = self.quota_rate(direction, principal) {
            self.quotas
                .charge(direction, &principal.to_string(), rate, bytes);
        }
    }

    /// Charges `bytes` of `direction` traffic to `principal` unless it is over its quota:
    /// then THROTTLED with the time until it may go on.
    pub fn admit_quota(
        &self,
        direction: Direction,
        principal: &crate::auth::Principal,
        bytes: u64,
    ) -> Result<(), crate::error::BrokerError> {
        let Some(rate) = self.quota_rate(direction, principal) else {
            return Ok(());
        };
        let name = principal.to_string();
        self.quotas
            .admit(direction, &name, rate, bytes)
            .map_err(|wait| {
                crate::metrics::quota_throttled(direction);
                crate::error::BrokerError::QuotaExceeded {
                    principal: name,
                    direction: direction.name(),
                    retry_after_ms: wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                }
            })
    }
}

impl Direction {
    /// Its name in errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Produce => "produce",
            Direction::Fetch => "fetch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_principal_over_its_rate_waits_its_debt_out_and_others_do_not() {
        let quotas = Quotas::default();
        let rate = 1000;
        // The first second's worth passes, and one large request more (into debt).
        assert!(
            quotas
                .admit(Direction::Produce, "User:a", rate, 600)
                .is_ok()
        );
        assert!(
            quotas
                .admit(Direction::Produce, "User:a", rate, 2400)
                .is_ok()
        );
        let wait = quotas
            .admit(Direction::Produce, "User:a", rate, 1)
            .expect_err("in debt");
        assert_eq!(wait, Duration::from_secs(2));
        // Another principal, and another direction, have their own buckets.
        assert!(
            quotas
                .admit(Direction::Produce, "User:b", rate, 900)
                .is_ok()
        );
        assert!(quotas.admit(Direction::Fetch, "User:a", rate, 900).is_ok());
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(quotas.admit(Direction::Produce, "User:a", rate, 1).is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(quotas.admit(Direction::Produce, "User:a", rate, 1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn over_time_the_rate_is_what_passes() {
        let quotas = Quotas::default();
        let rate = 10_000;
        let mut passed = 0u64;
        for _ in 0..1000 {
            if quotas.admit(Direction::Fetch, "User:a", rate, 500).is_ok() {
                passed += 500;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // 10 s at 10,000 B/s, plus the first second's bucket, plus one request into debt.
        assert!((100_000..=111_000).contains(&passed), "{passed}");
    }
}
