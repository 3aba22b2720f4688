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
use super::record::{Recorded, Recorder};
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

/// Runs one seed in a fresh working directory of its own, where the nodes keep their real
/// files under names that are the same in every run (`n1`, `n2`, …).
pub fn run(config: &RunConfig) -> RunResult {
    let previous = std::env::current_dir().ok();
    let work_dir = tempfile::tempdir().expect("temp dir");
    std::env::set_current_dir(work_dir.path()).expect("enter the work dir");
    let result = run_here(config);
    if let Some(previous) = previous {
        let _ = std::env::set_current_dir(previous);
    }
    result
}

fn run_here(config: &RunConfig) -> RunResult {
    super::os_random::seed(config.seed);
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
    let (clients, committed) = add_clients(&mut sim, config.nodes, &recorder);
    let nemesis = Nemesis::new(
        config.seed,
        config.nodes,
        clients,
        FAULTS_FROM,
        FAULTS_UNTIL,
    );
    let (mut violations, simulated_to_end) = step_to_end(&mut sim, &mut nodes, nemesis, &recorder);
    let simulated = sim.elapsed();
    drop(sim);
    canary::arm(&[]);
    let recorded = recorder.take();
    violations.extend(recorded.problems.iter().cloned());
    violations.extend(history_violations(&recorded, simulated_to_end));
    violations.extend(group_delivery(&recorded, &committed.borrow()));
    let acked = acked_values(&recorded).count();
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

/// Steps the simulation until every client is done, with the nemesis before each step and
/// the Raft checks after it. Returns the violations and whether it ran to the end.
fn step_to_end(
    sim: &mut turmoil::Sim<'_>,
    nodes: &mut [SimNode],
    mut nemesis: Nemesis,
    recorder: &Recorder,
) -> (Vec<String>, bool) {
    let mut checks = RaftChecks::default();
    let mut violations = Vec::new();
    let mut to_end = true;
    loop {
        recorder.set_now(sim.elapsed().as_millis());
        nemesis.tick(sim, nodes, recorder);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("the simulation failed: {e}"));
                to_end = false;
                break;
            }
        }
        recorder.set_now(sim.elapsed().as_millis());
        checks.check(nodes, recorder);
    }
    violations.extend(checks.violations);
    (violations, to_end)
}

fn acked_values(recorded: &Recorded) -> impl Iterator<Item = &str> {
    recorded
        .history
        .attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .map(|a| a.value.as_str())
}

/// logcheck over the whole history, and every acknowledged value in the final read: logcheck
/// counts a value read by anyone during the run, so one lost after a consumer saw it shows
/// only here. A run cut short has attempts still open (never recorded): not checked.
fn history_violations(recorded: &Recorded, whole: bool) -> Vec<String> {
    let mut violations = Vec::new();
    if !whole {
        return violations;
    }
    let report = logcheck::check(&recorded.history);
    if !report.is_clean() {
        violations.push(format!("logcheck: {report}"));
    }
    let missing: Vec<&str> = acked_values(recorded)
        .filter(|v| !recorded.final_values.contains(*v))
        .collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{} acknowledged values missing from the final read (first {:?})",
            missing.len(),
            missing.first()
        ));
    }
    violations
}

/// Registers the clients; returns their host names (for the nemesis) and where the final
/// reader leaves the group's committed offsets.
fn add_clients(
    sim: &mut turmoil::Sim<'_>,
    nodes: usize,
    recorder: &Recorder,
) -> (Vec<String>, Rc<RefCell<Committed>>) {
    let brokers = cluster::brokers(nodes);
    let rf = 3u32.min(nodes as u32);
    let mut hosts = Vec::new();
    for k in 0..workload::PRODUCERS {
        let (brokers, r) = (brokers.clone(), recorder.clone());
        let work = async move { workload::produce(k, brokers, rf, VALUES, FAULTS_UNTIL, r).await };
        let deadline = FAULTS_UNTIL + Duration::from_secs(40);
        hosts.push(add_client(
            sim,
            format!("producer{k}"),
            format!("p{k}"),
            deadline,
            work,
            recorder,
        ));
    }
    for c in 0..2 {
        let (brokers, r) = (brokers.clone(), recorder.clone());
        let work =
            async move { workload::consume(format!("c{c}"), brokers, CONSUME_UNTIL, r).await };
        let deadline = CONSUME_UNTIL + Duration::from_secs(15);
        hosts.push(add_client(
            sim,
            format!("consumer{c}"),
            format!("c{c}"),
            deadline,
            work,
            recorder,
        ));
    }
    for m in 0..2 {
        let (brokers, r) = (brokers.clone(), recorder.clone());
        let work =
            async move { workload::member(format!("g{m}"), brokers, CONSUME_UNTIL, r).await };
        let deadline = CONSUME_UNTIL + Duration::from_secs(15);
        hosts.push(add_client(
            sim,
            format!("member{m}"),
            format!("g{m}"),
            deadline,
            work,
            recorder,
        ));
    }
    if nodes >= 5 {
        let (brokers, r) = (brokers.clone(), recorder.clone());
        let work = async move {
            workload::operate(brokers, nodes as u64, FAULTS_FROM, FAULTS_UNTIL, r).await
        };
        let deadline = FAULTS_UNTIL + Duration::from_secs(15);
        add_client(
            sim,
            "operator".into(),
            "the operator".into(),
            deadline,
            work,
            recorder,
        );
    }
    let committed = Rc::new(RefCell::new(Committed::new()));
    let (seen, r) = (Rc::clone(&committed), recorder.clone());
    let work =
        async move { workload::read_back(brokers, READ_BACK_AT, READ_BACK_UNTIL, r, seen).await };
    let deadline = READ_BACK_UNTIL + Duration::from_secs(5);
    add_client(
        sim,
        "reader".into(),
        "the final reader".into(),
        deadline,
        work,
        recorder,
    );
    (hosts, committed)
}

/// Registers client host `host` running `work`, bounded by `deadline`; returns `host`.
fn add_client(
    sim: &mut turmoil::Sim<'_>,
    host: String,
    who: String,
    deadline: Duration,
    work: impl std::future::Future<Output = turmoil::Result> + 'static,
    recorder: &Recorder,
) -> String {
    let recorder = recorder.clone();
    sim.client(host.clone(), async move {
        let result = bounded(&who, deadline, work, &recorder).await;
        recorder.event(&who, "done");
        result
    });
    host
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
fn group_delivery(recorded: &Recorded, committed: &Committed) -> Vec<String> {
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
