//! Background retention and compaction. Retention never deletes segments behind openraft's
//! back: the broker snapshots the partition's state machine and asks openraft to purge up
//! to the last Raft index of the deletable segments (DESIGN §3).

use std::sync::Weak;
use std::time::Duration;

use crate::node::Node;
use crate::partition::Partition;

/// How long a retention pass waits for the snapshot it triggered; the snapshot is the small
/// partition state, so this only runs out when the group is stuck.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Runs passes every `housekeeping_interval` until the node is dropped.
pub async fn run(node: Weak<Node>) {
    loop {
        let Some(interval) = node.upgrade().map(|n| n.config.housekeeping_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(node) = node.upgrade() else { return };
        let now_ms = sluice_storage::Clock::now_ms(&sluice_storage::SystemClock);
        crate::metrics::direct_reads();
        for partition in node.partitions() {
            snapshot_pass(&partition).await;
            retention_pass(&partition).await;
            compaction_pass(&partition).await;
            let expired = partition.expire_producers(now_ms);
            if expired > 0 {
                tracing::info!(topic = %partition.topic, partition = partition.index, expired, "idle producers expired");
            }
        }
    }
}

/// Snapshots a partition once `PARTITION_SNAPSHOT_BYTES` of log follow its last snapshot,
/// so a restart re-reads no more than that (openraft's own policy counts entries only).
async fn snapshot_pass(partition: &Partition) {
    let (snapshot, applied) = {
        let metrics = partition.group.raft.metrics();
        let m = metrics.borrow();
        (m.snapshot.map(|s| s.index), m.last_applied.map(|l| l.index))
    };
    if applied <= snapshot {
        return;
    }
    let behind = partition
        .group
        .log
        .read()
        .ok()
        .and_then(|log| log.bytes_after_raft_index(snapshot).ok())
        .unwrap_or(0);
    if behind < crate::limits::PARTITION_SNAPSHOT_BYTES {
        return;
    }
    if let Err(e) = partition.group.raft.trigger().snapshot().await {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "snapshot failed");
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
    // The trigger only queues the snapshot, and openraft purges no further than the last
    // snapshot it has: purging now would stop at the previous pass's snapshot, so retention
    // would lag a whole pass behind (and by `retention.bytes` more than configured).
    let covered = raft
        .wait(Some(SNAPSHOT_WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= target),
            "retention snapshot",
        )
        .await;
    if let Err(e) = covered {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "snapshot for retention not built in time");
        return;
    }
    if let Err(e) = raft.trigger().purge_log(target).await {
        tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "purge for retention failed");
    }
}

/// Compacts off the log's lock: the plan and the install take it briefly; the reads of
/// the dirty segments and the writing of their rewrites, the long part, run while the
/// partition takes produces and fetches (DESIGN §2: readers of old maps keep reading).
async fn compaction_pass(partition: &Partition) {
    if !partition.config().log.cleanup_policy.compacts() {
        return;
    }
    let log = std::sync::Arc::clone(&partition.group.log);
    let committed = partition.high_watermark();
    let result = crate::blocking::run(move || {
        let plan = log
            .read()
            .map_err(|_| "log lock poisoned".to_string())?
            .plan_compaction(committed)
            .map_err(|e| e.to_string())?;
        let Some(plan) = plan else {
            return Ok(None);
        };
        let prepared = plan.prepare().map_err(|e| {
            // A damaged sealed segment: the partition goes offline rather than failing
            // this pass, and every later one, for ever.
            if matches!(e, sluice_storage::StorageError::Corruption { .. })
                && let Ok(log) = log.read()
            {
                log.mark_corrupt(&e);
            }
            e.to_string()
        })?;
        log.write()
            .map_err(|_| "log lock poisoned".to_string())?
            .install_compaction(prepared)
            .map(Some)
            .map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(Some(report))) => {
            tracing::info!(topic = %partition.topic, partition = partition.index, ?report, "compacted");
            crate::metrics::compacted(&partition.topic);
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "compaction failed")
        }
        Err(e) => tracing::warn!(error = %e, "compaction task failed"),
    }
}
