//! kvctl against a real cluster: each exit-code class, JSON output, values from stdin;
//! prefix listings over several pages, prefix deletes, conditional puts, transactions in
//! both input formats, and watches (a count of live changes; resuming after the watched
//! replica is killed and restarted).

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exit code, stdout and stderr of a kvctl run, for assertions.
fn outcome(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A kvctl running in the background (a watch, a lock); its stdout arrives line by line.
pub(crate) struct Background {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    pub(crate) fn spawn(endpoints: &str, args: &[&str]) -> Background {
        let mut child = Command::new(kvctl_bin())
            .env("KVCTL_ENDPOINTS", endpoints)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvctl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background { child, lines }
    }

    /// The next stdout line, or None if none came `within`.
    pub(crate) fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Waits for the process to exit on its own; its exit code and stderr.
    pub(crate) fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code(), err);
            }
            assert!(
                Instant::now() < deadline,
                "kvctl did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    assert!(took < Duration::from_secs(8), "kvctl took {took:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_listing_over_pages_and_prefix_delete() {
    let c = Cluster::start(3, Opts::default()).await;
    let client = c.client(Duration::from_secs(5));
    for i in 0..25 {
        client
            .put(
                format!("cfg/{i:02}").as_bytes(),
                format!("v{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    client.put(b"other", b"x".to_vec()).await.unwrap();
    let all: String = (0..25).map(|i| format!("cfg/{i:02}\tv{i}\n")).collect();
    // Ten keys a page: three pages, followed to the end, in key order.
    let out = stdout_ok(c.kvctl(&["get", "--prefix", "cfg/", "--page-size", "10"]));
    assert_eq!(out, all);
    let out = stdout_ok(c.kvctl(&["get", "--from", "cfg/05", "--to", "cfg/08"]));
    assert_eq!(out, "cfg/05\tv5\ncfg/06\tv6\ncfg/07\tv7\n");
    // --limit counts keys over every page.
    let out = stdout_ok(c.kvctl(&[
        "get",
        "--prefix",
        "cfg/",
        "--limit",
        "12",
        "--page-size",
        "5",
        "--keys-only",
    ]));
    let keys: String = (0..12).map(|i| format!("cfg/{i:02}\n")).collect();
    assert_eq!(out, keys);
    assert_eq!(
        stdout_ok(c.kvctl(&["get", "--prefix", "cfg/", "--count-only"])),
        "25\n"
    );
    let out = stdout_ok(c.kvctl(&[
        "-o",
        "json",
        "get",
        "--prefix",
        "cfg/",
        "--page-size",
        "7",
        "--limit",
        "20",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], 25);
    assert_eq!(v["more"], true);
    let kvs = v["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 20);
    assert_eq!(kvs[19]["key"], "cfg/19");
    assert_eq!(kvs[19]["value"], "v19");
    assert_eq!(kvs[19]["version"], 1);
    assert!(v["revision"].as_u64().unwrap() >= 26, "{v}");
    // A single key in JSON carries its revisions.
    let out = stdout_ok(c.kvctl(&["-o", "json", "get", "cfg/03"]));
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(g["value"], "v3");
    assert_eq!(g["create_revision"], g["mod_revision"]);
    assert_eq!(g["version"], 1);
    assert!(g["revision"].as_u64() >= g["mod_revision"].as_u64(), "{g}");

    assert_eq!(
        stdout_ok(c.kvctl(&["delete", "--prefix", "cfg/"])),
        "deleted 25\n"
    );
    assert_eq!(
        stdout_ok(c.kvctl(&["get", "--prefix", "cfg/", "--count-only"])),
        "0\n"
    );
    assert_eq!(stdout_ok(c.kvctl(&["get", "other"])), "x\n");
    let out = stdout_ok(c.kvctl(&["-o", "json", "delete", "--from", "o", "--to", "p"]));
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["deleted"], 1);
    // status shows the revision.
    let status = stdout_ok(c.kvctl(&["status"]));
    assert!(status.contains("\nrevision:"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_exit_6_and_say_what_the_key_holds() {
    let c = Cluster::start(3, Opts::default()).await;
    assert_eq!(
        stdout_ok(c.kvctl(&["put", "lock", "me", "--if-absent"])),
        "OK\n"
    );
    let (code, out, err) = outcome(&c.kvctl(&["put", "lock", "you", "--if-absent"]));
    assert_eq!(code, Some(6), "{err}");
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: compare failed: key lock exists: it holds me (mod_revision "),
        "{err}"
    );
    let g: serde_json::Value =
        serde_json::from_str(&stdout_ok(c.kvctl(&["-o", "json", "get", "lock"]))).unwrap();
    let rev = g["mod_revision"].as_u64().unwrap().to_string();
    let out = stdout_ok(c.kvctl(&[
        "-o",
        "json",
        "put",
        "lock",
        "you",
        "--if-mod-revision",
        &rev,
    ]));
    let w: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["existed"], true);
    assert!(w["revision"].as_u64().unwrap() > g["mod_revision"].as_u64().unwrap());
    let (code, _, err) = outcome(&c.kvctl(&["put", "lock", "again", "--if-mod-revision", &rev]));
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("key lock holds you (") && err.contains(&format!("not mod_revision {rev}")),
        "{err}"
    );
    assert_eq!(
        stdout_ok(c.kvctl(&["put", "lock", "us", "--if-value", "you"])),
        "OK\n"
    );
    let (code, _, err) =
        outcome(&c.kvctl(&["-o", "json", "put", "lock", "x", "--if-value", "you"]));
    assert_eq!(code, Some(6));
    let e: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!(e["error"]["code"], "compare_failed");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("holds us"),
        "{e}"
    );
    let (code, _, err) = outcome(&c.kvctl(&["put", "nokey", "x", "--if-value", "y"]));
    assert_eq!(code, Some(6));
    assert_eq!(err, "error: compare failed: key nokey does not exist\n");
    assert_eq!(stdout_ok(c.kvctl(&["get", "lock"])), "us\n");
    // One condition at most.
    let (code, _, _) = outcome(&c.kvctl(&["put", "k", "v", "--if-absent", "--if-value", "x"]));
    assert_eq!(code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_in_text_and_json() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let claim = b"version(\"cfg/leader\") = \"0\"\n\nput cfg/leader \"node 1\"\nget cfg/leader\n\nget cfg/leader\n";
    let out = kvctl_run(&eps, &["txn"], Some(claim));
    assert_eq!(
        outcome(&out),
        (
            Some(0),
            "SUCCESS\n\nOK\n\ncfg/leader\tnode 1\n".to_string(),
            String::new()
        )
    );
    // The same claim again: the compare fails, the failure branch reads the holder.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claim.txn");
    std::fs::write(&file, claim).unwrap();
    let (code, out, err) = outcome(&c.kvctl(&["txn", file.to_str().unwrap()]));
    assert_eq!(code, Some(6), "{err}");
    assert_eq!(out, "FAILURE\n\ncfg/leader\tnode 1\n");
    assert!(err.starts_with("error: compare failed: "), "{err}");

    // The API's JSON body, as is; -o json prints the API's answer.
    let json = br#"{"compare": [{"key": "Y2ZnL2xlYWRlcg==", "op": "equal", "value": "bm9kZSAx"}],
        "success": [{"delete": {"key": "Y2ZnL2xlYWRlcg=="}}], "failure": []}"#;
    let out = kvctl_run(&eps, &["-o", "json", "txn", "-"], Some(json));
    let r: omnikv_common::kv::TxnResult = serde_json::from_str(&stdout_ok(out)).unwrap();
    assert!(r.succeeded);
    assert!(matches!(
        r.responses[..],
        [omnikv_common::kv::TxnOpResult::Delete { deleted: 1, .. }]
    ));
    let (code, _, _) = outcome(&c.kvctl(&["get", "cfg/leader"]));
    assert_eq!(code, Some(1), "the delete applied");
    // Bad text names its line; nothing is sent.
    let out = kvctl_run(&eps, &["txn"], Some(b"mod(\"k\") > 0\n\nput k\n"));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, Some(2));
    assert!(err.contains("stdin: line 3: usage: put KEY VALUE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_live_changes_and_exits_after_count() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    stdout_ok(c.kvctl(&["put", "cfg/a", "before"]));
    // From now: the put before the watch is not printed; keep writing until the watch
    // (connecting meanwhile) sees a write made after it started.
    let w = Background::spawn(&eps, &["watch", "cfg/a", "--count", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let first = loop {
        stdout_ok(c.kvctl(&["put", "cfg/a", &format!("after{i}")]));
        if let Some(line) = w.line(Duration::from_millis(500)) {
            break line;
        }
        assert!(Instant::now() < deadline, "the watch printed nothing");
        i += 1;
    };
    assert!(first.starts_with("PUT cfg/a after"), "{first}");
    assert!(first.contains(" rev="), "{first}");
    let (code, err) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");

    // From a revision: every change of the prefix from there, then exit after --count.
    let put: serde_json::Value =
        serde_json::from_str(&stdout_ok(c.kvctl(&["-o", "json", "put", "cfg/b", "1"]))).unwrap();
    let r = put["revision"].as_u64().unwrap();
    let w = Background::spawn(
        &eps,
        &[
            "-o",
            "json",
            "watch",
            "--prefix",
            "cfg/",
            "--rev",
            &r.to_string(),
            "--prev-value",
            "--count",
            "3",
        ],
    );
    stdout_ok(c.kvctl(&["put", "other", "x"]));
    stdout_ok(c.kvctl(&["put", "cfg/b", "2"]));
    stdout_ok(c.kvctl(&["delete", "--prefix", "cfg/"]));
    let lines: Vec<serde_json::Value> = (0..3)
        .map(|_| {
            let line = w.line(Duration::from_secs(10)).expect("a watch event");
            serde_json::from_str(&line).unwrap()
        })
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"type": "put", "key": "cfg/b", "value": "1", "revision": r,
                "create_revision": r, "version": 1}),
            serde_json::json!({"type": "put", "key": "cfg/b", "value": "2", "revision": r + 2,
                "create_revision": r, "version": 2, "prev_value": "1"}),
            serde_json::json!({"type": "delete", "key": "cfg/a", "revision": r + 3,
                "prev_value": format!("after{i}")}),
        ]
    );
    let (code, err) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_its_replica_is_killed_and_restarted() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let put: serde_json::Value =
        serde_json::from_str(&stdout_ok(c.kvctl(&["-o", "json", "put", "cfg/a", "1"]))).unwrap();
    let r = put["revision"].as_u64().unwrap().to_string();
    // Only replica 1: the watch must come back to it.
    let w = Background::spawn(
        &c.endpoint(1),
        &[
            "--timeout",
            "1s",
            "watch",
            "--prefix",
            "cfg/",
            "--rev",
            &r,
            "--count",
            "4",
        ],
    );
    assert_eq!(
        w.line(Duration::from_secs(10)).as_deref(),
        Some(format!("PUT cfg/a 1 rev={r}").as_str())
    );
    c.kill(1);
    let others = format!("{},{}", c.endpoint(2), c.endpoint(3));
    let write = |args: &[&str]| stdout_ok(kvctl_run(&others, args, None));
    write(&["put", "cfg/b", "2"]);
    write(&["put", "cfg/c", "3"]);
    assert_eq!(
        w.line(Duration::from_secs(1)),
        None,
        "nothing while it is down"
    );
    c.spawn(1);
    c.wait_ready(1, Duration::from_secs(20)).await;
    write(&["delete", "cfg/a"]);
    let mut got = Vec::new();
    for _ in 0..3 {
        let line = w.line(Duration::from_secs(20)).expect("a resumed event");
        got.push(line.split(" rev=").next().unwrap().to_string());
    }
    assert_eq!(got, ["PUT cfg/b 2", "PUT cfg/c 3", "DELETE cfg/a"]);
    let (code, err) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("watch: resumed on "), "{err}");
}

/// The shell speaks the new verbs too: a prefix listing, a conditional put, a transaction over
/// several lines up to `end`, and a watch that returns to the prompt after `--count` changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_lists_swaps_runs_transactions_and_watches() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let script = "put cfg/a 1\n\
                  put cfg/a 2 --if-value 9\n\
                  put cfg/b 2 --if-absent\n\
                  txn\n\
                  val(\"cfg/a\") = \"1\"\n\
                  \n\
                  put cfg/a 3\n\
                  \n\
                  end\n\
                  get --prefix cfg/\n\
                  watch --prefix cfg/ --rev 1 --count 3\n\
                  get cfg/a\n";
    let out = kvctl_run(&eps, &["shell"], Some(script.as_bytes()));
    let (code, out, err) = outcome(&out);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "OK\nOK\nSUCCESS\n\nOK\ncfg/a\t3\ncfg/b\t2\n\
         PUT cfg/a 1 rev=1\nPUT cfg/b 2 rev=2\nPUT cfg/a 3 rev=3\n3\n"
    );
    assert!(
        err.starts_with("error: compare failed: key cfg/a holds 1"),
        "the failed swap is reported and the shell goes on: {err}"
    );
}
