//! Runs `omnikv-bench --target omnikv` (the built binary) against a real standalone kvd (the
//! binary `cargo build --bins` puts next to it) on loopback: `load` writes exactly the `kv`
//! workload's keys, in batches under kvd's body limit also for 16 KiB values, and fails
//! with a clear error when nothing answers; the failover probe `first-write` writes.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{bench_bin, first_write, free_port, json};

mod support;

struct Kvd {
    child: Child,
    endpoint: String,
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
    let child = Command::new(kvd)
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

#[test]
fn load_writes_the_kv_key_space_into_omnikv() {
    let kvd = start_kvd();
    let ep = kvd.endpoint.as_str();
    let l = json(&bench(
        ep,
        &["load", "--keys", "1000", "--batch", "100", "--clients", "4"],
    ));
    // The readiness probe wrote one key of the same space (bench-0): still 1000.
    assert_eq!(
        (
            l["target"].as_str(),
            l["count"].as_u64(),
            l["batch"].as_u64(),
            l["transactions"].as_u64(),
            l["retries"].as_u64()
        ),
        (Some("omnikv"), Some(1000), Some(100), Some(10), Some(0)),
        "{l}"
    );
    let kv = json(&bench(
        ep,
        &[
            "kv",
            "--ops",
            "300",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--keys",
            "1000",
            "--read-ratio",
            "1",
        ],
    ));
    assert_eq!(
        (kv["ok"].as_u64(), kv["misses"].as_u64()),
        (Some(300), Some(0)),
        "{kv}"
    );
    // 16 KiB values: 63 puts per transaction, a JSON body under kvd's 2 MiB limit.
    let big = json(&bench(
        ep,
        &[
            "load",
            "--keys",
            "100",
            "--value-size",
            "16384",
            "--clients",
            "2",
        ],
    ));
    assert_eq!(
        (big["batch"].as_u64(), big["transactions"].as_u64()),
        (Some(63), Some(2)),
        "{big}"
    );
    // The failover probe, with nothing failed: the first attempt is acknowledged.
    let f = first_write("omnikv", ep);
    assert_eq!(
        (
            f["target"].as_str(),
            f["attempts"].as_u64(),
            f["endpoint"].as_str()
        ),
        (Some("omnikv"), Some(1), Some(ep)),
        "{f}"
    );
    assert!(f["seconds"].as_f64().unwrap() < 5.0, "{f}");
}

#[test]
fn load_with_nothing_answering_fails_unavailable() {
    let dead = format!("127.0.0.1:{}", free_port());
    let o = bench(&dead, &["load", "--keys", "10", "--attempts", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(err.contains(&dead), "{err}");
}
