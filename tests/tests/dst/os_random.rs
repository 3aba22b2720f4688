//! The one source of randomness a seed did not yet control: the bytes the process asks the
//! OS for. std draws its hash keys from `getrandom(2)` once per thread, and every
//! `RandomState` after that (hash maps in the brokers, the SDK and their dependencies, and
//! whatever seeds itself from one) follows from them; so a map's iteration order, and with
//! it the order of some messages, changed from process to process. One seed then gave
//! different runs: seed 37 (5 nodes) three traces in three runs, seed 31 a stall in some
//! runs only (reliability.md). Found by replacing `getrandom` with an `LD_PRELOAD` shim:
//! every run then gave one trace.
//!
//! This binary defines `getrandom` itself, which the linker binds std's calls to: the bytes
//! are a SplitMix64 sequence from a fixed start, mixed with the seed once it is known.
//! Only the simulation's binary does this; the brokers' own builds use the OS. The one
//! `unsafe` outside `storage::io` (docs/unsafe.md): the C signature hands a raw buffer.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_protocol::entropy::SplitMix64;

/// Where the next draw's sequence starts.
static NEXT: AtomicU64 = AtomicU64::new(0x05EE_D0F0_5EED_0001);

/// Makes what follows a function of `seed` (call before the run starts its threads).
pub fn seed(seed: u64) {
    NEXT.store(seed ^ 0x05EE_D0F0_5EED_0001, Ordering::SeqCst);
}

/// `getrandom(2)` for this process: `len` bytes of the sequence into `buf`, whatever the
/// flags; never fails.
///
/// # Safety
///
/// `buf` must be valid for writes of `len` bytes, as `getrandom(2)` requires of its callers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, _flags: u32) -> isize {
    if buf.is_null() {
        return 0;
    }
    // SAFETY: the caller passes a buffer writable for `len` bytes (getrandom(2)'s contract).
    let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    let mut sequence = SplitMix64(NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst));
    for chunk in out.chunks_mut(8) {
        let bytes = sequence.next_u64().to_le_bytes();
        chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&bytes));
    }
    isize::try_from(len).unwrap_or(isize::MAX)
}
