//! The command line: global flags (each with a `KVCTL_*` env var), the subcommands with their
//! flags, and the parsers of the values they take. The definition only: running a command is
//! `commands`' and `bench`'s business.

use crate::exit::EXIT_CODES_HELP;
use clap::{Args, Parser, Subcommand, ValueEnum};
use omnikv_common::client::parse_lease_id;
use omnikv_common::lease::MAX_TTL_SECS;
use omnikv_common::membership::{parse_nodes, parse_peer, Nodes};
use omnikv_common::Consistency;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Default `--endpoints`: the client ports of a standard three-replica layout.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003";

/// How often an idle watch stream reports progress, in ms (`watch --progress-ms`, and the
/// shell's watch).
pub const DEFAULT_WATCH_PROGRESS_MS: u64 = 5000;

/// Default lease TTL of `lock` and `elect`, in seconds (etcdctl's).
pub const DEFAULT_LOCK_TTL_S: u64 = 60;

/// Default `log --limit`.
pub const DEFAULT_LOG_LIMIT: usize = 50;

/// omnikv's scriptable client: put, get, delete (keys and ranges), conditional puts,
/// transactions, watch, status, log, an interactive shell, and a load generator (bench).
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, about, after_help = EXIT_CODES_HELP, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Comma-separated kvd client endpoints (host:port or http://host:port), tried in turn.
    #[arg(long, env = "KVCTL_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, global = true)]
    pub endpoints: String,

    /// Ask only the N-th endpoint of --endpoints (1-based; in the standard layout, replica
    /// pid N). No failover to the others.
    #[arg(long, value_name = "N", env = "KVCTL_NODE", global = true)]
    pub node: Option<usize>,

    /// Read consistency for get: linearizable (sees every acknowledged write) or local
    /// (the asked replica's own state: may be stale, works without a quorum).
    #[arg(
        long,
        value_name = "linearizable|local",
        env = "KVCTL_CONSISTENCY",
        default_value = "linearizable",
        global = true
    )]
    pub consistency: Consistency,

    /// Output format on stdout (and of errors on stderr).
    #[arg(
        short = 'o',
        long,
        value_enum,
        env = "KVCTL_OUTPUT",
        default_value_t = OutputFormat::Text,
        global = true
    )]
    pub output: OutputFormat,

    /// Overall time allowed per command, failover included: `5s`, `500ms`, `2m`, or a bare
    /// number of seconds (`1.5`).
    #[arg(
        long,
        value_name = "DURATION",
        env = "KVCTL_TIMEOUT",
        default_value = "5s",
        value_parser = parse_timeout,
        global = true
    )]
    pub timeout: Duration,

    /// PEM file of the CA certificate(s) that sign the servers' certificates (for https://
    /// endpoints); when given, only these are trusted.
    #[arg(long, value_name = "FILE", env = "KVCTL_CACERT", global = true)]
    pub cacert: Option<PathBuf>,

    /// PEM client certificate to present (with --key): authenticates as the user its CN names.
    #[arg(
        id = "client_cert",
        long = "cert",
        value_name = "FILE",
        env = "KVCTL_CERT",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        id = "client_key",
        long = "key",
        value_name = "FILE",
        env = "KVCTL_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,

    /// Bearer token to authenticate with (`okv_...`, from `kvctl token new`). Prefer
    /// --token-file or the env var: a flag's value shows in the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KVCTL_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<Token>,

    /// File whose first line is the bearer token (e.g. a mounted Kubernetes Secret).
    #[arg(long, value_name = "FILE", env = "KVCTL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// A bearer token: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.trim().to_string()))
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For humans (and `cut`/`awk`).
    Text,
    /// One JSON document per result.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write VALUE under KEY (`-` as VALUE reads all of stdin, byte for byte). With a
    /// condition (--if-absent, --if-value, --if-mod-revision) it is a transaction: exit 6
    /// when the condition does not hold (nothing written; the message says what KEY holds).
    Put {
        /// The key (any bytes but empty).
        key: OsString,
        /// The value, or `-` to read it from stdin.
        value: OsString,
        #[command(flatten)]
        condition: PutCondition,
        /// Attach KEY to this lease (hex id, as `lease grant` prints it): KEY is deleted when
        /// the lease expires or is revoked. Exit 1 when the lease does not exist.
        #[arg(long, value_name = "ID", value_parser = parse_lease_id)]
        lease: Option<u64>,
    },
    /// Print the value of KEY (raw bytes, then a newline). Exit 1 if the key does not exist.
    /// With --prefix or --from: every key of the range, one `KEY<TAB>VALUE` line each (keys
    /// and values as text, or 0x-hex when not printable UTF-8), following pages to the end.
    #[command(group(clap::ArgGroup::new("range").args(["prefix", "from"])))]
    Get {
        /// The key (leave out with --prefix or --from).
        #[arg(required_unless_present_any = ["prefix", "from"], conflicts_with_all = ["prefix", "from"])]
        key: Option<OsString>,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Delete KEY. Deleting a missing key succeeds. With --prefix or --from: every key of the
    /// range, as one write; prints `deleted N`.
    #[command(alias = "del", group(clap::ArgGroup::new("range").args(["prefix", "from"])))]
    Delete {
        /// The key (leave out with --prefix or --from).
        #[arg(required_unless_present_any = ["prefix", "from"], conflicts_with_all = ["prefix", "from"])]
        key: Option<OsString>,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Run a transaction read from FILE (`-` or nothing: stdin): the JSON body of
    /// `POST /v1/txn`, or etcdctl's text format (compares, a blank line, success operations,
    /// a blank line, failure operations; see docs/api.md). Prints SUCCESS or FAILURE and each
    /// operation's result; exit 6 when the compares failed (the failure branch ran).
    Txn {
        /// The transaction file; `-` or nothing reads stdin (at most 2 MiB).
        file: Option<OsString>,
    },
    /// Print changes to KEY (or a range) as they happen, one line each: `PUT KEY VALUE
    /// rev=N` or `DELETE KEY rev=N`. Resumes by itself after a disconnect on any endpoint,
    /// without a gap or a duplicate; --timeout bounds each connection attempt, not the watch.
    /// Exit 5 when no replica still holds the revision it needs (compacted).
    #[command(group(clap::ArgGroup::new("range").args(["prefix", "from"])))]
    Watch {
        /// The key (leave out with --prefix or --from).
        #[arg(required_unless_present_any = ["prefix", "from"], conflicts_with_all = ["prefix", "from"])]
        key: Option<OsString>,
        #[command(flatten)]
        range: RangeArgs,
        /// Start at revision N (changes from N on, from the replicas' history) instead of
        /// after the writes acknowledged so far.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        rev: Option<u64>,
        /// Show the value each change replaced (`prev=...`).
        #[arg(long)]
        prev_value: bool,
        /// Exit 0 after N changes.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// How often an idle stream reports progress (ms); three silent periods count as a
        /// dead stream.
        #[arg(
            long,
            hide = true,
            default_value_t = DEFAULT_WATCH_PROGRESS_MS,
            value_parser = clap::value_parser!(u64).range(100..=3_600_000)
        )]
        progress_ms: u64,
    },
    /// Print the status of the first replica that answers (or of every endpoint with --all).
    Status {
        /// Ask every endpoint (concurrently) and print one row each.
        #[arg(long)]
        all: bool,
    },
    /// Wait until the replica at the (first) endpoint holds the state and serves, showing the
    /// state transfer it receives (a progress bar on a terminal, a line every 2 s otherwise,
    /// on stderr). Exit 3 (unavailable) when it does not serve within --max-wait.
    WaitServing {
        /// Give up after this long (`0`: never), e.g. `90s`, `10m`.
        #[arg(long, value_name = "DURATION", default_value = "10m",
              value_parser = parse_duration_or_zero)]
        max_wait: Duration,
    },
    /// Print the replica's recent decided log, oldest first.
    Log {
        /// Most entries to show (the newest ones).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LOG_LIMIT)]
        limit: usize,
    },
    /// Print the current configuration: its id, leader and members with their peer addresses.
    Members,
    /// Change the members (a compare-and-set on the configuration id; the leader proposes it).
    /// Exit 5 when refused: another id than current + 1, a change that would replace a
    /// majority at once, leave fewer than two members, or (without --force) leave the new
    /// configuration without a reachable majority, or while another change is in flight.
    /// Exit 4: proposed but not confirmed in time; retry with the same --config-id.
    /// Exit 0, "already in place", when these are the members already (with --config-id:
    /// of that configuration): nothing is proposed.
    Reconfigure {
        /// The complete new member list, e.g. `1,2,3,4`, `[1, 2, 3, 4]` or `1 2 3 4`.
        #[arg(long, value_name = "PIDS", value_parser = parse_nodes)]
        nodes: Nodes,
        /// The id the new configuration gets; must be the current id + 1 (the default).
        #[arg(long, value_name = "N")]
        config_id: Option<u32>,
        /// Skip the check that a majority of the new members is reachable.
        #[arg(long)]
        force: bool,
        /// Peer address of a new member, `PID=HOST:PORT` (repeatable); others use the
        /// addresses the cluster knows or the replicas' peer template.
        #[arg(long = "peer", value_name = "PID=HOST:PORT", value_parser = parse_peer)]
        peers: Vec<(u64, String)>,
    },
    /// Backups: save a consistent snapshot of the replicated state to a file, or verify one.
    /// Restoring is `kvd restore FILE` (README, "Backup and restore").
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Leases: grant, keepalive, revoke, list, timetolive (ids in hex, like etcdctl's).
    /// Exit 1 when the lease does not exist.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Wait for the lock NAME (fair: in order of arrival), run COMMAND while holding it, and
    /// release it when COMMAND exits; exit with COMMAND's status (128+N when killed by
    /// signal N). The lock is a key NAME/<lease hex> attached to a lease kept alive every
    /// TTL/3: if kvctl dies the lock frees itself within the TTL, and COMMAND is killed with
    /// it. If the lease is lost while COMMAND runs, COMMAND gets SIGTERM (SIGKILL after a
    /// grace period) and kvctl exits 1 (the lease expired or was revoked) or 4 (no keepalive
    /// confirmed for a whole TTL). COMMAND sees KVCTL_LOCK_KEY and KVCTL_LOCK_REV (the key's
    /// create revision: it grows with each holder, a fencing token). Without COMMAND: print
    /// the key once acquired and hold the lock until SIGINT/SIGTERM (then exit 0).
    Lock {
        /// The lock's name.
        name: OsString,
        /// The lease's TTL in seconds: how long the lock outlives a kvctl that died.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LOCK_TTL_S,
              value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
        ttl: u64,
        /// How long COMMAND has between SIGTERM and SIGKILL when the lease is lost.
        #[arg(long, hide = true, value_name = "DURATION", default_value = "5s",
              value_parser = parse_duration_or_zero)]
        kill_grace: Duration,
        /// The command to run while holding the lock, and its arguments (after `--`, or the
        /// words after NAME).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Campaign to lead NAME with VALUE (in the order of arrival, like `lock`), print the
    /// leader key once elected, and lead until SIGINT/SIGTERM (then resign and exit 0). With
    /// --observe: print the leader's value each time it changes. Exit 1 (4) when the lease
    /// is lost (not confirmed for a whole TTL).
    #[command(group(clap::ArgGroup::new("mode").args(["value", "observe"]).required(true)))]
    Elect {
        /// The election's name.
        name: OsString,
        /// The value this candidate proclaims.
        value: Option<OsString>,
        /// Do not campaign: print the leader's value each time it changes.
        #[arg(short = 'l', long)]
        observe: bool,
        /// The lease's TTL in seconds: how long leadership outlives a kvctl that died.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LOCK_TTL_S,
              value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS), conflicts_with = "observe")]
        ttl: u64,
    },
    /// Make member N the leader: the leader checks N is connected and caught up, then N takes
    /// over (prints `OK: leader N ...` once N leads). Exit 5 when N is not a member, 3 when the
    /// hand-off could not be done before --timeout.
    MoveLeader {
        /// The member to lead.
        #[arg(value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
    },
    /// Interactive prompt: `put KEY VALUE [PORT]`, `get KEY [PORT]`, ... (`help` inside).
    Shell,
    /// Load generator: concurrent clients issuing puts and gets; prints throughput, latency
    /// percentiles, errors by class and the load generator's own CPU use. Exit 3 if no
    /// operation succeeded (7 if every failure was a refusal of the credentials).
    Bench(BenchArgs),
    /// Make the TLS certificates of a cluster (a CA, one certificate per replica, one per
    /// client user). Local files only: talks to no server.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Make bearer tokens for the auth file kvd reads (--auth-file). Local files only.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `kvctl certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a new CA (ca.crt, ca.key) and the certificates it signs into DIR:
    /// replica-N.crt/.key for N in 1..=--replicas (CN omnikv-replica-N, URI SAN
    /// omnikv:replica:N, DNS localhost, sN, kv-store-(N-1)[.kv-store[.default.svc.cluster.local]]
    /// plus --hosts, IP 127.0.0.1 and ::1; server and client auth) and client-U.crt/.key for
    /// each user U of --clients (CN U; client auth). Keys are written mode 0600.
    New(NewCerts),
    /// Sign one more replica certificate (replica-N.crt/.key) with the CA already in DIR
    /// (ca.crt, ca.key), e.g. before adding replica N to the cluster.
    Replica {
        /// The replica's pid.
        #[arg(value_parser = clap::value_parser!(u64).range(1..=MAX_CERT_REPLICAS))]
        pid: u64,
        /// The directory holding ca.crt and ca.key; the new files go there too.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Extra comma-separated DNS names or IP addresses the certificate holds.
        #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity in days from now.
        #[arg(long, value_name = "D", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=MAX_CERT_DAYS))]
        days: u32,
        /// Replace an existing replica-N.crt/.key.
        #[arg(long)]
        force: bool,
    },
}

/// The flags of `kvctl certs new`.
#[derive(Debug, Clone, Args)]
pub struct NewCerts {
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How many replica certificates (pids 1..=N).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CERT_REPLICAS))]
    pub replicas: u64,
    /// Comma-separated client user names, one certificate each (CN = the name kvd's auth
    /// file lists); '' for none.
    #[arg(
        long,
        value_name = "NAMES",
        default_value = "root",
        value_delimiter = ','
    )]
    pub clients: Vec<String>,
    /// Extra comma-separated DNS names or IP addresses every replica certificate holds.
    #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Validity of every certificate, in days from now.
    #[arg(long, value_name = "D", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CERT_DAYS))]
    pub days: u32,
    /// Also write DIR/secret.yaml: a Kubernetes Secret named NAME holding every file but
    /// ca.key (the CA key stays off the cluster).
    #[arg(long, value_name = "NAME")]
    pub k8s_secret: Option<String>,
    /// Replace an existing CA (DIR/ca.key) and everything it signed.
    #[arg(long)]
    pub force: bool,
}

/// Most replica certificates `certs` makes (pids 1..=this).
pub const MAX_CERT_REPLICAS: u64 = 1000;
/// Longest validity `certs` gives, in days (about 100 years).
pub const MAX_CERT_DAYS: i64 = 36_500;

/// `kvctl token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a random token for user NAME, print it once on stdout (`okv_...`), and append
    /// `NAME ROLE [prefix=P] token=sha256:<hex>` to the auth file (created mode 0600). A NAME
    /// already in the file is refused. Only the token's hash is stored.
    New {
        /// The user's name ([A-Za-z0-9._@-], at most 64).
        name: String,
        /// What the user may do: read, write or admin.
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Limit the user to keys starting with P (read and write roles only).
        #[arg(long, value_name = "P")]
        prefix: Option<OsString>,
        /// The auth file kvd reads (--auth-file).
        #[arg(long, value_name = "FILE")]
        auth_file: PathBuf,
    },
}

/// A user's role in kvd's auth file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    Read,
    Write,
    Admin,
}

/// `kvctl snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot of the replicated state at one revision into FILE (written as
    /// FILE.part, verified, synced, then renamed). With --consistency local, the asked
    /// replica's state as it is (no quorum needed); else it holds every write acknowledged
    /// before the save began. A broken stream is retried from the start. Exit 3 when no
    /// snapshot could be had, 5 when the streams did not verify, 2 on a local I/O error.
    Save {
        file: std::path::PathBuf,
        /// Streams tried before giving up.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        attempts: u32,
    },
    /// Verify FILE (format, SHA-256 checksum, item counts) and print its revision, keys,
    /// state hash and sizes. Exit 5 when it is corrupt or truncated.
    Status { file: std::path::PathBuf },
}

/// `kvctl lease ...`.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds (kvd raises it to its minimum, 2 s); prints
    /// `lease <hex id> granted with TTL(<n>s)`.
    Grant {
        #[arg(value_name = "TTL", value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
        ttl: u64,
    },
    /// Keep lease ID alive: renew it every third of its TTL, printing a line per renewal,
    /// until it is gone (exit 1) or no renewal is confirmed for a whole TTL (exit 4).
    Keepalive {
        #[arg(value_name = "ID", value_parser = parse_lease_id)]
        id: u64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Revoke lease ID, deleting its keys.
    Revoke {
        #[arg(value_name = "ID", value_parser = parse_lease_id)]
        id: u64,
    },
    /// List the leases (`found N leases`, then one id per line).
    List,
    /// Print lease ID's TTL and time left (and its keys with --keys).
    Timetolive {
        #[arg(value_name = "ID", value_parser = parse_lease_id)]
        id: u64,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
}

/// The range a `get`, `delete` or `watch` names instead of one key.
#[derive(Debug, Clone, Default, Args)]
pub struct RangeArgs {
    /// Every key starting with P (`--prefix ''`: every key).
    #[arg(long, value_name = "P", conflicts_with = "from")]
    pub prefix: Option<OsString>,
    /// The keys from A (inclusive) ...
    #[arg(long, value_name = "A")]
    pub from: Option<OsString>,
    /// ... up to B (exclusive) [default: the end of the key space].
    #[arg(long, value_name = "B", requires = "from")]
    pub to: Option<OsString>,
}

/// How `get --prefix` / `get --from` lists.
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {
    /// At most N keys in all.
    #[arg(long, value_name = "N", requires = "range", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Print only the keys.
    #[arg(long, requires = "range", conflicts_with = "count_only")]
    pub keys_only: bool,
    /// Print only the number of keys.
    #[arg(long, requires = "range")]
    pub count_only: bool,
    /// Keys per request (kvd's maximum: 10000); for tests that need several pages.
    #[arg(
        long,
        hide = true,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub page_size: Option<u64>,
}

/// The condition of a conditional `put` (at most one).
#[derive(Debug, Clone, Default, Args)]
#[group(multiple = false)]
pub struct PutCondition {
    /// Write only if KEY does not exist (create-if-absent: a lock, a leader claim).
    #[arg(long)]
    pub if_absent: bool,
    /// Write only if KEY holds exactly OLD.
    #[arg(long, value_name = "OLD")]
    pub if_value: Option<OsString>,
    /// Write only if KEY's mod_revision is N (compare-and-swap against a read; 0: only if
    /// absent).
    #[arg(long, value_name = "N")]
    pub if_mod_revision: Option<u64>,
}

/// `kvctl bench` flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent logical clients, each with one operation in flight at a time.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub clients: u32,

    /// Distinct HTTP clients (connection pools, each with its own client id), shared
    /// round-robin by the logical clients; at most --clients [default: --clients]. Client
    /// number j starts on endpoint j (mod the number of endpoints) to spread the load.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,

    /// How long to measure, after the warmup: `10s`, `500ms`, `2m` or a bare number of
    /// seconds [default: 10s, unless --ops is given]. With --ops too, the run stops at
    /// whichever limit is reached first.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub duration: Option<Duration>,

    /// Number of measured operations (warmup excluded) after which the run stops.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,

    /// Time to run before measuring; its operations are not counted. Same formats as
    /// --duration; `0` for none.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_duration_or_zero
    )]
    pub warmup: Duration,

    /// Fraction of operations that are gets (0.0 to 1.0); the rest are puts. Gets use the
    /// global --consistency.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Key space: keys `bench-0` .. `bench-<N-1>`, picked uniformly at random.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keys: u64,

    /// Key order: `random` (uniform over --keys) or `sequential` (bench-0, bench-1, ... shared
    /// by all clients, wrapping at --keys): `--ops N --keys N --key-order sequential --warmup 0`
    /// writes every key exactly once (to load a data set).
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub key_order: KeyOrder,

    /// Size of each put's value, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,

    /// Worker threads of the load generator's async runtime [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

/// How `kvctl bench` picks keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyOrder {
    /// Uniformly at random.
    Random,
    /// One after the other, across all clients.
    Sequential,
}

/// Parses a ratio in 0.0..=1.0.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid ratio {s:?} (expected a number from 0.0 to 1.0)"
        )),
    }
}

/// Parses a duration: `500ms`, `5s`, `2m`, or a bare number of seconds (`1.5`). Must be
/// positive.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Like [`parse_timeout`], but zero (`0`, `0s`) is allowed.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let bad = || format!("invalid duration {s:?} (expected e.g. 5s, 500ms, 2m or 1.5)");
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Splits a comma-separated endpoint list, dropping blanks.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout("0.25s"), Ok(Duration::from_millis(250)));
        for bad in [
            "", "s", "ms", "abc", "5h", "-1", "0", "0ms", "1e3", "5 s x", "inf",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(&["get", "a"]).unwrap();
        assert_eq!(split_endpoints(&cli.global.endpoints).len(), 3);
        assert_eq!(cli.global.node, None);
        assert_eq!(cli.global.consistency, Consistency::Linearizable);
        assert_eq!(cli.global.output, OutputFormat::Text);
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
    }

    #[test]
    fn lease_lock_and_elect() {
        let cli = parse(&["lease", "keepalive", "0x1f", "--once"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lease {
                command: LeaseCommand::Keepalive {
                    id: 0x1f,
                    once: true
                }
            }
        ));
        assert!(parse(&["lease", "revoke", "0"]).is_err());
        assert!(parse(&["lease", "grant", "0"]).is_err());
        let cli = parse(&["put", "k", "v", "--lease", "694d7a6f2bd1a504"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Put {
                lease: Some(0x694d7a6f2bd1a504),
                ..
            }
        ));
        // The command's own flags are its own, with or without `--`.
        for args in [
            &["lock", "L", "--ttl", "5", "--", "ls", "-l", "--ttl"][..],
            &["lock", "L", "--ttl", "5", "ls", "-l", "--ttl"],
        ] {
            let Command::Lock {
                name, ttl, command, ..
            } = parse(args).unwrap().command
            else {
                panic!("{args:?}");
            };
            assert_eq!((name.to_str(), ttl), (Some("L"), 5));
            assert_eq!(command, ["ls", "-l", "--ttl"]);
        }
        let Command::Lock { ttl, command, .. } = parse(&["lock", "L"]).unwrap().command else {
            panic!();
        };
        assert_eq!((ttl, command.len()), (DEFAULT_LOCK_TTL_S, 0));
        assert!(matches!(
            parse(&["elect", "E", "-l"]).unwrap().command,
            Command::Elect {
                observe: true,
                value: None,
                ..
            }
        ));
        assert!(parse(&["elect", "E"]).is_err());
        assert!(parse(&["elect", "E", "v", "--observe"]).is_err());
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "get",
            "a",
            "-o",
            "json",
            "--consistency",
            "local",
            "--timeout",
            "250ms",
            "--node",
            "2",
            "--endpoints",
            "h:1, http://h:2 ,",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.consistency, Consistency::Local);
        assert_eq!(cli.global.timeout, Duration::from_millis(250));
        assert_eq!(cli.global.node, Some(2));
        assert_eq!(
            split_endpoints(&cli.global.endpoints),
            ["h:1", "http://h:2"]
        );
        assert!(matches!(cli.command, Command::Get { .. }));
        // A repeated flag: the last one wins (so a wrapper's defaults can be overridden).
        let cli = parse(&["--timeout", "1s", "get", "a", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn commands_and_aliases() {
        assert!(matches!(
            parse(&["del", "k"]).unwrap().command,
            Command::Delete { .. }
        ));
        assert!(matches!(
            parse(&["log"]).unwrap().command,
            Command::Log {
                limit: DEFAULT_LOG_LIMIT
            }
        ));
        assert!(matches!(
            parse(&["log", "--limit", "7"]).unwrap().command,
            Command::Log { limit: 7 }
        ));
        assert!(matches!(
            parse(&["status", "--all"]).unwrap().command,
            Command::Status { all: true }
        ));
        assert!(matches!(
            parse(&["put", "k", "-"]).unwrap().command,
            Command::Put { .. }
        ));
    }

    #[test]
    fn reconfigure_takes_member_lists_and_peers() {
        let cli = parse(&[
            "reconfigure",
            "--nodes",
            "[4, 1, 2]",
            "--peer",
            "4=10.0.0.4:7000",
        ])
        .unwrap();
        let Command::Reconfigure { nodes, peers, .. } = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(nodes.0, [1, 2, 4]);
        assert_eq!(peers, [(4, "10.0.0.4:7000".to_string())]);
        assert_eq!(
            parse(&["reconfigure", "--nodes", "1 2 3"])
                .map(|c| c.command)
                .ok()
                .and_then(|c| match c {
                    Command::Reconfigure { nodes, .. } => Some(nodes.0),
                    _ => None,
                }),
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["get"][..],
            &["put", "k"],
            &["--consistency", "strong", "get", "k"],
            &["-o", "yaml", "get", "k"],
            &["--timeout", "soon", "get", "k"],
            &["--node", "x", "get", "k"],
            &["reconfigure", "--nodes", "1,1"],
            &["reconfigure", "--nodes", "0,1"],
            &["reconfigure", "--nodes", "[]"],
            &["reconfigure", "--nodes", "1,2", "--peer", "4=host"],
            &["reconfigure", "--nodes", "1,2", "--peer", "x=h:1"],
            &["frobnicate"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
