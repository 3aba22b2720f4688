//! Removing a benchmark's data without disturbing the next measurement.

use std::path::Path;

use sluice_storage::io::shrink_in_steps;

/// Empties `dir` (recursively) by shrinking each file a step at a time before unlinking it,
/// as the storage engine's deleter does (freeing gigabytes in one unlink stalls every fsync
/// on the disk for tens of milliseconds), then removes the directories. Errors are ignored:
/// this is cleanup.
pub fn remove_dir_gently(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => remove_dir_gently(&path),
            Ok(_) => remove_file_gently(&path),
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn remove_file_gently(path: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path)
        && let Ok(meta) = file.metadata()
    {
        shrink_in_steps(meta.len(), |len| file.set_len(len));
    }
    let _ = std::fs::remove_file(path);
}
