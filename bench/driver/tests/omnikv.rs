//! Runs `omnikv-bench --target omnikv` (the built binary) against a real standalone kvd (the
//! binary `cargo build --bins` puts next to it) on loopback: `load` writes exactly the `kv`
//! workload's keys, in batches under kvd's body limit also for 16 KiB values, and fails
//! with a clear error when nothing answers; the failover probe `first-write` writes. And
//! `--target etcd` (etcd's own client, the `etcd-client` crate) against kvd's etcd API:
//! every workload runs on omnikv through it as it runs on etcd.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{bench_bin, free_port};

mod support;

struct Kvd {
    child: Child,
    endpoint: String,
    /// Where it serves etcd's v3 API.
    etcd_endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Kvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(endpoint: &str, args: &[&str]) -> Output {
    support::bench("omnikv", endpoint, args)
}

/// A standalone kvd (NODES=[1]) with its own data dir, ready to take writes.
fn start_kvd() -> Kvd {
    let kvd = bench_bin().parent().unwrap().join("kvd");
    assert!(
        kvd.exists(),
        "kvd binary missing at {}: run `cargo build --bins` first (just test does)",
        kvd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let etcd_endpoint = format!("127.0.0.1:{}", free_port());
    let child = Command::new(kvd)
        .env("KVD_ETCD_ADDR", &etcd_endpoint)
        .env("PID", "1")
        .env("NODES", "[1]")
        .env("KVD_DATA_DIR", dir.path().join("data"))
        .env("KVD_CLIENT_ADDR", &endpoint)
        .env("KVD_PEER_ADDR", &peer)
        .env("KVD_PEERS", format!("1={peer}"))
        .env("KVD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kvd = Kvd {
        child,
        endpoint,
        etcd_endpoint,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = bench(
            &kvd.endpoint,
            &["kv", "--ops", "1", "--warmup", "0", "--keys", "1"],
        );
        if o.status.success() {
            return kvd;
        }
        assert!(Instant::now() < deadline, "kvd did not start: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `load` and `first-write` against kvd (support::load_and_first_write).
#[test]
fn load_writes_the_kv_key_space_into_omnikv() {
    let kvd = start_kvd();
    support::load_and_first_write("omnikv", &kvd.endpoint);
}

#[test]
fn load_with_nothing_answering_fails_unavailable() {
    let dead = format!("127.0.0.1:{}", free_port());
    let o = bench(&dead, &["load", "--keys", "10", "--attempts", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(err.contains(&dead), "{err}");
}

/// etcd's client drives kvd's etcd API: puts and gets, ranges, compare-and-swap
/// transactions and watches, with every watched event delivered.
#[test]
fn etcd_client_drives_omnikv_through_its_etcd_api() {
    let kvd = start_kvd();
    let ep = kvd.etcd_endpoint.as_str();
    let run = |args: &[&str]| support::json(&support::bench("etcd", ep, args));
    let kv = run(&[
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
    ]);
    assert_eq!(kv["ok"].as_u64(), Some(200), "{kv}");
    let range = run(&[
        "range",
        "--ops",
        "20",
        "--clients",
        "2",
        "--warmup",
        "0",
        "--range-keys",
        "50",
    ]);
    assert_eq!(
        (range["ok"].as_u64(), range["range_keys"].as_u64()),
        (Some(20), Some(50)),
        "{range}"
    );
    let cas = run(&[
        "cas",
        "--ops",
        "300",
        "--clients",
        "4",
        "--warmup",
        "0",
        "--keys",
        "20",
    ]);
    assert_eq!(cas["ok"].as_u64(), Some(300), "{cas}");
    assert!(cas["cas_failed"].as_u64().unwrap() < 100, "{cas}");
    let watch = run(&[
        "watch",
        "--watchers",
        "3",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--warmup",
        "0",
    ]);
    let events = watch["events"].as_u64().unwrap();
    assert!(events > 0, "{watch}");
    assert_eq!(Some(events), watch["events_expected"].as_u64(), "{watch}");
}
