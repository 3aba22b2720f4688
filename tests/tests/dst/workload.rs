//! The clients of a run: idempotent producers, plain consumers, members of one consumer
//! group, an operator moving replicas (membership changes, five nodes), and the reader that
//! reads everything back once the cluster is healed.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use sluice_client::{
    AutoOffsetReset, Client, ConsumerConfig, Offset, ProducerConfig, ProducerRecord, Reason,
};
use sluice_tests::logcheck::{Attempt, Outcome, Read};

use super::record::Recorder;

/// The topic every client uses.
pub const TOPIC: &str = "events";
/// Its partitions.
pub const PARTITIONS: u32 = 3;
/// The consumer group.
pub const GROUP: &str = "workers";
/// Producers in a run.
pub const PRODUCERS: u32 = 3;

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A client connected to any live broker, retried until `until` (simulated time).
async fn connect(brokers: &[String], until: Duration) -> Option<Client> {
    while now() < until {
        if let Ok(client) = Client::connect(brokers).await {
            return Some(client);
        }
        sleep_ms(250).await;
    }
    None
}

/// [`connect`], or a problem recorded for `who`.
async fn connected(
    who: &str,
    brokers: &[String],
    until: Duration,
    recorder: &Recorder,
) -> Option<Client> {
    let client = connect(brokers, until).await;
    if client.is_none() {
        recorder.problem(format!("{who} never connected"));
    }
    client
}

/// Creates the topic (replication factor `rf`) unless it exists; retried until `until`.
async fn ensure_topic(client: &Client, rf: u32, until: Duration) -> bool {
    while now() < until {
        match client
            .admin()
            .create_topic(TOPIC, PARTITIONS, rf, HashMap::new())
            .await
        {
            Ok(_) => return true,
            Err(e) if e.reason() == Some(Reason::TopicExists) => return true,
            Err(_) => sleep_ms(250).await,
        }
    }
    false
}

/// The operator of a cluster of `nodes` (ids 1..=nodes): from `from` until `until`, every
/// 2–5 s moves one partition's replicas to 3 nodes drawn at random (Raft membership changes
/// by joint consensus, under whatever faults run then). Answers are only traced: a move may
/// be refused (a node down) or still running when the next one is asked.
pub async fn operate(
    brokers: Vec<String>,
    nodes: u64,
    from: Duration,
    until: Duration,
    recorder: Recorder,
) -> turmoil::Result {
    tokio::time::sleep(from.saturating_sub(now())).await;
    let Some(client) = connect(&brokers, until).await else {
        return Ok(());
    };
    let draw = |below: u64| sluice_protocol::entropy::random_u64() % below;
    while now() < until {
        sleep_ms(2000 + draw(3000)).await;
        let partition = draw(u64::from(PARTITIONS)) as u32;
        let mut ids: Vec<u64> = (1..=nodes).collect();
        let mut replicas = Vec::new();
        while replicas.len() < 3 {
            replicas.push(ids.remove(draw(ids.len() as u64) as usize));
        }
        // Admin calls have no deadline of their own (a broker that never answers).
        let asked = client.admin();
        let call = asked.reassign_partition(TOPIC, partition, &replicas);
        let answer = match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => "accepted".to_string(),
            Ok(Err(e)) => format!("refused ({:?})", e.reason()),
            Err(_) => "no answer".to_string(),
        };
        recorder.event(
            "operator",
            &format!("move {TOPIC}/{partition} to {replicas:?}: {answer}"),
        );
    }
    Ok(())
}

/// Producer `k`: `values` unique values round-robin over the partitions, a few in flight.
pub async fn produce(
    k: u32,
    brokers: Vec<String>,
    rf: u32,
    values: u64,
    until: Duration,
    recorder: Recorder,
) -> turmoil::Result {
    let who = format!("p{k}");
    let Some(client) = connected(&who, &brokers, until, &recorder).await else {
        return Ok(());
    };
    if !ensure_topic(&client, rf, until).await {
        recorder.problem(format!("{who} could not create the topic"));
        return Ok(());
    }
    let config = ProducerConfig {
        idempotent: true,
        request_timeout: Duration::from_secs(3),
        ..ProducerConfig::default()
    };
    let producer = loop {
        match client.producer(config.clone()).await {
            Ok(p) => break p,
            Err(e) if now() < until => {
                recorder.event(&who, &format!("no producer yet: {e}"));
                sleep_ms(250).await;
            }
            Err(e) => {
                recorder.problem(format!("{who} got no producer: {e}"));
                return Ok(());
            }
        }
    };
    let mut pending = VecDeque::new();
    for i in 0..values {
        if now() >= until {
            break;
        }
        let value = format!("{who}-{i}");
        let partition = (i % u64::from(PARTITIONS)) as u32;
        let record = ProducerRecord::new(TOPIC)
            .partition(partition)
            .value(value.clone());
        // Waits for buffer room, which a cluster that acknowledges nothing never makes.
        let enqueued = tokio::time::timeout(until.saturating_sub(now()), producer.enqueue(record))
            .await
            .unwrap_or_else(|_| {
                Err(sluice_client::ClientError::InvalidArgument(
                    "enqueue timed out".into(),
                ))
            });
        match enqueued {
            Ok(delivery) => pending.push_back((partition, i, value, Ok(delivery))),
            Err(e) => {
                recorder.event(&who, &format!("enqueue failed: {e}"));
                pending.push_back((partition, i, value, Err(e)));
            }
        }
        while pending.len() > 8 {
            settle(k, &mut pending, &recorder, until + ANSWER_WAIT).await;
        }
        sleep_ms(40).await;
    }
    while !pending.is_empty() {
        settle(k, &mut pending, &recorder, until + ANSWER_WAIT).await;
    }
    recorder.producer_done();
    Ok(())
}

type Pending = (
    u32,
    u64,
    String,
    Result<sluice_client::Delivery, sluice_client::ClientError>,
);

/// How long after the last send a producer waits for the answers still open.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

async fn settle(k: u32, pending: &mut VecDeque<Pending>, recorder: &Recorder, deadline: Duration) {
    let Some((partition, sequence, value, delivery)) = pending.pop_front() else {
        return;
    };
    let outcome = match delivery {
        // Bounded: a cluster that never answers must still let the run end (and fail).
        Ok(delivery) => {
            match tokio::time::timeout(deadline.saturating_sub(now()), delivery.wait()).await {
                Ok(Ok(sent)) => Outcome::Acked(sent.offset),
                // Timeouts and lost connections leave the outcome open.
                Ok(Err(_)) | Err(_) => Outcome::Unknown,
            }
        }
        Err(_) => Outcome::Unknown,
    };
    recorder.attempt(Attempt {
        partition,
        producer: k,
        sequence,
        value,
        outcome,
    });
}

/// A plain consumer of every partition from the start, until `until`; it starts over from
/// where it was after any error. Offsets must come in order and without gaps.
pub async fn consume(
    who: String,
    brokers: Vec<String>,
    until: Duration,
    recorder: Recorder,
) -> turmoil::Result {
    let Some(client) = connected(&who, &brokers, until, &recorder).await else {
        return Ok(());
    };
    let mut next = vec![0u64; PARTITIONS as usize];
    'session: while now() < until {
        let mut consumer = client.consumer(ConsumerConfig::default());
        for (p, from) in next.iter().enumerate() {
            if consumer
                .assign(TOPIC, p as u32, Offset::At(*from))
                .await
                .is_err()
            {
                sleep_ms(250).await;
                continue 'session;
            }
        }
        let mut stream = consumer.into_stream();
        while now() < until {
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Ok(Some(Ok(record))) => {
                    let Some(expected) = next.get_mut(record.partition as usize) else {
                        recorder
                            .problem(format!("{who} read unknown partition {}", record.partition));
                        continue;
                    };
                    if record.offset != *expected {
                        recorder.problem(format!(
                            "{who}: partition {} offset {} after {} (gap or repeat)",
                            record.partition, record.offset, *expected
                        ));
                    }
                    *expected = record.offset + 1;
                    recorder.read(&who, Read::of(&record), false);
                }
                Ok(Some(Err(e))) => {
                    recorder.event(&who, &format!("stream error: {e}"));
                    continue 'session;
                }
                Ok(None) => continue 'session,
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// A member of the consumer group until `until`, auto-committing; rejoins after errors.
pub async fn member(
    who: String,
    brokers: Vec<String>,
    until: Duration,
    recorder: Recorder,
) -> turmoil::Result {
    let Some(client) = connected(&who, &brokers, until, &recorder).await else {
        return Ok(());
    };
    while now() < until {
        let config = ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            auto_commit_interval: Some(Duration::from_secs(1)),
            session_timeout: Duration::from_secs(10),
            ..ConsumerConfig::default()
        };
        let mut member = match client.consumer(config).subscribe(GROUP, &[TOPIC]) {
            Ok(m) => m,
            Err(e) => {
                recorder.event(&who, &format!("cannot subscribe: {e}"));
                sleep_ms(250).await;
                continue;
            }
        };
        let mut failed = false;
        while now() < until {
            match tokio::time::timeout(Duration::from_secs(1), member.next()).await {
                Ok(Some(Ok(record))) => recorder.read(&who, Read::of(&record), true),
                Ok(Some(Err(e))) => {
                    recorder.event(&who, &format!("member error: {e}"));
                    failed = true;
                    break;
                }
                Ok(None) => {
                    failed = true;
                    break;
                }
                Err(_) => {}
            }
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), member.close()).await;
        recorder.event(&who, &format!("closed: {}", matches!(closed, Ok(Ok(())))));
        if failed {
            sleep_ms(250).await;
        }
    }
    Ok(())
}

/// Offsets the group committed, per partition, as the final reader saw them.
pub type Committed = Vec<(u32, u64)>;

/// After the cluster healed: reads every partition from the start to its end, and the
/// group's committed offsets. Anything it cannot do by `until` is a problem (a healed
/// cluster must serve).
pub async fn read_back(
    brokers: Vec<String>,
    start: Duration,
    until: Duration,
    recorder: Recorder,
    committed: std::rc::Rc<std::cell::RefCell<Committed>>,
) -> turmoil::Result {
    tokio::time::sleep(start.saturating_sub(now())).await;
    // Every acknowledgement is in before the read that must find them all.
    while recorder.producers_done() < PRODUCERS && now() < until {
        sleep_ms(100).await;
    }
    let Some(client) = connect(&brokers, until).await else {
        recorder.problem("the final reader never connected".into());
        return Ok(());
    };
    for partition in 0..PARTITIONS {
        if !read_partition(&client, partition, until, &recorder).await {
            return Ok(());
        }
    }
    while now() < until {
        match client.admin().describe_group(GROUP).await {
            Ok(group) => {
                let mut seen = committed.borrow_mut();
                for p in group.partitions.iter().filter(|p| p.has_committed) {
                    seen.push((p.partition, p.committed_offset));
                }
                return Ok(());
            }
            Err(e) if e.reason() == Some(Reason::UnknownGroup) => return Ok(()),
            Err(e) => {
                recorder.event("final", &format!("describe group: {e}"));
                sleep_ms(250).await;
            }
        }
    }
    recorder.problem("the final reader could not describe the group".into());
    Ok(())
}

async fn read_partition(
    client: &Client,
    partition: u32,
    until: Duration,
    recorder: &Recorder,
) -> bool {
    let mut end = None;
    while end.is_none() && now() < until {
        let consumer = client.consumer(ConsumerConfig::default());
        match consumer.resolve(TOPIC, partition, Offset::Latest).await {
            Ok(e) => end = Some(e),
            Err(e) => {
                recorder.event("final", &format!("partition {partition}: no end yet: {e}"));
                sleep_ms(250).await;
            }
        }
    }
    let Some(end) = end else {
        recorder.problem(format!("partition {partition} has no end after healing"));
        return false;
    };
    let mut next = 0u64;
    'session: while next < end && now() < until {
        let mut consumer = client.consumer(ConsumerConfig::default());
        if consumer
            .assign(TOPIC, partition, Offset::At(next))
            .await
            .is_err()
        {
            sleep_ms(250).await;
            continue;
        }
        let mut stream = consumer.into_stream();
        while next < end && now() < until {
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Ok(Some(Ok(record))) => {
                    next = record.offset + 1;
                    recorder.read("final", Read::of(&record), false);
                }
                Ok(Some(Err(_)) | None) => continue 'session,
                Err(_) => {}
            }
        }
    }
    if next < end {
        recorder.problem(format!(
            "the final read of partition {partition} stopped at {next} of {end}"
        ));
        return false;
    }
    true
}
