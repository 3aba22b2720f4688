//! The I/O seam: the few file operations the log needs, behind a trait, so tests can swap
//! the real file system for [`SimIo`], which loses unsynced bytes, tears writes, fails
//! fsync and runs out of space on command.

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

mod deleter;
mod direct;
mod fs;
mod sim;

pub use deleter::shrink_in_steps;
pub use direct::{DIRECT_READ_BYTES_MAX, direct_read_bytes};
pub use fs::FsIo;
pub use sim::{PowerLoss, SimIo};

/// Suffix of a file renamed for deletion in the background; such files are removed on open.
pub(crate) const DELETED_SUFFIX: &str = ".deleted";

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file; fail if it exists.
    CreateNew,
    /// Create the file, or empty it if it exists.
    CreateTruncate,
    /// Open an existing file.
    Existing,
}

/// Directory-level operations. Implementations are thread-safe.
pub trait Io: Send + Sync + Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a file without paying for it now: the real file system renames it to
    /// `<name>.deleted` and frees it in the background once `file` (the open handle, if
    /// any) has no reader left (see `deleter.rs`). The default removes it at once.
    fn remove_file_in_background(
        &self,
        path: &Path,
        file: Option<Arc<dyn IoFile>>,
    ) -> io::Result<()> {
        let _ = file;
        self.remove_file(path)
    }
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Thread-safe; positions are absolute (no cursor).
#[allow(clippy::len_without_is_empty)]
pub trait IoFile: Send + Sync + Debug {
    /// Current length in bytes (including reserved, zero-filled space).
    fn len(&self) -> io::Result<u64>;
    /// `len` bytes at `position`. Real files return a slice of a shared memory map (no copy);
    /// reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes>;
    /// Writes all of `data` at `position`, growing the file if needed. Not durable until
    /// [`IoFile::sync_data`] returns.
    fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()>;
    /// Writes `head` then `body` at `position` as one write where the platform allows
    /// (`pwritev`): a batch's re-stamped header and its untouched records in one system call.
    fn write_pair_at(&self, position: u64, head: &[u8], body: &[u8]) -> io::Result<()> {
        self.write_at(position, head)?;
        self.write_at(position + head.len() as u64, body)
    }
    /// Makes every write so far durable (`fdatasync`). An error here means data may be lost.
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing `[position, position + len)` to the disk without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the next [`IoFile::sync_data`] waits
    /// for less. A hint: it makes nothing durable, and write errors still surface in
    /// `sync_data`.
    fn start_writeback(&self, position: u64, len: u64) -> io::Result<()> {
        let _ = (position, len);
        Ok(())
    }
    /// Reserves disk blocks so the file is at least `len` bytes (`fallocate`); a full disk is
    /// `StorageFull` here rather than a fault on a mapped page later.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the length, truncating or zero-extending.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Drops this handle's own memory map; true when no slice of any map it handed out is
    /// still alive, so shrinking the file cannot fault a reader.
    fn drop_mapping(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Drops `[position, position + len)` from memory: it is durable and not expected to be
    /// read soon. A hint: later reads still see the data (from disk).
    fn release(&self, position: u64, len: u64) -> io::Result<()> {
        let _ = (position, len);
        Ok(())
    }
    /// At least `len` bytes at `position`, and as many more below `limit` as one read
    /// window holds, read past the page cache, for a range released from memory; `None`
    /// where that is not possible (the caller uses [`IoFile::read_at`]).
    fn read_uncached(&self, position: u64, len: usize, limit: u64) -> io::Result<Option<Bytes>> {
        let _ = (position, len, limit);
        Ok(None)
    }
    /// Forgets what [`IoFile::read_uncached`] keeps of this file: bytes below its old end
    /// are about to be rewritten (a truncation).
    fn forget_uncached(&self) {}
}
