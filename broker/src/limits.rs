//! The broker's limits and defaults, each with its reason.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Default client address: loopback only until TLS and authentication exist.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9092);
/// Default metrics address (Redpanda's admin port).
pub const METRICS_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9644);

/// Default produce bytes in flight per partition: a few group commits' worth.
pub const PARTITION_INFLIGHT_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;
/// Default produce bytes in flight per broker: bounds memory whatever producers do.
pub const BROKER_INFLIGHT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// Default `segment.bytes` of a topic: Kafka's 1 GiB. Each roll stalls a partition's writes
/// for a few milliseconds (seal, fsync, index files, checkpoint), so at hundreds of MB/s
/// 128 MiB segments rolled twice a second and set the produce p99 (docs/benchmarks.md).
pub const SEGMENT_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Smallest budget accepted. A batch larger than a whole budget takes all of it, so any
/// budget admits any batch; below this, group commit has nothing to group.
pub const INFLIGHT_BYTES_MIN: u64 = 1024 * 1024;

/// Log space reserved before each controller proposal: far more than any metadata command
/// takes, so a full disk refuses the proposal instead of stopping the controller group.
pub const CONTROLLER_ENTRY_ROOM_BYTES: u64 = 1024 * 1024;

/// Bytes of batches one group commit (one Raft entry) carries at most.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Produce requests one group commit carries at most.
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 1024;
/// Produce requests queued per partition writer; the in-flight byte budget binds first.
pub const PRODUCE_QUEUE_DEPTH: usize = 4096;

/// How long a unary produce waits for budget when the client set no deadline.
pub const THROTTLE_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// The retry hint sent with THROTTLED.
pub const THROTTLE_RETRY_AFTER_MS: u32 = 100;

/// Longest long-poll a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
/// Largest fetch response.
pub const FETCH_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Partitions in one fetch request.
pub const FETCH_PARTITIONS_MAX: usize = 1000;

/// Raft heartbeat default. openraft 0.9 makes a follower that knows a leader wait the
/// leader lease (the election timeout's maximum) plus an election timeout before it stands,
/// so failover takes 2–2.4× the election timeout: 100 ms heartbeats and 500–600 ms
/// elections keep it near 1.2 s (docs/architecture.md, decision 26).
pub const RAFT_HEARTBEAT_MS_DEFAULT: u64 = 100;
/// Raft election timeout default (its minimum; the maximum is 6/5 of it), 5× the heartbeat.
pub const RAFT_ELECTION_TIMEOUT_MS_DEFAULT: u64 = 500;

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// How long admin calls wait for a new partition to elect its leader.
pub const PARTITION_READY_WAIT: Duration = Duration::from_secs(20);

const _: () = assert!(RAFT_ELECTION_TIMEOUT_MS_DEFAULT >= 5 * RAFT_HEARTBEAT_MS_DEFAULT);
const _: () = assert!(PARTITION_INFLIGHT_BYTES_DEFAULT >= INFLIGHT_BYTES_MIN);
const _: () = assert!(BROKER_INFLIGHT_BYTES_DEFAULT >= PARTITION_INFLIGHT_BYTES_DEFAULT);

/// Longest error sentence sent to a client (status message, `ErrorInfo.message`). gRPC
/// carries a status message in metadata, limited to 8 KiB by default; keeping every status
/// and `ErrorInfo` under 1 KiB leaves room for the other metadata.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;

/// A partition group snapshots its (small) state every this many applied entries, so a
/// restart re-reads and re-applies at most this many entries of its log. A group commit is
/// one entry: at peak a few hundred a second, so about one snapshot a minute.
pub const PARTITION_SNAPSHOT_ENTRIES: u64 = 16_384;

/// Housekeeping also snapshots a partition once this many log bytes follow its last
/// snapshot: entries of large batches would otherwise leave gigabytes to re-read at start.
pub const PARTITION_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

/// The controller snapshots its metadata every this many entries (one per topic change or
/// producer id), and purges its log behind the snapshot.
pub const CONTROLLER_SNAPSHOT_ENTRIES: u64 = 4096;

/// Controller entries kept behind its snapshot, for a follower a little behind.
pub const CONTROLLER_LOG_KEEP: u64 = 1024;

/// The controller's segment size: small, so purging behind a snapshot frees whole segments
/// (an entry is about 150 bytes; 4 MiB holds ~25,000).
pub const CONTROLLER_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// How long a starting cluster node waits for the controller to have a leader (and, not
/// being a founding voter, to be registered): founders may start a while apart.
pub const CLUSTER_JOIN_WAIT: Duration = Duration::from_secs(60);

/// How long a metadata change waits for a controller leader to take it.
pub const CONTROLLER_PROPOSE_WAIT: Duration = Duration::from_secs(15);

/// Attempts at reporting a partition leadership to the controller.
pub const LEADER_REPORT_ATTEMPTS: u32 = 20;

/// Raft entries a follower may lag its partition's leader and still count as in sync.
pub const IN_SYNC_LAG_ENTRIES: u64 = 256;

/// Partitions of `__consumer_offsets` by default (Kafka has 50; 16 serves thousands of
/// groups and keeps a small cluster's Raft groups few).
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 16;

/// Longest consumer group name.
pub const GROUP_NAME_LEN_MAX: usize = 255;

/// Most topics, owned partitions or commits in one group request.
pub const GROUP_REQUEST_ITEMS_MAX: usize = 10_000;

/// Longest subscription pattern, and the compiled size it may take.
pub const GROUP_PATTERN_LEN_MAX: usize = 1000;
/// Compiled size limit of a subscription pattern (a hostile pattern is refused, not built).
pub const GROUP_PATTERN_COMPILED_MAX: usize = 1 << 20;

/// Consumer session timeout when a member names none, and the bounds of what it may name.
pub const GROUP_SESSION_TIMEOUT_DEFAULT_MS: u32 = 45_000;
/// Shortest session timeout.
pub const GROUP_SESSION_TIMEOUT_MIN_MS: u32 = 1_000;
/// Longest session timeout.
pub const GROUP_SESSION_TIMEOUT_MAX_MS: u32 = 300_000;

/// A gauge not set for this long is dropped from the scrape (gauges are set every 2–5 s
/// while what they describe exists on this node).
pub const METRIC_GAUGE_IDLE: Duration = Duration::from_secs(60);

/// How long a new coordinator hands out no partitions: the previous coordinator's members
/// find it gone within a heartbeat's timeout (5 s in the SDK) plus a retry, and stop reading
/// when the new one does not know them (UNKNOWN_MEMBER); only then may others take over.
pub const GROUP_TAKEOVER_GRACE: Duration = Duration::from_secs(6);

/// Longest member id a client may choose (the coordinator's own are 32 hex digits).
pub const MEMBER_ID_LEN_MAX: usize = 64;

/// How long a partition waits at shutdown for the snapshot that spares the next start a
/// re-apply of its log.
pub const SHUTDOWN_SNAPSHOT_WAIT: Duration = Duration::from_secs(5);
