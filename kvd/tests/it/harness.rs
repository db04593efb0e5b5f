//! Test harness: real kvd processes on loopback, each with its own data dir and log file,
//! plus helpers to kill, restart and query them. Everything polls with deadlines.

use crate::pki::PkiDir;
use omnikv_common::{Client, ClientError, Consistency, Credentials, Role, StatusView};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn kvd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvd"))
}

/// kvctl is built by `cargo build --bins` (just test does it) next to kvd.
pub fn kvctl_bin() -> PathBuf {
    let p = kvd_bin().parent().unwrap().join("kvctl");
    assert!(
        p.exists(),
        "kvctl binary missing at {}: run `cargo build --bins` first (just test does)",
        p.display()
    );
    p
}

/// A port for a test replica: free on 127.0.0.1 now, below the ephemeral range, handed out
/// once per test process (`omnikv_test_ports`, which says why).
pub use omnikv_test_ports::free_port;

pub struct Node {
    pub pid: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// CONFIG_ID and NODES this replica is started with (env only bootstraps an empty dir).
    pub config_env: (u32, Vec<u64>),
    /// Serves its client API over HTTPS (`Opts::tls`).
    pub https: bool,
    /// The port it serves etcd's v3 API on when `Opts::etcd_api` is set.
    pub etcd_port: u16,
    child: Option<Child>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        match self.https {
            true => format!("https://127.0.0.1:{}", self.client_port),
            false => format!("127.0.0.1:{}", self.client_port),
        }
    }
}

/// Options for a test cluster.
#[derive(Clone)]
pub struct Opts {
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub extra_env: Vec<(String, String)>,
    /// TLS everywhere with this PKI: replica N serves HTTPS with `replica-N.crt`/`.key`,
    /// verifies client certificates against `ca.crt`, and uses the same files for peer mTLS.
    /// Endpoints are then `https://127.0.0.1:port`.
    pub tls: Option<PkiDir>,
    /// Replica N listens for peers on 127.0.0.(10 + N) (and so dials from it), so that the
    /// nemesis's proxies tell the sender of a TLS session by its address.
    pub peer_ip_per_pid: bool,
    /// Every replica also serves etcd's v3 gRPC API (`KVD_ETCD_ADDR`) on its `etcd_port`.
    pub etcd_api: bool,
}

impl Opts {
    /// Compact every `interval` applied entries, keeping `keep` below the compaction point.
    pub fn compacting(interval: u64, keep: u64) -> Opts {
        Opts {
            snapshot_interval: interval,
            snapshot_keep: keep,
            ..Opts::default()
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            snapshot_interval: 10_000,
            snapshot_keep: 1_000,
            extra_env: vec![],
            tls: None,
            peer_ip_per_pid: false,
            etcd_api: false,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    pub members: Vec<u64>,
    pub opts: Opts,
    /// Peer address given to the other replicas for a pid (in KVD_PEERS), when it is not the
    /// replica's own peer port: e.g. a fault-injecting proxy in front of it.
    pub advertised_peers: BTreeMap<u64, String>,
}

impl Cluster {
    /// Starts replicas `1..=n` and waits until one is leader.
    pub async fn start(n: u64, opts: Opts) -> Cluster {
        let mut c = Cluster::new_stopped(n, opts);
        for pid in 1..=n {
            c.spawn(pid);
        }
        if n > 1 {
            c.wait_leader(Duration::from_secs(20)).await;
        } else {
            c.wait_ready(1, Duration::from_secs(20)).await;
        }
        c
    }

    /// Replicas `1..=n` with their ports and dirs, none started yet (`spawn` each).
    pub fn new_stopped(n: u64, opts: Opts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("omnikv-it-")
            .tempdir()
            .unwrap();
        let members: Vec<u64> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for pid in 1..=n {
            nodes.insert(
                pid,
                Node {
                    pid,
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir: dir.path().join(format!("data-{pid}")),
                    log_path: dir.path().join(format!("kvd-{pid}.log")),
                    config_env: (1, members.clone()),
                    https: opts.tls.is_some(),
                    etcd_port: free_port(),
                    child: None,
                },
            );
        }
        Cluster {
            dir,
            nodes,
            members,
            opts,
            advertised_peers: BTreeMap::new(),
        }
    }

    fn peers_arg(&self) -> String {
        self.nodes
            .values()
            .map(|n| match self.advertised_peers.get(&n.pid) {
                Some(addr) => format!("{}={addr}", n.pid),
                None => format!("{}={}", n.pid, self.peer_addr(n.pid)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a new replica `pid` as a joiner (empty data dir, CONFIG_ID > 1, NODES = the
    /// members plus `pid`); `members` is not changed: that takes a reconfigure.
    pub fn add_node(&mut self, pid: u64) {
        self.add_node_stopped(pid);
        self.spawn(pid);
    }

    /// Like `add_node`, without starting it (`spawn` does).
    pub fn add_node_stopped(&mut self, pid: u64) {
        assert!(!self.nodes.contains_key(&pid), "node {pid} exists");
        let mut nodes = self.members.clone();
        nodes.push(pid);
        let node = Node {
            pid,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: self.dir.path().join(format!("data-{pid}")),
            log_path: self.dir.path().join(format!("kvd-{pid}.log")),
            config_env: (2, nodes),
            https: self.opts.tls.is_some(),
            etcd_port: free_port(),
            child: None,
        };
        self.nodes.insert(pid, node);
    }

    /// The IP replica `pid` serves its peers on (`Opts::peer_ip_per_pid`).
    pub fn peer_ip(&self, pid: u64) -> String {
        match self.opts.peer_ip_per_pid {
            true => format!("127.0.0.{}", 10 + pid),
            false => "127.0.0.1".into(),
        }
    }

    pub fn peer_addr(&self, pid: u64) -> String {
        format!("{}:{}", self.peer_ip(pid), self.nodes[&pid].peer_port)
    }

    pub fn spawn(&mut self, pid: u64) {
        self.spawn_with(pid, &[]);
    }

    /// Starts replica `pid` with `env` on top of the cluster's (e.g. a crash failpoint).
    pub fn spawn_with(&mut self, pid: u64, env: &[(&str, &str)]) {
        let peers = self.peers_arg();
        let opts = self.opts.clone();
        let peer_listen = self.peer_addr(pid);
        let node = self.nodes.get_mut(&pid).unwrap();
        let nodes = format!(
            "[{}]",
            node.config_env
                .1
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(node.child.is_none(), "node {pid} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let mut cmd = Command::new(kvd_bin());
        cmd.env("PID", pid.to_string())
            .env("NODES", nodes)
            .env("CONFIG_ID", node.config_env.0.to_string())
            .env("KVD_DATA_DIR", &node.data_dir)
            .env("KVD_CLIENT_ADDR", format!("127.0.0.1:{}", node.client_port))
            .env("KVD_PEER_ADDR", peer_listen)
            .env("KVD_PEERS", peers)
            .env("KVD_SNAPSHOT_INTERVAL", opts.snapshot_interval.to_string())
            .env("KVD_SNAPSHOT_KEEP", opts.snapshot_keep.to_string())
            .env("KVD_LOG", "info")
            // Unsynced WAL writes stay in the process: every kill -9 and failpoint abort in
            // these tests loses them, as a power cut would.
            .env("KVD_BUFFERED_WAL", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(pki) = &opts.tls {
            let (cert, key, ca) = (pki.replica_cert(pid), pki.replica_key(pid), pki.ca());
            cmd.env("KVD_CERT_FILE", &cert)
                .env("KVD_KEY_FILE", &key)
                .env("KVD_CLIENT_CA_FILE", &ca)
                .env("KVD_PEER_CERT_FILE", &cert)
                .env("KVD_PEER_KEY_FILE", &key)
                .env("KVD_PEER_CA_FILE", &ca);
        }
        if opts.etcd_api {
            cmd.env("KVD_ETCD_ADDR", format!("127.0.0.1:{}", node.etcd_port));
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        node.child = Some(cmd.spawn().expect("spawn kvd"));
    }

    /// SIGKILL: no chance to flush anything; with the buffered WAL, a power cut.
    pub fn kill(&mut self, pid: u64) {
        if let Some(mut c) = self.nodes.get_mut(&pid).unwrap().child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as a rolling restart stops a replica, and waits (at most `within`) for the
    /// process to exit; returns how long that took.
    pub async fn terminate(&mut self, pid: u64, within: Duration) -> Duration {
        let started = Instant::now();
        self.signal(pid, "-TERM");
        let deadline = started + within;
        while !self.exited(pid) {
            assert!(
                Instant::now() < deadline,
                "replica {pid} still running {within:?} after SIGTERM\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started.elapsed()
    }

    /// SIGSTOP (`resume` sends SIGCONT): the process keeps its sockets but answers nothing.
    pub fn pause(&self, pid: u64) {
        self.signal(pid, "-STOP");
    }

    pub fn resume(&self, pid: u64) {
        self.signal(pid, "-CONT");
    }

    fn signal(&self, pid: u64, sig: &str) {
        let child = self.nodes[&pid].child.as_ref().expect("running");
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} replica {pid}");
    }

    /// True once replica `pid`'s process has ended on its own (it is then reaped).
    pub fn exited(&mut self, pid: u64) -> bool {
        let node = self.nodes.get_mut(&pid).unwrap();
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                node.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    pub fn is_running(&self, pid: u64) -> bool {
        self.nodes[&pid].child.is_some()
    }

    pub fn endpoint(&self, pid: u64) -> String {
        self.nodes[&pid].endpoint()
    }

    /// Where replica `pid` serves etcd's v3 API (`Opts::etcd_api`), as `host:port`.
    pub fn etcd_endpoint(&self, pid: u64) -> String {
        format!("127.0.0.1:{}", self.nodes[&pid].etcd_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(Node::endpoint).collect()
    }

    /// What a client of this cluster needs: the cluster CA over TLS (`Opts::tls`), nothing
    /// over plaintext.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            cacert: self.opts.tls.as_ref().map(PkiDir::ca),
            ..Credentials::default()
        }
    }

    /// The `KVCTL_*` environment a kvctl of this cluster runs with.
    pub fn kvctl_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(pki) = &self.opts.tls {
            env.push(("KVCTL_CACERT".into(), pki.ca().display().to_string()));
        }
        env
    }

    pub fn client(&self, timeout: Duration) -> Client {
        Client::with_credentials(&self.endpoints(), timeout, &self.credentials()).unwrap()
    }

    pub fn client_of(&self, pid: u64, timeout: Duration) -> Client {
        Client::with_credentials(&[self.endpoint(pid)], timeout, &self.credentials()).unwrap()
    }

    pub async fn status(&self, pid: u64) -> Result<StatusView, ClientError> {
        self.client_of(pid, Duration::from_secs(2)).status().await
    }

    /// Sample `name` (a metric without labels) of replica `pid`'s `/metrics`.
    pub async fn metric(&self, pid: u64, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.endpoint(pid));
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn log_text(&self, pid: u64) -> String {
        std::fs::read_to_string(&self.nodes[&pid].log_path).unwrap_or_default()
    }

    /// Waits until a running replica reports itself leader and the others agree.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for pid in self.nodes.keys().copied().filter(|p| self.is_running(*p)) {
                if let Ok(s) = self.status(pid).await {
                    seen.push((pid, s.role, s.leader));
                }
            }
            if let Some((l, _, _)) = seen.iter().find(|(_, role, _)| *role == Role::Leader) {
                let agreeing = seen
                    .iter()
                    .filter(|(_, _, leader)| *leader == Some(*l))
                    .count();
                if agreeing * 2 > self.members.len() {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}: {seen:?}\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_ready(&self, pid: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = self.status(pid).await {
                if s.leader.is_some() && s.role != Role::CatchingUp {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {pid} not ready within {within:?}\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running replica has applied the same number of entries with the
    /// same state hash; returns that hash.
    pub async fn wait_converged(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let mut st = Vec::new();
            // Removed replicas keep the state they had when they left: not compared.
            let mut running = 0;
            for pid in self.nodes.keys().copied().filter(|p| self.is_running(*p)) {
                match self.status(pid).await {
                    Ok(s) if s.role == Role::Removed => {}
                    Ok(s) => {
                        st.push(s);
                        running += 1;
                    }
                    Err(_) => {
                        st.clear();
                        running += 1;
                    }
                }
            }
            if st.len() == running
                && st.windows(2).all(|w| {
                    w[0].state_hash == w[1].state_hash
                        && w[0].applied_idx == w[1].applied_idx
                        && w[0].keys == w[1].keys
                        && w[0].revision == w[1].revision
                })
                && st.iter().all(|s| s.applied_idx == s.decided_idx)
            {
                return st[0].state_hash.clone();
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within {within:?}: {:?}\n{}",
                st.iter()
                    .map(|s| (
                        s.pid,
                        s.applied_idx,
                        s.decided_idx,
                        s.keys,
                        s.state_hash.clone(),
                        s.role
                    ))
                    .collect::<Vec<_>>(),
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every replica's log (for failure messages).
    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        for pid in self.nodes.keys() {
            let text = self.log_text(*pid);
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("decided:")).collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            s.push_str(&format!("--- kvd {pid} ---\n{}\n", tail.join("\n")));
        }
        s
    }

    /// Runs kvctl with `args` against this cluster's endpoints.
    pub fn kvctl(&self, args: &[&str]) -> Output {
        self.kvctl_with(&self.endpoints().join(","), args, None)
    }

    pub fn kvctl_with(&self, endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        kvctl_run_env(endpoints, args, stdin, &self.kvctl_env())
    }
}

/// Asserts that a kvctl run exited 0 and returns its stdout.
pub fn stdout_ok(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The replica a peer address belongs to under `Opts::peer_ip_per_pid`.
pub fn pid_of_peer_ip(ip: std::net::IpAddr) -> Option<u64> {
    match ip {
        std::net::IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] > 10 => {
            Some(u64::from(v4.octets()[3]) - 10)
        }
        _ => None,
    }
}

pub fn kvctl_run(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    kvctl_run_env(endpoints, args, stdin, &[])
}

/// Like [`kvctl_run`], with `env` (e.g. `KVCTL_CACERT`) on top.
pub fn kvctl_run_env(
    endpoints: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(String, String)],
) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(kvctl_bin());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.env("KVCTL_ENDPOINTS", endpoints)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kvctl");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Keep the data dirs and logs of a failed test for inspection.
            let kept = self.dir.path().to_path_buf();
            eprintln!("test failed: data dirs and logs kept in {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
        }
    }
}

/// Reads `key` linearizably from replica `pid`.
pub async fn get_from(cluster: &Cluster, pid: u64, key: &str) -> Option<Vec<u8>> {
    match cluster
        .client_of(pid, Duration::from_secs(5))
        .get(key.as_bytes(), Consistency::Linearizable)
        .await
    {
        Ok(v) => Some(v),
        Err(ClientError::NotFound) => None,
        Err(e) => panic!("get {key} from {pid}: {e}"),
    }
}
