//! Test helpers: the real watcher binary as a child process pointed at the fake API server,
//! polling with deadlines, free ports, and a fake kvd + fake kvctl pair for the tests that
//! need no RocksDB.

use crate::fake_kube::FakeKube;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout` with `what` and
/// `context()` (e.g. the watcher's log).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `kube` holds an Event with this reason whose message contains `text`.
pub fn has_event(kube: &FakeKube, reason: &str, text: &str) -> bool {
    kube.events()
        .iter()
        .any(|(_, r, m)| r == reason && m.contains(text))
}

/// A port free on 127.0.0.1 now (`omnikv_test_ports`: below the ephemeral range).
pub use omnikv_test_ports::free_port;

/// A port free on 127.0.0.1 .. 127.0.0.n (replica pid i uses 127.0.0.i).
pub fn free_port_on(n: u8) -> u16 {
    let addrs: Vec<std::net::IpAddr> = (1..=n).map(|i| [127, 0, 0, i].into()).collect();
    omnikv_test_ports::free_port_on(&addrs)
}

/// A running watcher binary; killed on drop.
pub struct Watcher {
    pub child: Child,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Watcher {
    /// Starts `target/.../watcher` against `kube` with these extra env vars.
    pub fn start(kube: &FakeKube, dir: &Path, name: &str, env: &[(&str, String)]) -> Watcher {
        let kubeconfig = dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&kubeconfig, kube.kubeconfig()).unwrap();
        let log = dir.join(format!("watcher-{name}.log"));
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_watcher"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("KUBECONFIG", &kubeconfig)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,watcher=debug,kube=warn")
            .env("WATCHER_NAMESPACE", &kube.namespace)
            .env("WATCHER_POD_NAME", name)
            .env("WATCHER_LISTEN", format!("127.0.0.1:{port}"))
            .env("WATCHER_RESYNC_MS", "300")
            .env("WATCHER_BACKOFF_MS", "200")
            .env("WATCHER_BACKOFF_MAX_MS", "2000")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the watcher binary");
        Watcher {
            child,
            log,
            metrics_url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake kvctl (shell script) and the fake cluster state it shares with the fake kvds:
/// each call is appended to `calls`; a reconfigure writes `cluster.json` (config id and
/// members) before printing it, as a real kvctl returns only once the change is decided.
pub struct FakeCluster {
    pub dir: PathBuf,
    pub kvctl: PathBuf,
}

/// Writes a script to `path` and makes it executable without this process ever holding a
/// writable descriptor of `path`: a child forked by another test thread inherits every open
/// descriptor until it execs, and the kernel refuses to run a file someone has open for
/// writing ("Text file busy"). The text goes to a sibling file; `install` copies it in a
/// child process of its own.
pub fn write_executable(path: &Path, text: &str) {
    let source = path.with_extension("text");
    std::fs::write(&source, text).unwrap();
    let status = Command::new("install")
        .args(["-m", "755"])
        .arg(&source)
        .arg(path)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "install {} failed: {status}",
        path.display()
    );
}

impl FakeCluster {
    pub fn new(dir: &Path, config_id: u32, members: &[u64]) -> FakeCluster {
        let d = dir.display();
        let kvctl = dir.join("kvctl");
        write_executable(
            &kvctl,
            &format!(
                r#"#!/bin/sh
echo "$*" >> {d}/calls
nodes=; id=
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift ;;
    --config-id) id=$2; shift ;;
  esac
  shift
done
printf '{{"config_id":%s,"members":[%s]}}\n' "$id" "$nodes" > {d}/cluster.json.tmp
mv {d}/cluster.json.tmp {d}/cluster.json
cat {d}/cluster.json
"#
            ),
        );
        let c = FakeCluster {
            dir: dir.to_path_buf(),
            kvctl,
        };
        c.set(config_id, members);
        c
    }

    pub fn set(&self, config_id: u32, members: &[u64]) {
        std::fs::write(
            self.dir.join("cluster.json"),
            json!({ "config_id": config_id, "members": members }).to_string(),
        )
        .unwrap();
    }

    pub fn get(&self) -> (u32, Vec<u64>) {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("cluster.json")).unwrap())
                .unwrap();
        (
            v["config_id"].as_u64().unwrap() as u32,
            serde_json::from_value(v["members"].clone()).unwrap(),
        )
    }

    /// kvctl invocations so far.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Serves a fake kvd for `pid` (leader: `leader`) on 127.0.0.{pid}:`port`: /healthz and
    /// /v1/status from `cluster.json` (a joiner's while `pid` is not a member).
    pub async fn serve_kvd(&self, pid: u64, leader: u64, port: u16) {
        use axum::routing::get;
        let dir = self.dir.clone();
        let status = move || {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap())
                    .unwrap();
            let members: Vec<u64> = serde_json::from_value(v["members"].clone()).unwrap();
            // A pid outside the members is a joiner (the fake keeps no history, so a removed
            // pid reads as one too): no configuration, no members, no leader.
            let member = members.contains(&pid);
            let peers: Vec<u64> = members.iter().copied().filter(|&p| p != pid).collect();
            axum::Json(json!({
                "pid": pid,
                "role": if !member { "joining" } else if pid == leader { "leader" } else { "follower" },
                "leader": if member { Some(leader) } else { None },
                "config_id": if member { v["config_id"].clone() } else { json!(0) },
                "members": if member { members } else { vec![] },
                "decided_idx": 0, "applied_idx": 0, "compacted_idx": 0, "keys": 0,
                "state_hash": "", "cluster_id": "fake",
                "connected_peers": peers,
                "reconfiguration": null, "transfer": null,
            }))
        };
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/status", get(move || std::future::ready(status())));
        let ip = [127, 0, 0, u8::try_from(pid).unwrap()];
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
            .await
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
}
