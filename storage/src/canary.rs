//! Deliberately broken behaviours that the fault tests must catch (../shared/TESTPLAN.md,
//! "negative controls"). Only a build with the `canaries` feature (the tests') can arm one,
//! through [`arm`]: the simulation does, and so does the tests' `sluiced-canary` binary; no
//! flag, variable or file of `sluiced` turns one on. Without the feature [`armed`] is a
//! constant `false`.

use std::sync::atomic::{AtomicU8, Ordering};

/// A safety rule to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Canary {
    /// Syncs report success without `fdatasync`: writes are acknowledged before they are
    /// durable.
    AckBeforeFsync = 1,
    /// Recovery truncates at any bad batch, even below the checkpoint (corruption of
    /// durable data treated as a torn tail).
    TruncateOnCorruption = 2,
    /// Recovery accepts a log that lacks durable batches (cut short), so the replica runs
    /// and votes as if it were whole.
    CutLogVotes = 4,
    /// A replica stands for election whenever its timer fires, without first asking
    /// whether a quorum would find its log long enough (openraft's own behaviour).
    StandWithoutAsking = 8,
}

impl Canary {
    /// Every canary, for listing.
    pub const ALL: [Canary; 4] = [
        Canary::AckBeforeFsync,
        Canary::TruncateOnCorruption,
        Canary::CutLogVotes,
        Canary::StandWithoutAsking,
    ];

    /// The canary's name on the test tools' command lines.
    pub fn name(self) -> &'static str {
        match self {
            Canary::AckBeforeFsync => "ack-before-fsync",
            Canary::TruncateOnCorruption => "truncate-on-corruption",
            Canary::CutLogVotes => "cut-log-votes",
            Canary::StandWithoutAsking => "stand-without-asking",
        }
    }

    /// The canary called `name`, if any.
    pub fn named(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|c| c.name() == name)
    }
}

static ARMED: AtomicU8 = AtomicU8::new(0);

/// Arms exactly `canaries` (process-wide), disarming the rest.
#[cfg(feature = "canaries")]
pub fn arm(canaries: &[Canary]) {
    let bits = canaries.iter().fold(0u8, |bits, c| bits | *c as u8);
    ARMED.store(bits, Ordering::SeqCst);
}

/// Whether `canary` is armed.
pub fn armed(canary: Canary) -> bool {
    cfg!(feature = "canaries") && ARMED.load(Ordering::Relaxed) & canary as u8 != 0
}
