//! What a run did and saw: the history `logcheck` checks, the group's deliveries, problems
//! found on the way, and a hash of everything in order (the trace) to show a seed replays.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use sluice_tests::logcheck::{Attempt, History, Read};

/// Shared by the hosts and the driver of one run (all on one thread).
#[derive(Clone, Default)]
pub struct Recorder(Rc<RefCell<Inner>>);

#[derive(Default)]
struct Inner {
    history: History,
    group_delivered: BTreeMap<u32, BTreeSet<u64>>,
    problems: Vec<String>,
    trace_hash: u64,
    trace_len: u64,
    verbose: bool,
    faults: u64,
    producers_done: u32,
    /// Values the final reader read.
    final_values: std::collections::BTreeSet<String>,
    /// Simulated time as the driver last saw it (for lines written outside any host).
    driver_ms: u128,
}

/// A finished run's records.
pub struct Recorded {
    /// Produce attempts and reads.
    pub history: History,
    /// Offsets the group's members handed out, per partition.
    pub group_delivered: BTreeMap<u32, BTreeSet<u64>>,
    /// Broken promises seen during the run.
    pub problems: Vec<String>,
    /// Hash of the trace.
    pub trace_hash: u64,
    /// Trace lines.
    pub trace_len: u64,
    /// Faults injected.
    pub faults: u64,
    /// Values the final reader read.
    pub final_values: std::collections::BTreeSet<String>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Recorder {
    /// A recorder that prints every trace line when `verbose`.
    pub fn new(verbose: bool) -> Self {
        let recorder = Self::default();
        {
            let mut inner = recorder.0.borrow_mut();
            inner.verbose = verbose;
            inner.trace_hash = FNV_OFFSET;
        }
        recorder
    }

    fn trace(&self, line: &str) {
        let mut inner = self.0.borrow_mut();
        let now = turmoil::sim_elapsed().map_or(inner.driver_ms, |d| d.as_millis());
        let line = format!("{now} {line}");
        for byte in line.bytes().chain([b'\n']) {
            inner.trace_hash = (inner.trace_hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        inner.trace_len += 1;
        if inner.verbose {
            println!("{line}");
        }
    }

    /// Simulated time, from the driver between steps.
    pub fn set_now(&self, ms: u128) {
        self.0.borrow_mut().driver_ms = ms;
    }

    /// Something `who` did or saw.
    pub fn event(&self, who: &str, what: &str) {
        self.trace(&format!("{who} {what}"));
    }

    /// A fault the driver injected at `at_ms` of simulated time.
    pub fn fault(&self, at_ms: u128, what: &str) {
        self.0.borrow_mut().faults += 1;
        self.trace(&format!("fault@{at_ms} {what}"));
    }

    /// A produce attempt's end.
    pub fn attempt(&self, attempt: Attempt) {
        self.trace(&format!(
            "p{} {} -> {:?}",
            attempt.producer, attempt.value, attempt.outcome
        ));
        self.0.borrow_mut().history.attempts.push(attempt);
    }

    /// A record read by `who`; `group` when a group member handed it out.
    pub fn read(&self, who: &str, read: Read, group: bool) {
        self.trace(&format!(
            "{who} read {}@{} {}",
            read.partition, read.offset, read.value
        ));
        let mut inner = self.0.borrow_mut();
        if who == "final" {
            inner.final_values.insert(read.value.clone());
        }
        if group {
            inner
                .group_delivered
                .entry(read.partition)
                .or_default()
                .insert(read.offset);
        }
        inner.history.reads.push(read);
    }

    /// A producer has every answer it will get.
    pub fn producer_done(&self) {
        self.0.borrow_mut().producers_done += 1;
    }

    /// Producers done so far.
    pub fn producers_done(&self) -> u32 {
        self.0.borrow().producers_done
    }

    /// A broken promise.
    pub fn problem(&self, what: String) {
        self.trace(&format!("PROBLEM {what}"));
        self.0.borrow_mut().problems.push(what);
    }

    /// Everything recorded.
    pub fn take(&self) -> Recorded {
        let mut inner = self.0.borrow_mut();
        Recorded {
            history: std::mem::take(&mut inner.history),
            group_delivered: std::mem::take(&mut inner.group_delivered),
            problems: std::mem::take(&mut inner.problems),
            trace_hash: inner.trace_hash,
            trace_len: inner.trace_len,
            faults: inner.faults,
            final_values: std::mem::take(&mut inner.final_values),
        }
    }
}
