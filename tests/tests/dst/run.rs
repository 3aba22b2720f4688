//! One seeded run: build the simulated cluster and clients, step it with the nemesis and the
//! Raft checks, then check the history.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use sluice_storage::canary::{self, Canary};
use sluice_tests::logcheck::{self, Outcome};

use super::cluster::{self, SimNode};
use super::faults::Nemesis;
use super::invariants::RaftChecks;
use super::record::Recorder;
use super::workload::{self, Committed};

/// Faults start here (the cluster has formed, the topic exists)…
const FAULTS_FROM: Duration = Duration::from_secs(4);
/// …and end here, when everything is healed.
const FAULTS_UNTIL: Duration = Duration::from_secs(24);
/// Consumers and group members stop here.
const CONSUME_UNTIL: Duration = Duration::from_secs(34);
/// The final read starts here (the healed cluster has had time to elect and catch up)…
const READ_BACK_AT: Duration = Duration::from_secs(36);
/// …and must be done by here.
const READ_BACK_UNTIL: Duration = Duration::from_secs(90);
/// Values each producer sends (one every 40 ms or so: they span the faults).
const VALUES: u64 = 400;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed: everything else follows from it.
    pub seed: u64,
    /// Brokers (3 or 5).
    pub nodes: usize,
    /// Broken behaviours armed for the run.
    pub canaries: Vec<Canary>,
    /// Print the trace.
    pub verbose: bool,
}

/// What a run found.
#[derive(Debug)]
pub struct RunResult {
    /// Hash of the trace: equal for equal seeds.
    pub trace_hash: u64,
    /// Trace lines.
    pub trace_len: u64,
    /// Broken promises; empty when the run passed.
    pub violations: Vec<String>,
    /// Acknowledged produce requests.
    pub acked: usize,
    /// Records read, by every client together.
    pub reads: usize,
    /// Faults injected.
    pub faults: u64,
    /// Simulated time.
    pub simulated: Duration,
}

/// Runs one seed.
pub fn run(config: &RunConfig) -> RunResult {
    sluice_protocol::entropy::seed_thread(config.seed);
    canary::arm(&config.canaries);
    super::net::install();
    let recorder = Recorder::new(config.verbose);
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(READ_BACK_UNTIL + Duration::from_secs(30))
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(2))
        .max_message_latency(Duration::from_millis(30))
        .enable_random_order()
        .build();
    let mut nodes: Vec<SimNode> = (1..=config.nodes as u64)
        .map(|id| cluster::add_node(&mut sim, id, config.nodes, &recorder))
        .collect();
    let committed = add_clients(&mut sim, config.nodes, &recorder);
    let clients = (0..workload::PRODUCERS)
        .map(|k| format!("producer{k}"))
        .chain((0..2).map(|c| format!("consumer{c}")))
        .chain((0..2).map(|m| format!("member{m}")))
        .collect();
    let mut nemesis = Nemesis::new(
        config.seed,
        config.nodes,
        clients,
        FAULTS_FROM,
        FAULTS_UNTIL,
    );
    let mut checks = RaftChecks::default();
    let mut violations = Vec::new();
    let mut simulated_to_end = true;
    loop {
        recorder.set_now(sim.elapsed().as_millis());
        nemesis.tick(&mut sim, &mut nodes, &recorder);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("the simulation failed: {e}"));
                simulated_to_end = false;
                break;
            }
        }
        recorder.set_now(sim.elapsed().as_millis());
        checks.check(&nodes, &recorder);
    }
    let simulated = sim.elapsed();
    drop(sim);
    canary::arm(&[]);
    let recorded = recorder.take();
    violations.extend(checks.violations);
    violations.extend(recorded.problems.iter().cloned());
    let report = logcheck::check(&recorded.history);
    // A run cut short has attempts still open (never recorded): its history is not whole.
    if !report.is_clean() && simulated_to_end {
        violations.push(format!("logcheck: {report}"));
    }
    violations.extend(group_delivery(&recorded, &committed.borrow()));
    // logcheck counts a value read by anyone during the run; the final read of the healed
    // cluster must hold every acknowledged value too (one lost after a consumer saw it).
    let missing: Vec<&str> = recorded
        .history
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .filter(|a| !recorded.final_values.contains(&a.value))
        .map(|a| a.value.as_str())
        .collect();
    if !missing.is_empty() && simulated_to_end {
        violations.push(format!(
            "{} acknowledged values missing from the final read (first {:?})",
            missing.len(),
            missing.first()
        ));
    }
    let acked = recorded
        .history
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .count();
    if acked == 0 {
        violations.push("no produce was acknowledged".into());
    }
    RunResult {
        trace_hash: recorded.trace_hash,
        trace_len: recorded.trace_len,
        violations,
        acked,
        reads: recorded.history.reads.len(),
        faults: recorded.faults,
        simulated,
    }
}

fn add_clients(
    sim: &mut turmoil::Sim<'_>,
    nodes: usize,
    recorder: &Recorder,
) -> Rc<RefCell<Committed>> {
    let brokers = cluster::brokers(nodes);
    let rf = 3u32.min(nodes as u32);
    for k in 0..workload::PRODUCERS {
        let (brokers, recorder) = (brokers.clone(), recorder.clone());
        sim.client(format!("producer{k}"), async move {
            let done = recorder.clone();
            let work = workload::produce(k, brokers, rf, VALUES, FAULTS_UNTIL, recorder.clone());
            let result = bounded(
                &format!("p{k}"),
                FAULTS_UNTIL + Duration::from_secs(40),
                work,
                &recorder,
            )
            .await;
            done.event(&format!("p{k}"), "done");
            result
        });
    }
    for c in 0..2 {
        let (brokers, recorder) = (brokers.clone(), recorder.clone());
        sim.client(format!("consumer{c}"), async move {
            let done = recorder.clone();
            let work = workload::consume(format!("c{c}"), brokers, CONSUME_UNTIL, recorder.clone());
            let result = bounded(
                &format!("c{c}"),
                CONSUME_UNTIL + Duration::from_secs(15),
                work,
                &recorder,
            )
            .await;
            done.event(&format!("c{c}"), "done");
            result
        });
    }
    for m in 0..2 {
        let (brokers, recorder) = (brokers.clone(), recorder.clone());
        sim.client(format!("member{m}"), async move {
            let done = recorder.clone();
            let work = workload::member(format!("g{m}"), brokers, CONSUME_UNTIL, recorder.clone());
            let result = bounded(
                &format!("g{m}"),
                CONSUME_UNTIL + Duration::from_secs(15),
                work,
                &recorder,
            )
            .await;
            done.event(&format!("g{m}"), "done");
            result
        });
    }
    let committed = Rc::new(RefCell::new(Committed::new()));
    let (seen, recorder) = (Rc::clone(&committed), recorder.clone());
    sim.client("reader", async move {
        let work = workload::read_back(
            brokers,
            READ_BACK_AT,
            READ_BACK_UNTIL,
            recorder.clone(),
            seen,
        );
        bounded(
            "the final reader",
            READ_BACK_UNTIL + Duration::from_secs(5),
            work,
            &recorder,
        )
        .await
    });
    committed
}

/// Runs a client until `deadline` (simulated): a client call that never returns (a cluster
/// that accepts connections and answers nothing) is a problem, not a stuck run.
async fn bounded(
    who: &str,
    deadline: Duration,
    work: impl std::future::Future<Output = turmoil::Result>,
    recorder: &Recorder,
) -> turmoil::Result {
    let left = deadline.saturating_sub(turmoil::sim_elapsed().unwrap_or_default());
    match tokio::time::timeout(left, work).await {
        Ok(result) => result,
        Err(_) => {
            recorder.problem(format!("{who} was still waiting at {deadline:?}"));
            Ok(())
        }
    }
}

/// At-least-once for the group (TESTPLAN invariant 10): every record below a partition's
/// committed offset was handed out by some member.
fn group_delivery(recorded: &super::record::Recorded, committed: &Committed) -> Vec<String> {
    let mut violations = Vec::new();
    for (partition, offset) in committed {
        let delivered = recorded.group_delivered.get(partition);
        let missed: Vec<u64> = recorded
            .history
            .reads
            .iter()
            .filter(|r| r.partition == *partition && r.offset < *offset)
            .map(|r| r.offset)
            .filter(|o| delivered.is_none_or(|d| !d.contains(o)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missed.is_empty() {
            violations.push(format!(
                "group committed {offset} on partition {partition} but never handed out {} records below it (first {:?})",
                missed.len(),
                missed.first()
            ));
        }
    }
    violations
}
