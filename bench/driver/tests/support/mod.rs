//! What the driver's tests share: running the built `omnikv-bench` and reading its JSON.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
