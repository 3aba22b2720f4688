//! Injected wall-clock time, so roll, retention and tombstone expiry are testable.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock milliseconds since the Unix epoch. Thread-safe.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The operating system's wall clock (or the one [`install_wall_clock`] put in its place).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

static WALL_CLOCK: std::sync::OnceLock<Box<dyn Clock>> = std::sync::OnceLock::new();

/// Makes [`SystemClock`] read `clock` for the rest of the process: the deterministic
/// simulation's clock. False if one was installed already.
pub fn install_wall_clock(clock: Box<dyn Clock>) -> bool {
    WALL_CLOCK.set(clock).is_ok()
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        if let Some(clock) = WALL_CLOCK.get() {
            return clock.now_ms();
        }
        // A clock before 1970 is a misconfigured host; 0 keeps time-based policies inert.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock forward (or back) by `delta_ms`.
    pub fn advance(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
