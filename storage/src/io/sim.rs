//! `SimIo`: an in-memory file system with the faults real disks have.
//!
//! Each file keeps a durable image and the list of operations since its last sync. A
//! simulated power loss rebuilds every file from its durable image plus, optionally, a
//! random prefix of its unsynced operations with the last one torn. Directory operations
//! (create, rename, remove) are durable at once: the model covers data loss, not lost
//! directory entries, and the log fsyncs directories anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{Io, IoFile, OpenMode};

/// What survives a simulated power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Only synced bytes survive.
    DropUnsynced,
    /// Per file, a seeded random prefix of the unsynced operations survives, the last of them
    /// possibly torn to a random length: what a crash mid-writeback leaves.
    KeepRandomPrefix {
        /// Seed for the choices, so a failure replays.
        seed: u64,
    },
}

/// Faults that apply to the next operations until cleared.
#[derive(Debug, Clone, Default)]
struct Faults {
    fail_sync: bool,
    space_limit: Option<u64>,
    crash_after_ops: Option<u64>,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { position: u64, data: Vec<u8> },
    SetLen(u64),
}

/// File content whose zero tail (reserved, never written space) takes no memory: segments
/// reserve tens of MiB at a time, and the simulation keeps two images of every file.
#[derive(Debug, Default, Clone)]
struct Sparse {
    /// The content up to the last byte written; zeros from here to `len`.
    data: Vec<u8>,
    len: usize,
}

impl Sparse {
    fn from_slice(bytes: &[u8]) -> Self {
        let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        Self {
            data: bytes.get(..written).unwrap_or_default().to_vec(),
            len: bytes.len(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn set_len(&mut self, len: usize) {
        self.data.truncate(len);
        self.len = len;
    }

    fn write(&mut self, start: usize, bytes: &[u8]) {
        let end = start + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        if let Some(dst) = self.data.get_mut(start..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = self.len.max(end);
    }

    fn read(&self, start: usize, end: usize) -> Option<Vec<u8>> {
        if start > end || end > self.len {
            return None;
        }
        let mut out = vec![0; end - start];
        let stored = self.data.len().min(end);
        if start < stored
            && let (Some(dst), Some(src)) =
                (out.get_mut(..stored - start), self.data.get(start..stored))
        {
            dst.copy_from_slice(src);
        }
        Some(out)
    }

    fn byte_mut(&mut self, position: usize) -> Option<&mut u8> {
        if position >= self.len {
            return None;
        }
        if self.data.len() <= position {
            self.data.resize(position + 1, 0);
        }
        self.data.get_mut(position)
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = self.data.clone();
        out.resize(self.len, 0);
        out
    }
}

#[derive(Debug, Default)]
struct Image {
    current: Sparse,
    durable: Sparse,
    pending: Vec<PendingOp>,
}

impl Image {
    fn apply(buf: &mut Sparse, op: &PendingOp) {
        match op {
            PendingOp::Write { position, data } => buf.write(*position as usize, data),
            PendingOp::SetLen(len) => buf.set_len(*len as usize),
        }
    }

    fn record(&mut self, op: PendingOp) {
        Self::apply(&mut self.current, &op);
        self.pending.push(op);
    }
}

#[derive(Debug, Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Arc<Mutex<Image>>>,
    faults: Faults,
    ops: u64,
    used_bytes: u64,
    generation: u64,
    /// Bytes passed to `IoFile::release`, and how many of them were not yet durable.
    released_bytes: u64,
    released_unsynced_bytes: u64,
    /// Every `IoFile::start_writeback` hint, in order: (position, len).
    writeback_hints: Vec<(u64, u64)>,
}

impl State {
    /// Counts a mutating operation and fails it if a crash or fault is armed.
    fn begin_op(&mut self) -> io::Result<()> {
        self.ops += 1;
        match self.faults.crash_after_ops {
            Some(limit) if self.ops > limit => {
                Err(io::Error::other("simulated crash: process is down"))
            }
            _ => Ok(()),
        }
    }

    fn reserve(&mut self, old_len: u64, new_len: u64) -> io::Result<()> {
        let grown = new_len.saturating_sub(old_len);
        if let Some(limit) = self.faults.space_limit
            && grown > 0
            && self.used_bytes + grown > limit
        {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.used_bytes = self.used_bytes + grown - old_len.saturating_sub(new_len);
        Ok(())
    }
}

/// An in-memory, fault-injecting [`Io`]. Cloning shares the same file system.
#[derive(Debug, Default, Clone)]
pub struct SimIo {
    state: Arc<Mutex<State>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a test failure already; keep going with the data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A splitmix64 step: enough randomness for fault choices, and replayable.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimIo {
    /// An empty file system with no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every `sync_data` and `sync_dir` fail with `EIO` while `fail` is true.
    pub fn set_fail_sync(&self, fail: bool) {
        lock(&self.state).faults.fail_sync = fail;
    }

    /// Limits the total bytes of all files; growth beyond it fails with `ENOSPC`.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        lock(&self.state).faults.space_limit = limit;
    }

    /// After `ops` more mutating operations, every mutating operation fails, as if the
    /// process had died there. Follow with [`SimIo::power_loss`] and reopen.
    pub fn crash_after_ops(&self, ops: Option<u64>) {
        let mut state = lock(&self.state);
        let base = state.ops;
        state.faults.crash_after_ops = ops.map(|n| base + n);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        lock(&self.state).faults = Faults::default();
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        lock(&self.state).ops
    }

    /// Bytes used by all files.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.state).used_bytes
    }

    /// Bytes the log released from memory so far (`IoFile::release`).
    pub fn released_bytes(&self) -> u64 {
        lock(&self.state).released_bytes
    }

    /// Released bytes that had unsynced writes pending: the log must never release those.
    pub fn released_unsynced_bytes(&self) -> u64 {
        lock(&self.state).released_unsynced_bytes
    }

    /// Every writeback hint so far, of any file, in order: (position, len).
    pub fn writeback_hints(&self) -> Vec<(u64, u64)> {
        lock(&self.state).writeback_hints.clone()
    }

    /// Simulates losing power: files revert to what `mode` says survived, and every open
    /// handle goes stale (its operations fail), as the process died with the machine.
    pub fn power_loss(&self, mode: PowerLoss) {
        let mut state = lock(&self.state);
        let mut rng = match mode {
            PowerLoss::DropUnsynced => None,
            PowerLoss::KeepRandomPrefix { seed } => Some(seed),
        };
        let mut used = 0u64;
        for image in state.files.values_mut() {
            let old = lock(image);
            let mut survived = old.durable.clone();
            if let Some(rng) = rng.as_mut() {
                Self::replay_prefix(&mut survived, &old.pending, rng);
            }
            used += survived.len() as u64;
            drop(old);
            *image = Arc::new(Mutex::new(Image {
                current: survived.clone(),
                durable: survived,
                pending: Vec::new(),
            }));
        }
        state.used_bytes = used;
        state.generation += 1;
        state.faults.crash_after_ops = None;
    }

    fn replay_prefix(buf: &mut Sparse, pending: &[PendingOp], rng: &mut u64) {
        let keep = (next_random(rng) % (pending.len() as u64 + 1)) as usize;
        for op in pending.iter().take(keep) {
            Image::apply(buf, op);
        }
        if let Some(PendingOp::Write { position, data }) = pending.get(keep) {
            let torn_len = (next_random(rng) % (data.len() as u64 + 1)) as usize;
            let torn = PendingOp::Write {
                position: *position,
                data: data.get(..torn_len).unwrap_or_default().to_vec(),
            };
            Image::apply(buf, &torn);
        }
    }

    /// XORs `mask` into the byte at `position` of both the current and the durable image:
    /// media corruption, not a lost write.
    pub fn corrupt(&self, path: &Path, position: u64, mask: u8) -> io::Result<()> {
        let state = lock(&self.state);
        let image = state.files.get(path).ok_or(io::ErrorKind::NotFound)?;
        let mut guard = lock(image);
        let image = &mut *guard;
        for buf in [&mut image.current, &mut image.durable] {
            let byte = buf
                .byte_mut(position as usize)
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            *byte ^= mask;
        }
        Ok(())
    }

    /// Every file's path, in order.
    pub fn paths(&self) -> Vec<std::path::PathBuf> {
        lock(&self.state).files.keys().cloned().collect()
    }

    /// The current content of a file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        state
            .files
            .get(path)
            .map(|image| lock(image).current.to_vec())
    }

    /// Creates or replaces a file whose content is `data`, already durable.
    pub fn put_file(&self, path: &Path, data: &[u8]) {
        let mut state = lock(&self.state);
        let old_len = state
            .files
            .get(path)
            .map_or(0, |image| lock(image).current.len() as u64);
        state.used_bytes = state.used_bytes + data.len() as u64 - old_len;
        let image = Image {
            current: Sparse::from_slice(data),
            durable: Sparse::from_slice(data),
            pending: Vec::new(),
        };
        state
            .files
            .insert(path.to_path_buf(), Arc::new(Mutex::new(image)));
        if let Some(parent) = path.parent() {
            state.dirs.insert(parent.to_path_buf());
        }
    }
}

impl Io for SimIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.begin_op()?;
        state.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let names = state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut state = lock(&self.state);
        let exists = state.files.contains_key(path);
        match mode {
            OpenMode::CreateNew if exists => return Err(io::ErrorKind::AlreadyExists.into()),
            OpenMode::Existing if !exists => return Err(io::ErrorKind::NotFound.into()),
            OpenMode::CreateNew | OpenMode::CreateTruncate => {
                state.begin_op()?;
                let parent = path.parent().ok_or(io::ErrorKind::NotFound)?;
                if !state.dirs.contains(parent) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                let old_len = state
                    .files
                    .get(path)
                    .map_or(0, |image| lock(image).current.len() as u64);
                state.used_bytes -= old_len;
                state.files.insert(path.to_path_buf(), Arc::default());
            }
            OpenMode::Existing => {}
        }
        let image = state
            .files
            .get(path)
            .cloned()
            .ok_or(io::ErrorKind::NotFound)?;
        let generation = state.generation;
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            image,
            generation,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.begin_op()?;
        let image = state.files.remove(path).ok_or(io::ErrorKind::NotFound)?;
        state.used_bytes -= lock(&image).current.len() as u64;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.begin_op()?;
        let image = state.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        if let Some(replaced) = state.files.insert(to.to_path_buf(), image) {
            state.used_bytes -= lock(&replaced).current.len() as u64;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.begin_op()?;
        if state.faults.fail_sync {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if !state.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(())
    }
}

/// A handle on a [`SimIo`] file; stale after a power loss.
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    image: Arc<Mutex<Image>>,
    generation: u64,
}

impl SimFile {
    /// Runs a mutating operation with the state locked, after fault and staleness checks.
    fn mutate<T>(&self, f: impl FnOnce(&mut State, &mut Image) -> io::Result<T>) -> io::Result<T> {
        let mut state = lock(&self.state);
        self.check_fresh(&state)?;
        state.begin_op()?;
        let mut image = lock(&self.image);
        f(&mut state, &mut image)
    }

    fn check_fresh(&self, state: &State) -> io::Result<()> {
        if state.generation == self.generation {
            Ok(())
        } else {
            Err(io::Error::other(
                "stale file handle: the machine lost power",
            ))
        }
    }
}

impl IoFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let state = lock(&self.state);
        self.check_fresh(&state)?;
        Ok(lock(&self.image).current.len() as u64)
    }

    fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        let state = lock(&self.state);
        self.check_fresh(&state)?;
        let image = lock(&self.image);
        let start = usize::try_from(position).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = image
            .current
            .read(start, end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(Bytes::from(bytes))
    }

    fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.mutate(|state, image| {
            let old_len = image.current.len() as u64;
            state.reserve(old_len, old_len.max(position + data.len() as u64))?;
            image.record(PendingOp::Write {
                position,
                data: data.to_vec(),
            });
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.mutate(|state, image| {
            if state.faults.fail_sync {
                // As Linux does after writeback fails: the dirty pages are dropped, not retried.
                let durable = image.durable.clone();
                state.used_bytes =
                    state.used_bytes + durable.len() as u64 - image.current.len() as u64;
                image.current = durable;
                image.pending.clear();
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            let pending = std::mem::take(&mut image.pending);
            for op in &pending {
                Image::apply(&mut image.durable, op);
            }
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.mutate(|state, image| {
            let old_len = image.current.len() as u64;
            if len <= old_len {
                return Ok(());
            }
            state.reserve(old_len, len)?;
            image.record(PendingOp::SetLen(len));
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(|state, image| {
            state.reserve(image.current.len() as u64, len)?;
            image.record(PendingOp::SetLen(len));
            Ok(())
        })
    }

    fn release(&self, position: u64, len: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        self.check_fresh(&state)?;
        let end = position.saturating_add(len);
        let unsynced = lock(&self.image)
            .pending
            .iter()
            .filter_map(|op| match op {
                PendingOp::Write { position: at, data } => {
                    let overlap_end = end.min(at + data.len() as u64);
                    Some(overlap_end.saturating_sub(position.max(*at)))
                }
                PendingOp::SetLen(_) => None,
            })
            .sum::<u64>();
        state.released_bytes += len;
        state.released_unsynced_bytes += unsynced;
        Ok(())
    }

    fn start_writeback(&self, position: u64, len: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        self.check_fresh(&state)?;
        // Only a hint: nothing becomes durable, as on a real disk until the fsync.
        state.writeback_hints.push((position, len));
        Ok(())
    }
}
