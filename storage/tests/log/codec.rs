//! Batch codec properties: every batch round-trips; no byte string makes decoding panic.

use bytes::Bytes;
use proptest::prelude::*;
use sluice_storage::batch::{NewRecord, Placement, stamp_assigned_fields, with_producer};
use sluice_storage::limits::BATCH_HEADER_LEN;
use sluice_storage::{Batch, BatchBuilder, Compression, DecodeError, RaftPosition};

#[derive(Debug, Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn rec() -> impl Strategy<Value = Rec> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    (
        proptest::option::of(bytes.clone()),
        proptest::option::of(bytes.clone()),
        any::<i64>(),
        proptest::collection::vec((bytes.clone(), proptest::option::of(bytes)), 0..3),
    )
        .prop_map(|(key, value, timestamp, headers)| Rec {
            key,
            value,
            timestamp,
            headers,
        })
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

fn build(records: &[Rec], compression: Compression) -> Bytes {
    builder(records, compression).build().expect("valid batch")
}

fn builder(records: &[Rec], compression: Compression) -> BatchBuilder {
    let mut builder = BatchBuilder::new(compression).producer(7, 3, 11);
    for r in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        builder.push(NewRecord {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            timestamp: r.timestamp,
            headers: &headers,
        });
    }
    builder
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_batch_decodes_to_what_was_built(records in proptest::collection::vec(rec(), 1..20), compression in codec(), base in 0u64..1 << 40) {
        let bytes = build(&records, compression);
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
        let raft = RaftPosition { term: 4, leader: 2, index: 9 };
        let entry_continues = base % 2 == 1;
        stamp_assigned_fields(&mut header, Placement { base_offset: base, raft, entry_continues });
        let stamped = Bytes::from([&header[..], &bytes[BATCH_HEADER_LEN..]].concat());
        let batch = Batch::decode(stamped).expect("stamped batch decodes");
        prop_assert_eq!(batch.header().base_offset, base);
        prop_assert_eq!(batch.header().raft, raft);
        prop_assert_eq!(batch.header().attributes.compression(), compression);
        prop_assert_eq!(batch.header().attributes.entry_continues(), entry_continues);
        prop_assert_eq!((batch.header().producer_id, batch.header().producer_epoch, batch.header().base_sequence), (7, 3, 11));
        let decoded = batch.records_vec().expect("records decode");
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, base + i as u64);
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
            let headers: Vec<(&[u8], Option<&[u8]>)> = got.headers.iter().map(|h| (h.key.as_ref(), h.value.as_deref())).collect();
            let want_headers: Vec<(&[u8], Option<&[u8]>)> = want.headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            prop_assert_eq!(headers, want_headers);
        }
        prop_assert_eq!(batch.header().max_timestamp, records.iter().map(|r| r.timestamp).max().unwrap_or_default());
    }

    #[test]
    fn finish_encodes_what_build_does_and_restamping_changes_only_producer_fields(records in proptest::collection::vec(rec(), 1..20), compression in codec()) {
        let built = build(&records, compression);
        let finished = builder(&records, compression).finish().expect("valid batch");
        prop_assert_eq!(&built, &finished);
        let restamped = with_producer(&built, 99, 1, 5).expect("restamp");
        let batch = Batch::decode(restamped.clone()).expect("restamped batch decodes");
        prop_assert_eq!((batch.header().producer_id, batch.header().producer_epoch, batch.header().base_sequence), (99, 1, 5));
        prop_assert_eq!(&restamped[BATCH_HEADER_LEN..], &built[BATCH_HEADER_LEN..]);
        prop_assert_eq!(batch.header().record_count, records.len() as u32);
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        sluice_storage::fuzzing::decode_batch(&data);
    }

    #[test]
    fn any_flipped_bit_is_detected(records in proptest::collection::vec(rec(), 1..5), compression in codec(), bit in any::<proptest::sample::Index>()) {
        let bytes = build(&records, compression);
        let mut damaged = bytes.to_vec();
        let bit = bit.index(damaged.len() * 8);
        damaged[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Batch::decode(Bytes::from(damaged)).is_err());
    }
}

#[test]
fn hostile_lengths_are_refused_before_allocation() {
    let bytes = build(
        &[Rec {
            key: None,
            value: Some(vec![1; 10]),
            timestamp: 0,
            headers: vec![],
        }],
        Compression::None,
    );
    let mut header = sluice_storage::BatchHeader::decode(&bytes).expect("header");
    header.records_len = u32::MAX;
    let encoded = header.encode();
    assert!(matches!(
        sluice_storage::BatchHeader::decode(&encoded),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn truncated_batch_is_a_typed_error() {
    let bytes = build(
        &[Rec {
            key: None,
            value: Some(vec![1; 100]),
            timestamp: 0,
            headers: vec![],
        }],
        Compression::None,
    );
    for cut in [0, 10, BATCH_HEADER_LEN, bytes.len() - 1] {
        let err = Batch::decode(bytes.slice(..cut)).expect_err("truncated");
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "cut {cut}: {err:?}"
        );
    }
}

#[test]
fn empty_data_batch_is_refused_but_control_batch_is_not() {
    assert!(BatchBuilder::new(Compression::None).build().is_err());
    let control = BatchBuilder::new(Compression::None)
        .control()
        .build()
        .expect("control");
    let batch = Batch::decode(control).expect("decodes");
    assert!(batch.header().attributes.is_control());
    assert_eq!(batch.header().offset_count(), 0);
}

#[test]
fn compression_shrinks_repetitive_records() {
    let records: Vec<Rec> = (0..500)
        .map(|i| Rec {
            key: Some(format!("key-{}", i % 10).into_bytes()),
            value: Some(vec![b'x'; 100]),
            timestamp: i,
            headers: vec![],
        })
        .collect();
    let plain = build(&records, Compression::None).len();
    for codec in [Compression::Lz4, Compression::Zstd] {
        let packed = build(&records, codec);
        assert!(
            packed.len() * 4 < plain,
            "{codec:?}: {} vs {plain}",
            packed.len()
        );
        assert_eq!(
            Batch::decode(packed)
                .expect("decodes")
                .records_vec()
                .expect("records")
                .len(),
            500
        );
    }
}
