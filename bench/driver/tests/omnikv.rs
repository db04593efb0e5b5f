//! Runs `omnikv-bench --target omnikv` (the built binary) against a real standalone kvd (the
//! binary `cargo build --bins` puts next to it) on loopback: `load` writes exactly the `kv`
//! workload's keys, in batches under kvd's body limit also for 16 KiB values, and fails
//! with a clear error when nothing answers; the failover probe `first-write` writes.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{bench_bin, free_port};

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
