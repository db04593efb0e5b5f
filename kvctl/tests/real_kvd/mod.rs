//! Real kvd processes for kvctl's end-to-end tests, laid out as in Kubernetes: replica N
//! listens on its own loopback address 127.0.0.(30 + N), every replica on the same client
//! port and the same peer port (as every pod serves on 8000 and 7000), so the replicas are
//! told apart by host, not port. kvd is the binary next to kvctl (`cargo build --bins`, which
//! `just test` runs first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// kvd, built by `cargo build --bins` next to the kvctl under test.
pub fn kvd_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kvctl")).with_file_name("kvd");
    assert!(
        p.exists(),
        "kvd binary missing at {}: run `cargo build --bins` first (just test does)",
        p.display()
    );
    p
}

/// Replica `pid`'s loopback address.
pub fn ip(pid: u64) -> String {
    format!("127.0.0.{}", 30 + pid)
}

/// A port free on the addresses of replicas 1..=`n` now (`omnikv_test_ports`: below the
/// ephemeral range).
fn shared_port(n: u64) -> u16 {
    let addrs: Vec<std::net::IpAddr> = (1..=n).map(|pid| ip(pid).parse().unwrap()).collect();
    omnikv_test_ports::free_port_on(&addrs)
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    /// Every pid that may run (peers know them all from the start).
    pids: Vec<u64>,
    children: Vec<(u64, Child)>,
}

impl Cluster {
    /// Ports and a data dir for replicas `1..=n`; none started (`spawn` each).
    pub fn new(n: u64) -> Cluster {
        Cluster {
            dir: tempfile::Builder::new()
                .prefix("omnikv-kvctl-")
                .tempdir()
                .unwrap(),
            client_port: shared_port(n),
            peer_port: shared_port(n),
            pids: (1..=n).collect(),
            children: Vec::new(),
        }
    }

    /// Replica `pid`'s client endpoint, `127.0.0.(30 + pid):PORT`.
    pub fn endpoint(&self, pid: u64) -> String {
        format!("{}:{}", ip(pid), self.client_port)
    }

    /// Every replica's endpoint, replica N N-th (like the `net` pod's KVCTL_ENDPOINTS).
    pub fn endpoints(&self) -> String {
        let eps: Vec<String> = self.pids.iter().map(|&p| self.endpoint(p)).collect();
        eps.join(",")
    }

    /// Starts replica `pid`, bootstrapping an empty data dir with CONFIG_ID `config_id`
    /// and NODES `nodes` (a joiner: config id > 1).
    pub fn spawn(&mut self, pid: u64, config_id: u32, nodes: &[u64]) {
        let peers: Vec<String> = self
            .pids
            .iter()
            .map(|&p| format!("{p}={}:{}", ip(p), self.peer_port))
            .collect();
        let nodes: Vec<String> = nodes.iter().map(u64::to_string).collect();
        let log = std::fs::File::create(self.dir.path().join(format!("kvd-{pid}.log"))).unwrap();
        let child = Command::new(kvd_bin())
            .env("PID", pid.to_string())
            .env("NODES", format!("[{}]", nodes.join(", ")))
            .env("CONFIG_ID", config_id.to_string())
            .env("KVD_DATA_DIR", self.dir.path().join(format!("data-{pid}")))
            .env("KVD_CLIENT_ADDR", self.endpoint(pid))
            .env("KVD_PEER_ADDR", format!("{}:{}", ip(pid), self.peer_port))
            .env("KVD_PEERS", peers.join(","))
            .env("KVD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn kvd");
        self.children.push((pid, child));
    }

    /// SIGKILL replica `pid`.
    pub fn kill(&mut self, pid: u64) {
        for (_, child) in self.children.iter_mut().filter(|(p, _)| *p == pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT replica `pid`: the seed's `docker pause` / `unpause`.
    pub fn pause(&self, pid: u64, pause: bool) {
        let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        for (_, child) in self.children.iter().filter(|(p, _)| *p == pid) {
            // SAFETY: kill(2) on our own child, which has not been waited for.
            let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            assert_eq!(rc, 0, "signal {signal} to kvd {pid}");
        }
    }

    /// The last lines of each replica's log, for a failed test's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (pid, _) in &self.children {
            let text =
                std::fs::read_to_string(self.dir.path().join(format!("kvd-{pid}.log"))).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            s.push_str(&format!("--- kvd {pid} ---\n{tail}\n"));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` every 100 ms until it answers `Some`, for at most `within`.
pub fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exit code, stdout and stderr of a finished kvctl.
pub fn outcome(o: &Output) -> (i32, String, String) {
    (
        o.status.code().expect("exited normally"),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
