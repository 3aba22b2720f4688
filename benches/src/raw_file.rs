//! The baseline write path: the same bytes written to plain files with the same system calls
//! the log uses (`fallocate` a segment, sequential `pwrite`, optional `fdatasync`), with
//! none of the log's work (headers, indexes, bookkeeping).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sequential writer over fixed-size preallocated files, keeping only the newest two.
#[derive(Debug)]
pub struct RawSegments {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    position: u64,
    index: u64,
}

impl RawSegments {
    /// Starts writing into `dir`, one file per `segment_bytes`.
    pub fn new(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        let file = Self::create(dir, 0, segment_bytes)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            position: 0,
            index: 0,
        })
    }

    fn create(dir: &Path, index: u64, segment_bytes: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("raw-{index:08}")))?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, segment_bytes)?;
        Ok(file)
    }

    /// Writes `bytes` after the previous write, moving to a new file when this one is full.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.position + bytes.len() as u64 > self.segment_bytes {
            self.file.sync_data()?;
            self.index += 1;
            self.file = Self::create(&self.dir, self.index, self.segment_bytes)?;
            self.position = 0;
            if self.index >= 2 {
                std::fs::remove_file(self.dir.join(format!("raw-{:08}", self.index - 2)))?;
            }
        }
        self.file.write_all_at(bytes, self.position)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// `fdatasync`s the current file.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
