//! The nemesis: seeded faults between `from` and `until` of simulated time (crashes with
//! power loss, whole-cluster power cuts, disk damage on a crashed minority, partitions
//! including one-way and bridges, held links, fsync errors, a full disk), then healing.

use std::time::Duration;

use sluice_protocol::entropy::SplitMix64;
use sluice_storage::io::PowerLoss;

use super::cluster::SimNode;
use super::record::Recorder;

/// The nemesis's replayable choices.
pub struct Rng(SplitMix64);

impl Rng {
    /// A sequence from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64(seed ^ 0x5EED_F00D_0BAD_CAFE))
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// A duration in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// Something to do later: undo a fault, or the next step of a scripted scenario.
enum Undo {
    Restart(usize),
    Crash(usize),
    CrashDamagingDurable(usize),
    Repair(String, String),
    RepairOneWay(String, String),
    Release(String, String),
    ClearFaults(usize),
    CrashAndRestart(usize),
}

/// The fault schedule of one run.
pub struct Nemesis {
    rng: Rng,
    from: Duration,
    until: Duration,
    next_at: Duration,
    undo: Vec<(Duration, Undo)>,
    /// Nodes that may be down or damaged at once (a minority).
    max_down: usize,
    healed: bool,
    /// Where the lagging-quorum victim's partition logs ended when its peer fell behind.
    lag_checkpoints: std::collections::BTreeMap<std::path::PathBuf, (u64, u64)>,
    /// When to stage the lagging-quorum scenario (every other seed of a 3-node cluster).
    scenario_at: Option<Duration>,
    /// Whether the scenario damages bytes above the victim's recovery checkpoint (where
    /// recovery cuts and the replica is suspect) rather than below (where it refuses).
    damage_above: bool,
    /// The hosts of the clients whose links may be held or cut.
    clients: Vec<String>,
}

impl Nemesis {
    /// Faults for `nodes` nodes from `from` to `until`.
    pub fn new(
        seed: u64,
        nodes: usize,
        clients: Vec<String>,
        from: Duration,
        until: Duration,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let scenario_at =
            (nodes == 3 && seed.is_multiple_of(2)).then(|| from + rng.millis(2000, 8000));
        // Half the scenario seeds each way, unless `SLUICE_DST_DAMAGE` says which.
        let damage_above = match std::env::var("SLUICE_DST_DAMAGE").as_deref() {
            Ok("above-checkpoint") => true,
            Ok("below-checkpoint") => false,
            _ => seed % 4 == 2,
        };
        Self {
            scenario_at,
            damage_above,
            clients,
            rng,
            from,
            until,
            next_at: from,
            undo: Vec::new(),
            max_down: (nodes - 1) / 2,
            healed: false,
            lag_checkpoints: std::collections::BTreeMap::new(),
        }
    }

    /// Called before every step: injects what is due and undoes what has run its course.
    pub fn tick(&mut self, sim: &mut turmoil::Sim<'_>, nodes: &mut [SimNode], recorder: &Recorder) {
        let now = sim.elapsed();
        if now >= self.until {
            if !self.healed {
                self.heal(sim, nodes, recorder);
            }
            return;
        }
        let due: Vec<Undo> = {
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.undo)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.undo = keep;
            due.into_iter().map(|(_, u)| u).collect()
        };
        for undo in due {
            self.apply_undo(sim, nodes, recorder, undo);
        }
        if self.scenario_at.is_some_and(|at| now >= at) && Self::down(nodes) == 0 {
            self.scenario_at = None;
            let c = self.rng.below(nodes.len() as u64) as usize;
            self.lagging_quorum(sim, nodes, recorder, c);
            return;
        }
        if now >= self.from && now >= self.next_at {
            // A scripted scenario sets a later next_at itself.
            self.next_at = now + self.rng.millis(200, 1500);
            self.inject(sim, nodes, recorder);
        }
    }

    fn apply_undo(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
        undo: Undo,
    ) {
        let at = sim.elapsed().as_millis();
        match undo {
            Undo::Restart(i) => {
                if let Some(node) = nodes.get_mut(i) {
                    recorder.fault(at, &format!("restart {}", node.name));
                    node.io.clear_faults();
                    node.down = false;
                    sim.bounce(node.name.clone());
                }
            }
            Undo::Repair(a, b) => sim.repair(a, b),
            Undo::RepairOneWay(a, b) => sim.repair_oneway(a, b),
            Undo::Release(a, b) => sim.release(a, b),
            Undo::ClearFaults(i) => {
                if let Some(node) = nodes.get(i) {
                    node.io.clear_faults();
                }
            }
            Undo::Crash(i) => {
                if nodes.get(i).is_some_and(|n| !n.down) {
                    self.crash(sim, nodes, recorder, i);
                }
            }
            Undo::CrashDamagingDurable(i) => {
                if nodes.get(i).is_some_and(|n| !n.down) {
                    self.crash(sim, nodes, recorder, i);
                    self.damage_durable(nodes, recorder, i, at);
                }
            }
            Undo::CrashAndRestart(i) => {
                if nodes.get(i).is_some_and(|n| !n.down) {
                    self.crash(sim, nodes, recorder, i);
                    let back = sim.elapsed() + self.rng.millis(300, 2000);
                    self.undo.push((back, Undo::Restart(i)));
                }
            }
        }
    }

    fn crash(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
        i: usize,
    ) {
        let seed = self.rng.next();
        let Some(node) = nodes.get_mut(i) else { return };
        recorder.fault(
            sim.elapsed().as_millis(),
            &format!("power loss {}", node.name),
        );
        sim.crash(node.name.clone());
        node.io.power_loss(PowerLoss::KeepRandomPrefix { seed });
        node.down = true;
    }

    fn down(nodes: &[SimNode]) -> usize {
        nodes.iter().filter(|n| n.down).count()
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, nodes: &mut [SimNode], recorder: &Recorder) {
        let i = self.rng.below(nodes.len() as u64) as usize;
        let name = nodes
            .get(i)
            .map(|node| node.name.clone())
            .unwrap_or_default();
        let others: Vec<String> = nodes
            .iter()
            .filter(|node| node.name != name)
            .map(|node| node.name.clone())
            .collect();
        let at = sim.elapsed().as_millis();
        match self.rng.below(100) {
            0..=24 => self.power_loss_one(sim, nodes, recorder, i),
            25..=27 => self.power_loss_all(sim, nodes, recorder),
            28..=37 => self.client_link(sim, recorder, &name),
            38..=56 => {
                recorder.fault(at, &format!("isolate {name}"));
                let heal = sim.elapsed() + self.rng.millis(500, 5000);
                for other in others {
                    sim.partition(name.clone(), other.clone());
                    self.undo.push((heal, Undo::Repair(name.clone(), other)));
                }
            }
            57..=66 => self.one_way(sim, recorder, &name, others),
            67..=74 => self.pair_fault(sim, recorder, &name, &others, false),
            75..=84 => self.pair_fault(sim, recorder, &name, &others, true),
            85..=92 => self.fsync_errors(sim, nodes, recorder, i),
            _ => {
                let Some(node) = nodes.get(i) else { return };
                recorder.fault(at, &format!("disk full on {name}"));
                node.io
                    .set_space_limit(Some(node.io.used_bytes() + 64 * 1024));
                let until = sim.elapsed() + self.rng.millis(500, 3000);
                self.undo.push((until, Undo::ClearFaults(i)));
            }
        }
    }

    /// A crash with power loss, sometimes damaging the disk of a (minority) node.
    fn power_loss_one(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
        i: usize,
    ) {
        if Self::down(nodes) >= self.max_down || nodes.get(i).is_none_or(|node| node.down) {
            return;
        }
        self.crash(sim, nodes, recorder, i);
        if self.rng.below(3) == 0 {
            self.damage(nodes, recorder, i, sim.elapsed().as_millis());
        }
        let back = sim.elapsed() + self.rng.millis(300, 4000);
        self.undo.push((back, Undo::Restart(i)));
    }

    /// Every running node loses power at once.
    fn power_loss_all(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
    ) {
        for j in 0..nodes.len() {
            if nodes.get(j).is_some_and(|node| !node.down) {
                self.crash(sim, nodes, recorder, j);
                let back = sim.elapsed() + self.rng.millis(500, 3000);
                self.undo.push((back, Undo::Restart(j)));
            }
        }
    }

    /// A client's link to broker `name` held (requests and answers arrive late, after the
    /// client's timeout and retry: T15) or cut.
    fn client_link(&mut self, sim: &mut turmoil::Sim<'_>, recorder: &Recorder, name: &str) {
        let pick = self.rng.below(self.clients.len() as u64) as usize;
        let Some(client) = self.clients.get(pick).cloned() else {
            return;
        };
        let at = sim.elapsed().as_millis();
        let heal = sim.elapsed() + self.rng.millis(500, 6000);
        if self.rng.below(2) == 0 {
            recorder.fault(at, &format!("hold {client} - {name}"));
            sim.hold(client.clone(), name.to_string());
            self.undo
                .push((heal, Undo::Release(client, name.to_string())));
        } else {
            recorder.fault(at, &format!("cut {client} - {name}"));
            sim.partition(client.clone(), name.to_string());
            self.undo
                .push((heal, Undo::Repair(client, name.to_string())));
        }
    }

    /// A node hears the others but they do not hear it (or the reverse).
    fn one_way(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        recorder: &Recorder,
        name: &str,
        others: Vec<String>,
    ) {
        let heal = sim.elapsed() + self.rng.millis(500, 5000);
        let outbound = self.rng.below(2) == 0;
        let direction = if outbound { "from" } else { "to" };
        recorder.fault(
            sim.elapsed().as_millis(),
            &format!("one-way {direction} {name}"),
        );
        for other in others {
            let (a, b) = if outbound {
                (name.to_string(), other)
            } else {
                (other, name.to_string())
            };
            sim.partition_oneway(a.clone(), b.clone());
            self.undo.push((heal, Undo::RepairOneWay(a, b)));
        }
    }

    /// Two nodes cannot talk (a bridge: both talk to the rest), or their messages are held
    /// and then delivered late in a burst.
    fn pair_fault(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        recorder: &Recorder,
        name: &str,
        others: &[String],
        hold: bool,
    ) {
        let Some(other) = others
            .get(self.rng.below(others.len() as u64) as usize)
            .cloned()
        else {
            return;
        };
        let (name, at) = (name.to_string(), sim.elapsed().as_millis());
        if hold {
            recorder.fault(at, &format!("hold {name} - {other}"));
            sim.hold(name.clone(), other.clone());
            let release = sim.elapsed() + self.rng.millis(200, 2000);
            self.undo.push((release, Undo::Release(name, other)));
        } else {
            recorder.fault(at, &format!("cut {name} - {other}"));
            sim.partition(name.clone(), other.clone());
            let heal = sim.elapsed() + self.rng.millis(500, 5000);
            self.undo.push((heal, Undo::Repair(name, other)));
        }
    }

    /// fsync fails (fsyncgate): the node must not acknowledge, then it crashes.
    fn fsync_errors(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
        i: usize,
    ) {
        if Self::down(nodes) >= self.max_down || nodes.get(i).is_none_or(|node| node.down) {
            return;
        }
        let Some(node) = nodes.get(i) else { return };
        recorder.fault(
            sim.elapsed().as_millis(),
            &format!("fsync errors on {}", node.name),
        );
        node.io.set_fail_sync(true);
        let crash = sim.elapsed() + self.rng.millis(100, 1000);
        self.undo.push((crash, Undo::CrashAndRestart(i)));
    }

    /// A replica (B) falls behind while the others (C, X) commit; C loses power and its disk
    /// is damaged below its recovery checkpoint (durable, acknowledged entries B lacks); X
    /// goes down; B comes back and C restarts. B and C are a majority: if C counted as whole
    /// they could elect a leader without those entries and lose them. A correct C keeps its
    /// damaged partitions out of every quorum until X is back.
    fn lagging_quorum(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &mut [SimNode],
        recorder: &Recorder,
        c: usize,
    ) {
        let n = nodes.len();
        if n != 3 || Self::down(nodes) > 0 {
            return;
        }
        let (b, x) = ((c + 1) % n, (c + 2) % n);
        let now = sim.elapsed();
        let (Some(lagging), Some(other), Some(damaged)) =
            (nodes.get(b), nodes.get(x), nodes.get(c))
        else {
            return;
        };
        let (lagging, other, damaged) = (
            lagging.name.clone(),
            other.name.clone(),
            damaged.name.clone(),
        );
        recorder.fault(
            now.as_millis(),
            &format!("lagging quorum: {lagging} behind, {damaged} damaged, {other} down"),
        );
        self.lag_checkpoints = nodes
            .get(c)
            .map(|node| {
                partition_dirs(node)
                    .into_iter()
                    .filter_map(|dir| {
                        let (base, _) = sluice_storage::recovery_checkpoint(&node.io, &dir)?;
                        Some((dir.clone(), (base, written_end(node, &dir, base))))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let back = now + Duration::from_millis(3000);
        for peer in [&other, &damaged] {
            sim.partition(lagging.clone(), peer.clone());
            self.undo
                .push((back, Undo::Repair(lagging.clone(), peer.clone())));
        }
        self.undo.push((
            now + Duration::from_millis(2000),
            Undo::CrashDamagingDurable(c),
        ));
        self.undo
            .push((now + Duration::from_millis(2200), Undo::Crash(x)));
        self.undo.push((back, Undo::Restart(c)));
        // Long enough for the two to elect (after C's restart and recovery).
        self.undo
            .push((now + Duration::from_millis(12000), Undo::Restart(x)));
        self.next_at = now + Duration::from_millis(13000);
    }

    /// Damages durable data of a crashed node: the last few hundred bytes below (or above,
    /// `damage_above`) the recovery checkpoint of one of its partition logs (a bit flip, a
    /// cut, or zeroes), in bytes its lagging peer lacks.
    fn damage_durable(&mut self, nodes: &mut [SimNode], recorder: &Recorder, i: usize, at: u128) {
        let Some(node) = nodes.get_mut(i) else { return };
        // Only bytes written since the peer fell behind: what it lacks.
        let candidates: Vec<(std::path::PathBuf, u64, u64, u64)> = partition_dirs(node)
            .into_iter()
            .filter_map(|dir| {
                let (base, checkpoint) = sluice_storage::recovery_checkpoint(&node.io, &dir)?;
                let then = match self.lag_checkpoints.get(&dir) {
                    Some((then_base, then)) if *then_base == base => *then,
                    Some(_) => return None,
                    None => 0,
                };
                // Above the checkpoint: recovery cannot tell this damage from a torn tail,
                // and cuts; the replica must then not vote as if whole (`raft::suspect`).
                let (from, to) = if self.damage_above {
                    (then.max(checkpoint), written_end(node, &dir, base))
                } else {
                    (then, checkpoint)
                };
                (to > from).then_some((dir, base, from, to))
            })
            .collect();
        let Some((dir, base, then, position)) = candidates
            .get(self.rng.below(candidates.len() as u64) as usize)
            .cloned()
        else {
            let now: Vec<_> = partition_dirs(node)
                .iter()
                .map(|d| sluice_storage::recovery_checkpoint(&node.io, d))
                .collect();
            recorder.fault(
                at,
                &format!(
                    "no durable bytes to damage: checkpoints then {:?}, now {now:?}",
                    self.lag_checkpoints.values().collect::<Vec<_>>()
                ),
            );
            return;
        };
        let path = dir.join(format!("{base:020}.log"));
        let bytes = node.io.file_bytes(&path).unwrap_or_default();
        let at_byte = then + self.rng.below(position - then);
        node.damaged.set(true);
        let file = relative(&path);
        match self.rng.below(2) {
            0 => {
                recorder.fault(
                    at,
                    &format!("bit flip in durable {file} at {at_byte} (of {then}..{position})"),
                );
                let _ = node.io.corrupt(&path, at_byte, 1 << self.rng.below(8));
            }
            _ => {
                recorder.fault(
                    at,
                    &format!("cut durable {file} at {at_byte} (of {then}..{position})"),
                );
                node.io
                    .put_file(&path, bytes.get(..at_byte as usize).unwrap_or_default());
            }
        }
    }

    /// Damages a crashed node's partition logs (only ever one node per run: a minority).
    fn damage(&mut self, nodes: &mut [SimNode], recorder: &Recorder, i: usize, at: u128) {
        // One damaged node per run (a minority): the scenario's, when it has one.
        if self.scenario_at.is_some()
            || nodes
                .iter()
                .enumerate()
                .any(|(j, n)| n.damaged.get() && j != i)
        {
            return;
        }
        let Some(node) = nodes.get_mut(i) else { return };
        let logs: Vec<_> = node
            .io
            .paths()
            .into_iter()
            .filter(|p| {
                let text = p.to_string_lossy();
                text.contains("/events/") && text.ends_with(".log")
            })
            .collect();
        let Some(path) = logs.get(self.rng.below(logs.len() as u64) as usize) else {
            return;
        };
        let bytes = node.io.file_bytes(path).unwrap_or_default();
        if bytes.is_empty() {
            return;
        }
        node.damaged.set(true);
        let position = self.rng.below(bytes.len() as u64);
        let file = relative(path);
        match self.rng.below(3) {
            0 => {
                recorder.fault(at, &format!("bit flip in {file} at {position}"));
                let _ = node.io.corrupt(path, position, 1 << self.rng.below(8));
            }
            1 => {
                recorder.fault(at, &format!("truncate {file} to {position}"));
                node.io
                    .put_file(path, bytes.get(..position as usize).unwrap_or_default());
            }
            _ => {
                let chunk = position / 4096 * 4096;
                recorder.fault(at, &format!("zero 4 KiB of {file} at {chunk}"));
                let mut damaged = bytes.clone();
                let end = (chunk as usize + 4096).min(damaged.len());
                if let Some(range) = damaged.get_mut(chunk as usize..end) {
                    range.fill(0);
                }
                node.io.put_file(path, &damaged);
            }
        }
    }

    /// Ends every fault: links repaired, faults cleared, every node running.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, nodes: &mut [SimNode], recorder: &Recorder) {
        self.healed = true;
        recorder.fault(sim.elapsed().as_millis(), "heal");
        for (_, undo) in std::mem::take(&mut self.undo) {
            match undo {
                Undo::Repair(a, b) => sim.repair(a, b),
                Undo::RepairOneWay(a, b) => sim.repair_oneway(a, b),
                Undo::Release(a, b) => sim.release(a, b),
                // A node whose fsyncs failed has logs that refuse writes until reopened: the
                // crash that fault promises happens now (the loop below restarts it), as an
                // operator would restart it, rather than leave it failed for ever.
                Undo::CrashAndRestart(i) => {
                    if nodes.get(i).is_some_and(|n| !n.down) {
                        self.crash(sim, nodes, recorder, i);
                    }
                }
                Undo::Restart(_)
                | Undo::Crash(_)
                | Undo::CrashDamagingDurable(_)
                | Undo::ClearFaults(_) => {}
            }
        }
        for node in nodes.iter_mut() {
            node.io.clear_faults();
            if node.down {
                node.down = false;
                sim.bounce(node.name.clone());
            }
        }
    }
}

/// A path relative to its node's data dir: temp dir names differ between runs.
fn relative(path: &std::path::Path) -> String {
    path.to_string_lossy()
        .split_once("/data/")
        .map_or_else(|| path.display().to_string(), |(_, rest)| rest.to_string())
}

/// The directories of a node's partition logs of the workload's topic, in order.
fn partition_dirs(node: &SimNode) -> Vec<std::path::PathBuf> {
    let dirs: std::collections::BTreeSet<std::path::PathBuf> = node
        .io
        .paths()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/events/"))
        .filter_map(|p| p.parent().map(std::path::Path::to_path_buf))
        .collect();
    dirs.into_iter().collect()
}

/// Where the written bytes of segment `base` in `dir` end (the rest is reserved zeroes).
fn written_end(node: &SimNode, dir: &std::path::Path, base: u64) -> u64 {
    let bytes = node
        .io
        .file_bytes(&dir.join(format!("{base:020}.log")))
        .unwrap_or_default();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}
