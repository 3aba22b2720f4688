#!/usr/bin/env bash
# Three local nats-server processes (Debian's `nats-server`) with JetStream, an R3 stream of
# 1 KiB messages, publishes for $1 seconds (default 10). Needs `cargo build --release` here.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf /tmp/sluice-nats-data; mkdir -p /tmp/sluice-nats-data
pids=()
for i in 1 2 3; do
  nats-server -c "$here/conf/n$i.conf" > "/tmp/sluice-nats-data/n$i.log" 2>&1 &
  pids+=($!)
done
# Ready once a stream can be made (the JetStream cluster has elected its meta leader).
for _ in $(seq 1 60); do
  if timeout 5 "$here/target/release/nats-bench" 1 >/dev/null 2>&1; then break; fi
  sleep 0.5
done
REPLICAS="${REPLICAS:-3}" "$here/target/release/nats-bench" "${1:-10}"
kill "${pids[@]}"; wait 2>/dev/null
