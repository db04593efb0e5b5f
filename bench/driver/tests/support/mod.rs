//! What the driver's tests share: running the built `omnikv-bench` and reading its JSON.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Ports for the servers the tests start (`omnikv_test_ports`: not from the ephemeral range,
/// where the probes' own connections can take a port before etcd binds it).
pub use omnikv_test_ports::free_port;

pub fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_omnikv-bench"))
}

/// `omnikv-bench --target TARGET --endpoints ENDPOINT -o json ARGS...`, run to its end.
pub fn bench(target: &str, endpoint: &str, args: &[&str]) -> Output {
    Command::new(bench_bin())
        .args(["--target", target, "--endpoints", endpoint, "-o", "json"])
        .args(args)
        .env_remove("KVCTL_ENDPOINTS")
        .env_remove("KVCTL_NODE")
        .output()
        .unwrap()
}

/// The JSON object a successful run printed (panics, with its output, on a failed run).
pub fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `first-write` through `endpoints`: waits for its `ready`, sends the go line, and returns
/// its report.
pub fn first_write(target: &str, endpoints: &str) -> serde_json::Value {
    let mut child = Command::new(bench_bin())
        .args(["--target", target, "--endpoints", endpoints, "-o", "json"])
        .args(["first-write", "--within", "10s"])
        .env_remove("KVCTL_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{:?}", child.wait_with_output());
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {line}");
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// On a running one-member system whose only `bench-` key is `bench-0`: `load` writes exactly
/// the `kv` workload's keys (a read-only `kv` run over them then finds every one), 16 KiB
/// values in batches that stay under the system's request limit, and the failover probe
/// `first-write`, with nothing failed, is acknowledged on its first attempt.
pub fn load_and_first_write(target: &str, ep: &str) {
    let l = json(&bench(
        target,
        ep,
        &["load", "--keys", "1000", "--batch", "100", "--clients", "4"],
    ));
    assert_eq!(
        (
            l["target"].as_str(),
            l["count"].as_u64(),
            l["batch"].as_u64(),
            l["transactions"].as_u64(),
            l["retries"].as_u64()
        ),
        (Some(target), Some(1000), Some(100), Some(10), Some(0)),
        "{l}"
    );
    let reads = [
        "--ops",
        "300",
        "--clients",
        "4",
        "--warmup",
        "0",
        "--read-ratio",
        "1",
    ];
    let kv = json(&bench(
        target,
        ep,
        &[&["kv", "--keys", "1000"], &reads[..]].concat(),
    ));
    assert_eq!(
        (kv["ok"].as_u64(), kv["misses"].as_u64()),
        (Some(300), Some(0)),
        "{kv}"
    );
    // 16 KiB values: 63 puts per transaction (just under 1 MiB): etcd's limit is 1.5 MiB,
    // kvd's 2 MiB of JSON (base64 values).
    let big = [
        "load",
        "--keys",
        "100",
        "--value-size",
        "16384",
        "--clients",
        "2",
    ];
    let big = json(&bench(target, ep, &big));
    assert_eq!(
        (big["batch"].as_u64(), big["transactions"].as_u64()),
        (Some(63), Some(2)),
        "{big}"
    );
    let f = first_write(target, ep);
    assert_eq!(
        (
            f["target"].as_str(),
            f["attempts"].as_u64(),
            f["endpoint"].as_str()
        ),
        (Some(target), Some(1), Some(ep)),
        "{f}"
    );
    assert!(f["seconds"].as_f64().unwrap() < 5.0, "{f}");
}
