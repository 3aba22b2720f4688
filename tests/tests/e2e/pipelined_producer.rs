//! The SDK's pipelined producer: a batch the broker refuses fails only its own records, and
//! the batches in flight behind it are stored once, in order, under a fresh sequence.

use std::time::Duration;

use sluice_client::{ProducerConfig, ProducerRecord, Reason};
use sluice_tests::TestBroker;

use crate::{client_with_topic, read_all, runtime};

#[test]
fn a_refused_batch_fails_alone_and_the_batches_behind_it_are_stored_once_in_order() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = client_with_topic(
            &broker.address,
            "mixed",
            1,
            &[("max.message.bytes", "8192")],
        )
        .await;
        // Every record its own batch, all queued before the first is answered.
        let config = ProducerConfig {
            batch_bytes: 1,
            linger: Duration::from_millis(50),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await.expect("producer");
        let values: Vec<Vec<u8>> = (0..12)
            .map(|i| {
                if i % 4 == 1 {
                    vec![b'!'; 16 * 1024]
                } else {
                    format!("ok-{i}").into_bytes()
                }
            })
            .collect();
        let sends = values
            .iter()
            .map(|v| producer.send(ProducerRecord::new("mixed").partition(0).value(v.clone())));
        let results = futures::future::join_all(sends).await;
        let mut stored = Vec::new();
        for (i, result) in results.iter().enumerate() {
            if i % 4 == 1 {
                let error = result.as_ref().expect_err("oversized record is refused");
                assert_eq!(error.reason(), Some(Reason::RecordTooLarge), "{error}");
            } else {
                let sent = result.as_ref().expect("small record is stored");
                stored.push((sent.offset, values[i].clone()));
            }
        }
        let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "acks in send order: {offsets:?}"
        );
        let records = read_all(&client, "mixed", 1, stored.len(), Duration::from_secs(30)).await;
        let read: Vec<(u64, Vec<u8>)> = records
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(
            read, stored,
            "each accepted record once, at its acked offset"
        );
    });
    drop(broker);
}
