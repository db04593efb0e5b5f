//! kvd's configuration: clap flags, each with an env fallback. The forms operators type
//! (`NODES=[1, 2, 3]`, peer maps, peer templates) are parsed by `omnikv_common::membership`.

use crate::state_machine::{DedupLimits, HistoryLimits};
use clap::Parser;
use omnikv_common::membership::{parse_nodes, parse_peer_map, parse_template, Nodes, PeerMap};
use std::path::PathBuf;
use std::time::Duration;

pub use omnikv_common::membership::from_template;

/// kvd: one omnikv replica (OmniPaxos log + RocksDB state).
#[derive(Parser, Debug, Clone)]
#[command(name = "kvd", version, about)]
pub struct Config {
    /// This replica's id, >= 1.
    #[arg(long, env = "PID", value_parser = clap::value_parser!(u64).range(1..))]
    pub pid: u64,

    /// Members of the initial configuration: `[1, 2, 3]` (as the seed's ConfigMap writes it),
    /// `1,2,3` or `1 2 3`. One member runs the standalone single-server mode. Only bootstraps an
    /// empty data dir: afterwards the persisted configuration wins.
    #[arg(long, env = "NODES", value_parser = parse_nodes)]
    pub nodes: Nodes,

    /// Id of the initial configuration (>= 1). Only bootstraps an empty data dir.
    #[arg(long, env = "CONFIG_ID", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub config_id: u32,

    /// Directory of this replica's RocksDB (created if missing).
    #[arg(long, env = "KVD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Address the client HTTP API listens on.
    #[arg(long, env = "KVD_CLIENT_ADDR", default_value = "0.0.0.0:8000")]
    pub client_addr: String,

    /// Address etcd's v3 gRPC API listens on (kvd/src/etcd; docs/api.md, "etcd v3 API");
    /// unset: not served. Over TLS with the client API's certificate (--cert-file); with
    /// --auth-file, callers authenticate as its users (etcdctl --user NAME:TOKEN, or a client
    /// certificate).
    #[arg(long, env = "KVD_ETCD_ADDR")]
    pub etcd_addr: Option<String>,

    /// Address the peer transport listens on.
    #[arg(long, env = "KVD_PEER_ADDR", default_value = "0.0.0.0:7000")]
    pub peer_addr: String,

    /// Explicit peer addresses: `1=127.0.0.1:7001,2=127.0.0.1:7002`. Wins over the template.
    #[arg(long, env = "KVD_PEERS", value_parser = parse_peer_map, default_value = "")]
    pub peers: PeerMap,

    /// Peer address template for pids not in --peers, e.g. `kv-store-{ordinal}.kv-store:7000`
    /// ({ordinal} = pid - 1, as in a StatefulSet; {pid} = pid; no other braces).
    #[arg(long, env = "KVD_PEER_TEMPLATE", value_parser = parse_template)]
    pub peer_template: Option<String>,

    /// Token mixed into the cluster identity (like etcd's --initial-cluster-token): replicas
    /// of different clusters refuse to talk to each other.
    #[arg(long, env = "KVD_CLUSTER_TOKEN", default_value = "omnikv")]
    pub cluster_token: String,

    /// Compact the log every this many applied entries (N).
    #[arg(long, env = "KVD_SNAPSHOT_INTERVAL", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_interval: u64,

    /// Decided entries kept below the compaction point (R), so behind peers can fetch them.
    #[arg(long, env = "KVD_SNAPSHOT_KEEP", default_value_t = 1_000)]
    pub snapshot_keep: u64,

    /// Logical clock period, in milliseconds.
    #[arg(long, env = "KVD_TICK_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tick_ms: u64,

    /// Election round length, in ticks (round = tick_ms x this; keep it well above RTT + loop lag).
    #[arg(long, env = "KVD_ELECTION_TICKS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub election_ticks: u64,

    /// Resend period for unanswered consensus messages, in ticks.
    #[arg(long, env = "KVD_RESEND_TICKS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub resend_ticks: u64,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "KVD_MAX_VALUE_BYTES", default_value_t = omnikv_common::api::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,

    /// Largest peer frame accepted after the handshake, in bytes. It must hold the largest
    /// log-sync message (undecided suffix, bounded by proposals in flight).
    #[arg(long, env = "KVD_MAX_PEER_FRAME_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_peer_frame_bytes: usize,

    /// Client writes in flight on this replica before new ones are refused (unavailable).
    #[arg(long, env = "KVD_MAX_INFLIGHT", default_value_t = 8192)]
    pub max_inflight: usize,

    /// Idle time after which a client's dedup records expire, in seconds. Requests older
    /// than half of it are refused, so a very late retry cannot apply twice.
    #[arg(long, env = "KVD_DEDUP_TTL_SECS", default_value_t = 600)]
    pub dedup_ttl_secs: u64,

    /// Most dedup records kept; the oldest are evicted first.
    #[arg(long, env = "KVD_DEDUP_MAX_RECORDS", default_value_t = 200_000)]
    pub dedup_max_records: usize,

    /// Server-side deadline for a request when the client sends none, in milliseconds.
    #[arg(long, env = "KVD_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// A write not yet decided after this long is proposed again (same id), in milliseconds;
    /// later retries of it wait 2x, 4x, then 8x this.
    #[arg(long, env = "KVD_RETRY_MS", default_value_t = 1_000)]
    pub retry_ms: u64,

    /// On SIGTERM/SIGINT, a leader hands leadership to the most up-to-date connected member
    /// before it stops, refusing new client requests meanwhile; it waits at most this long,
    /// in milliseconds, then stops anyway. 0: stop at once (the cluster elects a leader).
    #[arg(long, env = "KVD_HANDOFF_TIMEOUT_MS", default_value_t = 2_000)]
    pub handoff_timeout_ms: u64,
    /// Free space to keep on the data dir's filesystem, in bytes: below it, writes are refused
    /// (unavailable, "no space") while reads go on, until space is freed (like etcd's NOSPACE
    /// alarm). 0 turns the guard off.
    #[arg(long, env = "KVD_MIN_FREE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub min_free_bytes: u64,

    /// Change events kept for watch (the oldest whole revisions go first); a watch from an
    /// older revision is answered `compacted`.
    #[arg(long, env = "KVD_HISTORY_EVENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_events: u64,

    /// Bytes of change events kept for watch (keys, values and previous values).
    #[arg(long, env = "KVD_HISTORY_BYTES", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_bytes: u64,

    /// Applied batches of events held for live watchers: one further behind ends its stream
    /// with `lagged` (it resumes from its revision).
    #[arg(long, env = "KVD_WATCH_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watch_buffer: u64,

    /// Watch streams served at once; more are refused (unavailable).
    #[arg(long, env = "KVD_MAX_WATCHERS", default_value_t = 1024)]
    pub max_watchers: usize,

    /// Leases that may exist at once; a grant beyond them is refused (rejected). Every
    /// replica keeps them all in memory (about 100 bytes each).
    #[arg(long, env = "KVD_MAX_LEASES", default_value_t = 100_000)]
    pub max_leases: usize,

    /// Propose lease checkpoints without renewal counts (`Op::LeaseCheckpoint`), which a kvd
    /// from before they carried them can decode: set it on each upgraded replica during a
    /// rolling upgrade from such a kvd, and restart without it once all run this version.
    /// Meanwhile a checkpoint decided after a keepalive it predates can cut that lease short,
    /// as it could before.
    #[arg(long, env = "KVD_LEGACY_LEASE_CHECKPOINTS")]
    pub legacy_lease_checkpoints: bool,

    /// Worker threads of the async runtime that serves the client API and the peer
    /// transport (the consensus loop and RocksDB have threads of their own). On a two-core
    /// machine one halves the context switches per write and serves more writes under heavy
    /// load, but a lone client waits longer, up to twice as long when other work competes for
    /// the cores (bench/PROFILE.md).
    #[arg(long, env = "KVD_IO_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub io_threads: u64,

    /// A consensus loop stuck this long in one iteration (storage not answering: a full or
    /// failing disk) ends the process, so that a restart recovers, in seconds. 0: never.
    #[arg(long, env = "KVD_LOOP_STALL_SECS", default_value_t = 60)]
    pub loop_stall_secs: u64,

    /// Client API over TLS: this certificate chain (PEM). Needs --key-file. Files are
    /// re-read when they change (rotation without a restart).
    #[arg(long, env = "KVD_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "KVD_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// CA (PEM) whose client certificates authenticate clients on the client API (the
    /// certificate's common name is the user name in --auth-file). Needs --cert-file.
    #[arg(long, env = "KVD_CLIENT_CA_FILE", requires = "cert_file")]
    pub client_ca_file: Option<PathBuf>,

    /// Peer mutual TLS: this replica's certificate (PEM), signed by --peer-ca-file, naming
    /// its pid (URI SAN `omnikv:replica:<pid>`). All three peer flags or none.
    #[arg(long, env = "KVD_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "KVD_PEER_KEY_FILE", requires_all = ["peer_cert_file", "peer_ca_file"])]
    pub peer_key_file: Option<PathBuf>,

    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "KVD_PEER_CA_FILE", requires_all = ["peer_cert_file", "peer_key_file"])]
    pub peer_ca_file: Option<PathBuf>,

    /// Users and roles (docs/security.md): with it, every client request but /healthz and
    /// /readyz (and /metrics unless --metrics-auth) needs a bearer token or a client
    /// certificate of a listed user. Tokens are stored hashed; re-read when it changes.
    #[arg(long, env = "KVD_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// With --auth-file: /metrics also needs an authenticated user (any role).
    #[arg(long, env = "KVD_METRICS_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics_auth: bool,

    /// Keep unsynced WAL writes in the process until the loop's sync (RocksDB manual WAL
    /// flush): one write(2) per sync instead of one per RocksDB write. A crash of the process
    /// then loses what a power cut would: only writes that may be lost (applied batches, a
    /// decided index) were not synced; the durability rule relies on synced writes alone.
    /// `false` hands every write to the OS at once.
    #[arg(long, env = "KVD_BUFFERED_WAL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub buffered_wal: bool,
}

impl Config {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The peer address of `pid`: the explicit map first, then the template.
    pub fn peer_address(&self, pid: u64) -> Option<String> {
        if let Some(a) = self.peers.0.get(&pid) {
            return Some(a.clone());
        }
        from_template(self.peer_template.as_deref()?, pid)
    }

    /// The state machine's dedup limits (`--dedup-ttl-secs`, `--dedup-max-records`).
    pub fn dedup_limits(&self) -> DedupLimits {
        DedupLimits {
            ttl_ms: self.dedup_ttl_secs * 1000,
            max_records: self.dedup_max_records,
        }
    }

    /// How much change history to keep (`--history-events`, `--history-bytes`).
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_events: self.history_events,
            max_bytes: self.history_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_every_nodes_form_and_refuse_bad_ones() {
        let parse = |args: &[&str]| Config::try_parse_from([&["kvd", "--pid", "1"], args].concat());
        let c = parse(&["--nodes", "[3, 1, 2]"]).unwrap();
        assert_eq!(c.nodes.0, vec![1, 2, 3]);
        assert_eq!(c.peers, PeerMap::default());
        assert_eq!(c.peer_template, None);
        assert_eq!(parse(&["--nodes", "1 2"]).unwrap().nodes.0, vec![1, 2]);
        for bad in [
            &["--nodes", "1,1"][..],
            &["--nodes", "[]"],
            &["--nodes", "0,1"],
            &["--nodes", "1", "--peers", "2=host"],
            &["--nodes", "1", "--peer-template", "kv-store:7000"],
            &["--nodes", "1", "--peer-template", "kv-{id}:7000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_write_path_defaults_and_their_overrides() {
        let c = Config::parse_from(["kvd", "--pid", "1", "--nodes", "1"]);
        assert!(c.buffered_wal);
        assert_eq!(c.io_threads, 2);
        let c = Config::parse_from([
            "kvd",
            "--pid",
            "1",
            "--nodes",
            "1",
            "--buffered-wal",
            "false",
            "--io-threads",
            "1",
        ]);
        assert!(!c.buffered_wal);
        assert_eq!(c.io_threads, 1);
        assert!(Config::try_parse_from(["kvd", "--pid", "1", "--io-threads", "0"]).is_err());
    }

    #[test]
    fn peers_from_map_then_template() {
        let mut c = Config::parse_from(["kvd", "--pid", "1", "--nodes", "1,2,3"]);
        c.peers = parse_peer_map("2=10.0.0.2:7000").unwrap();
        c.peer_template = Some("kv-store-{ordinal}.kv-store:7000".into());
        assert_eq!(c.peer_address(2).unwrap(), "10.0.0.2:7000");
        assert_eq!(c.peer_address(3).unwrap(), "kv-store-2.kv-store:7000");
        c.peer_template = None;
        assert_eq!(c.peer_address(3), None);
    }
}
