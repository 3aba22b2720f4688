//! Any byte string decodes to a batch (and records) or a typed error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_storage::fuzzing::decode_batch(data);
});
