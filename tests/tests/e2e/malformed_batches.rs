//! Batches whose CRCs are valid but whose records section is malformed are refused with
//! `CORRUPT_BATCH`, and nothing of them is stored.
//!
//! The records are encoded here, independently of the storage crate's encoder, so that
//! each case breaks exactly one rule of the format on purpose.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sluice_client::Reason;
use sluice_protocol::StatusInfo;
use sluice_protocol::v1::{Acks, ProduceRequest};
use sluice_storage::batch::{Attributes, BatchHeader, MAGIC_V1, RaftPosition};
use sluice_storage::{Batch, Compression};
use sluice_tests::TestBroker;

use crate::{client_with_topic, high_watermark, raw_producer, runtime};

/// One well-formed record, before any fault.
#[derive(Debug, Clone)]
struct Rec {
    timestamp_delta: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The one rule a case breaks.
#[derive(Debug, Clone)]
enum Fault {
    /// Breaks nothing: how the generator's own output is checked.
    Nothing,
    /// A key length below -1.
    NegativeKeyLen(i32),
    /// A value length below -1.
    NegativeValueLen(i32),
    /// A header value length below -1.
    NegativeHeaderValueLen(i32),
    /// A negative header count.
    NegativeHeaderCount(i32),
    /// More headers claimed than present.
    ExtraHeaderCount(i32),
    /// A null header key.
    NullHeaderKey,
    /// A key length reaching past the record.
    KeyPastRecord,
    /// The record's length field off by this much (never 0).
    RecordLenOff(i32),
    /// The record's length as an over-long (6-byte) varint.
    OverlongLength,
    /// An offset delta this far from the record's position (never 0).
    OffsetDelta(i32),
    /// A timestamp above the header's max timestamp.
    TimestampAboveMax(i64),
    /// The header's max timestamp above every record's.
    MaxTimestampTooHigh(i64),
    /// The header's record count off by this much, `last_offset_delta` following it.
    CountOff(i32),
    /// `last_offset_delta` off by this much, the record count as it is.
    LastDeltaOff(i32),
    /// Bytes after the last record.
    Trailing(Vec<u8>),
    /// The section cut short at this fraction (in 1/1000) of its length.
    Truncate(u16),
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes record `index`, breaking it if `fault` is about a record.
fn encode_record(out: &mut Vec<u8>, rec: &Rec, index: i32, fault: Option<&Fault>) {
    let mut body = vec![0u8];
    put_varint(&mut body, rec.timestamp_delta);
    match fault {
        Some(Fault::OffsetDelta(d)) => put_varint(&mut body, i64::from(index) + i64::from(*d)),
        _ => put_varint(&mut body, i64::from(index)),
    }
    let key_at = body.len();
    match fault {
        Some(Fault::NegativeKeyLen(n)) => put_varint(&mut body, i64::from(*n)),
        _ => put_bytes(&mut body, rec.key.as_deref()),
    }
    match fault {
        Some(Fault::NegativeValueLen(n)) => put_varint(&mut body, i64::from(*n)),
        _ => put_bytes(&mut body, rec.value.as_deref()),
    }
    let count = rec.headers.len() as i64;
    match fault {
        Some(Fault::NegativeHeaderCount(n)) => put_varint(&mut body, i64::from(*n)),
        Some(Fault::ExtraHeaderCount(n)) => put_varint(&mut body, count + i64::from(*n)),
        _ => put_varint(&mut body, count),
    }
    for (i, (k, v)) in rec.headers.iter().enumerate() {
        match (fault, i) {
            (Some(Fault::NullHeaderKey), 0) => put_varint(&mut body, -1),
            _ => put_bytes(&mut body, Some(k)),
        }
        match (fault, i) {
            (Some(Fault::NegativeHeaderValueLen(n)), 0) => put_varint(&mut body, i64::from(*n)),
            _ => put_bytes(&mut body, v.as_deref()),
        }
    }
    if let Some(Fault::KeyPastRecord) = fault {
        // A key as long as the whole body cannot fit after the fields before it.
        let mut b = body[..key_at].to_vec();
        put_varint(&mut b, body.len() as i64);
        b.extend_from_slice(&body[key_at..]);
        body = b;
    }
    match fault {
        Some(Fault::RecordLenOff(d)) => put_varint(out, body.len() as i64 + i64::from(*d)),
        Some(Fault::OverlongLength) => {
            let len = body.len() as u64 * 2;
            out.extend_from_slice(&[
                (len as u8) | 0x80,
                ((len >> 7) as u8) | 0x80,
                0x80,
                0x80,
                0x80,
                0x00,
            ]);
        }
        _ => put_varint(out, body.len() as i64),
    }
    out.extend_from_slice(&body);
}

/// Whether the fault applies to one record rather than the header or the whole section.
fn is_record_fault(fault: &Fault) -> bool {
    !matches!(
        fault,
        Fault::Nothing
            | Fault::MaxTimestampTooHigh(_)
            | Fault::CountOff(_)
            | Fault::LastDeltaOff(_)
            | Fault::Trailing(_)
            | Fault::Truncate(_)
    )
}

/// A whole encoded batch (both CRCs valid) with `fault` at record `at`.
fn malformed_batch(records: &[Rec], fault: &Fault, at: usize, codec: Compression) -> bytes::Bytes {
    let at = at % records.len();
    let first_timestamp = 1_700_000_000_000i64;
    let mut max_timestamp = records
        .iter()
        .map(|r| first_timestamp + r.timestamp_delta)
        .max()
        .unwrap_or(first_timestamp);
    let mut section = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let mut rec = rec.clone();
        if let (Fault::TimestampAboveMax(by), true) = (fault, i == at) {
            rec.timestamp_delta = max_timestamp - first_timestamp + by;
        }
        let record_fault = (i == at && is_record_fault(fault)).then_some(fault);
        encode_record(&mut section, &rec, i as i32, record_fault);
    }
    let mut count = records.len() as i64;
    let mut last_delta = count - 1;
    match fault {
        Fault::MaxTimestampTooHigh(by) => max_timestamp += by,
        Fault::CountOff(d) => {
            count = (count + i64::from(*d)).max(1);
            if count == records.len() as i64 {
                count += 1;
            }
            last_delta = count - 1;
        }
        Fault::LastDeltaOff(d) => last_delta = (last_delta + i64::from(*d)).max(0),
        Fault::Trailing(bytes) => section.extend_from_slice(bytes),
        Fault::Truncate(permille) => {
            let cut = section.len() * usize::from(*permille) / 1000;
            section.truncate(cut.min(section.len() - 1));
        }
        _ => {}
    }
    if last_delta == count - 1 && matches!(fault, Fault::LastDeltaOff(_)) {
        last_delta += 1;
    }
    let stored = match codec {
        Compression::None => section,
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            std::io::Write::write_all(&mut enc, &section).expect("lz4");
            enc.finish().expect("lz4")
        }
        Compression::Zstd => zstd::bulk::compress(&section, 3).expect("zstd"),
    };
    let header = BatchHeader {
        base_offset: 0,
        raft: RaftPosition::default(),
        magic: MAGIC_V1,
        attributes: Attributes::new(codec),
        record_count: count as u32,
        last_offset_delta: last_delta as u32,
        first_timestamp,
        max_timestamp,
        producer_id: u64::MAX,
        producer_epoch: 0,
        base_sequence: 0,
        records_len: stored.len() as u32,
        records_crc: crc32fast::hash(&stored),
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&stored);
    out.into()
}

fn rec_strategy() -> impl Strategy<Value = Rec> {
    let bytes = || proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..24));
    (
        0i64..5_000,
        bytes(),
        bytes(),
        proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..8), bytes()),
            0..3,
        ),
    )
        .prop_map(|(timestamp_delta, key, value, headers)| Rec {
            timestamp_delta,
            key,
            value,
            headers,
        })
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    let neg = -100_000i32..=-2;
    prop_oneof![
        neg.clone().prop_map(Fault::NegativeKeyLen),
        neg.clone().prop_map(Fault::NegativeValueLen),
        neg.clone().prop_map(Fault::NegativeHeaderValueLen),
        (i32::MIN..0).prop_map(Fault::NegativeHeaderCount),
        (1i32..1000).prop_map(Fault::ExtraHeaderCount),
        Just(Fault::NullHeaderKey),
        Just(Fault::KeyPastRecord),
        prop_oneof![-3i32..0, 1i32..64].prop_map(Fault::RecordLenOff),
        Just(Fault::OverlongLength),
        prop_oneof![-5i32..0, 1i32..1_000_000].prop_map(Fault::OffsetDelta),
        (1i64..1_000_000).prop_map(Fault::TimestampAboveMax),
        (1i64..1_000_000).prop_map(Fault::MaxTimestampTooHigh),
        prop_oneof![-5i32..0, 1i32..5].prop_map(Fault::CountOff),
        prop_oneof![-5i32..0, 1i32..5].prop_map(Fault::LastDeltaOff),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Fault::Trailing),
        (0u16..1000).prop_map(Fault::Truncate),
    ]
}

fn codec_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        4 => Just(Compression::None),
        1 => Just(Compression::Lz4),
        1 => Just(Compression::Zstd),
    ]
}

/// A batch with one broken rule, valid CRCs, and what was broken.
fn case_strategy() -> impl Strategy<Value = (bytes::Bytes, Fault)> {
    (
        proptest::collection::vec(rec_strategy(), 1..8),
        fault_strategy(),
        any::<usize>(),
        codec_strategy(),
    )
        .prop_filter(
            "a header fault needs a record with headers",
            |(recs, f, at, _)| {
                let needs_header =
                    matches!(f, Fault::NullHeaderKey | Fault::NegativeHeaderValueLen(_));
                !needs_header || !recs[at % recs.len()].headers.is_empty()
            },
        )
        .prop_map(|(recs, fault, at, codec)| (malformed_batch(&recs, &fault, at, codec), fault))
}

fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("SLUICE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    match seed {
        Some(seed) => TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &[seed.to_le_bytes(), [0; 8], [0; 8], [0; 8]].concat(),
            ),
        ),
        None => TestRunner::new(config),
    }
}

#[test]
fn the_encoder_here_makes_valid_batches_when_nothing_is_broken() {
    // Guards the generator: a fault-free batch from it passes the validator, so the faults,
    // not the encoder, are what the other tests see refused.
    let recs = vec![
        Rec {
            timestamp_delta: 0,
            key: Some(b"k".to_vec()),
            value: None,
            headers: vec![(b"h".to_vec(), Some(b"v".to_vec()))],
        },
        Rec {
            timestamp_delta: 7,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        },
    ];
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let whole = malformed_batch(&recs, &Fault::Nothing, 0, codec);
        let batch = Batch::decode(whole).expect("CRCs valid");
        assert_eq!(batch.validate_produced(), Ok(()), "{codec:?}");
        assert_eq!(batch.records_vec().map(|r| r.len()), Ok(2));
    }
}

#[test]
fn malformed_sections_with_valid_crcs_fail_validation() {
    runner(4096)
        .run(&case_strategy(), |(bytes, fault)| {
            // Refused either by the header checks of decoding or by the full validation.
            if let Ok(batch) = Batch::decode(bytes) {
                let verdict = batch.validate_produced();
                prop_assert!(verdict.is_err(), "{fault:?} was accepted");
            }
            Ok(())
        })
        .expect("every malformed batch is refused");
}

#[test]
fn malformed_sections_are_refused_by_the_broker_and_never_stored() {
    let broker = TestBroker::start();
    runtime().block_on(async {
        let client = client_with_topic(&broker.address, "malformed", 1, &[]).await;
        let mut raw = raw_producer(&broker.address).await;
        let strategy = case_strategy();
        let mut runner = runner(1024);
        for _ in 0..1024 {
            let (batch, fault) = strategy.new_tree(&mut runner).expect("case").current();
            let request = ProduceRequest {
                topic: "malformed".into(),
                partition: 0,
                batch,
                acks: Acks::All as i32,
                request_id: 0,
            };
            let status = raw.produce(request).await.expect_err("refused");
            assert_eq!(
                StatusInfo::of(&status).reason,
                Some(Reason::CorruptBatch),
                "{fault:?}: {status:?}"
            );
        }
        assert_eq!(high_watermark(&client, "malformed", 0).await, 0);
    });
}
