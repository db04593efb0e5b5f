//! kvctl against a real cluster: each exit-code class, JSON output, values from stdin.

use crate::harness::*;

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
