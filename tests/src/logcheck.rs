//! The history checker ("logcheck", ../shared/TESTPLAN.md): from every produce attempt
//! (acknowledged with an offset, failed, or of unknown outcome) and every read, it finds
//! what a log broker must never do: lose an acknowledged record, store one twice, show two
//! values at one offset, serve a record nobody may have written, or reorder one producer's
//! records within a partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// How a produce attempt ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this offset.
    Acked(u64),
    /// Refused definitively: the record must never be read.
    Failed,
    /// Timed out or lost with its connection: it may or may not be stored.
    Unknown,
}

/// One produce attempt of a unique value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The partition it was sent to.
    pub partition: u32,
    /// The producer (its records must keep their send order in the log).
    pub producer: u32,
    /// Its place in that producer's send order.
    pub sequence: u64,
    /// The unique value.
    pub value: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Value.
    pub value: String,
}

impl Read {
    /// The read of a consumed record (its value as text).
    pub fn of(record: &sluice_client::ConsumerRecord) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
            value: String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                .into_owned(),
        }
    }
}

/// Everything a test did and saw.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Produce attempts.
    pub attempts: Vec<Attempt>,
    /// Reads, in any order, possibly overlapping.
    pub reads: Vec<Read>,
}

/// What the checker found; [`Report::is_clean`] when nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Acknowledged values never read.
    pub lost: Vec<String>,
    /// Values read at more than one offset.
    pub duplicated: Vec<String>,
    /// (partition, offset) read with different values.
    pub conflicting_offsets: Vec<(u32, u64)>,
    /// Values read that were refused or never sent.
    pub never_acked_read: Vec<String>,
    /// Acknowledged values read at another offset than the acknowledgement said.
    pub moved: Vec<String>,
    /// Values read after a later value of the same producer in the same partition.
    pub reordered: Vec<String>,
    /// Records read and attempts made, for the summary.
    pub counts: (usize, usize),
}

impl Report {
    /// Whether the history has no anomaly.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.conflicting_offsets.is_empty()
            && self.never_acked_read.is_empty()
            && self.moved.is_empty()
            && self.reordered.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn few<T: fmt::Debug>(items: &[T]) -> String {
            let shown: Vec<&T> = items.iter().take(5).collect();
            format!("{} {shown:?}", items.len())
        }
        write!(
            f,
            "{} attempts, {} reads: lost {}, duplicated {}, conflicting offsets {}, never-acked read {}, moved {}, reordered {}",
            self.counts.0,
            self.counts.1,
            few(&self.lost),
            few(&self.duplicated),
            few(&self.conflicting_offsets),
            few(&self.never_acked_read),
            few(&self.moved),
            few(&self.reordered),
        )
    }
}

/// Checks a history. Every acknowledged value must be read; the reads should include one
/// full read of each partition after the run.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        counts: (history.attempts.len(), history.reads.len()),
        ..Report::default()
    };
    let attempts: HashMap<&str, &Attempt> = history
        .attempts
        .iter()
        .map(|a| (a.value.as_str(), a))
        .collect();
    // Distinct (partition, offset) → value, and value → offsets it was seen at.
    let mut at: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    let mut seen_at: HashMap<&str, HashSet<(u32, u64)>> = HashMap::new();
    for read in &history.reads {
        let key = (read.partition, read.offset);
        match at.get(&key) {
            Some(previous) if *previous != read.value => report.conflicting_offsets.push(key),
            Some(_) => {}
            None => {
                at.insert(key, &read.value);
            }
        }
        seen_at.entry(&read.value).or_default().insert(key);
    }
    report.conflicting_offsets.sort_unstable();
    report.conflicting_offsets.dedup();
    for (value, places) in &seen_at {
        if places.len() > 1 {
            report.duplicated.push(value.to_string());
        }
        match attempts.get(value) {
            None => report.never_acked_read.push(value.to_string()),
            Some(a) if a.outcome == Outcome::Failed => {
                report.never_acked_read.push(value.to_string())
            }
            Some(a) => {
                if let Outcome::Acked(offset) = a.outcome
                    && !places.contains(&(a.partition, offset))
                {
                    report.moved.push(value.to_string());
                }
            }
        }
    }
    for a in &history.attempts {
        if matches!(a.outcome, Outcome::Acked(_)) && !seen_at.contains_key(a.value.as_str()) {
            report.lost.push(a.value.clone());
        }
    }
    // One order per partition: each producer's values in offset order keep send order.
    let mut last: HashMap<(u32, u32), u64> = HashMap::new();
    for ((partition, _), value) in &at {
        if let Some(a) = attempts.get(value) {
            let previous = last.insert((*partition, a.producer), a.sequence);
            if previous.is_some_and(|p| p >= a.sequence) {
                report.reordered.push(value.to_string());
            }
        }
    }
    for list in [
        &mut report.lost,
        &mut report.duplicated,
        &mut report.never_acked_read,
        &mut report.moved,
        &mut report.reordered,
    ] {
        list.sort_unstable();
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(value: &str, sequence: u64, outcome: Outcome) -> Attempt {
        Attempt {
            partition: 0,
            producer: 1,
            sequence,
            value: value.into(),
            outcome,
        }
    }

    fn read(offset: u64, value: &str) -> Read {
        Read {
            partition: 0,
            offset,
            value: value.into(),
        }
    }

    #[test]
    fn a_clean_history_passes_and_each_anomaly_is_found() {
        let attempts = vec![
            attempt("a", 0, Outcome::Acked(0)),
            attempt("b", 1, Outcome::Unknown),
            attempt("c", 2, Outcome::Acked(2)),
            attempt("d", 3, Outcome::Failed),
        ];
        let clean = History {
            attempts: attempts.clone(),
            reads: vec![read(0, "a"), read(1, "b"), read(2, "c"), read(0, "a")],
        };
        assert!(check(&clean).is_clean(), "{}", check(&clean));

        let broken = |reads: Vec<Read>| {
            check(&History {
                attempts: attempts.clone(),
                reads,
            })
        };
        assert_eq!(broken(vec![read(0, "a")]).lost, ["c"]);
        assert_eq!(
            broken(vec![read(0, "a"), read(1, "c"), read(2, "c")]).duplicated,
            ["c"]
        );
        let conflict = broken(vec![read(0, "a"), read(0, "x"), read(2, "c")]);
        assert_eq!(conflict.conflicting_offsets, [(0, 0)]);
        assert_eq!(conflict.never_acked_read, ["x"]);
        assert_eq!(
            broken(vec![read(0, "a"), read(1, "d"), read(2, "c")]).never_acked_read,
            ["d"]
        );
        assert_eq!(broken(vec![read(0, "a"), read(3, "c")]).moved, ["c"]);
        let reordered = check(&History {
            attempts: vec![
                attempt("a", 0, Outcome::Unknown),
                attempt("b", 1, Outcome::Unknown),
            ],
            reads: vec![read(0, "b"), read(1, "a")],
        });
        assert_eq!(reordered.reordered, ["a"]);
    }
}
