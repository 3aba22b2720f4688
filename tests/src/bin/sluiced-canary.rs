//! `sluiced-canary`: `sluiced` with the deliberately broken behaviours that
//! `SLUICE_CANARIES` names (comma-separated, `sluice_storage::canary::Canary::name`) armed.
//! Test-only: it exists so the real-process fault tests can prove they catch a broken
//! broker (TESTPLAN, "negative controls"); `sluiced` itself cannot arm a canary.

use anyhow::Context;
use clap::Parser;
use sluice_broker::config::Args;
use sluice_storage::canary::{self, Canary};

fn main() -> anyhow::Result<()> {
    let names = std::env::var("SLUICE_CANARIES").unwrap_or_default();
    let canaries = names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| Canary::named(n).with_context(|| format!("unknown canary {n:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    canary::arm(&canaries);
    eprintln!("sluiced-canary: armed {names:?}");
    sluice_broker::server::run_process(Args::parse())
}
