//! Catch-up read (issue 18): a consumer reading one partition from its beginning right
//! after it was written (against the produce rate), and again after a restart while the page
//! cache holds none of it, next to the disk's own sequential read of the same segment files
//! measured in the same run, cold too. Prints the broker's and the consumer's CPU.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/catchup [GiB]            # default 2 GiB of 1 KiB records
//! CATCHUP_FLAGS="--cached-tail-bytes 0" target/release/catchup 2   # a broker flag A/B
//! CATCHUP_CREDIT_MB=32 target/release/catchup 2   # the consumer's credit per partition
//! ```
//!
//! Last, a plain Subscribe reader that only checks CRCs reads it all cold again: what the
//! broker serves past the cache without a client's per-record work.
//!
//! The broker is stopped between producing and reading, so none of the log is mapped, and
//! every segment file's pages are dropped (`posix_fadvise(DONTNEED)`) before each read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_client::{Client, ConsumerConfig, Offset};
use sluice_tests::TestBroker;

const TOPIC: &str = "catchup";
const RECORD_BYTES: usize = 1024;

fn main() {
    let gib: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let flags: Vec<String> = std::env::var("CATCHUP_FLAGS")
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut broker = TestBroker::start_with(&flags);
    let records = (gib * f64::from(1 << 30) / RECORD_BYTES as f64) as u64;
    let produced = runtime.block_on(produce(&broker.address, records));
    let produce_mb_s = records as f64 * RECORD_BYTES as f64 / produced.as_secs_f64() / 1e6;
    println!(
        "produced {records} records of {RECORD_BYTES} B in {:.1} s ({produce_mb_s:.0} MB/s)",
        produced.as_secs_f64(),
    );
    // Issue 18's second goal: a consumer from the beginning of what was just written keeps
    // up with the producer (most of it is behind the cached tail by now).
    let (consumed, took) = runtime.block_on(consume(&broker.address, records));
    let fresh_mb_s = consumed as f64 / took.as_secs_f64() / 1e6;
    println!(
        "consumer from the beginning right after: {fresh_mb_s:.0} MB/s  ratio {:.2}x the produce rate",
        fresh_mb_s / produce_mb_s
    );
    let (read, took) = runtime.block_on(consume_raw(&broker.address, records));
    println!(
        "raw subscriber (CRC checks only) right after: {:.0} MB/s of batches",
        read as f64 / took.as_secs_f64() / 1e6
    );
    assert!(broker.stop(), "the broker stopped cleanly");
    let files = segment_files(broker.data_dir());
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    let direct = read_files_direct(&files);
    let raw_mb_s = bytes as f64 / direct.as_secs_f64() / 1e6;
    println!(
        "disk sequential read, O_DIRECT 1 MiB ({} files, {:.2} GB): {raw_mb_s:.0} MB/s",
        files.len(),
        bytes as f64 / 1e9
    );
    drop_cached(&files);
    println!("cached before the buffered read: {} MB", cached_mb(&files));
    let buffered = read_files(&files);
    println!(
        "buffered sequential read, cold (1 MiB reads): {:.0} MB/s  ratio {:.2}x O_DIRECT",
        bytes as f64 / buffered.as_secs_f64() / 1e6,
        direct.as_secs_f64() / buffered.as_secs_f64()
    );
    drop_cached(&files);
    println!(
        "cached before the broker restarts: {} MB",
        cached_mb(&files)
    );
    broker.restart();
    // A restart reads the log back (measured: all of it), so the consumer would find it
    // cached: drop it again now the broker serves.
    println!("cached once it serves: {} MB", cached_mb(&files));
    drop_cached(&files);
    println!("cached after dropping again: {} MB", cached_mb(&files));
    let (broker_cpu, own_cpu) = (broker.cpu_time(), own_cpu_time());
    let (consumed, took) = runtime.block_on(consume(&broker.address, records));
    let consume_mb_s = consumed as f64 / took.as_secs_f64() / 1e6;
    println!(
        "CPU while consuming: broker {:.2} cores, consumer (this process) {:.2} cores",
        (broker.cpu_time() - broker_cpu).as_secs_f64() / took.as_secs_f64(),
        (own_cpu_time() - own_cpu).as_secs_f64() / took.as_secs_f64()
    );
    // Reads past the page cache leave nothing cached; faulting through the mapping leaves
    // what was read.
    println!("cached after the consumer: {} MB", cached_mb(&files));
    println!(
        "consumer from the beginning: {consume_mb_s:.0} MB/s in {:.1} s  ratio {:.2}x the disk's O_DIRECT read",
        took.as_secs_f64(),
        consume_mb_s / raw_mb_s
    );
    // What the broker serves past the cache when the reader does no per-record work: the
    // batches' CRCs are checked and nothing else, so this bounds any client.
    drop_cached(&files);
    let (read, took) = runtime.block_on(consume_raw(&broker.address, records));
    let served_mb_s = read as f64 / took.as_secs_f64() / 1e6;
    println!(
        "raw subscriber (CRC checks only) from the beginning: {served_mb_s:.0} MB/s of batches  ratio {:.2}x the disk's O_DIRECT read",
        served_mb_s / raw_mb_s
    );
}

/// Reads `records` records from the beginning with a plain Subscribe call, granting back
/// the SDK's default credit per response and checking each batch's CRC; returns the batch
/// bytes read and the time.
async fn consume_raw(address: &str, records: u64) -> (u64, Duration) {
    use sluice_protocol::v1::consumer_client::ConsumerClient;
    use sluice_protocol::v1::subscribe_request::Kind;
    use sluice_protocol::v1::{Credit, SubscribeRequest, SubscribeStart};
    let credit = |bytes: u64, batches: u32| SubscribeRequest {
        kind: Some(Kind::Credit(Credit { bytes, batches })),
    };
    let defaults = ConsumerConfig::default();
    let started = Instant::now();
    // The SDK's HTTP/2 settings: h2's defaults (64 KiB windows, 16 KiB frames) would make
    // this reader measure flow control instead.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an address")
        .initial_stream_window_size(sluice_protocol::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(sluice_protocol::HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(sluice_protocol::HTTP2_MAX_FRAME_BYTES)
        .connect()
        .await
        .expect("connect");
    let mut client =
        ConsumerClient::new(channel).max_decoding_message_size(sluice_protocol::MESSAGE_BYTES_MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let start = SubscribeStart {
        topic: TOPIC.into(),
        partition: 0,
        offset: 0,
    };
    tx.send(SubscribeRequest {
        kind: Some(Kind::Start(start)),
    })
    .await
    .expect("start");
    tx.send(credit(defaults.credit_bytes, defaults.credit_batches))
        .await
        .expect("credit");
    let mut responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let (mut next, mut bytes) = (0u64, 0u64);
    while next < records {
        let response = responses
            .message()
            .await
            .expect("a response")
            .expect("the stream is open");
        let (mut used, mut batches) = (0u64, 0u32);
        for stored in response.batches {
            used += stored.len() as u64;
            batches += 1;
            let batch = sluice_storage::Batch::decode(stored).expect("a valid batch");
            next = next.max(batch.header().next_offset());
        }
        bytes += used;
        tx.send(credit(used, batches)).await.expect("credit");
    }
    (bytes, started.elapsed())
}

async fn produce(address: &str, records: u64) -> Duration {
    let client = Client::connect([address]).await.expect("connect");
    let configs = [("max.message.bytes".to_string(), (8 << 20).to_string())];
    client
        .admin()
        .create_topic(TOPIC, 1, 1, configs.into_iter().collect())
        .await
        .expect("create");
    let value = vec![b'x'; RECORD_BYTES];
    let started = Instant::now();
    sluice_tests::produce_copies(&client, TOPIC, value, records)
        .await
        .expect("acknowledged");
    started.elapsed()
}

/// Reads `records` records from the beginning; returns the value bytes read and the time.
async fn consume(address: &str, records: u64) -> (u64, Duration) {
    let client = Client::connect([address]).await.expect("connect");
    let mut config = ConsumerConfig::default();
    // CATCHUP_CREDIT_MB: the consumer's credit per partition, for an A/B of the default.
    if let Some(mb) = std::env::var("CATCHUP_CREDIT_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.credit_bytes = mb << 20;
    }
    let mut consumer = client.consumer(config);
    let started = Instant::now();
    consumer
        .assign_until(TOPIC, 0, Offset::Earliest, records)
        .await
        .expect("assign");
    let mut stream = consumer.into_stream();
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(record) = stream.next().await {
        let record = record.expect("a record");
        count += 1;
        bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
    }
    assert_eq!(count, records, "every record read back");
    (bytes, started.elapsed())
}

/// CPU time this process has used so far.
fn own_cpu_time() -> Duration {
    sluice_tests::process_cpu_time(std::process::id())
}

/// The partition's segment files, oldest first.
fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![data_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read the data dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log")
                && path.to_string_lossy().contains(TOPIC)
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Drops the files' pages from the page cache (they are clean: the broker synced them).
fn drop_cached(files: &[PathBuf]) {
    for path in files {
        let file = std::fs::File::open(path).expect("open a segment");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    }
}

/// Reads every file start to end in 1 MiB reads, as `dd bs=1M` would.
fn read_files(files: &[PathBuf]) -> Duration {
    let mut buffer = vec![0u8; 1 << 20];
    let started = Instant::now();
    for path in files {
        let mut file = std::fs::File::open(path).expect("open a segment");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential).expect("fadvise");
        while file.read(&mut buffer).expect("read") > 0 {}
    }
    started.elapsed()
}

/// The files' bytes in the page cache, in MB (`fincore`), or 0 if it cannot tell.
fn cached_mb(files: &[PathBuf]) -> u64 {
    let output = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .args(files)
        .output();
    let Ok(output) = output else { return 0 };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum::<u64>()
        / 1_000_000
}

/// Reads every file start to end with O_DIRECT in 1 MiB reads (the page cache untouched),
/// as `dd iflag=direct bs=1M` would.
fn read_files_direct(files: &[PathBuf]) -> Duration {
    use std::os::unix::fs::OpenOptionsExt;
    const CHUNK: usize = 1 << 20;
    const ALIGN: usize = 4096;
    // O_DIRECT needs an aligned buffer: the aligned 1 MiB inside a larger one.
    let mut backing = vec![0u8; CHUNK + ALIGN];
    let start = backing.as_ptr().align_offset(ALIGN);
    let buffer = &mut backing[start..start + CHUNK];
    let started = Instant::now();
    for path in files {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .expect("open a segment with O_DIRECT");
        while file.read(buffer).expect("read") > 0 {}
    }
    started.elapsed()
}
