//! A node starting on an empty data dir in a cluster. A node whose disk was wiped or
//! replaced comes back with its old node id and nothing else, and Raft counts votes and
//! acknowledgements by node id: it would vote as if it still held what it acknowledged
//! before, so a lagging peer could win an election without committed entries (openraft's
//! FAQ, "wipe out the data of ONE node"). So before an empty data dir opens any group, the
//! node asks its peers. A started peer that has its node id registered refuses it: that
//! node's data is lost, and the disk must join as a new node. Otherwise it starts once a
//! started peer answers (a node joining) or a majority of the founders is empty too (a
//! new cluster forming).

use std::time::Duration;

use sluice_protocol::internal::v1::PingRequest;

use super::forward::ping_call;
use crate::raft::NodeId;
use crate::raft::network::PeerChannels;

/// How often the peers are asked again while none has cleared the start.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// Why an empty data dir may not start.
#[derive(Debug, thiserror::Error)]
pub enum FreshStartError {
    /// A peer has this node id registered: its data is lost.
    #[error("{peer} refuses this node: {why}")]
    Refused {
        /// The peer's raft address.
        peer: String,
        /// Its reason.
        why: String,
    },
    /// No peer answered in a way that clears the start.
    #[error(
        "no peer of {peers:?} confirmed within {wait:?} that node {node_id} may start on an empty data dir (a started peer, or a majority of founders starting empty too)"
    )]
    Unconfirmed {
        /// The node id.
        node_id: NodeId,
        /// The peers asked.
        peers: Vec<String>,
        /// How long they were asked.
        wait: Duration,
    },
}

/// The refusal a started node gives a node id it has registered that asks from an empty
/// data dir.
pub fn lost_data_refusal(node_id: NodeId) -> String {
    format!(
        "node {node_id} is registered in this cluster but starts on an empty data dir: its data is lost, and it would vote as if it still held what it acknowledged. Give the disk a new --node-id with --join, then decommission node {node_id} (docs/operations.md, 'Replacing a node')"
    )
}

/// Waits (bounded by `wait`) until the start of node `node_id` on an empty data dir is
/// cleared by `peers` (raft addresses). `founders` is the number of founding voters when
/// the cluster is formed from an initial list (this node among them), 0 when joining.
pub async fn clear(
    peers: &PeerChannels,
    seeds: &[String],
    node_id: NodeId,
    founders: usize,
    wait: Duration,
) -> Result<(), FreshStartError> {
    let deadline = tokio::time::Instant::now() + wait;
    let asking = PingRequest {
        node_id,
        fresh_data_dir: true,
    };
    loop {
        let answers =
            futures::future::join_all(seeds.iter().map(|seed| ping_call(peers, seed, asking)))
                .await;
        // A refusal wins over any clearance in the same round.
        let mut fresh_founders = 1;
        let mut started = false;
        for (seed, answer) in seeds.iter().zip(answers) {
            match answer {
                Some(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    return Err(FreshStartError::Refused {
                        peer: seed.clone(),
                        why: status.message().to_string(),
                    });
                }
                Some(Ok(pong)) if pong.started => started = true,
                Some(Ok(pong)) if pong.fresh_data_dir => fresh_founders += 1,
                _ => {}
            }
        }
        if started {
            return Ok(());
        }
        if founders > 0 && fresh_founders > founders / 2 {
            return Ok(());
        }
        if tokio::time::Instant::now() + ASK_EVERY > deadline {
            return Err(FreshStartError::Unconfirmed {
                node_id,
                peers: seeds.to_vec(),
                wait,
            });
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}
