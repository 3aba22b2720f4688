//! `sluiced`: the Sluice broker.

use clap::Parser;
use sluice_broker::config::Args;

fn main() -> anyhow::Result<()> {
    sluice_broker::server::run_process(Args::parse())
}
