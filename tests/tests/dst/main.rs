//! Deterministic simulation of a Sluice cluster (../shared/TESTPLAN.md T02, T09, T15 in
//! part): 3 or 5 real brokers (the broker crate, its Raft groups, its gRPC services) and
//! real SDK clients in one process on turmoil's simulated network and clock, every log on
//! a `SimIo`, under seeded faults. Each run checks Raft's safety properties at every step
//! and the clients' history with `logcheck` at the end. docs/reliability.md has the details.
//!
//! `cargo test -p sluice-tests --test dst` runs the CI set; arguments after `--`:
//! `--seed N` replays one seed (`--verbose` prints its trace), `--seeds N` runs N seeds,
//! `--long` runs the soak set, `--nodes 5` picks the cluster size, `--canary NAME` arms
//! a canary (ack-before-fsync, truncate-on-corruption, cut-log-votes).

mod cluster;
mod faults;
mod invariants;
mod net;
mod os_random;
mod record;
mod run;
mod workload;

use std::process::ExitCode;
use std::time::Instant;

use run::{RunConfig, RunResult, run};
use sluice_storage::canary::Canary;

/// Seeds of the CI set: per cluster size, the first seeds from these.
const CI_SEEDS: u64 = 160;
/// Seeds of the soak (`--long`).
const LONG_SEEDS: u64 = 2000;

/// Log lines stamped with simulated time (ms), so two runs of a seed compare line by line.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(at) => write!(w, "{:>7}", at.as_millis()),
            None => write!(w, "      -"),
        }
    }
}

struct Options {
    seed: Option<u64>,
    seeds: Option<u64>,
    long: bool,
    nodes: Option<usize>,
    canary: Option<Canary>,
    verbose: bool,
    twice: bool,
    filtered_out: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        seed: None,
        seeds: None,
        long: false,
        nodes: None,
        canary: None,
        verbose: false,
        twice: false,
        filtered_out: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| {
        v.and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => options.seed = Some(number(args.next(), "--seed")?),
            "--seeds" => options.seeds = Some(number(args.next(), "--seeds")?),
            "--nodes" => options.nodes = Some(number(args.next(), "--nodes")? as usize),
            "--long" => options.long = true,
            "--verbose" => options.verbose = true,
            "--twice" => options.twice = true,
            "--canary" => {
                let name = args.next().unwrap_or_default();
                options.canary =
                    Some(Canary::named(&name).ok_or_else(|| format!("unknown canary {name:?}"))?);
            }
            // libtest's options that take a value: not a name filter.
            "--skip" | "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                let _ = args.next();
            }
            // What `cargo test` passes to every test binary: a name filter that is not
            // ours means another test was asked for.
            other if other.starts_with('-') => {}
            filter => options.filtered_out |= !"dst".contains(filter) && !filter.contains("dst"),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dst: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        // The brokers' own logs, for a replayed seed: `RUST_LOG=warn … --seed N`.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_ansi(false)
            .init();
    }
    if options.filtered_out {
        println!("dst: filtered out");
        return ExitCode::SUCCESS;
    }
    if !cfg!(tokio_unstable) {
        // Without it turmoil cannot seed the hosts' schedulers: runs would not repeat.
        eprintln!(
            "dst: built without --cfg tokio_unstable (.cargo/config.toml; a RUSTFLAGS variable replaces it)"
        );
        return ExitCode::FAILURE;
    }
    let failed = if let Some(seed) = options.seed {
        replay(&options, seed)
    } else if let Some(canary) = options.canary {
        !canary_caught(canary, options.seeds.unwrap_or(CI_SEEDS))
    } else {
        ci(&options)
    };
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn config(seed: u64, nodes: usize, canaries: Vec<Canary>, verbose: bool) -> RunConfig {
    RunConfig {
        seed,
        nodes,
        canaries,
        verbose,
    }
}

fn summary(seed: u64, nodes: usize, result: &RunResult, wall: std::time::Duration) -> String {
    format!(
        "seed {seed} ({nodes} nodes): trace {:016x} ({} lines), {} acked, {} reads, {} faults, {:.0?} simulated in {:.1?}",
        result.trace_hash,
        result.trace_len,
        result.acked,
        result.reads,
        result.faults,
        result.simulated,
        wall
    )
}

fn replay_command(seed: u64, nodes: usize) -> String {
    format!("cargo test -p sluice-tests --test dst -- --seed {seed} --nodes {nodes} --verbose")
}

fn replay(options: &Options, seed: u64) -> bool {
    let nodes = options.nodes.unwrap_or(3);
    let started = Instant::now();
    let run_once = || {
        run(&config(
            seed,
            nodes,
            options.canary.into_iter().collect(),
            options.verbose,
        ))
    };
    let result = run_once();
    println!("{}", summary(seed, nodes, &result, started.elapsed()));
    for v in &result.violations {
        println!("  VIOLATION {v}");
    }
    if options.twice {
        // In one process a second run can differ (some state outlives a run; the CI set
        // runs every seed in a process of its own, where runs repeat exactly).
        let again = run_once();
        println!("again: {}", summary(seed, nodes, &again, started.elapsed()));
    }
    println!(
        "RESULT trace={:016x} violations={}",
        result.trace_hash,
        result.violations.len()
    );
    !result.violations.is_empty()
}

/// One seed's outcome, from the process that ran it.
struct SeedRun {
    seed: u64,
    nodes: usize,
    canary: Option<Canary>,
    trace: String,
    output: String,
    failed: bool,
}

/// Runs one seed in a process of its own (so no state of one run leaks into the next).
fn run_child(seed: u64, nodes: usize, canary: Option<Canary>) -> SeedRun {
    let mut command =
        std::process::Command::new(std::env::current_exe().unwrap_or_else(|_| "dst".into()));
    command.args(["--seed", &seed.to_string(), "--nodes", &nodes.to_string()]);
    if let Some(canary) = canary {
        command.args(["--canary", canary.name()]);
    }
    command.env_remove("RUST_LOG");
    let (output, failed) = match command.output() {
        Ok(out) => (
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
            !out.status.success(),
        ),
        Err(e) => (format!("cannot run the seed: {e}"), true),
    };
    let trace = output
        .lines()
        .find_map(|l| l.strip_prefix("RESULT trace="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("none")
        .to_string();
    SeedRun {
        seed,
        nodes,
        canary,
        trace,
        output,
        failed,
    }
}

/// Runs `jobs` on as many workers as the machine has cores (at most 4), each taking the next
/// job when it finishes one; returns the runs in the order of `jobs`.
fn run_all(jobs: Vec<(u64, usize, Option<Canary>)>) -> Vec<SeedRun> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<SeedRun>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&(seed, nodes, canary)) = jobs.get(i) else {
                        break;
                    };
                    let run = run_child(seed, nodes, canary);
                    if let Some(slot) = results.get(i)
                        && let Ok(mut slot) = slot.lock()
                    {
                        *slot = Some(run);
                    }
                }
            });
        }
    });
    jobs.iter()
        .zip(results)
        .map(|(&(seed, nodes, canary), slot)| {
            slot.into_inner().ok().flatten().unwrap_or_else(|| SeedRun {
                seed,
                nodes,
                canary,
                trace: "none".into(),
                output: "the worker running the seed panicked".into(),
                failed: true,
            })
        })
        .collect()
}

fn report(run: &SeedRun) {
    let first = run.output.lines().next().unwrap_or_default();
    println!("dst: {first}");
    if run.failed && run.canary.is_none() {
        for line in run.output.lines().filter(|l| l.contains("VIOLATION")) {
            println!("  {line}");
        }
        println!("  replay: {}", replay_command(run.seed, run.nodes));
    }
}

/// The CI set: determinism, every seed clean, every canary caught.
fn ci(options: &Options) -> bool {
    let seeds = options
        .seeds
        .unwrap_or(if options.long { LONG_SEEDS } else { CI_SEEDS });
    let sizes: Vec<usize> = options.nodes.map_or(vec![3, 5], |n| vec![n]);
    let mut failed = false;
    let mut jobs = Vec::new();
    for nodes in sizes {
        let per_size = if nodes == 3 { seeds } else { seeds.div_ceil(4) };
        jobs.extend((1..=per_size).map(|seed| (seed, nodes, None)));
    }
    let started = Instant::now();
    let runs = run_all(jobs);
    for run in &runs {
        report(run);
        failed |= run.failed;
    }
    println!(
        "dst: {} seeds, {} failed, in {:.1?}",
        runs.len(),
        runs.iter().filter(|r| r.failed).count(),
        started.elapsed()
    );
    failed |= !repeats_exactly(&runs);
    if !options.long {
        for canary in [
            Canary::AckBeforeFsync,
            Canary::TruncateOnCorruption,
            Canary::CutLogVotes,
        ] {
            failed |= !canary_caught(canary, seeds);
        }
    }
    failed
}

/// Seeds run a second time (each in its own process) whose trace must equal the first
/// run's: seed 92 once took other paths from run to run (h2's wall-clock reset-stream
/// memory, reliability.md), the others are plain three- and five-node seeds.
const REPEATED: [(u64, usize); 4] = [(1, 3), (92, 3), (1, 5), (17, 5)];

/// Whether the seeds of [`REPEATED`] in `runs` give the same trace again.
fn repeats_exactly(runs: &[SeedRun]) -> bool {
    let first: Vec<&SeedRun> = REPEATED
        .iter()
        .filter_map(|&(seed, nodes)| runs.iter().find(|r| r.seed == seed && r.nodes == nodes))
        .collect();
    let again = run_all(first.iter().map(|r| (r.seed, r.nodes, None)).collect());
    let mut same = true;
    for (a, b) in first.iter().zip(&again) {
        if a.trace == b.trace && a.trace != "none" {
            println!(
                "dst: seed {} ({} nodes) twice gave the same trace {}",
                a.seed, a.nodes, a.trace
            );
        } else {
            println!(
                "dst: seed {} ({} nodes) gave traces {} and {}: the simulation is not deterministic",
                a.seed, a.nodes, a.trace, b.trace
            );
            same = false;
        }
    }
    same
}

/// Violations that show a broken promise about data (not a run that merely stalled): what a
/// canary must be caught by.
const SAFETY_MARKS: [&str; 5] = [
    "logcheck",
    "applied the entry",
    "vote went back",
    "missing from the final read",
    "durable data damaged",
];

/// The first line of `output` showing a safety violation: a check's, or one of openraft's
/// own invariant assertions.
fn safety_evidence(output: &str) -> Option<&str> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VIOLATION "))
        .find(|v| SAFETY_MARKS.iter().any(|m| v.contains(m)))
        .or_else(|| {
            output
                .lines()
                .find(|l| l.contains("panicked at") && l.contains("openraft"))
        })
}

/// Whether some seed of the first `seeds` catches `canary` with a safety violation.
fn canary_caught(canary: Canary, seeds: u64) -> bool {
    let parallel = 2u64;
    let mut seed = 1;
    while seed <= seeds {
        let jobs = (seed..(seed + parallel).min(seeds + 1))
            .map(|s| (s, 3, Some(canary)))
            .collect();
        for run in run_all(jobs) {
            if let Some(why) = safety_evidence(&run.output) {
                println!(
                    "dst: canary {} caught by seed {}: {why}",
                    canary.name(),
                    run.seed
                );
                return true;
            }
        }
        seed += parallel;
    }
    println!(
        "dst: canary {} was NOT caught by seeds 1..={seeds}",
        canary.name()
    );
    false
}
