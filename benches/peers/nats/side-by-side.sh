#!/usr/bin/env bash
# Sluice RF=3 (three local sluiced) and NATS JetStream R3 (three local nats-server), 1 KiB
# records, alternately, each beside the disk's raw rate that loadgen measures in its run.
# Build first: `cargo build --release --bins` at the repository root, and
# `cargo build --release` here; `apt-get install -y nats-server`.
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
for i in 1 2; do
  echo "=== round $i"
  SLUICED="$root/target/release/sluiced" LOADGEN_REPLICAS=3 LOADGEN_PARTITIONS=1 \
    LOADGEN_PRODUCE_ONLY=1 LOADGEN_PACED_SECONDS=5 LOADGEN_NO_FLOOR=1 \
    "$root/target/release/loadgen" 5 2>&1 | grep -E 'storage-only|RF=3'
  "$here/run.sh" 10
done
