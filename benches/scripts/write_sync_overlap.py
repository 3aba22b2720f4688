#!/usr/bin/env python3
"""What overlapping a round's page-cache write with the previous round's fdatasync is worth
on this disk, without Sluice.

serial: pwrite a round, fdatasync, repeat (a partition's group commit under openraft 0.9,
which waits for each append's flush). overlapped: a second thread syncs round N while the
writer writes round N+1 (depth two). Both drop pages 256 MiB behind the writer, as the log's
cached tail does. Prints MB/s for each, twice, alternating.
Usage: python3 write_sync_overlap.py [DIR] (DIR needs ~4 GiB free; default .).
Env: ROUND_KIB (default 1024), ROUNDS (1500).
"""
import os
import queue
import sys
import threading
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
ROUND = int(os.environ.get("ROUND_KIB", "1024")) << 10
ROUNDS = int(os.environ.get("ROUNDS", "1500"))
KEEP = 256 << 20
BUF = os.urandom(ROUND)


def open_file(name):
    fd = os.open(os.path.join(DIR, name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, 4 << 30)
    return fd


def close_file(fd, name):
    os.close(fd)
    os.unlink(os.path.join(DIR, name))


def release(fd, end):
    if end > KEEP + ROUND:
        os.posix_fadvise(fd, end - KEEP - ROUND, ROUND, os.POSIX_FADV_DONTNEED)


def serial():
    fd, end = open_file("overlap_serial.tmp"), 0
    start = time.perf_counter()
    for _ in range(ROUNDS):
        os.pwrite(fd, BUF, end)
        os.fdatasync(fd)
        end += ROUND
        release(fd, end)
    elapsed = time.perf_counter() - start
    close_file(fd, "overlap_serial.tmp")
    return ROUND * ROUNDS / elapsed / 1e6


def overlapped():
    fd, end = open_file("overlap_pipelined.tmp"), 0
    synced = queue.Queue(maxsize=1)

    def syncer():
        while (upto := synced.get()) is not None:
            os.fdatasync(fd)
            release(fd, upto)

    thread = threading.Thread(target=syncer)
    start = time.perf_counter()
    thread.start()
    for _ in range(ROUNDS):
        os.pwrite(fd, BUF, end)
        end += ROUND
        synced.put(end)  # waits while the previous round still syncs
    synced.put(None)
    thread.join()
    elapsed = time.perf_counter() - start
    close_file(fd, "overlap_pipelined.tmp")
    return ROUND * ROUNDS / elapsed / 1e6


if __name__ == "__main__":
    for run in (serial, overlapped, serial, overlapped):
        print(f"{run.__name__:>10}: {run():6.0f} MB/s  ({ROUND >> 10} KiB rounds)")
