//! Any segment file content recovers to a readable log or a typed error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_storage::fuzzing::recover_segment(data);
});
