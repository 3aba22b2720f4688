//! T05 on real processes: the files of one stopped replica (a minority) are damaged in every
//! way TESTPLAN lists (bit flips, a 4 KiB chunk rolled back to older content, truncation of
//! segments, indexes, snapshots and state files), and it restarts while producers write.
//! Nothing acknowledged may be lost, no corrupt byte may be served, and the cluster keeps
//! acknowledging throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_client::{Client, ProducerConfig, ProducerRecord};
// Damage positions, replayable.
use sluice_protocol::entropy::SplitMix64 as Rng;
use sluice_tests::TestCluster;
use sluice_tests::logcheck::{self, Attempt, History, Outcome};

use futures::StreamExt;
use sluice_client::{ConsumerConfig, Offset};

use crate::{rf3_topic, runtime};

const TOPIC: &str = "minority";
const PARTITIONS: u32 = 3;
/// The replica that is damaged (node 3): always the same one, so two of three stay whole.
const VICTIM: usize = 2;

/// A file and what it held.
type FileCopy = (PathBuf, Vec<u8>);
/// One kind of damage, given earlier copies of the segments.
type Damage<'a> = dyn Fn(&mut Rng, &[FileCopy]) + 'a;

/// Every file of the topic's partitions on `data_dir` whose name ends with `suffix`.
fn partition_files(data_dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in 0..PARTITIONS {
        let dir = data_dir.join(TOPIC).join(p.to_string());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.to_string_lossy().ends_with(suffix)),
            );
        }
    }
    files.sort();
    files
}

/// Where a file's written bytes end (segments are preallocated with zeroes).
fn written_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn flip_bits(file: &Path, flips: usize, rng: &mut Rng) {
    let Ok(mut bytes) = std::fs::read(file) else {
        return;
    };
    let len = written_len(&bytes) as u64;
    for _ in 0..flips {
        if let Some(byte) = bytes.get_mut(rng.below(len) as usize) {
            *byte ^= 1 << rng.below(8);
        }
    }
    std::fs::write(file, bytes).expect("write damage");
}

fn truncate(file: &Path, rng: &mut Rng) {
    let Ok(bytes) = std::fs::read(file) else {
        return;
    };
    let len = written_len(&bytes) as u64;
    // Mostly near the end, sometimes deep (a Zipf-like cut).
    let depth = 1 + rng.below(8);
    let cut = len.saturating_sub(rng.below(len / depth + 1));
    std::fs::write(file, bytes.get(..cut as usize).unwrap_or_default()).expect("write damage");
}

/// Replaces one 4 KiB chunk with what the file held earlier (`old`): a lost write.
fn roll_back_chunk(file: &Path, old: &[u8], rng: &mut Rng) {
    let Ok(mut bytes) = std::fs::read(file) else {
        return;
    };
    let len = written_len(&bytes).min(old.len()) as u64;
    let at = (rng.below(len.max(1)) / 4096 * 4096) as usize;
    let end = (at + 4096).min(bytes.len()).min(old.len());
    if let (Some(dst), Some(src)) = (bytes.get_mut(at..end), old.get(at..end)) {
        dst.copy_from_slice(src);
    }
    std::fs::write(file, bytes).expect("write damage");
}

/// Produces until `stop`, recording every attempt.
async fn produce_until(client: Client, stop: Arc<AtomicBool>) -> History {
    let producer = client
        .producer(ProducerConfig {
            request_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        })
        .await
        .expect("producer");
    let mut history = History::default();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let value = format!("v{i}");
        let partition = (i % u64::from(PARTITIONS)) as u32;
        let record = ProducerRecord::new(TOPIC)
            .partition(partition)
            .value(value.clone());
        let outcome = match producer.send(record).await {
            Ok(sent) => Outcome::Acked(sent.offset),
            Err(_) => Outcome::Unknown,
        };
        history.attempts.push(Attempt {
            partition,
            producer: 0,
            sequence: i,
            value,
            outcome,
        });
        i += 1;
    }
    history
}

/// Every record of every partition, from the start to the end it has now.
async fn read_to_end(client: &Client) -> Vec<logcheck::Read> {
    let mut reads = Vec::new();
    for partition in 0..PARTITIONS {
        let end = client
            .consumer(ConsumerConfig::default())
            .resolve(TOPIC, partition, Offset::Latest)
            .await
            .expect("the partition's end");
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer
            .assign(TOPIC, partition, Offset::Earliest)
            .await
            .expect("assign");
        let mut stream = consumer.into_stream();
        let mut next = 0;
        while next < end {
            let record = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .unwrap_or_else(|_| panic!("partition {partition} stopped at {next} of {end}"))
                .expect("a record")
                .expect("an intact record");
            next = record.offset + 1;
            reads.push(logcheck::Read::of(&record));
        }
    }
    reads
}

/// Every partition directory of the topic with its files' contents, in partition order.
fn copy_partitions(data_dir: &Path) -> Vec<(PathBuf, Vec<FileCopy>)> {
    (0..PARTITIONS)
        .map(|p| {
            let dir = data_dir.join(TOPIC).join(p.to_string());
            let files = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter_map(|f| std::fs::read(&f).ok().map(|b| (f, b)))
                        .collect()
                })
                .unwrap_or_default();
            (dir, files)
        })
        .collect()
}

/// Puts a partition directory back as [`copy_partitions`] saw it.
fn restore(dir: &Path, files: &[FileCopy]) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for (file, bytes) in files {
        std::fs::write(file, bytes).expect("restore");
    }
}

/// Each partition as the damaged node describes it: (partition, its status, its high
/// watermark).
async fn victim_view(address: &str) -> Vec<(u32, String, u64)> {
    let Ok(client) = Client::connect([address]).await else {
        return Vec::new();
    };
    match client.admin().describe_topic(TOPIC).await {
        Ok(topic) => topic
            .partitions
            .iter()
            .map(|p| (p.partition, p.status.clone(), p.high_watermark))
            .collect(),
        Err(e) => vec![(u32::MAX, e.to_string(), 0)],
    }
}

/// Each partition's high watermark as its leader reports it.
async fn leader_watermarks(client: &Client) -> Vec<u64> {
    let Ok(topic) = client.admin().describe_topic(TOPIC).await else {
        return Vec::new();
    };
    let mut marks = Vec::new();
    for p in &topic.partitions {
        let mark = match Client::connect([p.leader_address.as_str()]).await {
            Ok(leader) => leader
                .admin()
                .describe_topic(TOPIC)
                .await
                .ok()
                .and_then(|t| {
                    t.partitions
                        .get(p.partition as usize)
                        .map(|d| d.high_watermark)
                }),
            Err(_) => None,
        };
        marks.push(mark.unwrap_or(u64::MAX));
    }
    marks
}

fn acked(history: &History) -> usize {
    history
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .count()
}

/// The four damage rounds (TESTPLAN T05), each given earlier copies of the segments.
fn damage_kinds(data_dir: &Path) -> [(&'static str, Box<Damage<'_>>); 4] {
    [
        (
            "bit flips in segments",
            Box::new(|rng, _| {
                for f in partition_files(data_dir, ".log") {
                    flip_bits(&f, 2, rng);
                }
            }),
        ),
        (
            "a 4 KiB chunk rolled back",
            Box::new(|rng, old| {
                for (f, bytes) in old
                    .iter()
                    .filter(|(f, _)| f.to_string_lossy().ends_with(".log"))
                {
                    roll_back_chunk(f, bytes, rng);
                }
            }),
        ),
        (
            "segments truncated",
            Box::new(|rng, _| {
                for f in partition_files(data_dir, ".log") {
                    truncate(&f, rng);
                }
            }),
        ),
        (
            "indexes, snapshots and state files damaged",
            Box::new(|rng, _| {
                for suffix in [
                    ".index",
                    ".timeindex",
                    "snapshot",
                    "raft-state",
                    "checkpoint",
                ] {
                    for f in partition_files(data_dir, suffix) {
                        if rng.below(2) == 0 {
                            truncate(&f, rng);
                        } else {
                            flip_bits(&f, 2, rng);
                        }
                    }
                }
            }),
        ),
    ]
}

/// Stops the victim, damages it, restarts it and reports what it says; then puts back the
/// partitions that went offline as they were when it stopped (the operator's repair: an
/// offline partition ran no Raft since, so nothing is rolled back).
fn damage_round(
    cluster: &mut TestCluster,
    rt: &tokio::runtime::Runtime,
    what: &str,
    damage: &Damage<'_>,
    rng: &mut Rng,
    older: &[FileCopy],
) -> Vec<FileCopy> {
    let data_dir = cluster.nodes[VICTIM].data_dir().to_path_buf();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    cluster.nodes[VICTIM].stop();
    let pristine = copy_partitions(&data_dir);
    damage(rng, older);
    cluster.nodes[VICTIM].restart();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let states = rt.block_on(victim_view(&cluster.nodes[VICTIM].address));
    eprintln!("damaged node {}: {what}; it reports {states:?}", VICTIM + 1);
    cluster.nodes[VICTIM].stop();
    for (partition, status, _) in &states {
        if status == "offline"
            && let Some((dir, files)) = pristine.get(*partition as usize)
        {
            restore(dir, files);
        }
    }
    cluster.nodes[VICTIM].restart();
    pristine.into_iter().flat_map(|(_, files)| files).collect()
}

/// Whether each of the victim's partitions is offline or caught up with its leader, waiting
/// (bounded) for it to catch up.
async fn victim_settled(cluster: &TestCluster, client: &Client) -> (bool, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let own = victim_view(&cluster.nodes[VICTIM].address).await;
        let leaders = leader_watermarks(client).await;
        let settled = own.len() == PARTITIONS as usize
            && own.iter().all(|(p, status, hw)| {
                status == "offline" || leaders.get(*p as usize).is_some_and(|l| hw >= l)
            });
        if settled || tokio::time::Instant::now() > deadline {
            return (settled, format!("{own:?} against leaders at {leaders:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_damaged_minority_replica_serves_no_bad_bytes_and_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let client = rt.block_on(rf3_topic(&cluster, TOPIC, PARTITIONS));
    let stop = Arc::new(AtomicBool::new(false));
    let load = rt.spawn(produce_until(client.clone(), Arc::clone(&stop)));
    let mut rng = Rng(5);
    let data_dir = cluster.nodes[VICTIM].data_dir().to_path_buf();
    let mut older: Vec<FileCopy> = Vec::new();
    for (what, damage) in damage_kinds(&data_dir) {
        older = damage_round(&mut cluster, &rt, what, damage.as_ref(), &mut rng, &older);
    }
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    stop.store(true, Ordering::SeqCst);
    let mut history = rt.block_on(load).expect("load");
    let acked = acked(&history);
    assert!(acked > 100, "the majority kept acknowledging: {acked}");
    // Every partition read back through the cluster to its end: the reader decodes and
    // checks every batch, so a corrupt byte served fails the read.
    history.reads.extend(rt.block_on(read_to_end(&client)));
    let report = logcheck::check(&history);
    assert!(report.is_clean(), "{report}");
    // The damaged replica either stays out (offline, answering STORAGE_FAILED) or has
    // repaired itself from its peers; it never serves as whole while it is not.
    let (settled, state) = rt.block_on(victim_settled(&cluster, &client));
    assert!(
        settled,
        "the damaged node neither offline nor caught up: {state}"
    );
}
