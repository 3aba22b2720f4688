//! Background retention and compaction. Retention never deletes segments behind openraft's
//! back: the broker snapshots the partition's state machine and asks openraft to purge up
//! to the last Raft index of the deletable segments (DESIGN §3).

use std::sync::Weak;

use crate::node::Node;
use crate::partition::Partition;

/// Runs passes every `housekeeping_interval` until the node is dropped.
pub async fn run(node: Weak<Node>) {
    loop {
        let Some(interval) = node.upgrade().map(|n| n.config.housekeeping_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(node) = node.upgrade() else { return };
        for partition in node.partitions() {
            retention_pass(&partition).await;
            compaction_pass(&partition).await;
        }
    }
}

async fn retention_pass(partition: &Partition) {
    let target = partition
        .group
        .log
        .read()
        .ok()
        .and_then(|log| log.retention_raft_index());
    let Some(target) = target else { return };
    let applied = partition
        .group
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    if applied < target {
        return;
    }
    let raft = &partition.group.raft;
    if let Err(e) = raft.trigger().snapshot().await {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "snapshot for retention failed");
        return;
    }
    if let Err(e) = raft.trigger().purge_log(target).await {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "purge for retention failed");
    }
}

async fn compaction_pass(partition: &Partition) {
    if !partition.config().log.cleanup_policy.compacts() {
        return;
    }
    let log = std::sync::Arc::clone(&partition.group.log);
    let result = tokio::task::spawn_blocking(move || {
        log.write()
            .map_err(|_| "log lock poisoned".to_string())?
            .compact()
            .map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(report)) if report.ran => {
            tracing::info!(topic = %partition.topic, partition = partition.index, ?report, "compacted");
            crate::metrics::compacted(&partition.topic);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "compaction failed")
        }
        Err(e) => tracing::warn!(error = %e, "compaction task failed"),
    }
}
