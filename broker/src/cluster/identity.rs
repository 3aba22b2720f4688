//! A data directory's owner: the node id it was first started with and the id of the
//! cluster it belongs to. A start with another node id, or a node whose data belongs to
//! another cluster, refuses to run instead of mixing two histories.

use std::fmt;
use std::path::Path;

use sluice_storage::io::FsIo;
use sluice_storage::state_file::{StateKind, read_state, write_atomic};

use crate::raft::NodeId;

/// File name of the identity, inside the data dir's `__cluster` directory.
const IDENTITY_FILE: &str = "node_identity";

/// A cluster's id: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u128);

impl ClusterId {
    /// A fresh id from the OS's randomness (a seeded simulation's, under simulation).
    pub fn generate() -> Self {
        let half = sluice_protocol::entropy::random_u64;
        Self((u128::from(half()) << 64) | u128::from(half()))
    }

    /// Parses 32 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Who a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node id it was first started with.
    pub node_id: NodeId,
    /// Its cluster, once learnt from the controller.
    pub cluster_id: Option<ClusterId>,
}

/// The identity does not match, or cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Started with another node id than the data dir's.
    #[error(
        "the data dir belongs to node {recorded}, not node {given}: start it with --node-id {recorded}, or give node {given} its own data dir"
    )]
    NodeId {
        /// The id in the data dir.
        recorded: NodeId,
        /// The id given now.
        given: NodeId,
    },
    /// The data belongs to another cluster.
    #[error(
        "the data dir belongs to cluster {recorded}, but this cluster is {current}: give this node an empty data dir to join it"
    )]
    Cluster {
        /// The cluster in the data dir.
        recorded: ClusterId,
        /// The cluster it is asked to serve.
        current: ClusterId,
    },
    /// The file is damaged or unreadable.
    #[error("node identity: {0}")]
    Storage(String),
}

impl NodeIdentity {
    /// `version 1: node_id u64 LE | cluster_id u128 LE (0: not known yet)`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.map_or(0, |c| c.0).to_le_bytes());
        out
    }

    fn decode(body: &[u8]) -> Option<Self> {
        if body.len() != 24 {
            return None;
        }
        let node_id = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let cluster = u128::from_le_bytes(body.get(8..24)?.try_into().ok()?);
        Some(Self {
            node_id,
            cluster_id: (cluster != 0).then_some(ClusterId(cluster)),
        })
    }

    /// Reads the identity in `dir` (blocking); on a first start (no identity yet) answers
    /// a new one for `node_id` and `true`, which [`NodeIdentity::record`] writes once the
    /// node may start: an empty data dir stays empty until then.
    pub fn open(dir: &Path, node_id: NodeId) -> Result<(Self, bool), IdentityError> {
        let storage = |e: &dyn fmt::Display| IdentityError::Storage(e.to_string());
        match read_state(&FsIo, dir, IDENTITY_FILE, StateKind::NodeIdentity)
            .map_err(|e| storage(&e))?
        {
            Some(body) => {
                let found = Self::decode(&body).ok_or_else(|| {
                    IdentityError::Storage(format!(
                        "{} is not a node identity",
                        dir.join(IDENTITY_FILE).display()
                    ))
                })?;
                if found.node_id != node_id {
                    return Err(IdentityError::NodeId {
                        recorded: found.node_id,
                        given: node_id,
                    });
                }
                Ok((found, false))
            }
            None => Ok((
                Self {
                    node_id,
                    cluster_id: None,
                },
                true,
            )),
        }
    }

    /// Writes this identity into `dir` (blocking).
    pub fn record(&self, dir: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(|e| IdentityError::Storage(e.to_string()))?;
        self.write(dir)
    }

    /// Records the cluster this node serves, or refuses if its data belongs to another
    /// (blocking).
    pub fn adopt_cluster(&mut self, dir: &Path, cluster: ClusterId) -> Result<(), IdentityError> {
        match self.cluster_id {
            Some(recorded) if recorded == cluster => Ok(()),
            Some(recorded) => Err(IdentityError::Cluster {
                recorded,
                current: cluster,
            }),
            None => {
                self.cluster_id = Some(cluster);
                self.write(dir)
            }
        }
    }

    fn write(&self, dir: &Path) -> Result<(), IdentityError> {
        write_atomic(
            &FsIo,
            dir,
            IDENTITY_FILE,
            StateKind::NodeIdentity,
            &self.encode(),
        )
        .map_err(|e| IdentityError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_keeps_its_node_and_cluster() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path();
        let (mut identity, new) = NodeIdentity::open(dir, 2).expect("first start");
        assert!(new);
        identity.record(dir).expect("recorded");
        assert_eq!(identity.cluster_id, None);
        assert!(matches!(
            NodeIdentity::open(dir, 3).map(|(identity, _)| identity),
            Err(IdentityError::NodeId {
                recorded: 2,
                given: 3
            })
        ));
        let cluster = ClusterId::generate();
        identity.adopt_cluster(dir, cluster).expect("adopt");
        let (reopened, new) = NodeIdentity::open(dir, 2).expect("restart");
        assert!(!new);
        assert_eq!(reopened.cluster_id, Some(cluster));
        let mut other = reopened;
        let refused = other.adopt_cluster(dir, ClusterId(cluster.0 ^ 1));
        assert!(matches!(refused, Err(IdentityError::Cluster { .. })));
        assert_eq!(ClusterId::parse(&cluster.to_string()), Some(cluster));
        assert_ne!(ClusterId::generate(), ClusterId::generate());
    }
}
