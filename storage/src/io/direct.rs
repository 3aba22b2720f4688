//! Reads that bypass the page cache (`O_DIRECT`) into a pool of reused buffers, for ranges
//! the log has released from memory (decision 43, docs/storage.md "Reads of released
//! ranges").
//!
//! On the VMs we run on, filling a page-cache page the guest has not used recently costs
//! about four times the disk's own read of it; a catch-up consumer faulting a released
//! range in through the mapping pays that on every page. A direct read into a buffer this
//! process already touched pays only the disk, and leaves the page cache to the tail.
//!
//! Reads go by aligned windows of [`DIRECT_READ_BYTES_MAX`]. The last few windows are kept,
//! so consecutive reads of one consumer (each a response's worth) share one disk read, and
//! the window after one that was read is read ahead on a background thread, so the disk
//! works while the previous window travels to the consumer.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Alignment of a direct read's file offset, length and buffer address: the largest logical
/// block size in use (4 KiB disks), which also satisfies 512-byte ones.
const ALIGN: usize = 4096;

/// The size of one window, and the most one read returns.
pub const DIRECT_READ_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Windows kept for later reads, across all files (each holds one buffer).
const WINDOWS_KEPT: usize = 8;

/// Buffers kept for reuse once their last slice is dropped; beyond that they are freed.
const POOL_BUFFERS_MAX: usize = 16;

/// Windows read ahead of the one a read falls in. Four, read by two threads, keep this
/// disk busy while the reader is slowed by the CPU it shares with them: two ahead read by
/// one thread left the disk reading one window at a time, and a catch-up consumer at
/// 0.61–0.69× the disk's `O_DIRECT` read, against 0.78–0.80× (benchmarks.md, "Catch-up").
const READ_AHEAD_WINDOWS: u64 = 4;

/// Threads reading windows ahead, across all files.
const READ_AHEAD_THREADS: usize = 2;

/// Read-ahead jobs waiting for a thread; more are dropped (the reader reads itself).
const READ_AHEAD_QUEUE: usize = 16;

/// The buffer length: a window plus one block for aligning its start.
const BUFFER_BYTES: usize = DIRECT_READ_BYTES_MAX + ALIGN;

/// Buffers whose slices are all gone, ready to be read into again.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The windows kept, and those being read ahead.
static KEPT: Mutex<Kept> = Mutex::new(Kept {
    windows: VecDeque::new(),
    in_flight: Vec::new(),
});

/// Signalled when a window read ahead is kept (or failed).
static LANDED: Condvar = Condvar::new();

/// How long a reader waits for the window being read ahead for it before reading itself.
const READ_AHEAD_WAIT: Duration = Duration::from_millis(200);

/// The windows kept, oldest first, and the windows being read ahead.
struct Kept {
    windows: VecDeque<Window>,
    /// File id, start and end of each window being read ahead.
    in_flight: Vec<(u64, u64, u64)>,
}

impl Kept {
    /// The bytes from `position` of the kept window holding `[position, position + len)`
    /// of file `id`.
    fn find(&self, id: u64, position: u64, len: usize) -> Option<Bytes> {
        self.windows
            .iter()
            .rev()
            .find_map(|w| w.from(id, position, len))
    }

    fn in_flight(&self, id: u64, position: u64) -> bool {
        self.in_flight
            .iter()
            .any(|&(file, start, end)| file == id && start <= position && position < end)
    }
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes read past the page cache by this process, for the broker's metrics.
static DIRECT_READ_BYTES: AtomicU64 = AtomicU64::new(0);

/// Identities of open files, for the windows kept.
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// The bytes this process has read past the page cache so far (a counter).
pub fn direct_read_bytes() -> u64 {
    DIRECT_READ_BYTES.load(Ordering::Relaxed)
}

/// Bytes of one file from `start`, read past the page cache.
struct Window {
    file: u64,
    start: u64,
    bytes: Bytes,
}

impl Window {
    /// The window's bytes from `position` on, if it holds `[position, position + len)`.
    fn from(&self, file: u64, position: u64, len: usize) -> Option<Bytes> {
        let offset = usize::try_from(position.checked_sub(self.start)?).ok()?;
        (self.file == file && offset + len <= self.bytes.len()).then(|| self.bytes.slice(offset..))
    }
}

fn take_buffer() -> Vec<u8> {
    let pooled = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    // Zeroed once, when first allocated: a reused buffer is read into as it is.
    pooled.unwrap_or_else(|| vec![0; BUFFER_BYTES])
}

/// A pooled buffer owning the bytes of one direct read; it returns to the pool when the
/// last `Bytes` slice of it is dropped.
struct PooledBuffer(Vec<u8>);

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_BUFFERS_MAX {
            pool.push(buffer);
        }
    }
}

/// What a file's direct reads share with the read-ahead thread.
#[derive(Debug)]
struct Shared {
    id: u64,
    /// `None` when the file system refuses `O_DIRECT` (tmpfs): reads use the mapping.
    file: OnceLock<Option<File>>,
    /// Bumped (under the windows' lock) when the file's bytes change below what was read,
    /// so a read that raced the change is not kept.
    generation: AtomicU64,
}

/// A second, `O_DIRECT` descriptor of an open file, opened on first use, and its windows.
#[derive(Debug)]
pub(super) struct DirectHandle(Arc<Shared>);

impl Default for DirectHandle {
    fn default() -> Self {
        Self(Arc::new(Shared {
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            file: OnceLock::new(),
            generation: AtomicU64::new(0),
        }))
    }
}

impl DirectHandle {
    /// At least `len` bytes at `position` of `file`, and up to the end of their window but
    /// not past `limit`, read past the page cache; `None` when direct reads are not possible
    /// here (the caller reads the mapping) or `len` exceeds [`DIRECT_READ_BYTES_MAX`].
    pub(super) fn read(
        &self,
        file: &File,
        position: u64,
        len: usize,
        limit: u64,
    ) -> io::Result<Option<Bytes>> {
        let end = position.saturating_add(len as u64);
        if len == 0 || len > DIRECT_READ_BYTES_MAX || end > limit {
            return Ok(None);
        }
        let shared = &self.0;
        if shared.file.get_or_init(|| open_direct(file)).is_none() {
            return Ok(None);
        }
        // Windows lie on a fixed grid, so the window read ahead is the one the next read
        // needs; a batch across a grid line is read on its own.
        let grid = DIRECT_READ_BYTES_MAX as u64;
        let window_start = position - position % grid;
        let next_window = window_start + grid;
        let bytes = if end > next_window {
            read_ahead(Arc::clone(shared), next_window, limit);
            match across_windows(shared.id, position, len, next_window) {
                Some(joined) => Some(joined),
                None => {
                    let start = position - position % ALIGN as u64;
                    let piece = read_window(shared, start, end)?;
                    piece.from(shared.id, position, len)
                }
            }
        } else if let Some(bytes) = wait_for_window(shared.id, position, len) {
            Some(bytes)
        } else {
            let window = read_window(shared, window_start, next_window.min(limit))?;
            let found = window.from(shared.id, position, len);
            keep(shared, window, shared.generation.load(Ordering::Acquire));
            found
        };
        // Two windows ahead: the disk reads one while the consumer takes in the other.
        for ahead in 0..READ_AHEAD_WINDOWS {
            let start = next_window + ahead * grid;
            if start < limit {
                read_ahead(Arc::clone(shared), start, limit);
            }
        }
        bytes
            .map(Some)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    /// Forgets the windows of this file: its bytes below what was read are changing.
    pub(super) fn forget(&self) {
        let mut kept = kept();
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        kept.windows.retain(|w| w.file != self.0.id);
    }
}

/// The kept window holding `[position, position + len)` of file `id`, waiting (bounded)
/// for one being read ahead that will hold `position`: a second read of the same bytes
/// would halve the disk's speed for both.
fn wait_for_window(id: u64, position: u64, len: usize) -> Option<Bytes> {
    let deadline = Instant::now() + READ_AHEAD_WAIT;
    let mut kept = kept();
    loop {
        if let Some(bytes) = kept.find(id, position, len) {
            return Some(bytes);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !kept.in_flight(id, position) || left.is_zero() {
            return None;
        }
        kept = LANDED
            .wait_timeout(kept, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// `[position, position + len)` of file `id` across the grid line `line`, joined from the
/// windows either side when they are kept or being read ahead; `None` otherwise (or if it
/// spans more than two windows). The copy costs less than what it replaces: reading the
/// batch from the disk again, on the reader's path, while the read-ahead thread reads the
/// same bytes (a cold catch-up read at half the disk's rate, with about 1 MiB batches).
fn across_windows(id: u64, position: u64, len: usize, line: u64) -> Option<Bytes> {
    let head_len = usize::try_from(line.checked_sub(position)?).ok()?;
    let tail_len = len.checked_sub(head_len)?;
    if tail_len > DIRECT_READ_BYTES_MAX {
        return None;
    }
    let head = wait_for_window(id, position, head_len)?;
    let tail = wait_for_window(id, line, tail_len)?;
    let mut joined = Vec::with_capacity(len);
    joined.extend_from_slice(head.get(..head_len)?);
    joined.extend_from_slice(tail.get(..tail_len)?);
    Some(Bytes::from(joined))
}

fn keep(shared: &Shared, window: Window, generation: u64) {
    let mut kept = kept();
    if shared.generation.load(Ordering::Acquire) != generation {
        return;
    }
    // A window cut short by the released range's end then is replaced by a longer one.
    kept.windows
        .retain(|w| !(w.file == window.file && w.start == window.start));
    if kept.windows.len() >= WINDOWS_KEPT {
        kept.windows.pop_front();
    }
    kept.windows.push_back(window);
}

/// Reads `shared`'s file from `start` (block aligned) up to `end`, at most a window and a
/// block.
fn read_window(shared: &Shared, start: u64, end: u64) -> io::Result<Window> {
    let Some(Some(direct)) = shared.file.get() else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    let wanted = usize::try_from(end.saturating_sub(start))
        .unwrap_or(usize::MAX)
        .min(DIRECT_READ_BYTES_MAX + ALIGN);
    let span = wanted.div_ceil(ALIGN) * ALIGN;
    let mut buffer = take_buffer();
    let pad = buffer.as_ptr().align_offset(ALIGN);
    let Some(target) = buffer.get_mut(pad..pad + span) else {
        return Err(io::Error::other("a direct read buffer cannot be aligned"));
    };
    let filled = read_fully(direct, target, start)?;
    DIRECT_READ_BYTES.fetch_add(filled as u64, Ordering::Relaxed);
    // Bytes past `end` may not be the log's (yet): never handed out.
    let valid = filled.min(wanted);
    Ok(Window {
        file: shared.id,
        start,
        bytes: Bytes::from_owner(PooledBuffer(buffer)).slice(pad..pad + valid),
    })
}

/// A window to read ahead: its file, start, limit and the file's generation when asked.
type ReadAhead = (Arc<Shared>, u64, u64, u64);

/// Asks the read-ahead thread for the window of `shared`'s file at `start`, unless it is
/// kept already or the thread is busy.
fn read_ahead(shared: Arc<Shared>, start: u64, limit: u64) {
    {
        let kept = kept();
        if kept.find(shared.id, start, 1).is_some() || kept.in_flight(shared.id, start) {
            return;
        }
    }
    static QUEUE: OnceLock<Option<SyncSender<ReadAhead>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel(READ_AHEAD_QUEUE);
        let jobs = Arc::new(Mutex::new(rx));
        let started = (0..READ_AHEAD_THREADS)
            .filter(|_| {
                let jobs = Arc::clone(&jobs);
                std::thread::Builder::new()
                    .name("sluice-read-ahead".into())
                    .spawn(move || read_ahead_thread(&jobs))
                    .is_ok()
            })
            .count();
        // With no thread to read ahead, readers read for themselves.
        (started > 0).then_some(tx)
    });
    if let Some(queue) = queue {
        let generation = shared.generation.load(Ordering::Acquire);
        let _ = queue.try_send((shared, start, limit, generation));
    }
}

/// Reads windows ahead until the job queue closes; one of [`READ_AHEAD_THREADS`].
fn read_ahead_thread(jobs: &Mutex<Receiver<ReadAhead>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((shared, start, limit, generation)) = job else {
            return;
        };
        let end = start
            .saturating_add(DIRECT_READ_BYTES_MAX as u64)
            .min(limit);
        {
            let mut kept = kept();
            if kept.find(shared.id, start, 1).is_some() || kept.in_flight(shared.id, start) {
                continue;
            }
            kept.in_flight.push((shared.id, start, end));
        }
        // A failed read ahead is the reader's to meet, and report, when it gets there.
        if let Ok(window) = read_window(&shared, start, end) {
            keep(&shared, window, generation);
        }
        kept()
            .in_flight
            .retain(|&(file, s, _)| !(file == shared.id && s == start));
        LANDED.notify_all();
    }
}

/// Reads from `at` until `target` is full or the file ends; the bytes read.
fn read_fully(file: &File, target: &mut [u8], at: u64) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = target.get_mut(filled..).filter(|r| !r.is_empty()) {
        match rustix::io::pread(file, rest, at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// The same file opened again with `O_DIRECT`, through `/proc/self/fd` so that a file
/// renamed since (a segment on its way to deletion) is still the one opened.
#[cfg(target_os = "linux")]
fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_file: &File) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A synced file of `len` bytes counting up modulo `modulus` (a prime, so no window
    /// repeats another), open for reading, with its directory and contents.
    fn synced_file(len: usize, modulus: usize) -> (tempfile::TempDir, File, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..len).map(|i| (i % modulus) as u8).collect();
        File::create(&path)
            .and_then(|mut f| f.write_all(&content).and_then(|()| f.sync_all()))
            .expect("write");
        let file = File::open(&path).expect("open");
        (dir, file, content)
    }

    #[test]
    fn unaligned_ranges_read_the_files_bytes_and_nothing_past_the_limit() {
        let (_dir, file, content) = synced_file(3 * ALIGN + 100, 251);
        let handle = DirectHandle::default();
        let limit = content.len() as u64 - 50;
        for (position, len) in [(0, 10), (4095, 2), (100, 3 * ALIGN), (3 * ALIGN as u64, 50)] {
            match handle.read(&file, position, len, limit).expect("read") {
                Some(bytes) => {
                    let at = position as usize;
                    assert!(bytes.len() >= len, "at {position}+{len}");
                    assert_eq!(
                        Some(&bytes[..]),
                        content.get(at..limit as usize),
                        "at {position}+{len}"
                    );
                }
                // A file system without O_DIRECT (tmpfs): nothing more to check here.
                None => return,
            }
        }
        assert!(
            handle
                .read(&file, 3 * ALIGN as u64, 51, limit)
                .expect("read")
                .is_none(),
            "nothing is read past the limit"
        );
        handle.forget();
        let read = handle
            .read(&file, 0, 1, limit)
            .expect("read")
            .expect("bytes");
        assert_eq!(read.len() as u64, limit, "read again after forgetting");
    }

    #[test]
    fn ranges_across_grid_lines_read_the_files_bytes() {
        let grid = DIRECT_READ_BYTES_MAX;
        let (_dir, file, content) = synced_file(3 * grid + 5000, 253);
        let handle = DirectHandle::default();
        let limit = content.len() as u64;
        // In order, as a consumer reads: the first window, then ranges across each line
        // (joined from the windows either side once they are read ahead), one of them
        // from a block boundary and one a whole window long.
        let ranges = [
            (10, 100),
            (grid as u64 - 700, 1500),
            (2 * grid as u64 - ALIGN as u64, 2 * ALIGN),
            (2 * grid as u64 + 3, grid),
        ];
        for (position, len) in ranges {
            let Some(bytes) = handle.read(&file, position, len, limit).expect("read") else {
                // A file system without O_DIRECT (tmpfs): nothing more to check here.
                return;
            };
            let at = position as usize;
            assert!(bytes.len() >= len, "at {position}+{len}");
            assert_eq!(
                bytes.get(..len),
                content.get(at..at + len),
                "at {position}+{len}"
            );
        }
    }
}
