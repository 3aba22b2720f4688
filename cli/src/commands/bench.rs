//! `sluice bench produce|consume|e2e`: throughput and an HDR histogram of latencies.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sluice_client::{
    Client, ClientError, ConsumerConfig, DeliveryQueue, Offset, ProducerConfig, ProducerRecord,
    Reason,
};
use tokio::sync::Mutex;

use super::{acks, compression};
use crate::args::{BenchArgs, BenchMode, Format};
use crate::failure::Failure;
use crate::output::json_line;
use crate::target::Target;

/// Sends one producer keeps unanswered; its buffer and in-flight batches bind first.
const WINDOW: usize = 64 * 1024;
/// Highest latency the histogram holds, in µs (one hour).
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// What a run measured.
struct Measured {
    records: u64,
    bytes: u64,
    elapsed: Duration,
    /// Produce latency (produce mode) or end-to-end latency (e2e); empty for consume.
    latency_us: Histogram<u64>,
    /// How a paced run kept to its schedule (`--rate`).
    pace: Option<Pace>,
}

fn histogram() -> Result<Histogram<u64>, Failure> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .map_err(|e| Failure::other(format!("histogram: {e}")))
}

/// Runs `sluice bench`.
pub async fn run(
    client: &Client,
    target: &Target,
    args: BenchArgs,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if args.producers == 0 || args.record_size == 0 || args.duration <= 0.0 {
        return Err(Failure::usage(
            "--producers, --record-size and --duration must be positive",
        ));
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(Failure::usage("--rate must be positive"));
    }
    ensure_topic(client, &args).await?;
    let progress = progress_bar(&args, format);
    let measured = match args.mode {
        BenchMode::Produce => produce(target, &args, &progress, None).await?,
        BenchMode::Consume => consume(client, &args, &progress).await?,
        BenchMode::E2e => e2e(client, target, &args, &progress).await?,
    };
    progress.finish_and_clear();
    report(&args, &measured, format, out)
}

async fn ensure_topic(client: &Client, args: &BenchArgs) -> Result<(), Failure> {
    let admin = client.admin();
    match admin.describe_topic(&args.topic).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason() == Some(Reason::UnknownTopic) => {
            let configs = [(
                "max.message.bytes".to_string(),
                (8 * 1024 * 1024).to_string(),
            )];
            match admin
                .create_topic(&args.topic, args.partitions, 1, configs.into())
                .await
            {
                Ok(_) => Ok(()),
                // Another bench created it meanwhile.
                Err(e) if e.reason() == Some(Reason::TopicExists) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn progress_bar(args: &BenchArgs, format: Format) -> ProgressBar {
    if format == Format::Json || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match args.records {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new((args.duration * 1000.0) as u64),
    };
    let template = match args.records {
        Some(_) => "{bar:40} {pos}/{len} records {per_sec} {elapsed}",
        None => "{bar:40} {elapsed}/{duration} {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// How a paced run (`--rate`) kept to its schedule.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Records per second asked for.
    requested: f64,
    /// Records per second sent, first send to last.
    achieved: f64,
    /// The furthest a send fell behind its scheduled time.
    behind_max: Duration,
}

/// One producer task's sends.
struct Sent {
    latency_us: Histogram<u64>,
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    behind_max: Duration,
}

/// One producer task's schedule and limits.
#[derive(Clone, Copy)]
struct Schedule {
    /// When its first record is due.
    first_due: Instant,
    /// Between its records, with `--rate`.
    interval: Option<Duration>,
    /// Records due before this are sent but not measured.
    measure_from: Instant,
    /// Without a record count, when to stop.
    deadline: Instant,
    /// With a record count, its share.
    quota: Option<u64>,
}

/// Produces with `args.producers` producers until the record count or the duration is
/// reached. With `epoch`, each key starts with the send time in µs since `epoch` (e2e).
async fn produce(
    target: &Target,
    args: &BenchArgs,
    progress: &ProgressBar,
    epoch: Option<Instant>,
) -> Result<Measured, Failure> {
    let payload = Bytes::from(vec![b'x'; args.record_size]);
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        // Each producer has its own connection, as separate processes would.
        let client = target.connect().await?;
        let config = ProducerConfig {
            acks: acks(args.acks),
            compression: compression(args.compression),
            ..ProducerConfig::default()
        };
        producers.push(client.producer(config).await?);
    }
    // The clock starts once every connection is open.
    let started = Instant::now();
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.producers as f64 / r));
    let mut tasks = Vec::new();
    for (index, producer) in producers.into_iter().enumerate() {
        // Producers' schedules interleave instead of all sending on the same beat.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / args.producers as f64)
        });
        let schedule = Schedule {
            first_due: started + offset,
            interval,
            measure_from: started + Duration::from_secs_f64(args.warmup.max(0.0)),
            deadline: started + Duration::from_secs_f64(args.duration),
            quota: args.records.map(|n| {
                n / args.producers as u64 + u64::from((index as u64) < n % args.producers as u64)
            }),
        };
        let context = (
            Arc::clone(&stop),
            payload.clone(),
            args.topic.clone(),
            Arc::clone(&counted),
        );
        let latency_hist = histogram()?;
        tasks.push(tokio::spawn(produce_task(
            producer,
            schedule,
            context,
            latency_hist,
            epoch,
        )));
    }
    let ticker = tick_progress(progress, args, &counted, started);
    let mut latency_us = histogram()?;
    let mut failure = None;
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let (mut sent, mut behind_max) = (0u64, Duration::ZERO);
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => {
                let _ = latency_us.add(&s.latency_us);
                first = match (first, s.first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                last = last.max(s.last);
                sent += s.count;
                behind_max = behind_max.max(s.behind_max);
            }
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(Failure::from(e));
            }
            Err(e) => {
                failure.get_or_insert(Failure::other(format!("producer task failed: {e}")));
            }
        }
    }
    ticker.abort();
    if let Some(failure) = failure {
        return Err(failure);
    }
    let pace = args.rate.map(|requested| {
        let span = match (first, last) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        Pace {
            requested,
            achieved: if span > 0.0 {
                sent.saturating_sub(1) as f64 / span
            } else {
                0.0
            },
            behind_max,
        }
    });
    let records = counted.load(Ordering::Relaxed);
    Ok(Measured {
        records,
        bytes: records * args.record_size as u64,
        elapsed: started.elapsed(),
        latency_us,
        pace,
    })
}

type TaskContext = (Arc<AtomicBool>, Bytes, String, Arc<AtomicU64>);

/// One producer's loop: sends on `schedule`, reads answers in send order. With a rate, a
/// record's latency runs from when it was due, not from when it was sent, so a producer
/// that falls behind its schedule reports it (no coordinated omission).
async fn produce_task(
    producer: sluice_client::Producer,
    schedule: Schedule,
    (stop, payload, topic, counted): TaskContext,
    latency_us: Histogram<u64>,
    epoch: Option<Instant>,
) -> Result<Sent, ClientError> {
    let mut window: DeliveryQueue<Instant> = DeliveryQueue::new();
    let mut sent = Sent {
        latency_us,
        count: 0,
        first: None,
        last: None,
        behind_max: Duration::ZERO,
    };
    let mut next_due = schedule.first_due;
    loop {
        let more = !stop.load(Ordering::Relaxed)
            && schedule.quota.is_none_or(|q| sent.count < q)
            && (schedule.quota.is_some() || Instant::now() < schedule.deadline);
        // Answers are read in send order without a future per record; each latency ends
        // when the answer arrived, however late it is read here.
        let answered = if !more || window.len() >= WINDOW {
            window.pop_oldest().await
        } else {
            window.pop_answered()
        };
        if let Some(answered) = answered {
            answered.result?;
            if answered.tag >= schedule.measure_from {
                let latency = answered.answered_at.saturating_duration_since(answered.tag);
                sent.latency_us
                    .saturating_record((latency.as_micros() as u64).max(1));
            }
            counted.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !more {
            break;
        }
        let due = next_due;
        if let Some(interval) = schedule.interval {
            tokio::time::sleep_until(due.into()).await;
            next_due += interval;
        }
        let now = Instant::now();
        let tag = if schedule.interval.is_some() {
            due
        } else {
            now
        };
        sent.behind_max = sent.behind_max.max(now.saturating_duration_since(due));
        let mut key = [0u8; 16];
        let sent_at = epoch.map_or(0, |e| tag.saturating_duration_since(e).as_micros() as u64);
        key[..8].copy_from_slice(&sent_at.to_le_bytes());
        key[8..].copy_from_slice(&sent.count.to_le_bytes());
        let record = ProducerRecord {
            topic: topic.clone(),
            key: Some(Bytes::copy_from_slice(&key)),
            value: Some(payload.clone()),
            ..ProducerRecord::default()
        };
        window.push(producer.enqueue(record).await?, tag);
        sent.first.get_or_insert(now);
        sent.last = Some(now);
        sent.count += 1;
    }
    Ok(sent)
}

/// Moves the progress bar every 100 ms until aborted.
fn tick_progress(
    progress: &ProgressBar,
    args: &BenchArgs,
    counted: &Arc<AtomicU64>,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    let (progress, counted, by_records) = (
        progress.clone(),
        Arc::clone(counted),
        args.records.is_some(),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = counted.load(Ordering::Relaxed);
            if by_records {
                progress.set_position(n);
            } else {
                progress.set_position(started.elapsed().as_millis() as u64);
                progress.set_message(format!("{n} records"));
            }
        }
    })
}

/// Reads the topic from the beginning until the record count, the duration, or the high
/// watermarks seen at start.
async fn consume(
    client: &Client,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> Result<Measured, Failure> {
    let topic = client.admin().describe_topic(&args.topic).await?;
    let target = args.records.unwrap_or(u64::MAX);
    let mut consumer = client.consumer(ConsumerConfig::default());
    // Each partition's stream ends at its high watermark as of now.
    for p in &topic.partitions {
        consumer
            .assign_until(&args.topic, p.partition, Offset::Earliest, p.high_watermark)
            .await?;
    }
    let counted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let ticker = tick_progress(progress, args, &counted, started);
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut stream = consumer.into_stream();
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < target {
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        let Ok(Some(record)) = next else { break };
        let record = record?;
        records += 1;
        bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
        counted.store(records, Ordering::Relaxed);
    }
    ticker.abort();
    Ok(Measured {
        records,
        bytes,
        elapsed: started.elapsed(),
        latency_us: histogram()?,
        pace: None,
    })
}

/// Produces while a consumer reads from the end; latency is send → received.
async fn e2e(
    client: &Client,
    target: &Target,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> Result<Measured, Failure> {
    let topic = client.admin().describe_topic(&args.topic).await?;
    let mut consumer = client.consumer(ConsumerConfig::default());
    for p in &topic.partitions {
        consumer
            .assign(&args.topic, p.partition, Offset::Latest)
            .await?;
    }
    let epoch = Instant::now();
    let received = Arc::new(Mutex::new((histogram()?, 0u64, 0u64)));
    let reader = {
        let received = Arc::clone(&received);
        let mut stream = consumer.into_stream();
        tokio::spawn(async move {
            while let Some(Ok(record)) = stream.next().await {
                let sent_at = record
                    .key
                    .as_ref()
                    .and_then(|k| k.get(..8))
                    .and_then(|k| k.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                let now = epoch.elapsed().as_micros() as u64;
                let mut r = received.lock().await;
                r.0.saturating_record(now.saturating_sub(sent_at).max(1));
                r.1 += 1;
                r.2 += record.value.as_ref().map_or(0, |v| v.len() as u64);
            }
        })
    };
    let produced = produce(target, args, progress, Some(epoch)).await?;
    // Give the consumer a moment to catch up with the last acknowledged records.
    let catch_up = Instant::now() + Duration::from_secs(10);
    while received.lock().await.1 < produced.records && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let r = received.lock().await;
    Ok(Measured {
        records: r.1,
        bytes: r.2,
        elapsed: produced.elapsed,
        latency_us: r.0.clone(),
        pace: produced.pace,
    })
}

fn report(
    args: &BenchArgs,
    m: &Measured,
    format: Format,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let seconds = m.elapsed.as_secs_f64().max(1e-9);
    let records_per_s = m.records as f64 / seconds;
    let mb_per_s = m.bytes as f64 / seconds / 1e6;
    let ms = |q: f64| m.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let has_latency = !m.latency_us.is_empty();
    let mode = match args.mode {
        BenchMode::Produce => "produce",
        BenchMode::Consume => "consume",
        BenchMode::E2e => "e2e",
    };
    if format == Format::Json {
        let latency = has_latency.then(|| {
            json!({
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
                "max": m.latency_us.max() as f64 / 1000.0,
            })
        });
        json_line(
            out,
            &json!({
                "mode": mode,
                "topic": args.topic,
                "records": m.records,
                "bytes": m.bytes,
                "seconds": seconds,
                "records_per_s": records_per_s,
                "mb_per_s": mb_per_s,
                "latency_ms": latency,
                "latency_samples": m.latency_us.len(),
                "pace": m.pace.map(|p| json!({
                    "requested_per_s": p.requested,
                    "achieved_per_s": p.achieved,
                    "behind_max_ms": p.behind_max.as_secs_f64() * 1000.0,
                })),
            }),
        )?;
        warn_if_behind(m.pace);
        return Ok(());
    }
    writeln!(
        out,
        "{mode}: {} records in {seconds:.2} s: {records_per_s:.0} records/s, {mb_per_s:.1} MB/s",
        m.records
    )?;
    if let Some(p) = m.pace {
        writeln!(
            out,
            "pace: {:.0} records/s asked, {:.0} sent; furthest behind schedule {:.2} ms",
            p.requested,
            p.achieved,
            p.behind_max.as_secs_f64() * 1000.0
        )?;
        warn_if_behind(m.pace);
    }
    if !has_latency {
        return Ok(());
    }
    writeln!(out, "latency samples: {}", m.latency_us.len())?;
    writeln!(
        out,
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        m.latency_us.max() as f64 / 1000.0
    )?;
    text_histogram(&m.latency_us, out)?;
    Ok(())
}

/// Says on stderr when a paced run could not send at the asked rate: its latencies then
/// describe an overloaded producer or broker, not the asked load.
fn warn_if_behind(pace: Option<Pace>) {
    if let Some(p) = pace.filter(|p| p.achieved < 0.95 * p.requested) {
        eprintln!(
            "sluice: warning: sent {:.0} records/s of the {:.0} asked; latencies include the wait behind schedule",
            p.achieved, p.requested
        );
    }
}

/// A bar per doubling of latency, from 0.25 ms.
fn text_histogram(h: &Histogram<u64>, out: &mut impl Write) -> Result<(), Failure> {
    let mut buckets: Vec<(u64, u64)> = Vec::new();
    let mut upper = 250u64;
    let mut below = 0u64;
    while below < h.len() {
        let count = h.count_between(0, upper).saturating_sub(below);
        below += count;
        buckets.push((upper, count));
        upper = upper.saturating_mul(2);
        if upper >= LATENCY_MAX_US {
            break;
        }
    }
    let widest = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let first = buckets.iter().position(|b| b.1 > 0).unwrap_or(0);
    for &(upper, count) in &buckets[first..] {
        let bar = "#".repeat(((count * 40).div_ceil(widest)) as usize);
        writeln!(
            out,
            "  < {:>9.2} ms {:>10} {bar}",
            upper as f64 / 1000.0,
            count
        )?;
    }
    Ok(())
}
