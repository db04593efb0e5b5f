//! Runs `kvctl bench` (the built binary) against the fake kvd of tests/support.

#[allow(dead_code)]
mod support;

use std::process::{Command, Output};

/// Nobody listens on port 1: connections are refused at once.
const DEAD: &str = "127.0.0.1:1";

fn kvctl(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    for var in [
        "KVCTL_ENDPOINTS",
        "KVCTL_NODE",
        "KVCTL_CONSISTENCY",
        "KVCTL_OUTPUT",
        "KVCTL_TIMEOUT",
    ] {
        c.env_remove(var);
    }
    c.args(args).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn bench_ops_against_a_fake_replica() {
    let a = support::start(1);
    let b = support::start(2);
    let endpoints = format!("{},{}", a.endpoint(), b.endpoint());
    let o = kvctl(&[
        "--endpoints",
        &endpoints,
        "bench",
        "--ops",
        "200",
        "--clients",
        "4",
        "--warmup",
        "0",
        "--keys",
        "50",
        "--read-ratio",
        "0.5",
        "-o",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let j = json(&o);
    assert_eq!(j["ops"], 200, "{j}");
    assert_eq!(j["ok"], 200, "{j}");
    assert!(j["ops_per_sec"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["duration_s"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(j["clients"], 4);
    assert_eq!(j["connections"], 4);
    assert_eq!(j["keys"], 50);
    assert_eq!(j["value_size"], 100);
    assert_eq!(j["read_ratio"], 0.5);
    assert_eq!(j["consistency"], "linearizable");
    for class in ["unavailable", "indeterminate", "rejected"] {
        assert_eq!(j["errors"][class], 0, "{j}");
    }
    let l = &j["latency_ms"];
    let (p50, p90, p99, max) = (
        l["p50"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{j}");
    assert!(l["mean"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["client_cpu_cores"].as_f64().unwrap() >= 0.0, "{j}");
    // The puts reached the replicas, spread over both (clients start on different ones).
    let stored = a.store.lock().unwrap().len() + b.store.lock().unwrap().len();
    assert!(stored > 0 && stored <= 100, "{stored}");
    assert!(a
        .store
        .lock()
        .unwrap()
        .keys()
        .all(|k| k.starts_with(b"bench-")));
}

#[test]
fn bench_text_and_duration() {
    let a = support::start(1);
    let o = kvctl(&[
        "--endpoints",
        &a.endpoint(),
        "bench",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--clients",
        "2",
        "--connections",
        "1",
        "--threads",
        "1",
    ]);
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for label in [
        "clients:    2 over 1 connection(s), 1 thread(s)\n",
        "throughput: ",
        "latency ms: p50 ",
        "errors:     unavailable 0, indeterminate 0, rejected 0\n",
        "client CPU: ",
    ] {
        assert!(out.contains(label), "{label:?} in\n{out}");
    }
    assert!(out.contains(" cores\n"), "{out}");
}

#[test]
fn bench_with_nothing_reachable_exits_3() {
    let o = kvctl(&[
        "--endpoints",
        DEAD,
        "--timeout",
        "200ms",
        "bench",
        "--duration",
        "300ms",
        "--warmup",
        "0",
        "--clients",
        "2",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let j = json(&o);
    assert_eq!(j["ok"], 0, "{j}");
    assert!(j["errors"]["unavailable"].as_u64().unwrap() > 0, "{j}");
    assert!(
        j["first_errors"]["unavailable"]
            .as_str()
            .unwrap()
            .contains("reachable"),
        "{j}"
    );
    let err: serde_json::Value = serde_json::from_slice(&o.stderr).expect("a JSON error on stderr");
    assert_eq!(err["error"]["code"], "unavailable");
}

#[test]
fn bench_bad_flags_exit_2() {
    for args in [
        &["bench", "--read-ratio", "2"][..],
        &["bench", "--clients", "0"],
        &["bench", "--clients", "2", "--connections", "3"],
    ] {
        let o = kvctl(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn bench_sequential_keys_write_each_key_once() {
    let kvd = support::start(1);
    let o = kvctl(&[
        "--endpoints",
        &kvd.endpoint(),
        "bench",
        "--ops",
        "40",
        "--keys",
        "40",
        "--key-order",
        "sequential",
        "--clients",
        "3",
        "--warmup",
        "0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // 40 puts over 40 keys in order: every key exactly once.
    let store = kvd.store.lock().unwrap();
    assert_eq!(store.len(), 40);
    assert!((0..40).all(|k| store.contains_key(format!("bench-{k}").as_bytes())));
}
