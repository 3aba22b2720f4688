//! Partition directories and their identity. A directory is named by topic and partition
//! number, which a deleted-then-recreated topic reuses; the `identity` file inside names the
//! incarnation (the partition's Raft group id, which the controller never hands out twice,
//! so it serves as Kafka's topic id does). A directory of another incarnation, or of a topic
//! the controller does not know, is a leftover of an interrupted delete: it is removed, never
//! reopened, so a deleted topic's records, vote and state never come back.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use sluice_storage::io::FsIo;
use sluice_storage::state_file::{StateKind, read_state, write_atomic};

use crate::raft::GroupId;

/// File name of the identity inside a partition directory.
const IDENTITY_FILE: &str = "identity";

/// Which partition incarnation a directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionIdentity {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The partition's Raft group id: new for every creation of the topic.
    pub group_id: GroupId,
}

impl PartitionIdentity {
    /// `group_id u64 | partition u32 | topic (the rest, UTF-8)`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.topic.len());
        out.extend_from_slice(&self.group_id.to_le_bytes());
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out
    }

    fn decode(body: &[u8]) -> Option<Self> {
        let group_id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let partition = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
        let topic = std::str::from_utf8(body.get(12..)?).ok()?.to_string();
        Some(Self {
            topic,
            partition,
            group_id,
        })
    }
}

/// The directory of partition `partition` of `topic` under `data_dir`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(topic).join(partition.to_string())
}

/// What [`prepare`] found in a partition's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Nothing there: a new partition.
    Created,
    /// This incarnation's directory.
    Reopened,
    /// A directory of an earlier build, without an identity: adopted as this incarnation.
    Adopted,
    /// Another incarnation's leftovers (this identity), removed before starting afresh.
    ReplacedStale(Option<PartitionIdentity>),
}

/// Makes `dir` the directory of `identity` (blocking file I/O): a leftover of another
/// incarnation is removed first, and the identity is written durably before the log opens.
pub fn prepare(dir: &Path, identity: &PartitionIdentity) -> io::Result<Prepared> {
    let found = read_state(&FsIo, dir, IDENTITY_FILE, StateKind::PartitionIdentity)
        .map_err(io::Error::other)?;
    let outcome = match found {
        Some(body) => match PartitionIdentity::decode(&body) {
            Some(found) if &found == identity => return Ok(Prepared::Reopened),
            // Group ids only grow: a directory of a *later* incarnation means the metadata
            // asking for this one is behind (not yet applied the delete and re-create). It
            // is never removed for that; the open fails and the next reconcile tries again.
            Some(found) if found.group_id > identity.group_id => {
                return Err(io::Error::other(format!(
                    "{} holds a later incarnation (group {}) than asked for (group {})",
                    dir.display(),
                    found.group_id,
                    identity.group_id
                )));
            }
            // Only an identity that reads back whole and names an earlier incarnation lets
            // the directory go; anything unreadable fails the open (the partition goes
            // offline) rather than risk deleting live data.
            Some(found) => Prepared::ReplacedStale(Some(found)),
            None => {
                return Err(io::Error::other(format!(
                    "{} does not name a partition",
                    dir.join(IDENTITY_FILE).display()
                )));
            }
        },
        None if has_entries(dir)? => Prepared::Adopted,
        None => Prepared::Created,
    };
    if matches!(outcome, Prepared::ReplacedStale(_)) {
        remove_partition_dir(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    write_atomic(
        &FsIo,
        dir,
        IDENTITY_FILE,
        StateKind::PartitionIdentity,
        &identity.encode(),
    )
    .map_err(io::Error::other)?;
    Ok(outcome)
}

fn has_entries(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a partition directory: first renamed out of its `<topic>/<number>` name (one
/// atomic step), so a removal a crash interrupts leaves a directory that is never adopted
/// as a partition, only swept.
pub fn remove_partition_dir(dir: &Path) -> io::Result<()> {
    let mut doomed = dir.as_os_str().to_os_string();
    doomed.push(".deleting");
    let doomed = PathBuf::from(doomed);
    match std::fs::rename(dir, &doomed) {
        Ok(()) => remove_dir(&doomed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes, under `data_dir`, every partition directory (`<topic>/<number>`) that `wanted`
/// does not list, and then the topic directories left empty. Only names of that shape are
/// touched: anything else in the data directory stays. `keep` names directories that are not
/// topics (the cluster's own). Returns what it removed. Blocking file I/O; call it only with
/// metadata known to be complete, or it removes live partitions.
pub fn sweep(
    data_dir: &Path,
    wanted: &BTreeSet<(String, u32)>,
    keep: &[&str],
) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(data_dir)?.flatten() {
        let topic = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if keep.contains(&topic.as_str()) || !is_dir {
            continue;
        }
        let Ok(partitions) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        let mut swept_here = false;
        for partition in partitions.flatten() {
            let name = partition.file_name().to_string_lossy().into_owned();
            let index = name.parse::<u32>().ok();
            // A removal a crash interrupted (see `remove_partition_dir`).
            let interrupted = name
                .strip_suffix(".deleting")
                .is_some_and(|n| n.parse::<u32>().is_ok());
            let ours =
                (index.is_some() || interrupted) && partition.file_type().is_ok_and(|t| t.is_dir());
            let wanted = index.is_some_and(|i| wanted.contains(&(topic.clone(), i)));
            // Errors are per entry: one directory that cannot go does not keep the others.
            if ours && !wanted && remove_dir(&partition.path()).is_ok() {
                removed.push(partition.path());
                swept_here = true;
            }
        }
        // The topic's own directory goes once this sweep emptied it (never a directory
        // that had nothing of ours in it).
        if swept_here {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(group_id: GroupId) -> PartitionIdentity {
        PartitionIdentity {
            topic: "orders".into(),
            partition: 3,
            group_id,
        }
    }

    #[test]
    fn another_incarnation_s_directory_is_replaced_and_this_one_s_reopened() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = partition_dir(temp.path(), "orders", 3);
        assert_eq!(prepare(&dir, &identity(7)).expect("new"), Prepared::Created);
        std::fs::write(dir.join("00000000000000000000.log"), b"old records").expect("write");
        assert_eq!(
            prepare(&dir, &identity(7)).expect("same"),
            Prepared::Reopened
        );
        assert!(dir.join("00000000000000000000.log").exists());
        assert_eq!(
            prepare(&dir, &identity(9)).expect("recreated topic"),
            Prepared::ReplacedStale(Some(identity(7)))
        );
        assert!(
            !dir.join("00000000000000000000.log").exists(),
            "nothing of the old one"
        );
        assert_eq!(
            prepare(&dir, &identity(9)).expect("same"),
            Prepared::Reopened
        );
        // Metadata behind the directory (asking for the earlier incarnation) deletes nothing.
        std::fs::write(dir.join("00000000000000000000.log"), b"new records").expect("write");
        assert!(prepare(&dir, &identity(7)).is_err());
        assert!(
            dir.join("00000000000000000000.log").exists(),
            "the later one stays"
        );
    }

    #[test]
    fn an_unreadable_identity_fails_the_open_and_deletes_nothing() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = partition_dir(temp.path(), "orders", 3);
        prepare(&dir, &identity(7)).expect("new");
        std::fs::write(dir.join("00000000000000000000.log"), b"records").expect("write");
        let mut bytes = std::fs::read(dir.join(IDENTITY_FILE)).expect("identity");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(dir.join(IDENTITY_FILE), bytes).expect("damage");
        assert!(prepare(&dir, &identity(9)).is_err());
        assert!(dir.join("00000000000000000000.log").exists());
    }

    #[test]
    fn a_directory_without_identity_is_adopted() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = partition_dir(temp.path(), "orders", 3);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("00000000000000000000.log"), b"records").expect("write");
        assert_eq!(
            prepare(&dir, &identity(7)).expect("adopt"),
            Prepared::Adopted
        );
        assert!(dir.join("00000000000000000000.log").exists());
    }

    #[test]
    fn sweep_removes_unknown_topics_and_unwanted_partitions_only() {
        let temp = tempfile::tempdir().expect("tempdir");
        for (topic, p) in [("live", 0), ("live", 1), ("live", 2), ("gone", 0)] {
            std::fs::create_dir_all(partition_dir(temp.path(), topic, p)).expect("mkdir");
        }
        std::fs::create_dir_all(temp.path().join("__cluster/controller")).expect("mkdir");
        std::fs::write(temp.path().join("notes.txt"), b"not a dir").expect("write");
        std::fs::create_dir_all(temp.path().join("backups/old")).expect("mkdir");
        std::fs::create_dir_all(temp.path().join("lost+found")).expect("mkdir");
        std::fs::create_dir_all(temp.path().join("live/4.deleting")).expect("mkdir");
        let wanted = BTreeSet::from([("live".to_string(), 0), ("live".to_string(), 1)]);
        let removed = sweep(temp.path(), &wanted, &["__cluster"]).expect("sweep");
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(
            temp.path().join("lost+found").exists(),
            "an empty directory not ours stays"
        );
        assert!(!temp.path().join("gone").exists());
        assert!(!partition_dir(temp.path(), "live", 2).exists());
        assert!(partition_dir(temp.path(), "live", 1).exists());
        assert!(temp.path().join("__cluster/controller").exists());
        assert!(temp.path().join("notes.txt").exists());
        assert!(
            temp.path().join("backups/old").exists(),
            "not shaped like a partition"
        );
    }
}
