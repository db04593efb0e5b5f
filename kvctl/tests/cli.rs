//! Runs the built `kvctl` binary: exit codes, error output, and every command against a
//! fake kvd (tests/support) or an endpoint nobody listens on.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Nobody listens on port 1: connections are refused at once.
const DEAD: &str = "127.0.0.1:1";

fn kvctl(args: &[&str]) -> Command {
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
    c.args(args);
    c
}

fn run(args: &[&str]) -> Output {
    run_with_stdin(args, b"")
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kvctl(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A kvctl that refuses its flags exits without reading stdin: the write may then meet a
    // closed pipe, which is the exit code's business, not the write's.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn help_lists_exit_codes() {
    let o = run(&["--help"]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert!(out.contains("Exit codes:"), "{out}");
    assert!(out.contains("4  indeterminate"), "{out}");
    assert!(out.contains("KVCTL_ENDPOINTS"), "{out}");
}

#[test]
fn node_out_of_range_exits_2() {
    for n in ["0", "4"] {
        let o = run(&["--node", n, "get", "a"]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error: usage: --node"),
            "{}",
            stderr(&o)
        );
    }
    let o = kvctl(&["--endpoints", DEAD, "put", "a", "1"])
        .env("KVCTL_NODE", "2")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    // Also checked before stdin is consumed.
    let o = run_with_stdin(&["--node", "9", "put", "a", "-"], b"v");
    assert_eq!(code(&o), 2);
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--timeout", "soon", "get", "a"][..],
        &["-o", "yaml", "get", "a"],
        &["--consistency", "strong", "get", "a"],
        &["get"],
        &["nope"],
        &["--endpoints", DEAD, "get", ""],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn unreachable_put_exits_3_within_the_timeout() {
    let start = Instant::now();
    let o = run(&["--endpoints", DEAD, "--timeout", "500ms", "put", "a", "1"]);
    let took = start.elapsed();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: unavailable: 0 of 1 replicas reachable"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn unreachable_get_delete_status_log_exit_3() {
    for args in [&["get", "a"][..], &["delete", "a"], &["status"], &["log"]] {
        let o = kvctl(args)
            .env("KVCTL_ENDPOINTS", format!("{DEAD},127.0.0.1:2"))
            .env("KVCTL_TIMEOUT", "0.3")
            .output()
            .unwrap();
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("0 of 2 replicas reachable"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn json_errors_parse() {
    let o = run(&[
        "--endpoints",
        DEAD,
        "--timeout",
        "300ms",
        "-o",
        "json",
        "get",
        "a",
    ]);
    assert_eq!(code(&o), 3);
    assert!(o.stdout.is_empty());
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("0 of 1 replicas reachable"));

    let o = run(&["-o", "json", "--node", "7", "get", "a"]);
    assert_eq!(code(&o), 2);
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["error"]["code"], "usage");
}

#[test]
fn put_get_delete_against_a_fake_replica() {
    let kvd = support::start(1);
    let ep = kvd.endpoint();
    let base = ["--endpoints", ep.as_str(), "--timeout", "2s"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let go = |extra: &[&str]| {
        let args = with(extra);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let o = go(&["put", "a", "hello world"]);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "OK\n"),
        "{}",
        stderr(&o)
    );
    let o = go(&["get", "a"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "hello world\n"));
    let o = go(&["-o", "json", "get", "a"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"key": "a", "value": "hello world", "revision": 9,
            "create_revision": 2, "mod_revision": 8, "version": 3})
    );
    let o = go(&["--consistency", "local", "get", "a"]);
    assert_eq!(stdout(&o), "hello world\n");

    let o = go(&["get", "nope"]);
    assert_eq!(code(&o), 1);
    assert_eq!(stderr(&o), "error: key not found: nope\n");
    assert!(o.stdout.is_empty());
    let o = go(&["-o", "json", "get", "nope"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    // `existed` says whether the key was there before the put.
    let o = go(&["-o", "json", "put", "b", "2"]);
    assert_eq!(code(&o), 0);
    let w: omnikv_common::WriteResult = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!w.existed);
    let o = go(&["-o", "json", "put", "b", "3"]);
    let w: omnikv_common::WriteResult = serde_json::from_slice(&o.stdout).unwrap();
    assert!(w.existed);

    let o = go(&["delete", "a"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "OK\n"));
    let o = go(&["del", "a"]);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "OK (key did not exist)\n")
    );
    let o = go(&["-o", "json", "delete", "a"]);
    let w: omnikv_common::WriteResult = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!w.existed);

    let o = go(&["put", "toolarge", "x"]);
    assert_eq!(code(&o), 5);
    assert_eq!(stderr(&o), "error: rejected (too_large): value too large\n");
    let o = go(&["-o", "json", "put", "toolarge", "x"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["error"]["code"], "too_large");

    let o = go(&["--timeout", "300ms", "put", "maybe", "x"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: indeterminate: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn value_from_stdin_and_binary_args() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let kvd = support::start(1);
    let ep = kvd.endpoint();
    let value = b"  two\nlines\n\n\xff\x00".to_vec();
    let o = run_with_stdin(&["--endpoints", &ep, "put", "s", "-"], &value);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(kvd.store.lock().unwrap()[&b"s"[..]], value);
    let o = run(&["--endpoints", &ep, "get", "s"]);
    let mut expected = value.clone();
    expected.push(b'\n');
    assert_eq!(o.stdout, expected);
    let o = run(&["--endpoints", &ep, "-o", "json", "get", "s"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["value_hex"], "202074776f0a6c696e65730a0aff00");

    let o = kvctl(&["--endpoints", &ep, "put"])
        .arg(OsStr::from_bytes(b"k\xff"))
        .arg(OsStr::from_bytes(b"v\xfe"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(kvd.store.lock().unwrap()[&b"k\xff"[..]], b"v\xfe");
}

#[test]
fn status_and_log() {
    let kvd = support::start(2);
    let ep = kvd.endpoint();
    let eps = format!("{DEAD},{ep}");

    let o = run(&["--endpoints", &eps, "--timeout", "2s", "status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("pid:             2\nrole:            leader\n"),
        "{out}"
    );
    assert!(out.contains("members:         1,2,3\n"), "{out}");
    let o = run(&["--endpoints", &eps, "-o", "json", "status"]);
    let s: omnikv_common::StatusView = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s, support::status_view(2, 0));

    let o = run(&[
        "--endpoints",
        &eps,
        "--node",
        "1",
        "--timeout",
        "300ms",
        "status",
    ]);
    assert_eq!(code(&o), 3);

    let o = run(&["--endpoints", &eps, "--timeout", "500ms", "status", "--all"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ENDPOINT"), "{out}");
    assert!(lines[1].starts_with(&format!("{DEAD}  ")), "{out}");
    assert!(lines[1].contains("unreachable: "), "{out}");
    assert!(lines[2].starts_with(&ep), "{out}");
    let o = run(&[
        "--endpoints",
        &eps,
        "--timeout",
        "500ms",
        "-o",
        "json",
        "status",
        "--all",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["endpoint"], DEAD);
    assert_eq!(v[0]["error"]["code"], "unavailable");
    assert_eq!(v[1]["status"]["pid"], 2);

    let o = run(&["--endpoints", DEAD, "--timeout", "300ms", "status", "--all"]);
    assert_eq!(code(&o), 3);
    assert!(stdout(&o).contains("unreachable: "));
    assert!(
        stderr(&o).starts_with("error: unavailable: "),
        "{}",
        stderr(&o)
    );

    let o = run(&["--endpoints", &ep, "log", "--limit", "10"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "snapshot\t[0, 5)\t(5 entries squashed)\n5\tput a 1\n5\tput b 2\n6\t(empty)\n7\tdelete a\n"
    );
    let o = run(&["--endpoints", &ep, "-o", "json", "log"]);
    let l: omnikv_common::LogView = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l, support::log_view());
}

#[test]
fn piped_shell() {
    let a = support::start(1);
    let b = support::start(2);
    // b is not in the list: its port is reached on the first endpoint's host.
    let eps = format!("{},{DEAD}", a.endpoint());
    let script = format!(
        "put a 1\nget a\n\nput a two words {bp}\nget a {bp}\nget a {ap}\nbogus\nget zz\n\
         del a {bp}\nstatus {bp}\nexit\nget a\n",
        ap = a.port,
        bp = b.port
    );
    let o = run_with_stdin(
        &["--endpoints", &eps, "--timeout", "2s", "shell"],
        script.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        !out.contains("Type a command"),
        "no prompt when piped: {out}"
    );
    assert!(
        out.starts_with("OK\n1\nOK\ntwo words\n1\nOK\npid:             2\n"),
        "{out}"
    );
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("error: usage: unknown command \"bogus\""),
        "{err}"
    );
    assert_eq!(lines[1], "error: key not found: zz");
    assert!(b.store.lock().unwrap().is_empty());
}

#[test]
fn new_verbs_refuse_bad_flags_and_input_before_sending() {
    for args in [
        &["get", "k", "--prefix", "p"][..],
        &["get", "--prefix", "p", "--from", "a"],
        &["get", "--to", "b"],
        &["get", "k", "--limit", "3"],
        &["get", "--prefix", "p", "--keys-only", "--count-only"],
        &["get", "--prefix", "p", "--limit", "0"],
        &["delete", "--prefix", "p", "k"],
        &["put", "k", "v", "--if-absent", "--if-mod-revision", "3"],
        &["put", "k", "v", "--if-mod-revision", "x"],
        &["watch"],
        &["watch", "k", "--rev", "0"],
        &["watch", "k", "--count", "0"],
        &["txn", "/nonexistent/file"],
        &["--endpoints", DEAD, "put", "", "v", "--if-absent"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let o = run_with_stdin(
        &["--endpoints", DEAD, "txn"],
        b"val(\"k\") = \"v\"\n\nput k\n",
    );
    assert_eq!(code(&o), 2);
    assert_eq!(
        stderr(&o),
        "error: usage: stdin: line 3: usage: put KEY VALUE (quote a VALUE with spaces)\n"
    );
}

#[test]
fn a_watch_nothing_serves_exits_3_within_the_timeout() {
    let start = Instant::now();
    let o = run(&[
        "--endpoints",
        DEAD,
        "--timeout",
        "500ms",
        "watch",
        "k",
        "--rev",
        "1",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: unavailable: "),
        "{}",
        stderr(&o)
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_watch_compacted_everywhere_exits_5() {
    let a = support::start(1);
    let b = support::start(2);
    let eps = format!("{},{}", a.endpoint(), b.endpoint());
    let o = run(&[
        "--endpoints",
        &eps,
        "--timeout",
        "2s",
        "watch",
        "--prefix",
        "cfg/",
        "--rev",
        "3",
    ]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    // The first endpoint's answer moved the watch to the second, which said the same.
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("watch: resumed on "), "{err}");
    assert!(
        lines[1]
            .starts_with("error: compacted: revision 3 is older than the history of every replica"),
        "{err}"
    );
    assert!(err.contains("history of fake 1 starts at 40"), "{err}");
    assert!(err.contains("history of fake 2 starts at 40"), "{err}");
    let o = run(&[
        "--endpoints",
        &eps,
        "-o",
        "json",
        "watch",
        "k",
        "--rev",
        "3",
    ]);
    assert_eq!(code(&o), 5);
    let err = stderr(&o);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(lines[0]["resumed"]["revision"], 3);
    assert_eq!(lines[1]["error"]["code"], "compacted");
}

#[test]
fn a_watch_stream_that_sends_junk_or_a_huge_line_ends_instead_of_resuming() {
    let kvd = support::start(1);
    let ep = kvd.endpoint();
    for (key, what) in [
        ("junk", "not a watch event"),
        ("huge", "over 4194304 bytes"),
    ] {
        let start = Instant::now();
        let o = run(&[
            "--endpoints",
            &ep,
            "--timeout",
            "2s",
            "watch",
            key,
            "--rev",
            "1",
        ]);
        assert_eq!(code(&o), 5, "{key}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("error: rejected (internal): the watch stream from ")
                && err.contains(what),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "no resumption: {err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
