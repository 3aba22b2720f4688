//! A memory cgroup (v1 or v2) around a broker process, so a memory test can show the broker
//! was never killed for memory (TESTPLAN T19). Made under the test's own cgroup; removed
//! when dropped.

use std::path::PathBuf;

/// A child memory cgroup with a limit.
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A cgroup limited to `bytes`, or why none can be made here.
    pub fn create(bytes: u64) -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        // v1: "4:memory:/path"; v2: "0::/path" (when no v1 memory controller exists).
        let v1 = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
        let (base, v2) = match v1 {
            Some(path) => (
                PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                false,
            ),
            None => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .ok_or("no memory cgroup")?;
                (
                    PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                    true,
                )
            }
        };
        let dir = base.join(format!("sluice-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = Self { dir, v2 };
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        cgroup.write(limit, &bytes.to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("{}: {e}", self.dir.join(file).display()))
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// How many processes the kernel killed for memory in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (the broker is dropped first); a cgroup with
        // none left is removed with rmdir.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
