//! kvd's configuration: clap flags, each with an env fallback, plus the parsers for the
//! forms operators type (`NODES=[1, 2, 3]`, peer maps, peer templates).

use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// kvd: one omnikv replica (OmniPaxos log + RocksDB state).
#[derive(Parser, Debug, Clone)]
#[command(name = "kvd", version, about)]
pub struct Config {
    /// This replica's id, >= 1.
    #[arg(long, env = "PID", value_parser = clap::value_parser!(u64).range(1..))]
    pub pid: u64,

    /// Members of the initial configuration: `[1, 2, 3]` (as the seed's ConfigMap writes it)
    /// or `1,2,3`. One member runs the standalone single-server mode. Only bootstraps an
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

    /// Address the peer transport listens on.
    #[arg(long, env = "KVD_PEER_ADDR", default_value = "0.0.0.0:7000")]
    pub peer_addr: String,

    /// Explicit peer addresses: `1=127.0.0.1:7001,2=127.0.0.1:7002`. Wins over the template.
    #[arg(long, env = "KVD_PEERS", value_parser = parse_peer_map, default_value = "")]
    pub peers: PeerMap,

    /// Peer address template for pids not in --peers, e.g. `kv-store-{ordinal}.kv-store:7000`
    /// ({ordinal} = pid - 1, as in a StatefulSet; {pid} = pid).
    #[arg(long, env = "KVD_PEER_TEMPLATE")]
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

    /// Free space to keep on the data dir's filesystem, in bytes: below it, writes are refused
    /// (unavailable, "no space") while reads go on, until space is freed (like etcd's NOSPACE
    /// alarm). 0 turns the guard off.
    #[arg(long, env = "KVD_MIN_FREE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub min_free_bytes: u64,

    /// A consensus loop stuck this long in one iteration (storage not answering: a full or
    /// failing disk) ends the process, so that a restart recovers, in seconds. 0: never.
    #[arg(long, env = "KVD_LOOP_STALL_SECS", default_value_t = 60)]
    pub loop_stall_secs: u64,

    /// Keep unsynced WAL writes in the process until the loop's sync (RocksDB manual WAL
    /// flush): a crash of the process then loses what a power cut would. For crash tests; the
    /// durability rule holds either way, as only synced writes are relied on.
    #[arg(long, env = "KVD_BUFFERED_WAL", value_parser = clap::builder::BoolishValueParser::new())]
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
}

/// A peer address from a template: `{ordinal}` is pid - 1 (a StatefulSet pod's ordinal),
/// `{pid}` the pid.
pub fn from_template(template: &str, pid: u64) -> Option<String> {
    Some(
        template
            .replace("{ordinal}", &pid.saturating_sub(1).to_string())
            .replace("{pid}", &pid.to_string()),
    )
}

/// Configuration members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes(pub Vec<u64>);

/// Parses `[1, 2, 3]`, `1,2,3` or `1 2 3` into sorted, distinct pids >= 1.
pub fn parse_nodes(s: &str) -> Result<Nodes, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut nodes = Vec::new();
    for part in inner.split(|c: char| c == ',' || c.is_whitespace()) {
        if part.is_empty() {
            continue;
        }
        let pid: u64 = part
            .parse()
            .map_err(|_| format!("bad node id {part:?} in NODES {s:?}"))?;
        if pid == 0 {
            return Err("node ids start at 1".into());
        }
        nodes.push(pid);
    }
    nodes.sort_unstable();
    let before = nodes.len();
    nodes.dedup();
    if nodes.len() != before {
        return Err(format!("duplicate node id in NODES {s:?}"));
    }
    if nodes.is_empty() {
        return Err("NODES is empty".into());
    }
    Ok(Nodes(nodes))
}

/// Explicit pid -> address map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMap(pub BTreeMap<u64, String>);

/// Parses `1=host:port,2=host:port` (empty string = empty map).
pub fn parse_peer_map(s: &str) -> Result<PeerMap, String> {
    let mut map = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (pid, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("bad peer {part:?}: expected pid=host:port"))?;
        let pid: u64 = pid
            .trim()
            .parse()
            .map_err(|_| format!("bad peer id in {part:?}"))?;
        let addr = addr.trim();
        if pid == 0 || addr.is_empty() || !addr.contains(':') {
            return Err(format!(
                "bad peer {part:?}: expected pid=host:port with pid >= 1"
            ));
        }
        map.insert(pid, addr.to_string());
    }
    Ok(PeerMap(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_accepts_seed_and_plain_forms() {
        assert_eq!(parse_nodes("[1, 2, 3]").unwrap().0, vec![1, 2, 3]);
        assert_eq!(parse_nodes("3,1,2").unwrap().0, vec![1, 2, 3]);
        assert_eq!(parse_nodes("[1]").unwrap().0, vec![1]);
        assert!(parse_nodes("[]").is_err());
        assert!(parse_nodes("1,1").is_err());
        assert!(parse_nodes("0,1").is_err());
        assert!(parse_nodes("a").is_err());
    }

    #[test]
    fn peers_from_map_then_template() {
        let mut c = Config::parse_from(["kvd", "--pid", "1", "--nodes", "1,2,3"]);
        c.peers = parse_peer_map("2=10.0.0.2:7000").unwrap();
        c.peer_template = Some("kv-store-{ordinal}.kv-store:7000".into());
        assert_eq!(c.peer_address(2).unwrap(), "10.0.0.2:7000");
        assert_eq!(c.peer_address(3).unwrap(), "kv-store-2.kv-store:7000");
        assert!(parse_peer_map("x").is_err());
        assert!(parse_peer_map("0=a:1").is_err());
        assert!(parse_peer_map("").unwrap().0.is_empty());
    }
}
