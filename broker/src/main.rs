//! `sluiced`: the Sluice broker.

fn main() {}
