//! Runs `omnikv-bench --target etcd` (the built binary) against a real one-member etcd on
//! loopback: every workload, through the native gRPC client. Skipped (with a note) when no
//! `etcd` is on PATH (bench/install-etcd.sh installs Debian's).

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bench(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omnikv-bench"))
        .args(["--target", "etcd", "--endpoints", endpoint, "-o", "json"])
        .args(args)
        .env_remove("KVCTL_ENDPOINTS")
        .env_remove("KVCTL_NODE")
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn start_etcd() -> Etcd {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // etcd is part of the test setup (scripts/setup.sh installs it): its absence is a
    // failure, never a silent skip.
    assert!(
        ok,
        "no etcd on PATH: run scripts/setup.sh (or bench/install-etcd.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://{endpoint}"),
            "--advertise-client-urls",
            &format!("http://{endpoint}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{peer}"),
            "--log-level",
            "error",
            "--logger",
            "zap",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd {
        child,
        endpoint,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = bench(&etcd.endpoint, &["kv", "--ops", "1", "--warmup", "0"]);
        if o.status.success() {
            return etcd;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_workload_drives_etcd_natively() {
    let etcd = start_etcd();
    let ep = etcd.endpoint.as_str();
    let kv = json(&bench(
        ep,
        &[
            "kv",
            "--ops",
            "200",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--keys",
            "20",
            "--read-ratio",
            "0.5",
        ],
    ));
    assert_eq!(
        (kv["target"].as_str(), kv["ok"].as_u64()),
        (Some("etcd"), Some(200)),
        "{kv}"
    );
    assert!(kv["misses"].as_u64().unwrap() < 100, "{kv}");

    let range = json(&bench(
        ep,
        &[
            "range",
            "--ops",
            "20",
            "--clients",
            "2",
            "--warmup",
            "0",
            "--range-keys",
            "50",
        ],
    ));
    assert_eq!(
        (range["ok"].as_u64(), range["range_keys"].as_u64()),
        (Some(20), Some(50)),
        "{range}"
    );

    // 4 clients over 20 keys whose revisions were read first: a compare fails only when
    // another client swapped the key in between, so most hold.
    let cas = json(&bench(
        ep,
        &[
            "cas",
            "--ops",
            "300",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--keys",
            "20",
        ],
    ));
    let failed = cas["cas_failed"].as_u64().unwrap();
    assert_eq!(cas["ok"].as_u64(), Some(300), "{cas}");
    assert!(failed < 100, "{cas}");

    let watch = json(&bench(
        ep,
        &[
            "watch",
            "--watchers",
            "3",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0",
        ],
    ));
    let events = watch["events"].as_u64().unwrap();
    assert!(events > 0, "{watch}");
    assert_eq!(Some(events), watch["events_expected"].as_u64(), "{watch}");
}
