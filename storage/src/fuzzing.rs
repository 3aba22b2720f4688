//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the stable corpus replay
//! test, so both exercise exactly the same code.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::Batch;
use crate::clock::ManualClock;
use crate::config::LogConfig;
use crate::io::SimIo;
use crate::log::{Log, LogEnv};

/// Decodes `data` as a batch and, if valid, every record; must never panic.
pub fn decode_batch(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(batch) = Batch::decode_first(&bytes)
        && let Ok(records) = batch.records()
    {
        for record in records {
            if record.is_err() {
                break;
            }
        }
    }
}

/// Decodes `data` as a batch and runs the produce-time validation; must never panic, and a
/// batch the validation accepts must read back as exactly `record_count` records at
/// consecutive offsets.
pub fn validate_batch(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let Ok(batch) = Batch::decode_first(&bytes) else {
        return;
    };
    if batch.validate_produced().is_err() {
        return;
    }
    let header = *batch.header();
    let records = batch
        .records_vec()
        .unwrap_or_else(|e| panic!("a validated batch must decode: {e}"));
    assert_eq!(records.len() as u64, u64::from(header.record_count));
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, header.base_offset + i as u64);
        assert!(record.timestamp <= header.max_timestamp);
    }
}

/// Opens a log whose only segment file holds `data` and reads it back; must never panic,
/// and whatever recovery keeps must read back as valid batches.
pub fn recover_segment(data: &[u8]) {
    let io = SimIo::new();
    let dir = Path::new("/fuzz");
    io.put_file(&dir.join("00000000000000000000.log"), data);
    let env = LogEnv {
        io: Arc::new(io),
        clock: Arc::new(ManualClock::new(0)),
    };
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let Ok((log, _report)) = Log::open_with(dir, config, env) else {
        return;
    };
    let batches = log.read(log.log_start_offset(), usize::MAX, u64::MAX);
    let batches = batches.unwrap_or_else(|e| panic!("recovered log must be readable: {e}"));
    for bytes in batches {
        let batch =
            Batch::decode(bytes).unwrap_or_else(|e| panic!("recovered batch must decode: {e}"));
        assert!(batch.header().batch_len() > 0);
    }
}
