//! The benchmark workloads: batches of 1 KiB records, sized like a producer's 64 KiB batch.

use bytes::Bytes;
use sluice_storage::batch::NewRecord;
use sluice_storage::{Batch, BatchBuilder, Compression};

/// Bytes per record value, as the workload specifies.
pub const RECORD_BYTES: usize = 1024;
/// Records per batch: 63 records of 1 KiB plus framing come to just under 64 KiB.
pub const RECORDS_PER_BATCH: usize = 63;

/// A batch of `RECORDS_PER_BATCH` records of `RECORD_BYTES` pseudo-random (compressible
/// about 2:1) bytes with 16-byte keys.
pub fn batch_64k(seed: u64, compression: Compression) -> Batch {
    Batch::decode(batch_64k_bytes(seed, compression)).expect("benchmark batch is valid")
}

/// The encoded bytes of [`batch_64k`].
pub fn batch_64k_bytes(seed: u64, compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(compression);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..RECORDS_PER_BATCH {
        let value: Vec<u8> = (0..RECORD_BYTES)
            .map(|j| {
                if j % 2 == 0 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                } else {
                    b'a'
                }
            })
            .collect();
        let key = format!("key-{seed:06}-{i:05}");
        builder.push(NewRecord {
            key: Some(key.as_bytes()),
            value: Some(&value),
            timestamp: 1_700_000_000_000 + i as i64,
            headers: &[],
        });
    }
    builder.build().expect("benchmark batch is valid")
}

/// An encoded batch of 1 KiB records of about `bytes` in total.
pub fn batch_bytes_of(bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    let value = vec![b'v'; RECORD_BYTES];
    for i in 0..(bytes / (RECORD_BYTES + 32)).max(1) {
        let key = format!("key-{i:08}");
        builder.push(NewRecord {
            key: Some(key.as_bytes()),
            value: Some(&value),
            timestamp: 1_700_000_000_000,
            headers: &[],
        });
    }
    builder.build().expect("benchmark batch is valid")
}
