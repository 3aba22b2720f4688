#!/usr/bin/env python3
"""Buffered 1 MiB writes + fdatasync at a fixed rate into an fallocated file, with and
without dropping the pages KEEP_MIB behind the writer after each sync.

Shows whether filling fresh page-cache pages is expensive on this machine (on the shared VMs
we measure on it is: the host backs a guest page on first touch) and that reusing freed pages
avoids it. Usage: python3 page_cache_reuse.py [DIR] (DIR needs ~4 GiB free; default .).
Env: KEEP_MIB (default 256), RATE_MBS (150), SECONDS (15).
"""
import os
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
KEEP = int(os.environ.get("KEEP_MIB", "256")) << 20
RATE = float(os.environ.get("RATE_MBS", "150")) * 1e6
SECONDS = float(os.environ.get("SECONDS", "15"))
SIZE = 1 << 20


def run(drop):
    path = os.path.join(DIR, "page_cache_reuse.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, 4 << 30)
        buf = os.urandom(SIZE)
        writes, off = [], 0
        start = time.perf_counter()
        due = start
        while time.perf_counter() - start < SECONDS and off + SIZE <= 4 << 30:
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            t = time.perf_counter()
            os.pwrite(fd, buf, off)
            writes.append(time.perf_counter() - t)
            os.fdatasync(fd)
            off += SIZE
            due += SIZE / RATE
            if drop and off > KEEP + SIZE:
                os.posix_fadvise(fd, off - KEEP - SIZE, SIZE, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        os.unlink(path)
    # The first fifth can land on warm free memory; the rest shows the steady state.
    steady = sorted(writes[len(writes) // 5:])
    p = lambda q: steady[min(len(steady) - 1, int(q * len(steady)))] * 1000
    label = f"drop pages {KEEP >> 20} MiB behind" if drop else "leave pages to the kernel"
    print(f"{label:28} pwrite of 1 MiB: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms")


for drop in (False, True, False, True):
    run(drop)
    time.sleep(5)
