//! Helpers for system tests: start the real `sluiced` on 127.0.0.1 with an ephemeral port
//! and a temp data dir, restart it, `kill -9` it, and read its anonymous memory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a broker may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The `sluiced` binary cargo built next to this test executable.
pub fn sluiced_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICED") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> → target/<profile>/sluiced; `cargo test --workspace`
    // builds it because the broker package has integration tests of its own.
    // A test sits in target/<profile>/deps, a binary (the load generator) beside sluiced.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable dir");
    let candidates = [
        dir.join("sluiced"),
        dir.parent().map(|d| d.join("sluiced")).unwrap_or_default(),
    ];
    let found = candidates.iter().find(|c| c.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "sluiced not found next to {}: build it or set SLUICED",
            exe.display()
        )
    })
}

/// A running broker, killed when dropped.
pub struct TestBroker {
    child: Option<Child>,
    /// The client address (`127.0.0.1:port`).
    pub address: String,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker in a fresh temp data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a broker in a fresh temp data dir with extra flags.
    pub fn start_with(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp data dir");
        // The data dir sits inside the temp dir, so the broker's log file beside it
        // (`data.log`) goes with the temp dir too.
        let mut broker = Self::start_in(&temp.path().join("data"), args);
        broker._temp = Some(temp);
        broker
    }

    /// Starts a broker on `data_dir` (which outlives it) with extra flags.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Self {
        let extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, address) = spawn(data_dir, &extra_args);
        Self {
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            extra_args,
            _temp: None,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9`: no shutdown, no final sync.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        // Bounded wait: the broker's own shutdown grace is 5 s.
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Starts the broker again on the same data dir (after `stop` or `kill9`); the
    /// address changes (new ephemeral port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let (child, address) = spawn(&self.data_dir, &self.extra_args);
        self.child = Some(child);
        self.address = address;
    }

    /// Anonymous resident memory (heap, stacks) in KiB: mapped segment pages excluded.
    pub fn rss_anon_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        parse_rss_anon_kib(&status).unwrap_or(0)
    }
}

/// The `RssAnon` figure of a `/proc/<pid>/status` text, in KiB.
///
/// ```
/// let status = "Name:\tsluiced\nVmRSS:\t  900000 kB\nRssAnon:\t    1234 kB\n";
/// assert_eq!(sluice_tests::parse_rss_anon_kib(status), Some(1234));
/// assert_eq!(sluice_tests::parse_rss_anon_kib("Name:\tx\n"), None);
/// ```
pub fn parse_rss_anon_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(data_dir: &Path, extra_args: &[String]) -> (Child, String) {
    let log = std::fs::File::create(data_dir.with_extension("log")).ok();
    let mut command = Command::new(sluiced_binary());
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra_args)
        .env(
            "SLUICE_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(log.map_or_else(Stdio::null, Stdio::from));
    // An ephemeral metrics port unless the test chose one.
    if !extra_args.iter().any(|a| a == "--metrics-listen") {
        command.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    let mut child = command.spawn().expect("spawn sluiced");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(address) = line.strip_prefix("sluiced listening on ") {
                let _ = tx.send(address.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(address) => (child, address),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "sluiced did not become ready within {START_TIMEOUT:?} (log: {})",
                data_dir.with_extension("log").display()
            );
        }
    }
}
