//! The broker's Prometheus metrics (docs/metrics.md lists them): request counters and
//! latencies recorded where requests are answered, and gauges sampled every few seconds.

use std::sync::Weak;
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::node::Node;
use crate::partition::Partition;

/// How often the partition, Raft and budget gauges are sampled.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

/// Registers every metric's help text, so a scrape documents itself.
pub fn describe() {
    describe_counter!(
        "sluice_storage_direct_read_bytes_total",
        "Bytes consumers read past the page cache (O_DIRECT) from ranges released behind the cached tail, read-ahead included."
    );
    describe_counter!(
        "sluice_tls_reloads_total",
        "Reloads of the TLS certificates (SIGHUP), by outcome (ok, failed: the old ones stay)."
    );
    describe_counter!(
        "sluice_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by listener (client, raft)."
    );
    describe_counter!(
        "sluice_quota_throttled_total",
        "Requests answered THROTTLED, or subscription sends delayed, because the principal was over its byte-rate quota, by direction (produce, fetch)."
    );
    describe_counter!(
        "sluice_audit_events_total",
        "Audit events, by result: written (durable in __audit), dropped (queue full, nobody waited), lost (not written after retries)."
    );
    describe_counter!(
        "sluice_group_rebalances_total",
        "Changes of a consumer group's target assignment (members or subscribed partitions changed), by group."
    );
    describe_gauge!(
        "sluice_group_members",
        "Members of a consumer group, on its coordinator, by group."
    );
    describe_gauge!(
        "sluice_group_lag",
        "High watermark minus the committed offset, on the group's coordinator, by group, topic and partition."
    );
    describe_counter!(
        "sluice_raft_appends_refused_total",
        "Raft appends this follower refused for want of disk space, by group."
    );
    describe_counter!(
        "sluice_produce_requests_total",
        "Produce requests answered, by topic and result (ok, error)."
    );
    describe_counter!(
        "sluice_produce_records_total",
        "Records appended by produce requests, by topic."
    );
    describe_counter!(
        "sluice_produce_bytes_total",
        "Batch bytes appended by produce requests, by topic."
    );
    describe_histogram!(
        "sluice_produce_latency_seconds",
        "Time from a produce request's admission to its answer, by topic."
    );
    describe_counter!(
        "sluice_produce_throttled_total",
        "Produce requests refused THROTTLED after waiting for budget, by topic."
    );
    describe_counter!(
        "sluice_fetch_requests_total",
        "Fetch requests answered and Subscribe responses sent, by kind (fetch, subscribe)."
    );
    describe_counter!(
        "sluice_fetch_bytes_total",
        "Batch bytes served to consumers, by topic."
    );
    describe_gauge!(
        "sluice_produce_inflight_bytes",
        "Produce bytes admitted and not yet answered, broker wide."
    );
    describe_gauge!(
        "sluice_partition_high_watermark",
        "High watermark, by topic and partition."
    );
    describe_gauge!(
        "sluice_partition_log_start_offset",
        "First offset still stored, by topic and partition."
    );
    describe_gauge!(
        "sluice_partition_size_bytes",
        "Bytes of the partition's segments on disk, by topic and partition."
    );
    describe_gauge!(
        "sluice_partition_segments",
        "Segment files of the partition, by topic and partition."
    );
    describe_gauge!(
        "sluice_raft_term",
        "Current Raft term, by group (controller or topic/partition)."
    );
    describe_gauge!(
        "sluice_raft_leader",
        "Node id of the group's leader (0: none), by group."
    );
    describe_gauge!(
        "sluice_raft_commit_index",
        "Last committed Raft index, by group."
    );
    describe_histogram!(
        "sluice_raft_append_bytes",
        "Batch bytes written by one Raft log append (one group commit on a leader)."
    );
    describe_histogram!(
        "sluice_raft_append_write_seconds",
        "Time one Raft log append spent writing its batches (page cache, log lock included)."
    );
    describe_histogram!(
        "sluice_raft_append_sync_seconds",
        "Time one Raft log append spent in fdatasync."
    );
    describe_histogram!(
        "sluice_group_commit_seconds",
        "Time from proposing a group commit to its answer (append, sync, commit, apply)."
    );
    describe_histogram!(
        "sluice_group_commit_requests",
        "Produce requests answered by one group commit."
    );
    describe_counter!(
        "sluice_storage_recoveries_total",
        "Partition logs opened with a recovery scan."
    );
    describe_counter!(
        "sluice_compaction_runs_total",
        "Compaction passes that rewrote segments, by topic."
    );
    describe_counter!(
        "sluice_partitions_offline_total",
        "Partitions taken offline because their storage failed (corruption, I/O error)."
    );
}

/// Records an answered produce request.
pub fn produce_answered(topic: &str, records: u32, bytes: usize, started: Instant, ok: bool) {
    let labels = [("topic", topic.to_string())];
    let result = if ok { "ok" } else { "error" };
    counter!("sluice_produce_requests_total", "topic" => topic.to_string(), "result" => result)
        .increment(1);
    if ok {
        counter!("sluice_produce_records_total", &labels).increment(u64::from(records));
        counter!("sluice_produce_bytes_total", &labels).increment(bytes as u64);
    }
    histogram!("sluice_produce_latency_seconds", &labels).record(started.elapsed());
}

/// Records a request refused, or a stream paused, for a principal over its quota.
pub fn quota_throttled(direction: crate::flow::quota::Direction) {
    counter!("sluice_quota_throttled_total", "direction" => direction.name()).increment(1);
}

/// Records audit events written to `__audit`.
pub fn audit_written(events: usize) {
    counter!("sluice_audit_events_total", "result" => "written").increment(events as u64);
}

/// Records an audit event dropped because the queue was full.
pub fn audit_dropped() {
    counter!("sluice_audit_events_total", "result" => "dropped").increment(1);
}

/// Records audit events given up after retries.
pub fn audit_lost(events: usize) {
    counter!("sluice_audit_events_total", "result" => "lost").increment(events as u64);
}

/// Records a produce refused for lack of budget.
pub fn produce_throttled(topic: &str) {
    counter!("sluice_produce_throttled_total", "topic" => topic.to_string()).increment(1);
}

/// Records batches served to a consumer.
pub fn fetched(kind: &'static str, topic: &str, bytes: usize) {
    counter!("sluice_fetch_requests_total", "kind" => kind).increment(1);
    if bytes > 0 {
        counter!("sluice_fetch_bytes_total", "topic" => topic.to_string()).increment(bytes as u64);
    }
}

/// Brings the counter of bytes read past the page cache up to the storage's own count.
pub fn direct_reads() {
    counter!("sluice_storage_direct_read_bytes_total")
        .absolute(sluice_storage::io::direct_read_bytes());
}

/// Records a compaction pass that rewrote segments.
pub fn compacted(topic: &str) {
    counter!("sluice_compaction_runs_total", "topic" => topic.to_string()).increment(1);
}

/// Records a partition taken offline because its storage failed.
pub fn partition_offline(topic: &str, partition: u32) {
    counter!(
        "sluice_partitions_offline_total",
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .increment(1);
}

/// Records a log opened with a recovery scan.
/// A follower refused a leader's entries: no disk space for them.
pub fn append_refused(group: u64) {
    counter!("sluice_raft_appends_refused_total", "group" => group.to_string()).increment(1);
}

/// A log was recovered at open.
pub fn recovered() {
    counter!("sluice_storage_recoveries_total").increment(1);
}

/// Samples the gauges until the node is dropped.
pub async fn run_gauges(node: Weak<Node>) {
    loop {
        tokio::time::sleep(GAUGE_INTERVAL).await;
        let Some(node) = node.upgrade() else { return };
        gauge!("sluice_produce_inflight_bytes").set(node.broker_budget.in_use() as f64);
        raft_gauges("controller".to_string(), &node.controller_raft_metrics());
        for partition in node.partitions() {
            partition_gauges(&partition);
        }
    }
}

fn partition_gauges(partition: &Partition) {
    let labels = [
        ("topic", partition.topic.clone()),
        ("partition", partition.index.to_string()),
    ];
    if let Ok((log_start, high_watermark, size)) = partition.offsets() {
        gauge!("sluice_partition_high_watermark", &labels).set(high_watermark as f64);
        gauge!("sluice_partition_log_start_offset", &labels).set(log_start as f64);
        gauge!("sluice_partition_size_bytes", &labels).set(size as f64);
    }
    if let Ok(log) = partition.group.log.read() {
        gauge!("sluice_partition_segments", &labels).set(log.segment_count() as f64);
    }
    let metrics = partition.group.raft.metrics().borrow().clone();
    raft_gauges(format!("{}/{}", partition.topic, partition.index), &metrics);
}

fn raft_gauges(group: String, m: &openraft::RaftMetrics<crate::raft::NodeId, openraft::BasicNode>) {
    let labels = [("group", group)];
    gauge!("sluice_raft_term", &labels).set(m.current_term as f64);
    gauge!("sluice_raft_leader", &labels).set(m.current_leader.unwrap_or(0) as f64);
    gauge!("sluice_raft_commit_index", &labels).set(m.last_applied.map_or(0, |l| l.index) as f64);
}

/// Records one Raft log append: its bytes, the time writing them and the time syncing.
pub fn raft_append(bytes: usize, write: Duration, sync: Duration) {
    histogram!("sluice_raft_append_bytes").record(bytes as f64);
    histogram!("sluice_raft_append_write_seconds").record(write.as_secs_f64());
    histogram!("sluice_raft_append_sync_seconds").record(sync.as_secs_f64());
}

/// Records one group commit of `requests` produce requests that took `elapsed`.
pub fn group_commit(requests: usize, elapsed: Duration) {
    histogram!("sluice_group_commit_seconds").record(elapsed.as_secs_f64());
    histogram!("sluice_group_commit_requests").record(requests as f64);
}

/// A consumer group's target assignment changed.
pub fn group_rebalanced(group: &str) {
    counter!("sluice_group_rebalances_total", "group" => group.to_string()).increment(1);
}

/// A consumer group's member count, on its coordinator.
pub fn group_members(group: &str, members: usize) {
    gauge!("sluice_group_members", "group" => group.to_string()).set(members as f64);
}

/// A consumer group's lag on one partition, on its coordinator.
pub fn group_lag(group: &str, topic: &str, partition: u32, lag: u64) {
    gauge!(
        "sluice_group_lag",
        "group" => group.to_string(),
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}
