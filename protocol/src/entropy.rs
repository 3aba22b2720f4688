//! Random numbers for identifiers (member ids, cluster ids) that a simulation can make
//! repeatable: seeded from the OS per thread, or from [`seed_thread`].

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes this thread's random numbers a function of `seed` from now on.
pub fn seed_thread(seed: u64) {
    STATE.with(|s| s.set(Some(seed)));
}

/// A random 64-bit number: from the OS's randomness, or (on a seeded thread) the next of a
/// SplitMix64 sequence. Not for secrets.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let Some(state) = s.get() else {
            // Unseeded: fresh hash keys each time, so one id does not predict the next.
            return os_seed();
        };
        let mut sequence = SplitMix64(state);
        let next = sequence.next_u64();
        s.set(Some(sequence.0));
        next
    })
}

/// A small, fast, replayable sequence of 64-bit numbers (SplitMix64); not for secrets.
#[derive(Debug, Clone, Copy)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn os_seed() -> u64 {
    // RandomState's keys come from the OS once per thread, then vary per instance.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_the_sequence_and_different_seeds_differ() {
        seed_thread(7);
        let first: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        seed_thread(7);
        let again: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        seed_thread(8);
        let other: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }
}
