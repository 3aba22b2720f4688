//! The real file system: `pwrite` for writes, a shared read-only memory map for reads.

#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use super::deleter::delete_in_background;
use super::direct::DirectHandle;
use super::{DELETED_SUFFIX, Io, IoFile, OpenMode};

/// [`Io`] over the operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsIo;

impl Io for FsIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::CreateNew => options.create_new(true),
            OpenMode::CreateTruncate => options.create(true).truncate(true),
            OpenMode::Existing => &mut options,
        };
        let file = options.open(path)?;
        Ok(Arc::new(FsFile {
            file,
            map: RwLock::new(Bytes::new()),
            live_maps: Arc::new(AtomicUsize::new(0)),
            direct: DirectHandle::default(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_file_in_background(
        &self,
        path: &Path,
        file: Option<Arc<dyn IoFile>>,
    ) -> io::Result<()> {
        let doomed = deleted_path(path);
        if doomed != path {
            fs::rename(path, &doomed)?;
        }
        delete_in_background(doomed, file);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// `path` with the `.deleted` suffix (unchanged if it has it already).
fn deleted_path(path: &Path) -> PathBuf {
    if path.to_string_lossy().ends_with(DELETED_SUFFIX) {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_os_string();
    name.push(DELETED_SUFFIX);
    PathBuf::from(name)
}

/// A memory map that counts itself among its file's live maps while any slice of it lives.
struct CountedMap {
    mmap: Mmap,
    live: Arc<AtomicUsize>,
}

impl CountedMap {
    fn new(mmap: Mmap, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        Self {
            mmap,
            live: Arc::clone(live),
        }
    }
}

impl AsRef<[u8]> for CountedMap {
    fn as_ref(&self) -> &[u8] {
        &self.mmap
    }
}

impl Drop for CountedMap {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A file with a lazily (re)created read-only shared mapping of its whole length.
///
/// Reads return `Bytes` that own a reference to the mapping: they stay valid after the file
/// is unlinked or renamed over (the inode lives on), but not for bytes a later `set_len`
/// cuts off — callers only shrink files below what they have handed out (`docs/unsafe.md`).
#[derive(Debug)]
struct FsFile {
    file: File,
    map: RwLock<Bytes>,
    /// Maps of this file (ours and older ones) that some slice still keeps alive.
    live_maps: Arc<AtomicUsize>,
    /// Reads of released ranges, past the page cache.
    direct: DirectHandle,
}

impl FsFile {
    fn remap(&self) -> io::Result<Bytes> {
        let len = self.file.metadata()?.len();
        if len == 0 {
            return Ok(Bytes::new());
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::other("file larger than the address space"))?;
        // SAFETY: the mapping is read-only and shared. Sluice writes these files only through
        // `write_at` (pwrite), which the kernel keeps coherent with shared mappings, and never
        // shrinks a file below a range it has handed out, so no access faults past EOF.
        let mmap = unsafe { MmapOptions::new().len(len).map(&self.file)? };
        Ok(Bytes::from_owner(CountedMap::new(mmap, &self.live_maps)))
    }
}

fn lock_poisoned() -> io::Error {
    io::Error::other("memory map lock poisoned")
}

impl IoFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(position).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::UnexpectedEof)?;
        {
            let map = self.map.read().map_err(|_| lock_poisoned())?;
            if end <= map.len() {
                return Ok(map.slice(start..end));
            }
        }
        let mut map = self.map.write().map_err(|_| lock_poisoned())?;
        if end > map.len() {
            *map = self.remap()?;
        }
        if end > map.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(map.slice(start..end))
    }

    fn write_at(&self, position: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, position)
    }

    fn write_pair_at(&self, position: u64, head: &[u8], body: &[u8]) -> io::Result<()> {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let written = rustix::io::pwritev(&self.file, &slices, position)?;
        // A short write (signal, nearly full disk) finishes piece by piece.
        let mut at = position;
        let mut skip = written;
        for part in [head, body] {
            let rest = part.get(skip.min(part.len())..).unwrap_or_default();
            skip = skip.saturating_sub(part.len());
            if !rest.is_empty() {
                self.file
                    .write_all_at(rest, at + (part.len() - rest.len()) as u64)?;
            }
            at += part.len() as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    // Elsewhere the trait's no-op stands: `sync_data` alone is just as correct.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn start_writeback(&self, position: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let offset = i64::try_from(position).map_err(|_| io::ErrorKind::InvalidInput)?;
        let nbytes = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the descriptor is this file's own, open for the call's duration; the call
        // only reads its arguments. WRITE without WAIT_* leaves the file's writeback error
        // state alone, so a failed write still fails the next fdatasync.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                nbytes,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate get a sparse file: no early ENOSPC, still correct.
            Err(rustix::io::Errno::OPNOTSUPP) => self.file.set_len(len),
            Err(e) => Err(e.into()),
        }
    }

    fn release(&self, position: u64, len: u64) -> io::Result<()> {
        {
            // Pages our own mapping has touched are mapped, and the kernel never drops
            // mapped pages: unmap them from this process first. Slices handed out stay
            // valid (a later access maps the page again, from the cache or the disk).
            let map = self.map.read().map_err(|_| lock_poisoned())?;
            let page = rustix::param::page_size() as u64;
            let start = position.div_ceil(page) * page;
            let end = (position.saturating_add(len) / page * page).min(map.len() as u64);
            if start < end {
                // SAFETY: the range lies inside our live shared file mapping and is page
                // aligned; MADV_DONTNEED on a shared file mapping only drops page table
                // entries, the contents stay the file's.
                unsafe {
                    rustix::mm::madvise(
                        map.as_ptr().add(start as usize).cast_mut().cast(),
                        (end - start) as usize,
                        rustix::mm::Advice::LinuxDontNeed,
                    )?;
                }
            }
        }
        rustix::fs::fadvise(
            &self.file,
            position,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        )?;
        Ok(())
    }

    fn read_uncached(&self, position: u64, len: usize, limit: u64) -> io::Result<Option<Bytes>> {
        self.direct.read(&self.file, position, len, limit)
    }

    fn forget_uncached(&self) {
        self.direct.forget();
    }

    fn drop_mapping(&self) -> io::Result<bool> {
        let mut map = self.map.write().map_err(|_| lock_poisoned())?;
        *map = Bytes::new();
        Ok(self.live_maps.load(Ordering::Acquire) == 0)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.direct.forget();
        let mut map = self.map.write().map_err(|_| lock_poisoned())?;
        self.file.set_len(len)?;
        // Drop our own mapping so later reads map the new length; handed-out slices keep theirs.
        *map = Bytes::new();
        Ok(())
    }
}
