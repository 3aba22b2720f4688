//! What a clean restart costs (issue 18): the partitions are snapshotted at shutdown, so the
//! next start re-applies none of the log, and the log's older segments are neither read nor
//! left mapped. A consumer catching up afterwards reads them past the page cache. Measured with the page cache: `dd iflag=nocache` drops a file's pages,
//! `fincore` (util-linux) counts those resident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures::StreamExt;
use sluice_client::{Client, ConsumerConfig, Offset};
use sluice_tests::TestBroker;

use crate::{high_watermark, runtime};

const RECORDS: usize = 2048;
const VALUE_BYTES: usize = 32 * 1024;

/// The partition's segment files, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("restart").join("0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the partition dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn drop_cached(file: &Path) {
    let status = Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .expect("run dd");
    assert!(status.success(), "dd could not drop {}", file.display());
}

/// Bytes of `files` in the page cache.
fn resident(files: &[PathBuf]) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .args(files)
        .output()
        .expect("run fincore (util-linux)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn a_clean_restart_reapplies_nothing_and_catching_up_leaves_older_segments_uncached() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let configs = HashMap::from([("segment.bytes".to_string(), (4 << 20).to_string())]);
        client
            .admin()
            .create_topic("restart", 1, 1, configs)
            .await
            .expect("create");
        sluice_tests::produce_copies(&client, "restart", vec![7u8; VALUE_BYTES], RECORDS as u64)
            .await
            .expect("acknowledged");
    });
    assert!(broker.stop(), "a clean stop");
    let files = segments(broker.data_dir());
    assert!(files.len() >= 12, "64 MiB in 4 MiB segments: {files:?}");
    for file in &files {
        drop_cached(file);
    }
    broker.restart();
    rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        assert_eq!(
            high_watermark(&client, "restart", 0).await,
            RECORDS as u64,
            "every record is there after the restart"
        );
    });
    // Recovery reads the newest segment; the older ones are not touched at all.
    let older = &files[..files.len() - 2];
    let read = resident(older);
    eprintln!(
        "after the restart: {read} bytes of {} older segments resident",
        older.len()
    );
    // A few single entries are read at start (the first log id, membership); each read
    // faults in up to the device's readahead (8 MiB here) around it. Re-applying the log
    // reads all of it.
    let total: u64 = older
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    assert!(
        read < total / 2,
        "the restart read {read} of {total} bytes of the older segments back (re-applying the log?)"
    );
    // A consumer catching up reads the released segments past the page cache (decision 43):
    // it gets every record, and the older segments stay out of the cache.
    for file in older {
        drop_cached(file);
    }
    rt.block_on(async {
        let client = Client::connect([broker.address.as_str()])
            .await
            .expect("connect");
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer
            .assign_until("restart", 0, Offset::Earliest, RECORDS as u64)
            .await
            .expect("assign");
        let mut stream = consumer.into_stream();
        let mut offsets = Vec::new();
        while let Some(record) = stream.next().await {
            let record = record.expect("a record");
            assert_eq!(record.value.as_deref(), Some(&[7u8; VALUE_BYTES][..]));
            offsets.push(record.offset);
        }
        assert_eq!(offsets, (0..RECORDS as u64).collect::<Vec<_>>());
    });
    let read = resident(older);
    eprintln!("after catching up: {read} bytes of the older segments resident");
    assert!(
        read < total / 2,
        "catching up left {read} of {total} bytes of the older segments cached (read through the mapping?)"
    );
}
