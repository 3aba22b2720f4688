//! Metadata changes: proposed to the controller group here, or handed to its leader, and
//! the partition leaderships this node reports.

use super::*;

impl Node {
    /// Proposes a metadata change and waits for it to be applied; a node that does not
    /// lead the controller hands it to the leader.
    pub async fn propose(
        &self,
        command: ControllerCommand,
    ) -> Result<ControllerResponse, BrokerError> {
        let (answer, index) = self.propose_forwarded(command, 0).await?;
        // Applied on the leader; this node's own metadata follows (bounded), so what the
        // caller reads here next already shows the change.
        let wait = limits::CONTROLLER_PROPOSE_WAIT;
        let _ = self
            .controller
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "the change applied here")
            .await;
        Ok(answer)
    }

    /// [`Node::propose`] for a command that already passed through `hops` nodes; also
    /// returns the Raft index the change was applied at.
    pub async fn propose_forwarded(
        &self,
        command: ControllerCommand,
        hops: u32,
    ) -> Result<(ControllerResponse, u64), BrokerError> {
        let deadline = tokio::time::Instant::now() + limits::CONTROLLER_PROPOSE_WAIT;
        let mut last = BrokerError::Unavailable("the controller has no leader".into());
        loop {
            let leader = self.controller_leader();
            if leader == Some(self.node_id()) {
                match propose_at(&self.controller, command.clone()).await {
                    // Lost the leadership meanwhile: find the new leader.
                    Err(e @ BrokerError::NotLeader { .. }) => last = e,
                    other => return other,
                }
            } else if let Some(leader) = leader
                && self.in_cluster()
            {
                if hops >= forward::FORWARD_HOPS_MAX {
                    return Err(BrokerError::Unavailable(
                        "the controller leader moved while the change was forwarded".into(),
                    ));
                }
                let address = self.controller_member_address(leader);
                match address {
                    Some(address) => {
                        match forward::forward(&self.peers, &address, &command, hops + 1).await {
                            Ok(answer) => return Ok(answer),
                            Err(e) => last = e,
                        }
                    }
                    None => {
                        last = BrokerError::Unavailable(format!(
                            "no address for controller leader {leader}"
                        ))
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The raft address of controller member `id`.
    pub(super) fn controller_member_address(&self, id: NodeId) -> Option<String> {
        self.controller_membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }
}

/// Proposes the leaderships this node's partitions report, several per controller entry.
pub(super) async fn report_leaders(
    node: Weak<Node>,
    mut reports: mpsc::UnboundedReceiver<LeaderReport>,
) {
    while let Some(first) = reports.recv().await {
        let mut leaders = vec![first];
        while let Ok(more) = reports.try_recv() {
            leaders.push(more);
        }
        let Some(node) = node.upgrade() else { return };
        for attempt in 0..limits::LEADER_REPORT_ATTEMPTS {
            let metadata = node.metadata();
            leaders.retain(|r| {
                metadata
                    .partition_of_group(r.group_id)
                    .is_some_and(|(_, _, p)| p.leader_term < r.term || p.leader != Some(r.leader))
            });
            if leaders.is_empty() {
                break;
            }
            let command = ControllerCommand::ReportLeaders {
                leaders: leaders.clone(),
            };
            match node.propose(command).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "reporting partition leaders failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Proposes a metadata change to the controller group `controller` and waits for it to be
/// applied. Log space is reserved first (see `log_room`).
pub async fn propose_to(
    controller: &Group,
    command: ControllerCommand,
) -> Result<ControllerResponse, BrokerError> {
    propose_at(controller, command)
        .await
        .map(|(answer, _)| answer)
}

/// [`propose_to`], also returning the Raft index the change was applied at.
pub(super) async fn propose_at(
    controller: &Group,
    command: ControllerCommand,
) -> Result<(ControllerResponse, u64), BrokerError> {
    crate::log_room::reserve(&controller.log, limits::CONTROLLER_ENTRY_ROOM_BYTES).await?;
    match controller
        .raft
        .client_write(Command::Controller(command))
        .await
    {
        Ok(response) => match response.data {
            CommandResponse::Controller(r) => Ok((r, response.log_id.index)),
            other => Err(BrokerError::Internal(format!(
                "unexpected controller result {other:?}"
            ))),
        },
        Err(e) => Err(crate::partition::writer::write_error(e)),
    }
}

/// How often a node checks that the controller names it for the partitions it leads.
const LEADER_RECHECK: Duration = Duration::from_secs(2);

/// Reports again every leadership of this node that the controller's metadata does not show
/// (a report dropped after its retries, or lost to a reassignment), so brokers that do not
/// host a partition learn its leader without waiting for the next election.
pub(super) async fn recheck_leaders(node: Weak<Node>) {
    let mut passes = crate::node::Passes::every(LEADER_RECHECK, node);
    while let Some(node) = passes.next().await {
        let metadata = node.metadata();
        for partition in node.partitions() {
            if !partition.is_leader() {
                continue;
            }
            let term = partition.group.raft.metrics().borrow().current_term;
            let shown = metadata
                .partition_of_group(partition.group.id)
                .is_some_and(|(_, _, p)| p.leader == Some(node.node_id()) && p.leader_term >= term);
            if !shown {
                let _ = node.leader_reports.send(LeaderReport {
                    group_id: partition.group.id,
                    leader: node.node_id(),
                    term,
                });
            }
        }
    }
}
