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
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let counted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for producer_index in 0..args.producers {
        // Each producer has its own connection, as separate processes would.
        let client = target.connect().await?;
        let config = ProducerConfig {
            acks: acks(args.acks),
            compression: compression(args.compression),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).await?;
        let quota = args.records.map(|n| {
            n / args.producers as u64
                + u64::from((producer_index as u64) < n % args.producers as u64)
        });
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(args.producers as f64 / r));
        let (stop, payload, topic, counted) = (
            Arc::clone(&stop),
            payload.clone(),
            args.topic.clone(),
            Arc::clone(&counted),
        );
        let mut latency_hist = histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut window: DeliveryQueue<Instant> = DeliveryQueue::new();
            let mut sent = 0u64;
            let mut next_send = Instant::now();
            loop {
                let more = !stop.load(Ordering::Relaxed)
                    && quota.is_none_or(|q| sent < q)
                    && (quota.is_some() || Instant::now() < deadline);
                // Answers are read in send order without a future per record; each latency
                // ends when the answer arrived, however late it is read here.
                let answered = if !more || window.len() >= WINDOW {
                    window.pop_oldest().await
                } else {
                    window.pop_answered()
                };
                if let Some(answered) = answered {
                    answered.result?;
                    let latency = answered.answered_at.saturating_duration_since(answered.tag);
                    latency_hist.saturating_record((latency.as_micros() as u64).max(1));
                    counted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if !more {
                    break;
                }
                tokio::time::sleep_until(next_send.into()).await;
                if let Some(interval) = interval {
                    next_send += interval;
                }
                let mut key = [0u8; 16];
                let sent_at = epoch.map_or(0, |e| e.elapsed().as_micros() as u64);
                key[..8].copy_from_slice(&sent_at.to_le_bytes());
                key[8..].copy_from_slice(&sent.to_le_bytes());
                let record = ProducerRecord {
                    topic: topic.clone(),
                    key: Some(Bytes::copy_from_slice(&key)),
                    value: Some(payload.clone()),
                    ..ProducerRecord::default()
                };
                let t0 = Instant::now();
                window.push(producer.enqueue(record).await?, t0);
                sent += 1;
            }
            Ok::<_, ClientError>(latency_hist)
        }));
    }
    let ticker = tick_progress(progress, args, &counted, started);
    let mut latency_us = histogram()?;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(h)) => {
                let _ = latency_us.add(&h);
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
    let records = counted.load(Ordering::Relaxed);
    Ok(Measured {
        records,
        bytes: records * args.record_size as u64,
        elapsed: started.elapsed(),
        latency_us,
    })
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
            }),
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{mode}: {} records in {seconds:.2} s: {records_per_s:.0} records/s, {mb_per_s:.1} MB/s",
        m.records
    )?;
    if !has_latency {
        return Ok(());
    }
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
