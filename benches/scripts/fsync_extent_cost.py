#!/usr/bin/env python3
"""What an fdatasync of a 400 KB write costs by the state of the blocks written to.

fallocate: blocks reserved as unwritten extents (the broker's active segment), so each
sync also commits the extent conversion to the journal; zeroed: blocks written and synced
beforehand (overwrite in place, data only); append: the file grows with every write.

    python3 benches/scripts/fsync_extent_cost.py [DIR]

DIR defaults to the current directory and needs ~512 MiB free.
"""
import os
import sys
import time

TOTAL = 512 << 20
CHUNK = 400 << 10


def run(path, mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if mode == "fallocate":
            os.posix_fallocate(fd, 0, TOTAL)
        elif mode == "zeroed":
            zeros = b"\0" * (8 << 20)
            for i in range(TOTAL // len(zeros)):
                os.pwrite(fd, zeros, i * len(zeros))
            os.fsync(fd)
        data = b"x" * CHUNK
        latencies = []
        offset = 0
        while offset + CHUNK <= TOTAL:
            os.pwrite(fd, data, offset)
            offset += CHUNK
            start = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.0005)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    n = len(latencies)
    ms = lambda q: latencies[min(n - 1, int(n * q))] * 1e3
    print(f"{mode:10s} syncs {n}  p50 {ms(0.5):.2f}  p99 {ms(0.99):.2f}  max {latencies[-1] * 1e3:.2f} ms")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    path = os.path.join(directory, "fsync_extent_cost.dat")
    for mode in ["fallocate", "zeroed", "append"] * 2:
        run(path, mode)


if __name__ == "__main__":
    main()
