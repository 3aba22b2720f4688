//! A node's place in its cluster: its registration, the cluster id it adopts, and which
//! peers are alive.

use super::*;

impl Node {
    /// Whether this node's metadata shows it registered with its current addresses.
    pub(super) fn registered(&self) -> bool {
        self.metadata()
            .nodes
            .get(&self.node_id())
            .is_some_and(|n| n.address == self.address && n.raft_address == self.raft_address)
    }

    /// Waits (bounded) until this node's registration shows in its own metadata.
    pub(super) async fn wait_registered(&self) -> bool {
        wait_until(|| self.registered()).await
    }

    /// Names the cluster if the controller has no id yet, then records the controller's id
    /// in the data dir, refusing to serve another cluster's data.
    pub(super) async fn adopt_cluster_id(&self) -> Result<(), NodeError> {
        if self.metadata().cluster_id.is_none() {
            let proposed = self
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cluster_id
                .unwrap_or_else(ClusterId::generate);
            self.propose(ControllerCommand::InitCluster {
                cluster_id: proposed.to_string(),
            })
            .await
            .map_err(NodeError::Joining)?;
            wait_until(|| self.metadata().cluster_id.is_some()).await;
        }
        let Some(current) = self
            .metadata()
            .cluster_id
            .as_deref()
            .and_then(ClusterId::parse)
        else {
            return Err(NodeError::Joining(BrokerError::Unavailable(
                "the controller did not name the cluster in time".into(),
            )));
        };
        let dir = self.config.data_dir.join(CLUSTER_DIR);
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .adopt_cluster(&dir, current)?;
        if let Some(auth) = &self.auth {
            auth.set_cluster_id(current);
        }
        Ok(())
    }

    /// The registered nodes that answer a ping now (this node always counts).
    pub async fn alive_nodes(&self) -> BTreeSet<NodeId> {
        let metadata = self.metadata();
        let pings = metadata
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.node_id())
            .map(|(id, n)| async move {
                forward::ping(&self.peers, &n.raft_address)
                    .await
                    .is_some_and(|p| p.node_id == *id)
                    .then_some(*id)
            });
        let mut alive: BTreeSet<NodeId> = futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect();
        alive.insert(self.node_id());
        alive
    }

    /// The nodes new replicas may go to: those alive now and not decommissioned, at least
    /// `replication_factor` of them.
    pub async fn placement_nodes(
        &self,
        replication_factor: u32,
    ) -> Result<Vec<NodeId>, BrokerError> {
        let metadata = self.metadata();
        let alive: Vec<NodeId> = self
            .alive_nodes()
            .await
            .into_iter()
            .filter(|id| !metadata.nodes.get(id).is_some_and(|n| n.decommissioned))
            .collect();
        if replication_factor as usize > alive.len() {
            return Err(BrokerError::InvalidConfig(format!(
                "replication factor {replication_factor} exceeds the {} live node(s) in the cluster",
                alive.len()
            )));
        }
        Ok(alive)
    }

    /// The controller's voters.
    pub fn controller_voters(&self) -> BTreeSet<NodeId> {
        self.controller_membership().voter_ids().collect()
    }
}

/// Refuses to start when a seed says this node's data belongs to another cluster.
pub(super) async fn refuse_other_cluster(
    peers: &PeerChannels,
    seeds: &[String],
    auth: &ClusterAuth,
) -> Result<(), NodeError> {
    if auth.cluster_id().is_none() {
        return Ok(());
    }
    for seed in seeds {
        if let Some(why) = forward::refused_as_other_cluster(peers, seed).await {
            return Err(NodeError::Joining(BrokerError::InvalidConfig(format!(
                "{seed} refuses this node: {why}; this data dir belongs to another cluster"
            ))));
        }
    }
    Ok(())
}
