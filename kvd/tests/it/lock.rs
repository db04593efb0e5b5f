//! Leases, locks and elections through the real kvctl binary against real replicas: lease
//! grant/keepalive/revoke/list/timetolive and `put --lease`; `kvctl lock` mutual exclusion
//! (a counter file and a log of critical sections), exit statuses, fairness, a holder killed
//! with SIGKILL (its command dies with it, the lock frees after the TTL), a holder paused past
//! its TTL (the lock passes on only once the lease ran out, and the resumed holder stops its
//! command), the leader replica killed while holders run; `kvctl elect` with an observer.

use crate::harness::*;
use crate::kvctl_cli::Background;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The hex id in `lease <hex> granted with TTL(<n>s)`.
fn granted_id(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        matches!(words[..], ["lease", _, "granted", "with", _]),
        "{out:?}"
    );
    words[1].to_string()
}

/// Sends `sig` (`-TERM`, `-KILL`...) to a background kvctl.
fn signal(bg: &Background, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &bg.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// A critical section for `sh -c`: logs `start REV`, reads the counter, sleeps, writes it
/// back plus one, logs `end REV` (REV: the lock's create revision, from kvctl).
fn critical_section(dir: &Path, sleep: &str) -> String {
    let (counter, log) = (dir.join("counter"), dir.join("log"));
    format!(
        "echo \"start $KVCTL_LOCK_REV\" >> {log}; n=$(cat {counter}); sleep {sleep}; \
         echo $((n + 1)) > {counter}; echo \"end $KVCTL_LOCK_REV\" >> {log}",
        log = log.display(),
        counter = counter.display()
    )
}

/// Checks the log of critical sections: `start R` / `end R` pairs that never interleave, with
/// R (the fencing token) growing; returns how many there were.
fn sections_never_overlap(dir: &Path) -> usize {
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len() % 2, 0, "an unfinished section:\n{log}");
    let mut last = 0u64;
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ");
        let end = pair[1].strip_prefix("end ");
        assert!(
            start.is_some() && start == end,
            "overlapping sections {pair:?} in:\n{log}"
        );
        let rev: u64 = start.unwrap().parse().unwrap();
        assert!(
            rev > last,
            "fencing tokens not growing ({last}, {rev}):\n{log}"
        );
        last = rev;
    }
    lines.len() / 2
}

fn counter(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `n` contenders queue under `prefix`.
fn wait_queued(eps: &str, prefix: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let out = kvctl_run(eps, &["get", "--prefix", prefix, "--count-only"], None);
        if String::from_utf8_lossy(&out.stdout).trim() == n.to_string() {
            return;
        }
        assert!(Instant::now() < deadline, "{n} contenders did not queue");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_grant_keep_revoke_list() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let run = |args: &[&str]| kvctl_run(&eps, args, None);
    let id = granted_id(&stdout_ok(run(&["lease", "grant", "30"])));
    assert_eq!(
        stdout_ok(run(&["put", "leased", "v", "--lease", &id])),
        "OK\n"
    );
    let ttl = stdout_ok(run(&["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(30s), remaining("))
            && ttl.ends_with("attached keys([leased])\n"),
        "{ttl}"
    );
    let list = stdout_ok(run(&["lease", "list"]));
    assert!(list.lines().any(|l| l == id), "{list}");
    assert_eq!(
        stdout_ok(run(&["lease", "keepalive", &format!("0x{id}"), "--once"])),
        format!("lease {id} keepalived with TTL(30)\n")
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout_ok(run(&["-o", "json", "lease", "grant", "7"]))).unwrap();
    assert_eq!(v["ttl"], 7);
    assert_eq!(format!("{:x}", v["id"].as_u64().unwrap()), v["id_hex"]);

    // A foreground keepalive prints a line per renewal (every TTL/3) until the lease is
    // revoked under it: then it exits 1.
    let short = granted_id(&stdout_ok(run(&["lease", "grant", "3"])));
    let keeper = Background::spawn(&eps, &["lease", "keepalive", &short]);
    for _ in 0..3 {
        let line = keeper.line(Duration::from_secs(5)).expect("a renewal");
        assert_eq!(line, format!("lease {short} keepalived with TTL(3)"));
    }
    assert_eq!(
        stdout_ok(run(&["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    stdout_ok(run(&["lease", "revoke", &short]));
    let (code, err) = keeper.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("expired or was revoked"), "{err}");

    // Gone: its key with it, and every lease command says not found (exit 1).
    assert_eq!(run(&["get", "leased"]).status.code(), Some(1));
    for args in [
        &["lease", "revoke", &id][..],
        &["lease", "timetolive", &id],
        &["lease", "keepalive", &id],
        &["put", "k", "v", "--lease", &id],
        &["put", "k", "v", "--if-absent", "--lease", &id],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("lease {id} not found")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(run(&["get", "k"]).status.code(), Some(1));
    assert!(!stdout_ok(run(&["lease", "list"])).contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_and_passes_on_the_command_status() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("counter"), "0\n").unwrap();
    const RUNS: usize = 8;
    let script = critical_section(dir.path(), "0.05");
    let holders: Vec<Background> = (0..RUNS)
        .map(|_| {
            Background::spawn(
                &eps,
                &["lock", "ctr", "--ttl", "10", "--", "sh", "-c", &script],
            )
        })
        .collect();
    for h in holders {
        let (code, err) = h.finish(Duration::from_secs(40));
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(sections_never_overlap(dir.path()), RUNS);
    assert_eq!(counter(dir.path()), RUNS as u64);
    // Every holder released: nothing left under the lock's prefix, no lease left.
    let out = stdout_ok(kvctl_run(
        &eps,
        &["get", "--prefix", "ctr/", "--count-only"],
        None,
    ));
    assert_eq!(out, "0\n");
    assert_eq!(
        stdout_ok(kvctl_run(&eps, &["lease", "list"], None)),
        "found 0 leases\n"
    );

    // The command's status is kvctl's, 128 + N for a signal; a command that cannot start
    // is 127, like a shell's.
    let run = |args: &[&str]| kvctl_run(&eps, args, None);
    assert_eq!(
        run(&["lock", "x", "sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(
        run(&["lock", "x", "--", "sh", "-c", "kill -TERM $$"])
            .status
            .code(),
        Some(143)
    );
    assert_eq!(
        run(&["lock", "x", "--", "/nonexistent/cmd"]).status.code(),
        Some(127)
    );
    let out = run(&["lock", "x", "--", "sh", "-c", "echo \"$KVCTL_LOCK_KEY\""]);
    let key = stdout_ok(out);
    assert!(key.starts_with("x/") && key.len() > 3, "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_the_lock_in_order_of_arrival() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    // Held without a command: prints the key, holds until SIGTERM.
    let first = Background::spawn(&eps, &["lock", "fair"]);
    let key = first.line(Duration::from_secs(10)).expect("the held key");
    assert!(key.starts_with("fair/"), "{key}");
    let mut waiters = Vec::new();
    for i in 1..=5 {
        let script = format!("echo {i} >> {}", order.display());
        waiters.push(Background::spawn(
            &eps,
            &["lock", "fair", "sh", "-c", &script],
        ));
        wait_queued(&eps, "fair/", i + 1, Duration::from_secs(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!order.exists(), "a waiter ran while the lock was held");
    signal(&first, "-TERM");
    let (code, err) = first.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    for w in waiters {
        let (code, err) = w.finish(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "1\n2\n3\n4\n5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_after_its_ttl_and_its_command_dies() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut holder = Background::spawn(
        &eps,
        &["lock", "k9", "--ttl", "3", "--", "sh", "-c", &script],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let child: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the holder's command did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(alive(child));
    let waiter = Background::spawn(&eps, &["lock", "k9", "--", "echo", "acquired"]);
    wait_queued(&eps, "k9/", 2, Duration::from_secs(10));
    holder.child.kill().unwrap();
    let killed = Instant::now();
    let _ = holder.child.wait();
    // The command dies with kvctl (PR_SET_PDEATHSIG), at once.
    while alive(child) {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the command outlived its kvctl"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The waiter gets the lock once the dead holder's lease expires, not at the kill: the
    // holder renews every third of the TTL, so even with a renewal a whole period late on a
    // busy machine its last one was at most two thirds of the TTL (2 s) before the kill, and
    // the lease outlives the kill by a third (1 s) at least; not much after the TTL either.
    let line = waiter
        .line(Duration::from_secs(15))
        .expect("the waiter acquires");
    let waited = killed.elapsed();
    assert_eq!(line, "acquired");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(12),
        "acquired {waited:?} after the kill (TTL 3 s)"
    );
    let (code, err) = waiter.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_never_overlap_while_the_leader_replica_is_killed() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("counter"), "0\n").unwrap();
    const RUNS: usize = 6;
    let script = critical_section(dir.path(), "0.3");
    let holders: Vec<Background> = (0..RUNS)
        .map(|_| {
            Background::spawn(
                &eps,
                &[
                    "lock",
                    "ha",
                    "--ttl",
                    "10",
                    "--timeout",
                    "15s",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ],
            )
        })
        .collect();
    // Kill the leader while the first holders are in their critical sections.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.path().join("log").exists() {
        assert!(Instant::now() < deadline, "no holder got the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.kill(leader);
    for h in holders {
        let (code, err) = h.finish(Duration::from_secs(50));
        assert_eq!(code, Some(0), "{err}\n{}", c.dump_logs());
    }
    assert_eq!(sections_never_overlap(dir.path()), RUNS);
    assert_eq!(counter(dir.path()), RUNS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_leads_in_turn_and_observe_follows() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let observer = Background::spawn(&eps, &["elect", "svc", "--observe"]);
    let a = Background::spawn(&eps, &["elect", "svc", "node-a"]);
    let key_a = a.line(Duration::from_secs(10)).expect("a is elected");
    assert!(key_a.starts_with("svc/"), "{key_a}");
    assert_eq!(
        observer.line(Duration::from_secs(10)).as_deref(),
        Some("node-a")
    );
    let b = Background::spawn(&eps, &["elect", "svc", "node-b"]);
    wait_queued(&eps, "svc/", 2, Duration::from_secs(10));
    assert_eq!(
        b.line(Duration::from_millis(500)),
        None,
        "b elected while a leads"
    );
    signal(&a, "-TERM");
    let (code, err) = a.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let key_b = b.line(Duration::from_secs(10)).expect("b is elected");
    assert_ne!(key_a, key_b);
    assert_eq!(
        observer.line(Duration::from_secs(10)).as_deref(),
        Some("node-b")
    );
    signal(&b, "-INT");
    let (code, err) = b.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let out = stdout_ok(kvctl_run(
        &eps,
        &["get", "--prefix", "svc/", "--count-only"],
        None,
    ));
    assert_eq!(out, "0\n");
}

/// A holder whose kvctl is paused (SIGSTOP, a stalled machine) past its TTL loses the lock: a
/// waiter gets it only once the lease can have run out, and the resumed kvctl finds its lease
/// lost, stops its command before that command finishes, and exits "lease lost" (1 or 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_and_stops_its_command() {
    let c = Cluster::start(3, Opts::default()).await;
    let eps = c.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let section = |sleep: &str| {
        format!(
            "echo \"start $KVCTL_LOCK_REV\" >> {log}; sleep {sleep}; echo \"end $KVCTL_LOCK_REV\" >> {log}",
            log = log.display()
        )
    };
    let holder_script = section("8");
    let holder = Background::spawn(
        &eps,
        &["lock", "p", "--ttl", "2", "--", "sh", "-c", &holder_script],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() {
        assert!(Instant::now() < deadline, "the holder did not get the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiter_script = format!("{}; echo acquired", section("0"));
    let waiter = Background::spawn(&eps, &["lock", "p", "--", "sh", "-c", &waiter_script]);
    wait_queued(&eps, "p/", 2, Duration::from_secs(10));
    signal(&holder, "-STOP");
    let paused = Instant::now();
    // What the leader says is left of the holder's lease (TTL 2 s; the waiter's is longer),
    // read after the pause: no keepalive can come after it. On a loaded machine the last
    // keepalive may be well before the pause, so a fixed share of the TTL is no bound.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let leases: serde_json::Value = reqwest::get(format!("http://{}/v1/lease", c.endpoint(leader)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let remaining_ms = leases["leases"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["ttl"] == 2))
        .and_then(|l| l["remaining_ms"].as_u64())
        .unwrap_or_else(|| panic!("no lease of TTL 2 s in {leases}"));
    let line = waiter
        .line(Duration::from_secs(15))
        .expect("the waiter acquires once the paused holder's lease ran out");
    let waited = paused.elapsed();
    assert_eq!(line, "acquired");
    // 50 ms of slack: the loop reads its clock once per iteration.
    assert!(
        waited + Duration::from_millis(50) >= Duration::from_millis(remaining_ms),
        "acquired {waited:?} after the pause, when the leader said {remaining_ms} ms of the \
         holder's lease were left: the lease was still live"
    );
    signal(&holder, "-CONT");
    let (code, err) = holder.finish(Duration::from_secs(15));
    assert!(
        matches!(code, Some(1 | 4)),
        "the resumed holder should report its lease lost: {code:?} {err}"
    );
    let (code, err) = waiter.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    // The holder's section never ended: its command was stopped when kvctl found the lease
    // lost, well before its 8 s sleep was over.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("start ") && lines[1].starts_with("start "),
        "{text}"
    );
    assert_eq!(lines[2], lines[1].replace("start", "end"), "{text}");
}
