//! etcd's v3 API (kvd/src/etcd) driven by Debian's `etcdctl` 3.4 against real replicas, each
//! command compared with the same command against a real etcd 3.4 (`/usr/bin/etcd`,
//! bench/install-etcd.sh) where the output should match: put/get/del with `--prefix`,
//! `--prev-kv`, `--from-key`, `--keys-only`, `--limit`, sorting, `txn -i` from stdin, a lease
//! that does not exist; lease grant/timetolive/keep-alive/list/revoke; watch from the history
//! into live changes and from a compacted revision; `compaction` and the reads and watches it
//! cuts off (and that it holds on every replica). Then what differs by nature (ids,
//! versions, sizes), checked for shape and values: `endpoint status`/`health`, `member list`;
//! etcdctl's `lock` and `elect` recipes; a watch across a leader kill; the refusals over the
//! limits; authentication is etcd_auth.rs).

use crate::harness::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A real etcd 3.4, single member, on loopback ports; killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
}

impl Etcd {
    /// A one-member etcd over `dir`, returned once `etcdctl endpoint health` says healthy.
    pub fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args([
                "--name=etcd-test",
                &format!("--data-dir={}", dir.join("etcd-data").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=etcd-test=http://127.0.0.1:{peer}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd 3.4 must be installed (bench/install-etcd.sh, run by scripts/setup.sh)");
        let etcd = Etcd {
            child,
            endpoint: format!("127.0.0.1:{client}"),
        };
        wait_healthy(&etcd.endpoint, Duration::from_secs(20));
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdctl --endpoints=<endpoint> <args>`, with `stdin` fed in.
pub(crate) fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    etcdctl_with(endpoint, &["--command-timeout=5s"], args, stdin)
}

/// `etcdctl --endpoints=<endpoint> <global> <args>`, its output captured, not started.
pub(crate) fn etcdctl_command(endpoint: &str, global: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(global)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `cmd` (from `etcdctl_command`).
pub(crate) fn spawn_etcdctl(cmd: &mut Command) -> std::process::Child {
    cmd.spawn()
        .expect("etcdctl 3.4 must be installed (Debian's etcd-client, bench/install-etcd.sh)")
}

/// `etcdctl --endpoints=<endpoint> <global> <args>`, with `stdin` fed in.
pub(crate) fn etcdctl_with(
    endpoint: &str,
    global: &[&str],
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut child = spawn_etcdctl(etcdctl_command(endpoint, global, args).stdin(Stdio::piped()));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Exit success, stdout and stderr, without the client's JSON log lines on stderr (they hold
/// a time, a connection id and the port; the `Error:` line after them carries the message).
pub(crate) fn text(out: &Output) -> (bool, String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// One comparison of an etcdctl command against etcd and omnikv, appended as a JSON line to
/// the file `OMNIKV_ETCD_COMPAT` names, when it is set (scripts/etcd-compat-table.py turns the
/// lines into the compatibility table of docs/etcd-compat.md). `note` says what was set aside
/// before comparing, if anything.
pub(crate) fn record(
    command: &str,
    want: &(bool, String, String),
    got: &(bool, String, String),
    note: &str,
) {
    eprintln!("etcdctl {command}: etcd {want:?} / omnikv {got:?}");
    let Ok(path) = std::env::var("OMNIKV_ETCD_COMPAT") else {
        return;
    };
    let side = |(ok, out, err): &(bool, String, String)| serde_json::json!({"ok": ok, "stdout": out, "stderr": err});
    let line = serde_json::json!({
        "command": command, "etcd": side(want), "omnikv": side(got),
        "same": want == got, "note": note,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
}

/// `etcdctl <args>` as a command line, with its standard input after `<<<`.
pub(crate) fn command_line(args: &[&str], stdin: Option<&str>) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| match a.is_empty() || a.contains([' ', '"']) {
            true => format!("'{a}'"),
            false => a.to_string(),
        })
        .collect();
    let line = format!("etcdctl {}", quoted.join(" "));
    match stdin {
        Some(input) => format!("{line} <<< {input:?}"),
        None => line,
    }
}

/// Polls `etcdctl endpoint health` on `endpoint` until it says healthy.
pub fn wait_healthy(endpoint: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let out = etcdctl(endpoint, &["endpoint", "health"], None);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not healthy in {within:?}: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts replicas 1..=3 each serving etcd's API; returns the cluster and the etcd endpoints.
async fn cluster_with_etcd_api() -> (Cluster, Vec<String>) {
    cluster_with_etcd_api_and(Opts::default()).await
}

/// `cluster_with_etcd_api` with `opts`.
async fn cluster_with_etcd_api_and(opts: Opts) -> (Cluster, Vec<String>) {
    let mut c = Cluster::new_stopped(3, opts);
    let mut endpoints = Vec::new();
    for pid in 1..=3 {
        let addr = format!("127.0.0.1:{}", free_port());
        c.spawn_with(pid, &[("KVD_ETCD_ADDR", &addr)]);
        endpoints.push(addr);
    }
    c.wait_leader(Duration::from_secs(20)).await;
    (c, endpoints)
}

/// Every KV command gives etcd's output, byte for byte, through a follower (writes and
/// linearizable reads go through the leader).
#[tokio::test]
async fn etcdctl_kv_commands_answer_as_etcd_does() {
    let (c, endpoints) = cluster_with_etcd_api().await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&p| p != leader).unwrap();
    let ours = endpoints[follower as usize - 1].clone();
    let etcd = Etcd::start(c.dir.path());
    wait_healthy(&ours, Duration::from_secs(20));

    let txn_ok = "mod(\"app/a\") > \"0\"\nvalue(\"app/b\") = \"2\"\n\nput app/t yes\nget app/a\n\nput app/f no\n\n";
    let txn_fail =
        "version(\"app/a\") = \"7\"\n\nput app/t never\n\nget app/ --prefix\ndel app/t\n\n";
    // A value compare on a missing key fails whatever its op (etcd's rule).
    let txn_missing = "value(\"nokey\") != \"x\"\n\nput app/never 1\n\nget nokey\n\n";
    let steps: &[(&[&str], Option<&str>)] = &[
        (&["put", "app/a", "1"], None),
        (&["put", "app/b", "2"], None),
        (&["put", "app/c", "3"], None),
        (&["put", "other", "x"], None),
        (&["put", "app/a", "10", "--prev-kv"], None),
        (&["get", "app/a"], None),
        (&["get", "app/", "--prefix"], None),
        (&["get", "app/", "--prefix", "--keys-only"], None),
        (&["get", "app/", "--prefix", "--limit=2"], None),
        (&["get", "app/b", "--from-key"], None),
        (&["get", "app/a", "app/c"], None),
        (&["get", "", "--prefix"], None),
        (
            &[
                "get",
                "app/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
            ],
            None,
        ),
        (&["get", "app/", "--prefix", "--order=DESCEND"], None),
        (
            &[
                "get",
                "app/",
                "--prefix",
                "--sort-by=VALUE",
                "--order=ASCEND",
                "--limit=1",
            ],
            None,
        ),
        (&["get", "missing"], None),
        (&["txn", "-i"], Some(txn_ok)),
        (&["txn", "-i"], Some(txn_fail)),
        (&["txn", "-i"], Some(txn_missing)),
        (&["get", "app/t"], None),
        (&["put", "app/l", "v", "--lease=1234"], None),
        (&["put", "", "v"], None),
        (&["del", "app/a", "--prev-kv"], None),
        (&["del", "app/", "--prefix"], None),
        (&["del", "nothing"], None),
        (&["get", "", "--from-key"], None),
    ];
    let mut differ = Vec::new();
    for (args, stdin) in steps {
        let want = text(&etcdctl(&etcd.endpoint, args, *stdin));
        let got = text(&etcdctl(&ours, args, *stdin));
        record(&command_line(args, *stdin), &want, &got, "");
        if want != got {
            differ.push(format!(
                "etcdctl {args:?}\n  etcd:   {want:?}\n  omnikv: {got:?}"
            ));
        }
    }
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
}

/// `endpoint status`, `endpoint health` and `member list`: etcd's shape, our values (member
/// ids are pids, the leader is the cluster's, the version is 3.4's with ours appended).
#[tokio::test]
async fn etcdctl_endpoint_and_member_commands_show_the_cluster() {
    let (c, endpoints) = cluster_with_etcd_api().await;
    let all = endpoints.join(",");
    for e in &endpoints {
        wait_healthy(e, Duration::from_secs(20));
    }
    let (ok, out, err) = text(&etcdctl(&all, &["endpoint", "health"], None));
    assert!(ok, "{err}");
    // etcdctl 3.4 prints the health lines on stderr.
    let out = out + &err;
    for e in &endpoints {
        assert!(
            out.contains(&format!("{e} is healthy: successfully committed proposal")),
            "{out}"
        );
    }

    // `<endpoint>, <id hex>, <version>, <db size>, <is leader>, <is learner>, <term>,
    // <raft index>, <applied index>, <errors>`; after a write, the leader's log holds it.
    let (ok, _, err) = text(&etcdctl(&endpoints[0], &["put", "k", "v"], None));
    assert!(ok, "{err}");
    // Read while the leader stays the same (a busy machine may see an election meanwhile).
    let (leader, out) = loop {
        let before = c.wait_leader(Duration::from_secs(10)).await;
        let (ok, out, err) = text(&etcdctl(&all, &["endpoint", "status"], None));
        assert!(ok, "{err}");
        if c.wait_leader(Duration::from_secs(10)).await == before {
            break (before, out);
        }
    };
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split(", ").map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (pid, row) in (1..=3u64).zip(&rows) {
        assert_eq!(row.len(), 10, "{out}");
        assert_eq!(row[0], endpoints[pid as usize - 1]);
        assert_eq!(row[1], format!("{pid:x}"));
        assert!(row[2].starts_with("3.4.0+omnikv."), "{out}");
        assert!(row[3].ends_with('B'), "db size: {out}");
        assert_eq!(row[4], (pid == leader).to_string(), "{out}");
        assert_eq!(row[5], "false");
        assert_eq!(row[6], "1", "configuration id as the term: {out}");
        let (index, applied): (u64, u64) = (row[7].parse().unwrap(), row[8].parse().unwrap());
        assert!(applied <= index, "{out}");
        if pid == leader {
            assert!(applied >= 1, "{out}");
        }
        assert_eq!(row[9], "", "{out}");
    }

    // `<id hex>, started, <name>, <peer urls>, <client urls>, <is learner>`
    let (ok, out, err) = text(&etcdctl(&endpoints[0], &["member", "list"], None));
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (pid, row) in (1..=3u64).zip(&rows) {
        let client_url = if pid == 1 {
            format!("http://{}", endpoints[0])
        } else {
            String::new()
        };
        assert_eq!(
            *row,
            format!(
                "{pid:x}, started, kvd-{pid}, http://{}, {client_url}, false",
                c.peer_addr(pid)
            ),
            "{out}"
        );
    }

    // The same commands against one etcd member and one replica, for the compatibility
    // table: they differ by nature (checked above for shape and values).
    let etcd = Etcd::start(c.dir.path());
    for args in [
        ["endpoint", "status"],
        ["endpoint", "health"],
        ["member", "list"],
    ] {
        let want = text(&etcdctl(&etcd.endpoint, &args, None));
        let got = text(&etcdctl(&endpoints[0], &args, None));
        let note = "differs by nature: member ids (pids), names, versions, sizes, addresses, \
                    indexes, timings; the shape is etcd's";
        record(&command_line(&args, None), &want, &got, note);
    }
}

/// The hex id in `lease <hex> granted with TTL(<n>s)`.
fn granted(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        matches!(words[..], ["lease", _, "granted", "with", _]),
        "{out:?}"
    );
    words[1].to_string()
}

/// `out` with lease id `id` written `<ID>` and a `remaining(Ns)` within `ttl` written
/// `remaining(N)` (the seconds left differ by when each system was asked).
fn normalized(out: &str, id: &str, ttl: u64) -> String {
    let out = out.replace(id, "<ID>");
    match out.split_once("remaining(") {
        Some((head, tail)) => {
            let (secs, rest) = tail.split_once("s)").unwrap();
            let secs: u64 = secs.parse().unwrap();
            assert!((1..=ttl).contains(&secs), "{out}");
            format!("{head}remaining(N){rest}")
        }
        None => out,
    }
}

/// `lease grant/timetolive/keep-alive --once/list/revoke` and a put attached to the lease
/// give etcd's output once the lease ids (random in each system) are set aside.
#[tokio::test]
async fn etcdctl_lease_commands_answer_as_etcd_does() {
    let (c, endpoints) = cluster_with_etcd_api().await;
    let ours = endpoints[0].clone();
    let etcd = Etcd::start(c.dir.path());
    wait_healthy(&ours, Duration::from_secs(20));
    let grant = |e: &str| {
        let (ok, out, err) = text(&etcdctl(e, &["lease", "grant", "30"], None));
        assert!(ok, "{err}");
        (granted(&out), out)
    };
    let (etcd_id, etcd_out) = grant(&etcd.endpoint);
    let (our_id, our_out) = grant(&ours);
    let (want, got) = (
        normalized(&etcd_out, &etcd_id, 30),
        normalized(&our_out, &our_id, 30),
    );
    let note = "lease id written <ID> (random in each system)";
    let (want, got) = ((true, want, String::new()), (true, got, String::new()));
    record("etcdctl lease grant 30", &want, &got, note);
    assert_eq!(want, got);
    let steps: &[&[&str]] = &[
        &["put", "--lease=ID", "lk", "lv"],
        &["lease", "timetolive", "ID", "--keys"],
        &["lease", "keep-alive", "--once", "ID"],
        &["lease", "list"],
        &["lease", "revoke", "ID"],
        &["get", "lk"],
        &["lease", "timetolive", "ID"],
        &["lease", "keep-alive", "--once", "ID"],
        &["lease", "revoke", "ID"],
    ];
    let mut differ = Vec::new();
    for args in steps {
        let run = |endpoint: &str, id: &str| {
            let args: Vec<String> = args.iter().map(|a| a.replace("ID", id)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = text(&etcdctl(endpoint, &args, None));
            (ok, normalized(&out, id, 30), normalized(&err, id, 30))
        };
        let want = run(&etcd.endpoint, &etcd_id);
        let got = run(&ours, &our_id);
        let note = "lease id written <ID> (random in each system), seconds remaining written N";
        record(&command_line(args, None), &want, &got, note);
        if want != got {
            differ.push(format!(
                "etcdctl {args:?}\n  etcd:   {want:?}\n  omnikv: {got:?}"
            ));
        }
    }
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
}

/// `etcdctl watch` in the background, its output going to `out`.
pub(crate) fn watch_in_background(endpoint: &str, args: &[&str], out: &Path) -> Child {
    spawn_etcdctl(
        etcdctl_command(endpoint, &["watch"], args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null()),
    )
}

/// Polls `out` until it holds `events` PUT/DELETE lines; returns its text.
pub(crate) fn wait_events(out: &Path, events: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let n = text
            .lines()
            .filter(|l| matches!(*l, "PUT" | "DELETE"))
            .count();
        if n >= events {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {events} events in {within:?}:\n{text}",
            n
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `watch --prefix` from the first revision (the history) on into live changes, with and
/// without `--prev-kv`, prints what etcd's does.
#[tokio::test]
async fn etcdctl_watch_answers_as_etcd_does() {
    let (c, endpoints) = cluster_with_etcd_api().await;
    let ours = endpoints[1].clone();
    let etcd = Etcd::start(c.dir.path());
    wait_healthy(&ours, Duration::from_secs(20));
    let run = |endpoint: &str, args: &[&str]| {
        let (ok, _, err) = text(&etcdctl(endpoint, args, None));
        assert!(ok, "{args:?}: {err}");
    };
    let before: &[&[&str]] = &[
        &["put", "w/a", "1"],
        &["put", "w/b", "2"],
        &["del", "w/a"],
        &["put", "other", "x"],
        &["put", "w/b", "3"],
    ];
    let after: &[&[&str]] = &[&["put", "w/c", "4"], &["del", "w/", "--prefix"]];
    let mut outputs = Vec::new();
    for (name, endpoint) in [("etcd", etcd.endpoint.as_str()), ("omnikv", &ours)] {
        for args in before {
            run(endpoint, args);
        }
        let plain = c.dir.path().join(format!("{name}-watch"));
        let prev = c.dir.path().join(format!("{name}-watch-prev"));
        let mut watchers = [
            watch_in_background(endpoint, &["--prefix", "w/", "--rev=1"], &plain),
            watch_in_background(endpoint, &["--prefix", "w/", "--rev=1", "--prev-kv"], &prev),
        ];
        // The history's four events reach both watchers, then the live ones follow.
        wait_events(&plain, 4, Duration::from_secs(20));
        wait_events(&prev, 4, Duration::from_secs(20));
        for args in after {
            run(endpoint, args);
        }
        let texts = (
            wait_events(&plain, 7, Duration::from_secs(20)),
            wait_events(&prev, 7, Duration::from_secs(20)),
        );
        for w in &mut watchers {
            let _ = w.kill();
            let _ = w.wait();
        }
        outputs.push(texts);
    }
    for (i, args) in [
        "watch --prefix w/ --rev=1",
        "watch --prefix w/ --rev=1 --prev-kv",
    ]
    .iter()
    .enumerate()
    {
        let side = |(plain, prev): &(String, String)| {
            let out = if i == 0 { plain } else { prev };
            (true, out.clone(), String::new())
        };
        let note = "4 history events, then 3 live ones (a put, a prefix delete of 2 keys)";
        record(
            &format!("etcdctl {args}"),
            &side(&outputs[0]),
            &side(&outputs[1]),
            note,
        );
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// etcdctl's own recipes on our API (Txn, Range with create-revision sort and filters, Watch,
/// Lease): `lock` runs commands one at a time, and `elect -l` sees the leader `elect` made.
#[tokio::test]
async fn etcdctl_lock_and_elect_run_on_omnikv() {
    let (c, endpoints) = cluster_with_etcd_api().await;
    let ours = endpoints[2].clone();
    wait_healthy(&ours, Duration::from_secs(20));
    let dir = c.dir.path();
    let (acquired, held) = (dir.join("acquired"), dir.join("held"));
    let mut first = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ours}"))
        .args(["lock", "L", "--", "sh", "-c"])
        .arg(format!(
            "touch {}; sleep 1; echo first > {}",
            acquired.display(),
            held.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !acquired.exists() {
        assert!(
            Instant::now() < deadline,
            "the first holder never got the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Waits for the first holder (its lock key is deleted when it exits), then reads what
    // the first wrote under the lock.
    let second = etcdctl(
        &ours,
        &["lock", "L", "cat", &held.display().to_string()],
        None,
    );
    assert_eq!(text(&second), (true, "first\n".to_string(), String::new()));
    assert!(first.wait().unwrap().success());

    let leader_out = dir.join("elect");
    let mut candidate = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ours}"))
        .args(["elect", "E", "p1"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&leader_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let observer_out = dir.join("observe");
    let mut observer = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints[0]))
        .args(["elect", "-l", "E"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&observer_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (won, seen) = loop {
        let won = std::fs::read_to_string(&leader_out).unwrap_or_default();
        let seen = std::fs::read_to_string(&observer_out).unwrap_or_default();
        if won.lines().count() >= 2 && seen.lines().count() >= 2 {
            break (won, seen);
        }
        assert!(
            Instant::now() < deadline,
            "no leader seen: candidate {won:?}, observer {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for p in [&mut candidate, &mut observer] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let won: Vec<&str> = won.lines().collect();
    assert!(won[0].starts_with("E/") && won[1] == "p1", "{won:?}");
    assert_eq!(seen.lines().take(2).collect::<Vec<_>>(), won[..2]);
}

/// etcdctl's `-w fields` output without the header (ids, revision, term: they differ by
/// nature), create and mod revisions less `offset`; other output as it is.
fn fields_without_header(out: &str, offset: u64) -> String {
    if !out.starts_with("\"ClusterID\"") {
        return out.to_string();
    }
    out.lines()
        .filter(|l| {
            ![
                "\"ClusterID\"",
                "\"MemberID\"",
                "\"Revision\"",
                "\"RaftTerm\"",
            ]
            .iter()
            .any(|h| l.starts_with(h))
        })
        .map(|l| match l.split_once(" : ") {
            Some((name @ ("\"CreateRevision\"" | "\"ModRevision\""), n)) => {
                let n: u64 = n.parse().unwrap();
                format!("{name} : {}\n", n - offset)
            }
            _ => format!("{l}\n"),
        })
        .collect()
}

/// One replica serving etcd's API (with `opts`) and a real etcd beside it, both healthy: the
/// cluster, our etcd endpoint, etcd.
async fn one_replica_beside_etcd(opts: Opts) -> (Cluster, String, Etcd) {
    let mut c = Cluster::new_stopped(1, opts);
    let ours = format!("127.0.0.1:{}", free_port());
    c.spawn_with(1, &[("KVD_ETCD_ADDR", &ours)]);
    c.wait_ready(1, Duration::from_secs(20)).await;
    let etcd = Etcd::start(c.dir.path());
    wait_healthy(&ours, Duration::from_secs(20));
    (c, ours, etcd)
}

/// `get --rev=N` reads the keys as they stood at revision N, as etcd's does, with and without
/// `--limit` and `--keys-only`, and with every field (`-w fields`), for every revision of a
/// run of puts and deletes (etcd counts its first write as revision 2, omnikv as 1: the same
/// point is one more in etcd); a future revision is refused alike.
#[tokio::test]
async fn etcdctl_get_at_past_revisions_answers_as_etcd_does() {
    let (_c, ours, etcd) = one_replica_beside_etcd(Opts::default()).await;
    let writes: &[&[&str]] = &[
        &["put", "r/a", "1"],
        &["put", "r/b", "2"],
        &["put", "r/a", "3"],
        &["del", "r/b"],
        &["put", "r/c", "4"],
        &["put", "r/a", "5"],
        &["del", "r/", "--prefix"],
        &["put", "r/b", "6"],
    ];
    for endpoint in [&etcd.endpoint, &ours] {
        for args in writes {
            let (ok, _, err) = text(&etcdctl(endpoint, args, None));
            assert!(ok, "{args:?}: {err}");
        }
    }
    let mut differ = Vec::new();
    let mut compared = 0;
    for ours_rev in 1..=writes.len() as u64 + 1 {
        for extra in [&[][..], &["--limit=1"], &["--keys-only"], &["-w", "fields"]] {
            let run = |endpoint: &str, rev: u64, offset: u64| {
                let rev = format!("--rev={rev}");
                let args: Vec<&str> = ["get", "r/", "--prefix", rev.as_str()]
                    .into_iter()
                    .chain(extra.iter().copied())
                    .collect();
                let (ok, out, err) = text(&etcdctl(endpoint, &args, None));
                (ok, fields_without_header(&out, offset), err)
            };
            let want = run(&etcd.endpoint, ours_rev + 1, 1);
            let got = run(&ours, ours_rev, 0);
            compared += 1;
            let command = format!("etcdctl get r/ --prefix --rev=N {}", extra.join(" "));
            let mut note = format!(
                "after 8 writes, at omnikv's revision {ours_rev} = etcd's {} (etcd's first write \
                 is revision 2)",
                ours_rev + 1
            );
            if extra.contains(&"fields") {
                note += "; header lines (ids, revision, term) dropped, etcd's create and mod \
                         revisions less one";
            }
            record(command.trim_end(), &want, &got, &note);
            if want != got {
                differ.push(format!(
                    "get --rev={ours_rev} {extra:?}\n  etcd:   {want:?}\n  omnikv: {got:?}"
                ));
            }
        }
    }
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
    assert_eq!(compared, 36);
    let future = |endpoint: &str| text(&etcdctl(endpoint, &["get", "r/b", "--rev=100"], None));
    let (want, got) = (future(&etcd.endpoint), future(&ours));
    record(
        "etcdctl get r/b --rev=100",
        &want,
        &got,
        "a future revision",
    );
    assert_eq!(want, got);
}

/// A watch from a revision the history no longer holds is canceled as etcd cancels it
/// (`compact_revision`, etcd's message), and a read at it is refused alike: etcd after
/// `etcdctl compact`, omnikv keeping two events of history (`KVD_HISTORY_EVENTS`: trimmed by
/// its own limits, without a compaction; `etcdctl_compaction_answers_as_etcd_does` compacts).
#[tokio::test]
async fn etcdctl_watch_from_a_compacted_revision_is_canceled_as_by_etcd() {
    let opts = Opts {
        extra_env: vec![("KVD_HISTORY_EVENTS".into(), "2".into())],
        ..Opts::default()
    };
    let (_c, ours, etcd) = one_replica_beside_etcd(opts).await;
    let mut outputs = Vec::new();
    for endpoint in [&etcd.endpoint, &ours] {
        for v in ["1", "2", "3", "4", "5"] {
            let (ok, _, err) = text(&etcdctl(endpoint, &["put", "k", v], None));
            assert!(ok, "{err}");
        }
        if *endpoint == etcd.endpoint {
            let (ok, _, err) = text(&etcdctl(endpoint, &["compact", "4"], None));
            assert!(ok, "{err}");
        }
        let out = etcdctl(endpoint, &["watch", "k", "--rev=1"], None);
        outputs.push(text(&out));
        // A read at a revision the history no longer holds: etcd's compacted error.
        outputs.push(text(&etcdctl(endpoint, &["get", "k", "--rev=1"], None)));
    }
    let note = "etcd after `etcdctl compact 4`, omnikv keeping 2 events of history";
    record("etcdctl watch k --rev=1", &outputs[0], &outputs[2], note);
    record("etcdctl get k --rev=1", &outputs[1], &outputs[3], note);
    assert_eq!(outputs[..2], outputs[2..]);
    assert!(
        outputs[2].2.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{:?}",
        outputs[2]
    );
    assert_eq!(
        outputs[3],
        (
            false,
            String::new(),
            "Error: etcdserver: mvcc: required revision has been compacted\n".to_string()
        )
    );
}

/// `etcdctl compaction N` (etcd's `Compact`) as etcd's: reads and watches below N get the
/// compacted error, at and above N they work (a watch from N gets N's own event), a second
/// compaction at or below N is refused compacted, one past the revision is a future revision,
/// and `--physical` is accepted. omnikv's revisions are etcd's less one (etcd's first write is
/// revision 2): each command runs with the same point in both.
#[tokio::test]
async fn etcdctl_compaction_answers_as_etcd_does() {
    let (c, ours, etcd) = one_replica_beside_etcd(Opts::default()).await;
    for endpoint in [&etcd.endpoint, &ours] {
        for v in ["1", "2", "3", "4", "5"] {
            let (ok, _, err) = text(&etcdctl(endpoint, &["put", "k", v], None));
            assert!(ok, "{err}");
        }
    }
    // `{}` is omnikv's revision (etcd's less one); etcd's "compacted revision N" is shown less
    // one too.
    // What happened before a command, shown after it in the table (`#`: a shell comment), so
    // one command run at two points is two rows.
    let steps: &[(&str, &str, &str)] = &[
        ("compaction {}", "4", ""),
        ("get k --rev={}", "2", "after compaction 4"),
        ("get k --rev={}", "3", "after compaction 4"),
        // A key never written: the history could rebuild its absence, the compaction forbids.
        ("get nokey --rev={}", "3", "after compaction 4"),
        ("get k --rev={}", "4", "after compaction 4"),
        ("get k --rev={}", "5", "after compaction 4"),
        ("watch k --rev={}", "3", "after compaction 4"),
        ("compaction {}", "4", "again"),
        ("compaction {}", "3", "after compaction 4"),
        ("compaction {}", "100", "a future revision"),
        ("compaction --physical {}", "5", "after compaction 4"),
        ("get k --rev={}", "4", "after compaction 5"),
        ("get k --rev={}", "5", "after compaction 5"),
    ];
    let mut differ = Vec::new();
    for (template, rev, after) in steps {
        let rev: u64 = rev.parse().unwrap();
        let run = |endpoint: &str, r: u64| {
            let line = template.replace("{}", &r.to_string());
            let args: Vec<&str> = line.split(' ').collect();
            let (ok, out, err) = text(&etcdctl(endpoint, &args, None));
            let out = out.replace(&format!("compacted revision {r}"), "compacted revision N");
            (ok, out, err)
        };
        let want = run(&etcd.endpoint, rev + 1);
        let got = run(&ours, rev);
        let mut command = format!("etcdctl {}", template.replace("{}", &rev.to_string()));
        if !after.is_empty() {
            command += &format!(" # {after}");
        }
        let note = "after 5 puts of k; revisions are omnikv's, etcd's one more (its first \
                    write is revision 2); `compacted revision N` as printed";
        record(&command, &want, &got, note);
        if want != got {
            differ.push(format!("{command}\n  etcd:   {want:?}\n  omnikv: {got:?}"));
        }
    }
    // A watch from the compact revision gets that revision's event and the next one.
    let mut watched = Vec::new();
    for (name, endpoint, rev) in [
        ("etcd", &etcd.endpoint, "--rev=6"),
        ("omnikv", &ours, "--rev=5"),
    ] {
        let out = c.dir.path().join(format!("{name}-watch-compact"));
        let mut w = watch_in_background(endpoint, &["k", rev], &out);
        watched.push((
            true,
            wait_events(&out, 1, Duration::from_secs(20)),
            String::new(),
        ));
        let _ = w.kill();
        let _ = w.wait();
    }
    record(
        "etcdctl watch k --rev=5 # after compaction 5",
        &watched[0],
        &watched[1],
        "a watch from the compact revision: its event; revisions are omnikv's, etcd's one \
         more",
    );
    if watched[0] != watched[1] {
        differ.push(format!("watch from the compact revision: {watched:?}"));
    }
    assert_eq!(watched[1].1, "PUT\nk\n5\n");
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
}

/// A compaction through one replica holds on every replica (each asked on its own etcd port):
/// below it a read and a watch are compacted, at it a read works, a compaction at it again is
/// refused; and after a restart, the replica restarted answers the same.
#[tokio::test]
async fn compaction_holds_on_every_replica_and_across_a_restart() {
    let (mut c, endpoints) = cluster_with_etcd_api().await;
    for e in &endpoints {
        wait_healthy(e, Duration::from_secs(20));
    }
    for v in ["1", "2", "3", "4"] {
        let (ok, _, err) = text(&etcdctl(&endpoints[0], &["put", "k", v], None));
        assert!(ok, "{err}");
    }
    let compacted = || {
        (
            false,
            String::new(),
            "Error: etcdserver: mvcc: required revision has been compacted\n".to_string(),
        )
    };
    assert_eq!(
        text(&etcdctl(&endpoints[1], &["compaction", "3"], None)),
        (true, "compacted revision 3\n".into(), String::new())
    );
    let check = |e: &str| {
        assert_eq!(
            text(&etcdctl(e, &["get", "k", "--rev=2"], None)),
            compacted(),
            "{e}"
        );
        assert_eq!(
            text(&etcdctl(e, &["get", "k", "--rev=3"], None)),
            (true, "k\n3\n".into(), String::new()),
            "{e}"
        );
        let (ok, _, err) = text(&etcdctl(e, &["watch", "k", "--rev=2"], None));
        assert!(!ok, "{e}");
        assert!(
            err.starts_with(
                "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
            ),
            "{e}: {err}"
        );
        assert_eq!(
            text(&etcdctl(e, &["compaction", "3"], None)),
            compacted(),
            "{e}"
        );
    };
    for e in &endpoints {
        check(e);
    }
    // A replica restarted (its compact revision and history floor read back from its store).
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let pid = (1..=3).find(|&p| p != leader).unwrap();
    c.kill(pid);
    let addr = endpoints[pid as usize - 1].clone();
    c.spawn_with(pid, &[("KVD_ETCD_ADDR", &addr)]);
    c.wait_ready(pid, Duration::from_secs(20)).await;
    wait_healthy(&addr, Duration::from_secs(20));
    check(&addr);
}

/// A replica that was down through a compaction and catches up by installing a checkpoint
/// (every peer compacted its log) holds the compact revision too: the checkpoint carries it.
/// It refuses a compaction at it again and reads below it as the others do.
#[tokio::test]
async fn a_replica_installing_a_checkpoint_takes_the_compact_revision() {
    let (mut c, endpoints) = cluster_with_etcd_api_and(Opts::compacting(5, 0)).await;
    for e in &endpoints {
        wait_healthy(e, Duration::from_secs(20));
    }
    c.kill(3);
    let run = |args: &[&str]| {
        // Through the election after the kill, a write may be refused (no leader): retried.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = text(&etcdctl(&endpoints[0], args, None));
            if out.0 || out.2.contains("compacted") {
                return out;
            }
            assert!(Instant::now() < deadline, "{args:?}: {out:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for v in ["1", "2", "3", "4"] {
        run(&["put", "k", v]);
    }
    assert_eq!(
        run(&["compaction", "3"]),
        (true, "compacted revision 3\n".into(), String::new())
    );
    for i in 0..20 {
        run(&["put", &format!("f{i}"), "v"]);
    }
    c.spawn_with(3, &[("KVD_ETCD_ADDR", &endpoints[2])]);
    c.wait_converged(Duration::from_secs(30)).await;
    assert!(
        c.log_text(3).contains("catching up from a checkpoint"),
        "{}",
        c.dump_logs()
    );
    wait_healthy(&endpoints[2], Duration::from_secs(20));
    let compacted = (
        false,
        String::new(),
        "Error: etcdserver: mvcc: required revision has been compacted\n".to_string(),
    );
    for e in &endpoints {
        assert_eq!(
            text(&etcdctl(e, &["compaction", "3"], None)),
            compacted,
            "{e}"
        );
        assert_eq!(
            text(&etcdctl(e, &["get", "nokey", "--rev=2"], None)),
            compacted,
            "{e}"
        );
    }
}

/// With `--cert-file`, etcd's API is served over TLS with the client API's certificate:
/// etcdctl and etcd-client with the cluster CA put and read; a client that does not trust
/// the CA, and one speaking plaintext, get nothing.
#[tokio::test]
async fn etcd_api_serves_tls_with_the_client_api_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = crate::pki::lay_out(&crate::pki::Ca::new("etcd CA"), pki_dir.path(), 1..=1);
    let opts = Opts {
        tls: Some(pki.clone()),
        etcd_api: true,
        ..Opts::default()
    };
    let c = Cluster::start(1, opts).await;
    let https = format!("https://{}", c.etcd_endpoint(1));
    let ca = pki.ca().display().to_string();
    let cacert = format!("--cacert={ca}");
    let tls = |args: &[&str]| text(&etcdctl_with(&https, &[cacert.as_str()], args, None));
    assert_eq!(
        tls(&["put", "t", "secret"]),
        (true, "OK\n".into(), String::new())
    );
    assert_eq!(
        tls(&["get", "t"]),
        (true, "t\nsecret\n".into(), String::new())
    );
    let (ok, out, _) = tls(&["endpoint", "health"]);
    assert!(ok, "{out}");

    let mut options =
        etcd_client::ConnectOptions::new().with_tls(etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(std::fs::read(pki.ca()).unwrap()),
        ));
    options = options.with_timeout(Duration::from_secs(5));
    let mut client = etcd_client::Client::connect([https.as_str()], Some(options))
        .await
        .unwrap();
    client.put("t2", "v2", None).await.unwrap();
    let got = client.get("t", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"secret");

    // Another CA's client, and plaintext, reach nothing.
    let other = crate::pki::lay_out(
        &crate::pki::Ca::new("other CA"),
        &pki_dir.path().join("other"),
        [],
    );
    let other_ca = format!("--cacert={}", other.ca().display());
    let quick = ["--dial-timeout=1s", "--command-timeout=2s"];
    let (ok, _, err) = text(&etcdctl_with(
        &https,
        &[quick[0], quick[1], &other_ca],
        &["get", "t"],
        None,
    ));
    assert!(!ok, "{err}");
    let plain = c.etcd_endpoint(1);
    let (ok, out, err) = text(&etcdctl_with(&plain, &quick, &["get", "t"], None));
    assert!(!ok && out.is_empty(), "{out} {err}");
}

/// Over etcd's API, a value over the cap, a key over 1024 bytes and a transaction of 129 puts
/// get etcd's errors, and nothing of them is written.
#[tokio::test]
async fn etcd_api_refuses_what_is_over_its_limits() {
    let mut c = Cluster::new_stopped(1, Opts::default());
    let ours = format!("127.0.0.1:{}", free_port());
    c.spawn_with(1, &[("KVD_ETCD_ADDR", &ours)]);
    c.wait_ready(1, Duration::from_secs(20)).await;
    wait_healthy(&ours, Duration::from_secs(20));
    let too_large = "Error: etcdserver: request is too large\n".to_string();
    let big_value = "v".repeat(70_000);
    let long_key = "k".repeat(1025);
    for args in [["put", "k", big_value.as_str()], ["put", &long_key, "v"]] {
        assert_eq!(
            text(&etcdctl(&ours, &args, None)),
            (false, String::new(), too_large.clone())
        );
    }
    let puts: String = (0..129).map(|i| format!("put t{i} v\n")).collect();
    let (ok, _, err) = text(&etcdctl(
        &ours,
        &["txn", "-i"],
        Some(&format!("\n{puts}\n\n")),
    ));
    assert!(!ok);
    assert!(
        err.contains("etcdserver: too many operations in txn request"),
        "{err}"
    );
    let (ok, out, err) = text(&etcdctl(&ours, &["get", "", "--prefix"], None));
    assert!(ok, "{err}");
    assert_eq!(out, "");
}

/// `etcdctl watch --prefix` on a follower keeps its stream while the leader is killed: the
/// writes before, and those through another replica once a new leader is elected, all
/// arrive, in order.
#[tokio::test]
async fn etcdctl_watch_survives_a_leader_kill() {
    let (mut c, endpoints) = cluster_with_etcd_api().await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = (1..=3).filter(|&p| p != leader).collect();
    let (watched, writer) = (
        endpoints[followers[0] as usize - 1].clone(),
        endpoints[followers[1] as usize - 1].clone(),
    );
    wait_healthy(&watched, Duration::from_secs(20));
    let out = c.dir.path().join("watch");
    let mut watcher = watch_in_background(&watched, &["--prefix", "w/", "--rev=1"], &out);
    let put = |key: &str| {
        // Through the election, a put may be refused (no leader): retried until applied.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, _, err) = text(&etcdctl(&writer, &["put", key, "v"], None));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "put {key}: {err}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    put("w/1");
    wait_events(&out, 1, Duration::from_secs(20));
    c.kill(leader);
    put("w/2");
    put("w/3");
    let seen = wait_events(&out, 3, Duration::from_secs(20));
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(seen, "PUT\nw/1\nv\nPUT\nw/2\nv\nPUT\nw/3\nv\n");
}
