#!/usr/bin/env python3
"""What overlapping a round's page-cache write with disk writeback is worth on this disk,
without Sluice.

serial: pwrite a round, fdatasync, repeat (a partition's group commit under openraft 0.9,
which waits for each append's flush). overlapped: a second thread syncs round N while the
writer writes round N+1 (depth two). kicked: serial, but each round is written in 128 KiB
pieces with sync_file_range(SYNC_FILE_RANGE_WRITE) after each, so the disk starts on a round
while the rest of it is copied in (what the log does, `WRITEBACK_STEP_BYTES`). All drop pages
256 MiB behind the writer, as the log's cached tail does. Prints MB/s and the p50/p99 time of
one round for each, twice, alternating.
Usage: python3 write_sync_overlap.py [DIR] (DIR needs ~4 GiB free; default .).
Env: ROUND_KIB (default 1024), ROUNDS (1500), PIECE_KIB (128), HOGS (0: busy processes
competing for the CPU while it runs, as a slow spell of a shared host does).
"""
import ctypes
import multiprocessing
import os
import queue
import sys
import threading
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
ROUND = int(os.environ.get("ROUND_KIB", "1024")) << 10
ROUNDS = int(os.environ.get("ROUNDS", "1500"))
PIECE = int(os.environ.get("PIECE_KIB", "128")) << 10
HOGS = int(os.environ.get("HOGS", "0"))
KEEP = 256 << 20
BUF = os.urandom(ROUND)
SYNC_FILE_RANGE_WRITE = 2
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


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


def percentiles(rounds):
    rounds.sort()
    return rounds[len(rounds) // 2] * 1e3, rounds[int(len(rounds) * 0.99)] * 1e3


def serial(kick=False):
    name = "overlap_kicked.tmp" if kick else "overlap_serial.tmp"
    fd, end, rounds = open_file(name), 0, []
    start = time.perf_counter()
    for _ in range(ROUNDS):
        began = time.perf_counter()
        if kick:
            for at in range(0, ROUND, PIECE):
                os.pwrite(fd, BUF[at : at + PIECE], end + at)
                if LIBC.sync_file_range(fd, end + at, PIECE, SYNC_FILE_RANGE_WRITE) != 0:
                    raise OSError(ctypes.get_errno(), "sync_file_range")
        else:
            os.pwrite(fd, BUF, end)
        os.fdatasync(fd)
        rounds.append(time.perf_counter() - began)
        end += ROUND
        release(fd, end)
    elapsed = time.perf_counter() - start
    close_file(fd, name)
    return ROUND * ROUNDS / elapsed / 1e6, *percentiles(rounds)


def kicked():
    return serial(kick=True)


def overlapped():
    fd, end = open_file("overlap_pipelined.tmp"), 0
    synced = queue.Queue(maxsize=1)

    def syncer():
        while (upto := synced.get()) is not None:
            os.fdatasync(fd)
            release(fd, upto)

    thread = threading.Thread(target=syncer)
    start, rounds = time.perf_counter(), []
    thread.start()
    for _ in range(ROUNDS):
        began = time.perf_counter()
        os.pwrite(fd, BUF, end)
        end += ROUND
        synced.put(end)  # waits while the previous round still syncs
        rounds.append(time.perf_counter() - began)
    synced.put(None)
    thread.join()
    elapsed = time.perf_counter() - start
    close_file(fd, "overlap_pipelined.tmp")
    # A round's time here is its write plus the wait for the previous sync, not its own sync.
    return ROUND * ROUNDS / elapsed / 1e6, *percentiles(rounds)


def hog():
    while True:
        pass


if __name__ == "__main__":
    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(HOGS)]
    for h in hogs:
        h.start()
    for run in (serial, overlapped, kicked, serial, overlapped, kicked):
        mb, p50, p99 = run()
        print(
            f"{run.__name__:>10}: {mb:6.0f} MB/s  round p50 {p50:5.2f} p99 {p99:6.2f} ms"
            f"  ({ROUND >> 10} KiB rounds, {HOGS} hogs)"
        )
    for h in hogs:
        h.terminate()
