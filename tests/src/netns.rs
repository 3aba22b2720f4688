//! Network namespaces for partition tests (TESTPLAN T12): one namespace per broker, joined
//! by veth pairs on a bridge in the test's own namespace, and links cut per direction with
//! blackhole routes (a packet from A to C is dropped by A's routing table, silently, as a
//! lost packet would be). The machine needs `ip` and `CAP_NET_ADMIN`; nftables is not
//! needed: a route per cut link does what a drop rule would.
//!
//! Client code runs inside a node's namespace on a thread of its own ([`Network::run_in`]),
//! so a client "beside" a node shares that node's side of every partition.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Networks made by this process so far (part of every name, with the process id).
static NETWORKS: AtomicU32 = AtomicU32::new(0);
/// Serializes choosing a free subnet between networks made at once.
static CREATING: Mutex<()> = Mutex::new(());

/// A bridge with one namespace per node; removed with everything in it when dropped.
pub struct Network {
    /// `slt-<pid>-<n>`: the namespaces are `<prefix>-<node>`.
    prefix: String,
    bridge: String,
    /// The third octet of `10.213.<subnet>.0/24`.
    subnet: u8,
    nodes: usize,
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

/// Runs `ip` with `args`, answering its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip`'s standard output for `args` (empty on failure).
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Network {
    /// A network of `nodes` namespaces, or why it cannot be made here (no `ip`, or no
    /// `CAP_NET_ADMIN`).
    pub fn create(nodes: usize) -> Result<Self, String> {
        assert!((1..=9).contains(&nodes), "1 to 9 nodes");
        remove_leftovers();
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let used = ip_output(&["-4", "route", "show"]);
        let subnet = (0..250u32)
            .map(|i| ((pid + n * 7 + i) % 250 + 1) as u8)
            .find(|s| !used.contains(&format!("10.213.{s}.")))
            .ok_or("no free 10.213.x.0/24 subnet")?;
        let network = Self {
            prefix: format!("slt-{pid:x}-{n:x}"),
            bridge: format!("sb{pid:x}-{n:x}"),
            subnet,
            nodes,
            cut: Mutex::new(BTreeSet::new()),
        };
        // Dropping a half-made network removes whatever part of it exists.
        network.build()?;
        Ok(network)
    }

    fn build(&self) -> Result<(), String> {
        let bridge = self.bridge.as_str();
        ip(&["link", "add", bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", self.subnet),
            "dev",
            bridge,
        ])?;
        ip(&["link", "set", bridge, "up"])?;
        for node in 0..self.nodes {
            let ns = self.namespace(node);
            let (host_end, node_end) = self.veth(node);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
            ])?;
            ip(&["link", "set", &node_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            let address = format!("{}/24", self.ip(node));
            ip(&["-n", &ns, "addr", "add", &address, "dev", &node_end])?;
            ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The (host, namespace) ends of `node`'s veth pair.
    fn veth(&self, node: usize) -> (String, String) {
        let tail = self.bridge.trim_start_matches("sb");
        (format!("sv{tail}{node}"), format!("sp{tail}{node}"))
    }

    /// `node`'s namespace name (for `ip netns exec`).
    pub fn namespace(&self, node: usize) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// `node`'s address, reachable from the test's namespace and the other nodes'.
    pub fn ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, node as u8 + 1)
    }

    /// Drops every packet `from` sends to `to` (one direction; TCP on the link stalls both
    /// ways, but what `from` had sent before still arrives).
    pub fn cut(&self, from: usize, to: usize) {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        if cut.insert((from, to)) {
            let route = format!("{}/32", self.ip(to));
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                "add",
                "blackhole",
                &route,
            ])
            .unwrap_or_else(|e| panic!("cut {from}→{to}: {e}"));
        }
    }

    /// Cuts `a`–`b` both ways.
    pub fn cut_both(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// `node` cut off from every other node both ways.
    pub fn isolate(&self, node: usize) {
        for other in (0..self.nodes).filter(|o| *o != node) {
            self.cut_both(node, other);
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        for (from, to) in std::mem::take(&mut *cut) {
            let route = format!("{}/32", self.ip(to));
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                "del",
                "blackhole",
                &route,
            ])
            .unwrap_or_else(|e| panic!("heal {from}→{to}: {e}"));
        }
    }

    /// Runs `work` on a new thread inside `node`'s namespace (every socket it opens is
    /// that node's), on a current-thread runtime of its own.
    pub fn run_in<F, T>(
        &self,
        node: usize,
        work: impl FnOnce() -> F + Send + 'static,
    ) -> std::thread::JoinHandle<T>
    where
        F: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.namespace(node));
        std::thread::spawn(move || {
            enter_namespace(&path);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(work())
        })
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter_namespace(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in 0..self.nodes {
            remove_namespace(&self.namespace(node));
            let _ = ip(&["link", "del", &self.veth(node).0]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Kills what still runs in namespace `ns` and removes it.
fn remove_namespace(ns: &str) {
    for pid in ip_output(&["netns", "pids", ns]).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes the namespaces and bridges of test processes that died without cleaning up.
fn remove_leftovers() {
    let dead = |pid_hex: &str| {
        u32::from_str_radix(pid_hex, 16)
            .map(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .unwrap_or(false)
    };
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(rest) = name.strip_prefix("slt-")
            && dead(rest.split('-').next().unwrap_or_default())
        {
            remove_namespace(name);
        }
    }
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(": ").nth(1).unwrap_or_default();
        if let Some(rest) = name.strip_prefix("sb")
            && dead(rest.split('-').next().unwrap_or_default())
        {
            let _ = ip(&["link", "del", name]);
        }
    }
}
