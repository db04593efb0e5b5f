//! kvctl against a real cluster: each exit-code class, JSON output, values from stdin.

use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_json_and_stdin() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let run = |args: &[&str], stdin: Option<&[u8]>| c.kvctl_with(&eps, args, stdin);
    // 0: put with the value from stdin (bytes exactly), get returns it.
    let out = run(&["put", "s", "-"], Some(b"line one\nline two"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["-o", "json", "get", "s"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["value"], "line one\nline two");
    // 1: missing key.
    let out = run(&["get", "nope"], None);
    assert_eq!(out.status.code(), Some(1));
    // delete of a missing key is fine (0).
    assert_eq!(run(&["delete", "nope"], None).status.code(), Some(0));
    // 2: usage.
    assert_eq!(run(&["frobnicate"], None).status.code(), Some(2));
    // 5: rejected (too large), JSON error on stderr.
    let big = vec![b'z'; 70_000];
    let out = run(&["-o", "json", "put", "big", "-"], Some(&big));
    assert_eq!(out.status.code(), Some(5));
    let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(e["error"]["code"], "too_large");
    // status -o json: one object with the contract's fields.
    let out = run(&["status", "-o", "json"], None);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in [
        "pid",
        "role",
        "leader",
        "config_id",
        "members",
        "decided_idx",
        "applied_idx",
        "compacted_idx",
    ] {
        assert!(s.get(f).is_some(), "status lacks {f}: {s}");
    }
    // The shell, driven by piped stdin, with the seed's trailing-port form.
    let port = c.nodes[&2].client_port;
    let script = format!("put a 1\nget a {port}\ndelete a\nget a\n");
    let out = run(&["shell"], Some(script.as_bytes()));
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains('1'), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // 3: nothing reachable.
    let out = c.kvctl_with("127.0.0.1:1", &["--timeout", "1s", "put", "a", "1"], None);
    assert_eq!(out.status.code(), Some(3));
}

/// Exit 4 from real replicas: the leader hands the write to OmniPaxos, but both followers are
/// paused (SIGSTOP: their connections stay up, nothing answers), so it cannot be decided in
/// time. It stays proposed: once the followers resume it is decided, which is exactly why the
/// answer was "indeterminate" and not "unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_proposed_but_not_decided_in_time_exits_4_and_may_apply_later() {
    let c = Cluster::start(3, Opts::default()).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let ep = c.endpoint(leader);
    let out = c.kvctl_with(&ep, &["put", "x", "0"], None);
    assert_eq!(out.status.code(), Some(0));
    let followers: Vec<u64> = (1..=3).filter(|p| *p != leader).collect();
    for &p in &followers {
        c.pause(p);
    }
    let started = Instant::now();
    let out = c.kvctl_with(&ep, &["--timeout", "2s", "put", "x", "1"], None);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    for &p in &followers {
        c.resume(p);
    }
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert!(stderr.starts_with("error: indeterminate: "), "{stderr}");
    assert!(took < Duration::from_secs(4), "kvctl took {took:?}");
    // The proposal was in the leader's log: it is decided once a quorum is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.kvctl_with(&ep, &["--timeout", "5s", "get", "x"], None);
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "x never became 1 after the followers resumed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
