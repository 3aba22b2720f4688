//! The command line: every command, flag and default (docs/cli.md is the long form).

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Sluice's admin and developer CLI.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// Brokers to bootstrap from, comma separated.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,
    /// CA certificate (PEM) the brokers' certificates chain to: turns TLS on.
    #[arg(long, global = true, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for brokers that require one (needs --tls-ca).
    #[arg(long, global = true, env = "SLUICE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name the brokers' certificates must carry [default: each broker address's host].
    #[arg(
        long,
        global = true,
        env = "SLUICE_TLS_SERVER_NAME",
        requires = "tls_ca"
    )]
    pub tls_server_name: Option<String>,
    /// Log in as this user (SCRAM-SHA-256); the password comes from SLUICE_PASSWORD, never
    /// from a flag.
    #[arg(long, global = true, env = "SLUICE_USER")]
    pub user: Option<String>,
    /// Output: aligned text tables, or JSON (one document, or one object per line for
    /// streams).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned tables and plain lines.
    Text,
    /// JSON.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, configure and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Consume records and print them.
    Consume(ConsumeArgs),
    /// The cluster: nodes, controller, health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Consumer groups: list, describe, reset offsets, delete.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Users who may log in: create (password on standard input), delete, list, whoami.
    #[command(subcommand)]
    User(UserCommand),
    /// Access control entries: add, remove, list (enforced with sluiced --require-auth).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Byte-rate quotas per principal: set, delete, list.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// The audit trail (`__audit`): security and admin events.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure produce and consume throughput and latency.
    Bench(BenchArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Quota commands.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a principal's byte rates per broker (an unset rate keeps the brokers' default;
    /// 0 lifts it).
    Set {
        /// `User:NAME`, or `User:ANONYMOUS` for unauthenticated callers.
        #[arg(long)]
        principal: String,
        /// Produce bytes per second.
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        /// Fetch bytes per second.
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
    },
    /// Remove a principal's own rates: the brokers' defaults apply again.
    Delete {
        /// `User:NAME`.
        #[arg(long)]
        principal: String,
    },
    /// The answering broker's defaults and every principal's own rates.
    List,
}

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit events, oldest first: one JSON object per line with --format json.
    Tail {
        /// Where to start: beginning, end, an offset, or @UNIX_MS.
        #[arg(long, default_value = "beginning")]
        from: String,
        /// Keep printing events as they are recorded (until Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long)]
        num: Option<u64>,
    },
}

/// ACL commands.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add an entry.
    Add(AclArgs),
    /// Remove an entry (exactly as added).
    Remove(AclArgs),
    /// List the entries.
    List,
}

/// One access control entry.
#[derive(Debug, Clone, Args)]
pub struct AclArgs {
    /// `User:NAME`, or `User:*` for every authenticated user.
    #[arg(long)]
    pub principal: String,
    /// all, read, write, create, delete, alter, describe, cluster_action.
    #[arg(long)]
    pub operation: String,
    /// A topic name (or prefix with --prefixed; `*` for every topic).
    #[arg(long, group = "resource")]
    pub topic: Option<String>,
    /// A consumer group name (or prefix with --prefixed; `*` for every group).
    #[arg(long, group = "resource")]
    pub group: Option<String>,
    /// The cluster itself.
    #[arg(long, group = "resource")]
    pub cluster: bool,
    /// Match every name starting with the given one.
    #[arg(long)]
    pub prefixed: bool,
    /// The client's IP address, or `*`.
    #[arg(long, default_value = "*")]
    pub host: String,
    /// Deny instead of allow (a deny wins over every allow).
    #[arg(long)]
    pub deny: bool,
}

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or change its password: the first line of standard input is the
    /// password.
    Create {
        /// The user's name.
        name: String,
        /// PBKDF2 iterations (at least 4096).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Delete a user; its sessions end.
    Delete {
        /// The user's name.
        name: String,
    },
    /// List the users.
    List,
    /// Who this command is authenticated as.
    Whoami,
}

/// Topic commands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions.
        #[arg(short, long, default_value_t = 1)]
        partitions: u32,
        /// Replicas of each partition.
        #[arg(short = 'r', long, default_value_t = 1)]
        replicas: u32,
        /// A topic config, KEY=VALUE (repeatable), e.g. retention.ms=86400000.
        #[arg(short, long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Describe a topic: configs, and per partition its leader, replicas, log start, high
    /// watermark and size on disk.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Set or remove topic configs.
    AlterConfig {
        /// Topic name.
        name: String,
        /// A config to set, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A config to remove, back to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic.
    AddPartitions {
        /// Topic name.
        name: String,
        /// Partitions to add.
        #[arg(long)]
        count: u32,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Move a partition to other replicas (learner first, voter once caught up, old
    /// replicas removed last), under load; waits until it is done.
    Reassign {
        /// Topic name.
        name: String,
        /// Partition number.
        partition: u32,
        /// The replicas wanted, comma-separated node ids, the preferred leader first.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
        /// Return once the move is recorded instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, controller and version.
    Info,
    /// Whether every partition has a leader; exit code 1 if not.
    Health,
    /// Move every replica off a node and retire it from the controller's voters; waits
    /// until the node holds no replica.
    Decommission {
        /// The node id.
        node: u64,
        /// Return once the moves are recorded instead of waiting for them.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Consumer group commands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group of the cluster, with its state and member count.
    List,
    /// A group's members and assignments, and per partition its committed offset, high
    /// watermark and lag.
    Describe {
        /// The group.
        group: String,
    },
    /// Moves a group's committed offsets; only while the group has no members.
    ResetOffsets {
        /// The group.
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// Where to: earliest, latest, an offset, or @UNIX_MS (first record at or after).
        #[arg(long)]
        to: String,
        /// Only this partition (default: all of the topic's).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Deletes a group's committed offsets; only while it has no members.
    Delete {
        /// The group.
        group: String,
    },
}

/// Acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Committed by the partition's replicas and durable.
    All,
    /// Written by the leader.
    Leader,
}

/// Batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// None.
    None,
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic.
    pub topic: String,
    /// Splits each line into key and value at the first occurrence of SEP.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Sends every record to this partition (default: by key, round robin without keys).
    #[arg(long)]
    pub partition: Option<u32>,
    /// What each record waits for.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// A header for every record, KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Prints `partition offset` for each record, in input order.
    #[arg(long)]
    pub print_offsets: bool,
}

/// `sluice consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic.
    pub topic: String,
    /// Where to start: beginning, end, an offset, or @UNIX_MS (first record at or after).
    /// With --group: where partitions without a committed offset start (beginning or end).
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Consume as a member of this consumer group: the group's coordinator assigns the
    /// partitions, and what is printed is committed (every 5 s and at exit).
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: a static member id (a restart within the session timeout keeps the
    /// partitions).
    #[arg(long, requires = "group")]
    pub instance_id: Option<String>,
    /// Only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    pub num: Option<u64>,
    /// Stop at the high watermark each partition had when the command started.
    #[arg(long)]
    pub until_end: bool,
    /// Print each record's key before its value (text), tab separated.
    #[arg(long)]
    pub print_keys: bool,
    /// Print each record's headers before its value (text), as k=v,k=v.
    #[arg(long)]
    pub print_headers: bool,
}

/// What `sluice bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Produce throughput and latency.
    Produce,
    /// Consume throughput of what the topic holds.
    Consume,
    /// Produce and consume at once: end-to-end latency.
    E2e,
}

/// `sluice bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Topic; created (with --partitions) if it does not exist.
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Records to produce (or consume); the default is to run for --duration.
    #[arg(long, conflicts_with = "duration")]
    pub records: Option<u64>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Concurrent producers (each with its own connection and batches).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// What each record waits for.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Records per second over all producers (default: as fast as possible). Latency is then
    /// measured from each record's scheduled send time, so falling behind shows as latency.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds at the start whose records are sent but whose latencies are not counted.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}
