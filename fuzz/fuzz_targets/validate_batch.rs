//! The produce-time validation never panics, and what it accepts reads back whole.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_storage::fuzzing::validate_batch(data);
});
