//! The simulated brokers: one turmoil host per node, its logs on a [`SimIo`] that outlives
//! its crashes (so a power loss can drop what it never synced), the rest of its data dir
//! (identity files, written once and synced) in a real directory under the run's temp
//! working directory.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use sluice_broker::config::{Args, BrokerConfig};
use sluice_broker::node::{Node, Wiring};
use sluice_storage::io::SimIo;

use super::record::Recorder;

/// Client port of every simulated broker.
pub const CLIENT_PORT: u16 = 9092;
/// Raft port of every simulated broker.
pub const RAFT_PORT: u16 = 9093;

/// One simulated broker.
pub struct SimNode {
    /// Its node id (1-based).
    pub id: u64,
    /// Its host name.
    pub name: String,
    /// Its storage, kept across crashes.
    pub io: SimIo,
    /// The running node, while one is.
    pub node: Rc<RefCell<Weak<Node>>>,
    /// Whether an earlier crash damaged its disk.
    pub damaged: Rc<std::cell::Cell<bool>>,
    /// Whether it is down (crashed, not restarted yet).
    pub down: bool,
}

/// Host name of node `id`.
pub fn host(id: u64) -> String {
    format!("n{id}")
}

/// Every broker's client address.
pub fn brokers(nodes: usize) -> Vec<String> {
    (1..=nodes as u64)
        .map(|id| format!("{}:{CLIENT_PORT}", host(id)))
        .collect()
}

fn config(id: u64, nodes: usize, dir: &std::path::Path) -> BrokerConfig {
    let secret = dir.join("secret");
    std::fs::write(&secret, b"simulated-cluster-secret").expect("write the secret");
    let initial = (1..=nodes as u64)
        .map(|n| format!("{n}={}:{RAFT_PORT}", host(n)))
        .collect::<Vec<_>>()
        .join(",");
    let args = Args {
        data_dir: Some(dir.join("data")),
        listen: Some(([0, 0, 0, 0], CLIENT_PORT).into()),
        metrics_listen: Some(([127, 0, 0, 1], 0).into()),
        node_id: Some(id),
        raft_listen: Some(([0, 0, 0, 0], RAFT_PORT).into()),
        advertised_addr: Some(format!("{}:{CLIENT_PORT}", host(id))),
        initial_cluster: Some(initial),
        cluster_secret_file: Some(secret),
        offsets_topic_partitions: Some(2),
        // The simulated network has no loopback: every node binds 0.0.0.0.
        insecure_allow_plaintext: true,
        ..Args::default()
    };
    BrokerConfig::resolve(args).expect("a valid simulated config")
}

/// Registers node `id` of `nodes` with the simulation.
pub fn add_node(sim: &mut turmoil::Sim<'_>, id: u64, nodes: usize, recorder: &Recorder) -> SimNode {
    // Relative to the run's working directory (`run::run`): paths show up in error
    // messages sent over the simulated network, and a temp dir's random name would change
    // their encoded size (HPACK's Huffman code) and with it the run.
    let dir = std::path::PathBuf::from(host(id));
    std::fs::create_dir_all(&dir).expect("node dir");
    let config = config(id, nodes, &dir);
    let io = SimIo::new();
    let slot: Rc<RefCell<Weak<Node>>> = Rc::new(RefCell::new(Weak::new()));
    let damaged = Rc::new(std::cell::Cell::new(false));
    let name = host(id);
    {
        let io = io.clone();
        let slot = Rc::clone(&slot);
        let recorder = recorder.clone();
        let name = name.clone();
        let damaged = Rc::clone(&damaged);
        sim.host(name.clone(), move || {
            let config = config.clone();
            let io = io.clone();
            let slot = Rc::clone(&slot);
            let recorder = recorder.clone();
            let name = name.clone();
            let damaged = Rc::clone(&damaged);
            async move {
                if let Err(e) = serve(config, io, &slot).await {
                    // A node that cannot start (damaged storage, say) stays down until the
                    // next restart; the checks decide whether that broke a promise.
                    let why = format!("{e:#}");
                    recorder.event(&name, &format!("stopped: {why}"));
                    // Without injected damage, only a broken promise (an acknowledged sync
                    // that did not hold) can leave a log that fails below its checkpoint.
                    if why.contains("corruption") && !damaged.get() {
                        recorder.problem(format!(
                            "{name} found its durable data damaged though none was injected"
                        ));
                    }
                }
                Ok(())
            }
        });
    }
    SimNode {
        id,
        name,
        io,
        node: slot,
        damaged,
        down: false,
    }
}

async fn serve(
    config: BrokerConfig,
    io: SimIo,
    slot: &Rc<RefCell<Weak<Node>>>,
) -> anyhow::Result<()> {
    let address = config.advertised_addr.clone().unwrap_or_default();
    let raft_address = format!(
        "{}:{RAFT_PORT}",
        address.split(':').next().unwrap_or_default()
    );
    let client = super::net::listen(CLIENT_PORT).await?;
    let raft = super::net::listen(RAFT_PORT).await?;
    let wiring = Wiring::new(&config, Some(raft_address.clone()))?.with_io(Arc::new(io));
    let running = sluice_broker::server::start(
        config,
        address,
        Some(raft_address),
        wiring,
        client,
        Some(raft),
    )
    .await?;
    *slot.borrow_mut() = Arc::downgrade(&running.node);
    running.until_stopped(std::future::pending()).await
}

/// The simulation's wall clock: its epoch plus simulated time.
#[derive(Debug)]
pub struct SimClock;

impl sluice_storage::Clock for SimClock {
    fn now_ms(&self) -> i64 {
        turmoil::since_epoch()
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}
