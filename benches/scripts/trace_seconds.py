#!/usr/bin/env python3
"""Per-second produce latency from a load generator trace (LOADGEN_TRACE=FILE).

Each trace line is "send_time_us latency_us"; lines starting with # are comments. Prints,
for each second of sends, the records sent and their p50/p99/max latency in ms, so a run
that tips into an overloaded spell shows when it did and whether it came back.
Usage: python3 trace_seconds.py TRACE [TRACE...]
"""
import sys
from collections import defaultdict


def summarise(path):
    by_second = defaultdict(list)
    with open(path) as trace:
        for line in trace:
            if line.startswith("#") or not line.strip():
                continue
            sent, latency = line.split()
            by_second[int(sent) // 1_000_000].append(int(latency))
    print(path)
    for second in sorted(by_second):
        lat = sorted(by_second[second])
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(
            f"  {second:3d} s  {len(lat):7d} records  p50 {p50 / 1e3:6.1f}  "
            f"p99 {p99 / 1e3:6.1f}  max {lat[-1] / 1e3:6.1f} ms"
        )


if __name__ == "__main__":
    for path in sys.argv[1:]:
        summarise(path)
