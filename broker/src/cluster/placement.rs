//! Where a new partition's replicas go: on the nodes holding the fewest replicas, with its
//! preferred leader (the first replica) on the node leading the fewest partitions.

use std::collections::BTreeMap;

use crate::raft::NodeId;

/// Replicas and preferred leaderships per node, counted over the existing partitions.
#[derive(Debug, Default, Clone)]
pub struct Load {
    replicas: BTreeMap<NodeId, usize>,
    leaders: BTreeMap<NodeId, usize>,
}

impl Load {
    /// Counts the replica lists of existing partitions (first replica: preferred leader).
    pub fn of<'a>(partitions: impl IntoIterator<Item = &'a [NodeId]>) -> Self {
        let mut load = Self::default();
        for replicas in partitions {
            load.add(replicas);
        }
        load
    }

    fn add(&mut self, replicas: &[NodeId]) {
        for r in replicas {
            *self.replicas.entry(*r).or_default() += 1;
        }
        if let Some(first) = replicas.first() {
            *self.leaders.entry(*first).or_default() += 1;
        }
    }

    /// Picks `rf` distinct nodes of `nodes` for partition number `partition` and counts
    /// them. Ties rotate with the partition number, so equal nodes take turns.
    pub fn place(&mut self, nodes: &[NodeId], rf: usize, partition: usize) -> Vec<NodeId> {
        let n = nodes.len().max(1);
        let mut candidates: Vec<(usize, NodeId)> = nodes
            .iter()
            .enumerate()
            .map(|(i, id)| ((i + n - partition % n) % n, *id))
            .collect();
        candidates.sort_by_key(|(turn, id)| (self.replicas.get(id).copied().unwrap_or(0), *turn));
        let mut chosen: Vec<NodeId> = candidates.into_iter().take(rf).map(|(_, id)| id).collect();
        // The least-leading chosen node goes first (stable: replica count order breaks ties).
        if let Some(pos) =
            (0..chosen.len()).min_by_key(|&i| self.leaders.get(&chosen[i]).copied().unwrap_or(0))
        {
            let leader = chosen.remove(pos);
            chosen.insert(0, leader);
        }
        self.add(&chosen);
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_leaders_spread_evenly() {
        let nodes = [1, 2, 3];
        let mut load = Load::default();
        let placed: Vec<Vec<NodeId>> = (0..6).map(|p| load.place(&nodes, 2, p)).collect();
        for replicas in &placed {
            assert_eq!(replicas.len(), 2);
            assert_ne!(replicas[0], replicas[1]);
        }
        for node in nodes {
            let hosted = placed.iter().filter(|r| r.contains(&node)).count();
            let leads = placed.iter().filter(|r| r[0] == node).count();
            assert_eq!((hosted, leads), (4, 2), "node {node} in {placed:?}");
        }
    }

    #[test]
    fn a_new_node_gets_the_next_replicas() {
        let existing: Vec<Vec<NodeId>> = vec![vec![1, 2, 3]; 4];
        let mut load = Load::of(existing.iter().map(Vec::as_slice));
        let replicas = load.place(&[1, 2, 3, 4], 3, 0);
        assert!(replicas.contains(&4));
        assert_eq!(replicas[0], 4, "the node leading nothing leads");
    }
}
