//! Helpers for system tests: start the real `sluiced` on 127.0.0.1 with an ephemeral port
//! and a temp data dir, restart it, `kill -9` it, and read its anonymous memory.

pub mod certs;
mod fill;
pub mod logcheck;
pub mod memory_cgroup;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use fill::produce_copies;

/// How long a broker may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The flags of a broker that requires authentication, with the super-user `admin` whose
/// bootstrap password is written to `dir/bootstrap-password` (`dir` must outlive the start).
pub fn secured_args(dir: &Path, admin_password: &str) -> Vec<String> {
    let file = dir.join("bootstrap-password");
    std::fs::write(&file, format!("{admin_password}\n")).expect("write the password file");
    [
        "--require-auth",
        "--superuser",
        "admin",
        "--bootstrap-password-file",
    ]
    .iter()
    .map(|f| f.to_string())
    .chain([file.display().to_string()])
    .collect()
}

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

/// Another broker build to run instead of `sluiced`, with its environment (e.g. the tests'
/// `sluiced-canary` and the canaries it arms).
#[derive(Debug, Clone)]
pub struct Program {
    /// The executable.
    pub binary: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A running broker, killed when dropped.
pub struct TestBroker {
    /// What runs on the next (re)start instead of `sluiced`.
    program: Option<Program>,
    child: Option<Child>,
    /// The client address (`127.0.0.1:port`).
    pub address: String,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`), if not the test's own.
    namespace: Option<String>,
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

    /// Starts a broker that requires authentication (`--require-auth`), with the super-user
    /// `admin` bootstrapped with `admin_password`, and extra flags.
    pub fn start_secured(admin_password: &str, args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp data dir");
        let mut flags = secured_args(temp.path(), admin_password);
        flags.extend(args.iter().map(|a| a.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut broker = Self::start_in(&temp.path().join("data"), &flags);
        broker._temp = Some(temp);
        broker
    }

    /// Starts a broker on `data_dir` (which outlives it) with extra flags.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Self {
        let extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, address) = spawn(data_dir, &extra_args, None, None);
        Self {
            program: None,
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            extra_args,
            namespace: None,
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
        let (child, address) = spawn(
            &self.data_dir,
            &self.extra_args,
            self.namespace.as_deref(),
            self.program.as_ref(),
        );
        self.child = Some(child);
        self.address = address;
    }

    /// Runs `program` instead of `sluiced` from the next (re)start on.
    pub fn run_as(&mut self, program: Program) {
        self.program = Some(program);
    }

    /// The flags it was started with (beyond the data dir).
    pub fn extra_args(&self) -> &[String] {
        &self.extra_args
    }

    /// The value of flag `--raft-listen`, if given.
    pub fn raft_address(&self) -> Option<String> {
        let at = self.extra_args.iter().position(|a| a == "--raft-listen")?;
        self.extra_args.get(at + 1).cloned()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the broker process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process is running (not killed or stopped by this handle).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// CPU time the broker has used so far (user and system), for benchmarks' CPU figures.
    pub fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid())
    }

    /// Anonymous resident memory (heap, stacks) in KiB: mapped segment pages excluded.
    pub fn rss_anon_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        parse_rss_anon_kib(&status).unwrap_or(0)
    }
}

/// CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat`; zero if
/// it cannot be read.
pub fn process_cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux we run on.
    Duration::from_millis(ticks * 10)
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
        // A failing test's brokers take their logs with their temp dirs: show what they
        // said, or a flake in CI leaves nothing to read. A broker that panicked is shown
        // even when the test passed (a panicking request handler is only a reset stream).
        let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        if std::thread::panicking() || log.contains(BROKER_PANIC) {
            eprint!("{}", log_tail(&self.data_dir, &log, LOG_TAIL_LINES));
        }
    }
}

/// How much of each broker's log a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// What a Rust panic prints first.
const BROKER_PANIC: &str = "panicked at";

/// The last `lines` lines of `log`, the log of the broker on `data_dir`, headed by its path.
fn log_tail(data_dir: &Path, log: &str, lines: usize) -> String {
    let path = data_dir.with_extension("log");
    let all: Vec<&str> = log.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    format!(
        "---- last {} lines of {} ----\n{}\n",
        tail.len(),
        path.display(),
        tail.join("\n")
    )
}

fn spawn(
    data_dir: &Path,
    extra_args: &[String],
    namespace: Option<&str>,
    program: Option<&Program>,
) -> (Child, String) {
    let (child, ready) = launch(data_dir, extra_args, namespace, program);
    await_ready(child, &ready, data_dir)
}

/// A started `sluiced` (or `program`; in `namespace` if given) and the channel its ready
/// line (the client address) arrives on.
fn launch(
    data_dir: &Path,
    extra_args: &[String],
    namespace: Option<&str>,
    program: Option<&Program>,
) -> (Child, mpsc::Receiver<String>) {
    // Appended to, so a restarted node's log keeps what the previous run said.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .ok();
    // `ip netns exec` execs the broker in place, so the child's pid is the broker's.
    let binary = program.map_or_else(sluiced_binary, |p| p.binary.clone());
    let mut command = match namespace {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    command.envs(program.iter().flat_map(|p| p.env.iter().cloned()));
    command.arg("--data-dir").arg(data_dir);
    if !extra_args.iter().any(|a| a == "--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
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
    (child, rx)
}

/// Waits (bounded) for a launched broker's ready line.
fn await_ready(child: Child, ready: &mpsc::Receiver<String>, data_dir: &Path) -> (Child, String) {
    try_await_ready(child, ready, data_dir).unwrap_or_else(|why| panic!("{why}"))
}

/// [`await_ready`], answering why the broker did not become ready (it is killed then).
fn try_await_ready(
    mut child: Child,
    ready: &mpsc::Receiver<String>,
    data_dir: &Path,
) -> Result<(Child, String), String> {
    let waited = ready.recv_timeout(START_TIMEOUT);
    if let Ok(address) = waited {
        return Ok((child, address));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let what = match waited {
        Err(mpsc::RecvTimeoutError::Disconnected) => "sluiced exited before it was ready".into(),
        _ => format!("sluiced did not become ready within {START_TIMEOUT:?}"),
    };
    Err(format!(
        "{what} (log: {}):\n{}",
        data_dir.with_extension("log").display(),
        log_summary(&log)
    ))
}

/// What a broker's log says about why it stopped: a panic's message or the error it exited
/// with (each comes before a backtrace, which `RUST_BACKTRACE` makes long), then its tail.
fn log_summary(log: &str) -> String {
    let cause = log
        .lines()
        .skip_while(|l| !l.contains("panicked at") && !l.starts_with("Error: "))
        .take(3);
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    cause
        .chain(tail.into_iter().rev())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `sluiced` on `data_dir` with `args`, expecting it to refuse to start: returns its
/// exit status (`None` if it became ready or kept running for 60 s, and was killed) and
/// what it wrote to its log.
pub fn start_expecting_refusal(data_dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (mut child, ready) = launch(data_dir, &extra_args, None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let code = loop {
        if ready.try_recv().is_ok() {
            break None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    (code, log)
}

/// A free loopback port (bound and released: a cluster's raft addresses must be known
/// before its nodes start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A cluster of real `sluiced` processes on loopback, each with its own data dir, client
/// and raft ports fixed for its lifetime (a restarted node keeps its addresses).
pub struct TestCluster {
    /// The nodes, node id `i + 1` at index `i`.
    pub nodes: Vec<TestBroker>,
    /// The cluster secret file every node reads.
    pub secret_file: PathBuf,
    /// `--initial-cluster` as given to the founders.
    pub initial_cluster: String,
    temp: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `size` founding nodes at once and waits until every one is ready.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, &[])
    }

    /// [`TestCluster::start`] with extra flags for every node.
    pub fn start_with(size: usize, args: &[&str]) -> Self {
        // Ports are picked before the nodes start (each must know the others' raft ports),
        // so a parallel test may take one first: then the whole cluster starts again on
        // fresh ports and data dirs (bounded).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(size, args, None) {
                Ok(cluster) => return cluster,
                Err(why) if attempt < 3 && why.contains("cannot listen") => continue,
                Err(why) => panic!("the cluster did not start: {why}"),
            }
        }
    }

    /// One node in each of `network`'s namespaces (client port 9092 and raft port 9093 on
    /// the node's own address), with extra flags for every node.
    pub fn start_in_network(network: &netns::Network, size: usize, args: &[&str]) -> Self {
        Self::try_start(size, args, Some(network))
            .unwrap_or_else(|why| panic!("the cluster did not start: {why}"))
    }

    fn try_start(
        size: usize,
        args: &[&str],
        network: Option<&netns::Network>,
    ) -> Result<Self, String> {
        let temp = tempfile::tempdir().expect("temp dir");
        let secret_file = temp.path().join("cluster.secret");
        // (client, raft) addresses; a namespace has its ports to itself.
        let addresses: Vec<(String, String)> = (0..size)
            .map(|i| match network {
                Some(n) => (format!("{}:9092", n.ip(i)), format!("{}:9093", n.ip(i))),
                None => (
                    format!("127.0.0.1:{}", free_port()),
                    format!("127.0.0.1:{}", free_port()),
                ),
            })
            .collect();
        // A secret of its own: a port a torn-down cluster's node still sends Raft messages
        // to may already be this cluster's, and with a shared secret (the group ids and
        // votes of two young clusters look alike) they were taken, crashing the receiver
        // on an openraft debug assertion at start.
        let secret = format!(
            "test-cluster-secret-{}-{}",
            std::process::id(),
            addresses
                .iter()
                .map(|a| a.1.as_str())
                .collect::<Vec<_>>()
                .join("-")
        );
        std::fs::write(&secret_file, format!("{secret}\n")).expect("secret file");
        let initial_cluster = addresses
            .iter()
            .enumerate()
            .map(|(i, (_, raft))| format!("{}={raft}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        type Launched = (
            PathBuf,
            Vec<String>,
            Option<String>,
            Child,
            mpsc::Receiver<String>,
        );
        let launched: Vec<Launched> = addresses
            .iter()
            .enumerate()
            .map(|(i, (client, raft))| {
                let data_dir = temp.path().join(format!("node{}", i + 1));
                let mut node_args: Vec<String> = [
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--listen".into(),
                    client.clone(),
                    "--raft-listen".into(),
                    raft.clone(),
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--cluster-secret-file".into(),
                    secret_file.display().to_string(),
                ]
                .to_vec();
                if network.is_some() {
                    // A namespace's own address is not loopback: plaintext needs the flag.
                    node_args.push("--insecure-allow-plaintext".into());
                }
                node_args.extend(args.iter().map(|a| a.to_string()));
                let namespace = network.map(|n| n.namespace(i));
                let (child, ready) = launch(&data_dir, &node_args, namespace.as_deref(), None);
                (data_dir, node_args, namespace, child, ready)
            })
            .collect();
        let mut nodes = Vec::new();
        let mut failure = None;
        for (data_dir, extra_args, namespace, child, ready) in launched {
            match try_await_ready(child, &ready, &data_dir) {
                Ok((child, address)) => nodes.push(TestBroker {
                    program: None,
                    child: Some(child),
                    address,
                    data_dir,
                    extra_args,
                    namespace,
                    _temp: None,
                }),
                Err(why) => failure = failure.or(Some(why)),
            }
        }
        // On failure the started nodes are dropped, which kills them.
        match failure {
            Some(why) => Err(why),
            None => Ok(Self {
                nodes,
                secret_file,
                initial_cluster,
                temp,
            }),
        }
    }

    /// Starts every stopped node at once (a whole-cluster restart: each waits for a quorum
    /// of the others) and waits until every one is ready.
    pub fn restart_all(&mut self) {
        let launched: Vec<(usize, Child, mpsc::Receiver<String>)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.child.is_none())
            .map(|(i, n)| {
                let (child, ready) = launch(
                    &n.data_dir,
                    &n.extra_args,
                    n.namespace.as_deref(),
                    n.program.as_ref(),
                );
                (i, child, ready)
            })
            .collect();
        for (i, child, ready) in launched {
            let (child, address) = await_ready(child, &ready, &self.nodes[i].data_dir);
            self.nodes[i].child = Some(child);
            self.nodes[i].address = address;
        }
    }

    /// Every node's client address.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// Starts a new node that joins through node 1's raft address; returns its index.
    pub fn join(&mut self) -> usize {
        let id = self.nodes.len() + 1;
        let data_dir = self.temp.path().join(format!("node{id}"));
        let join = self.nodes[0].raft_address().expect("node 1 raft address");
        let args: Vec<String> = [
            "--node-id".to_string(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--raft-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--join".into(),
            join,
            "--cluster-secret-file".into(),
            self.secret_file.display().to_string(),
        ]
        .to_vec();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes.push(TestBroker::start_in(&data_dir, &arg_refs));
        self.nodes.len() - 1
    }
}

#[cfg(test)]
mod log_summary_tests {
    #[test]
    fn an_exit_error_above_a_long_backtrace_is_kept() {
        let frames: Vec<String> = (0..60).map(|i| format!("  {i}: frame")).collect();
        let log = format!(
            "INFO starting\nError: cannot listen on 127.0.0.1:9\n\nStack backtrace:\n{}",
            frames.join("\n")
        );
        let summary = super::log_summary(&log);
        assert!(summary.starts_with("Error: cannot listen"), "{summary}");
        assert!(summary.ends_with("59: frame"), "{summary}");
    }
}
