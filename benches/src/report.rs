//! Reading criterion's estimates back and printing figures as ratios to their baselines.

use std::path::{Path, PathBuf};

/// Mean time per iteration (ns) that criterion measured for `group/function`.
pub fn mean_ns(criterion_dir: &Path, group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("mean")?.get("point_estimate")?.as_f64()
}

/// One line of the report: subject vs baseline over the same bytes per iteration.
#[derive(Debug, Clone)]
pub struct RatioLine {
    /// What is measured.
    pub name: &'static str,
    /// Criterion group.
    pub group: &'static str,
    /// The measured function.
    pub subject: &'static str,
    /// The baseline function in the same group.
    pub baseline: &'static str,
    /// Bytes processed per iteration, for MB/s.
    pub bytes_per_iter: u64,
    /// The goal for subject/baseline throughput.
    pub goal: f64,
}

/// Where criterion writes its estimates for this run.
pub fn criterion_dir() -> PathBuf {
    std::env::temp_dir().join("sluice-criterion")
}

fn mb_per_s(bytes: u64, ns: f64) -> f64 {
    bytes as f64 / ns * 1e9 / 1e6
}

/// The commit and machine the figures come from.
pub fn provenance() -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("commit {commit}, {cores} cores, {cpu}")
}

/// Prints each line as subject MB/s, baseline MB/s, ratio and goal.
pub fn print_ratios(lines: &[RatioLine]) {
    let dir = criterion_dir();
    println!("\n== ratios to same-run baselines ({}) ==", provenance());
    println!(
        "{:<44} {:>12} {:>12} {:>8} {:>7}",
        "benchmark", "MB/s", "base MB/s", "ratio", "goal"
    );
    for line in lines {
        let subject = mean_ns(&dir, line.group, line.subject);
        let baseline = mean_ns(&dir, line.group, line.baseline);
        match (subject, baseline) {
            (Some(s), Some(b)) => {
                let ratio = b / s;
                let verdict = if ratio >= line.goal { "ok" } else { "BELOW" };
                println!(
                    "{:<44} {:>12.0} {:>12.0} {:>7.2}x {:>6.2}x {verdict}",
                    line.name,
                    mb_per_s(line.bytes_per_iter, s),
                    mb_per_s(line.bytes_per_iter, b),
                    ratio,
                    line.goal
                );
            }
            _ => println!("{:<44} (not measured in this run)", line.name),
        }
    }
}
