//! Deletes large files in the background, a slice at a time.
//!
//! Unlinking a 1 GiB segment frees all of its extents in one system call: on the ext4 (with
//! `discard`) and virtio disk we measure on that takes ~180 ms and stalls every other
//! writer's fsync for 50-75 ms while the device trims. Shrinking the file in
//! [`DELETE_STEP_BYTES`] steps with a pause between keeps concurrent fsyncs under ~4 ms
//! (`docs/benchmarks.md`). Kafka deletes segments asynchronously too
//! (`file.delete.delay.ms`).
//!
//! A file is only shrunk once nothing can read it: no handle but the deleter's is left and
//! no slice of any of its memory maps is alive (shrinking under a live map would fault the
//! reader). Until then it waits; the process exiting first leaves a `.deleted` file that
//! the next open removes.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::IoFile;
use crate::limits::{DELETE_PAUSE, DELETE_STEP_BYTES};

/// How often files still in use are looked at again.
const RECHECK: Duration = Duration::from_millis(100);

/// A file to delete: already renamed out of the log's way.
#[derive(Debug)]
struct Doomed {
    path: PathBuf,
    /// The log's handle, when the file may still be mapped; `None` for a file no process
    /// has open (a leftover found at open).
    file: Option<Arc<dyn IoFile>>,
}

impl Doomed {
    /// True once nothing but this entry can read the file.
    fn unused(&self) -> bool {
        match &self.file {
            None => true,
            Some(file) => Arc::strong_count(file) == 1 && file.drop_mapping().unwrap_or(false),
        }
    }

    /// Shrinks the file step by step, then unlinks it. Errors end the shrinking early: the
    /// unlink still frees whatever is left, only in one go. A file without a handle is
    /// opened once, so a later file renamed to the same name is never the one shrunk.
    fn delete(self) {
        let opened = match &self.file {
            Some(_) => None,
            None => OpenOptions::new().write(true).open(&self.path).ok(),
        };
        let shrink = |len: u64| -> std::io::Result<()> {
            match (&self.file, &opened) {
                (Some(file), _) => file.set_len(len),
                (None, Some(file)) => file.set_len(len),
                (None, None) => Err(std::io::ErrorKind::NotFound.into()),
            }
        };
        let length = match (&self.file, &opened) {
            (Some(file), _) => file.len(),
            (None, Some(file)) => file.metadata().map(|m| m.len()),
            (None, None) => Ok(0),
        };
        shrink_in_steps(length.unwrap_or(0), shrink);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Shrinks a file of `len` bytes to at most one step by calling `shrink` with each smaller
/// length, [`DELETE_STEP_BYTES`] at a time with [`DELETE_PAUSE`] between; stops at the
/// first error. Unlinking what is left is then cheap.
pub fn shrink_in_steps(mut len: u64, mut shrink: impl FnMut(u64) -> std::io::Result<()>) {
    while len > DELETE_STEP_BYTES {
        len -= DELETE_STEP_BYTES;
        if shrink(len).is_err() {
            return;
        }
        std::thread::sleep(DELETE_PAUSE);
    }
}

/// Hands `path` to the background deleter. `file` is the open handle whose maps must be
/// gone first; pass `None` only for a file nothing in this process has mapped.
pub(crate) fn delete_in_background(path: PathBuf, file: Option<Arc<dyn IoFile>>) {
    static QUEUE: OnceLock<Mutex<Sender<Doomed>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = channel();
        // Without the thread the channel is closed, and every delete unlinks at once below.
        let _ = std::thread::Builder::new()
            .name("sluice-deleter".into())
            .spawn(move || run(rx));
        Mutex::new(tx)
    });
    let doomed = Doomed { path, file };
    let sent = match queue.lock() {
        Ok(tx) => tx.send(doomed).map_err(|e| e.0),
        Err(_) => Err(doomed),
    };
    if let Err(doomed) = sent {
        let _ = std::fs::remove_file(&doomed.path);
    }
}

/// Queues `doomed`, except a handle-less entry for a file already waiting on its handle: a
/// log reopened in the same process finds the `.deleted` file its predecessor left, and
/// must not shrink it under that predecessor's readers.
fn admit(waiting: &mut Vec<Doomed>, doomed: Doomed) {
    if doomed.file.is_none() && waiting.iter().any(|w| w.path == doomed.path) {
        return;
    }
    waiting.push(doomed);
}

fn run(queue: Receiver<Doomed>) {
    let mut waiting: Vec<Doomed> = Vec::new();
    loop {
        let timeout = if waiting.is_empty() {
            Duration::from_secs(3600)
        } else {
            RECHECK
        };
        match queue.recv_timeout(timeout) {
            Ok(doomed) => admit(&mut waiting, doomed),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(doomed) = queue.try_recv() {
            admit(&mut waiting, doomed);
        }
        let (ready, still): (Vec<Doomed>, Vec<Doomed>) =
            waiting.drain(..).partition(Doomed::unused);
        waiting = still;
        for doomed in ready {
            doomed.delete();
        }
    }
}
