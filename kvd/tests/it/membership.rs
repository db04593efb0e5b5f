//! Membership changes between real kvd processes: adding a replica that receives the state
//! (also when killed half-way through the transfer: it resumes), removing the leader, replacing a member, writers during
//! changes, a leader killed around a change, and restarts after a change.

use crate::harness::{stdout_ok, Cluster, Opts};
use crate::resume::{joined, joiner_receiving, run_receiver_to_half};
use omnikv_common::{Client, ClientError, Consistency, Phase, Role, StatusView};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys loaded before a replica is added (the issue asks for 100,000).
fn keys_to_load() -> usize {
    std::env::var("OMNIKV_TEST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

pub(crate) fn value_of(i: usize) -> Vec<u8> {
    format!("{i:0>100}").into_bytes()
}

/// Puts `k{i}` = `value_of(i)` for i in 0..n, 128 at a time.
pub(crate) async fn load(c: &Cluster, n: usize) {
    load_with(c, n, value_of).await
}

/// Puts `k{i}` = `value(i)` for i in 0..n, 128 at a time.
pub(crate) async fn load_with(c: &Cluster, n: usize, value: fn(usize) -> Vec<u8>) {
    let client = Arc::new(c.client(Duration::from_secs(20)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..128)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    client
                        .put(format!("k{i}").as_bytes(), value(i))
                        .await
                        .unwrap_or_else(|e| panic!("put k{i}: {e}"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reads every `k{i}` through `client` (128 at a time) and checks its value.
pub(crate) async fn check_all(client: Client, n: usize, consistency: Consistency) {
    let client = Arc::new(client);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..128)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let v = client
                        .get(format!("k{i}").as_bytes(), consistency)
                        .await
                        .unwrap_or_else(|e| panic!("get k{i} ({consistency:?}): {e}"));
                    assert_eq!(v, value_of(i), "k{i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

pub(crate) async fn wait_status(
    c: &Cluster,
    pid: u64,
    within: Duration,
    what: &str,
    ok: impl Fn(&StatusView) -> bool,
) -> StatusView {
    let deadline = Instant::now() + within;
    loop {
        let last = c.status(pid).await;
        if let Ok(s) = &last {
            if ok(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "replica {pid}: not {what} within {within:?}: {last:?}\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn reconfigure(c: &Cluster, endpoints: &[u64], args: &[&str]) -> std::process::Output {
    let eps: Vec<String> = endpoints.iter().map(|&p| c.endpoint(p)).collect();
    let mut all = vec!["--timeout", "20s", "reconfigure"];
    all.extend_from_slice(args);
    c.kvctl_with(&eps.join(","), &all, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_gets_100k_keys_even_when_killed_mid_transfer_and_resumes() {
    let n = keys_to_load();
    let (mut c, _) = joiner_receiving(n, value_of).await;
    // Kill the new replica half-way through the transfer, then restart it: it resumes
    // where it stopped (its sender kept the state it froze for the stream) and completes.
    let half = run_receiver_to_half(&c, 4).await;
    c.kill(4);
    eprintln!("killed node 4 mid-transfer at {half:?}");
    c.spawn(4);
    // The restarted process received only the rest: starting over would receive it all.
    joined(&mut c, n).await.assert_resumed(&half, true);
    let t = Instant::now();
    check_all(
        c.client_of(4, Duration::from_secs(20)),
        n,
        Consistency::Local,
    )
    .await;
    check_all(
        c.client_of(4, Duration::from_secs(20)),
        n,
        Consistency::Linearizable,
    )
    .await;
    eprintln!(
        "read all {n} keys twice through node 4 in {:?}",
        t.elapsed()
    );
    assert!(c.log_text(4).contains("joined: holds the state and serves"));
}

/// What one writer saw: acknowledged and attempted writes.
#[derive(Default, Debug)]
pub(crate) struct WriterLog {
    acked_unique: Vec<usize>,
    last_acked_counter: usize,
    last_attempted_counter: usize,
}

/// Writes unique keys `u{w}-{i}` and a counter `ctr{w}` = i, one at a time, until `stop`.
fn writer(client: Client, w: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<WriterLog> {
    tokio::spawn(async move {
        let mut log = WriterLog::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            if client
                .put(format!("u{w}-{i}").as_bytes(), b"x".to_vec())
                .await
                .is_ok()
            {
                log.acked_unique.push(i);
            }
            log.last_attempted_counter = i;
            if client
                .put(format!("ctr{w}").as_bytes(), i.to_string().into_bytes())
                .await
                .is_ok()
            {
                log.last_acked_counter = i;
            }
        }
        log
    })
}

/// `n` writers (`writer`) through `endpoints`, running until `stop`.
pub(crate) struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
}

impl Writers {
    pub(crate) fn start(endpoints: &[String], n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|w| {
                let client = Client::new(endpoints, Duration::from_secs(15)).unwrap();
                writer(client, w, stop.clone())
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers; what each saw.
    pub(crate) async fn stop(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for w in self.tasks {
            logs.push(w.await.unwrap());
        }
        eprintln!(
            "writers: {:?} writes acknowledged",
            logs.iter()
                .map(|l| l.acked_unique.len())
                .collect::<Vec<_>>()
        );
        logs
    }
}

/// Every acknowledged write is present; a counter never went back to an older value (a
/// write applied twice would put an older value back after a newer one).
pub(crate) async fn check_writers(client: &Client, logs: &[WriterLog]) {
    for (w, log) in logs.iter().enumerate() {
        assert!(
            !log.acked_unique.is_empty(),
            "writer {w} got nothing acknowledged"
        );
        for i in &log.acked_unique {
            let v = client
                .get(format!("u{w}-{i}").as_bytes(), Consistency::Linearizable)
                .await;
            assert_eq!(
                v.unwrap_or_else(|e| panic!("u{w}-{i}: {e}")),
                b"x",
                "u{w}-{i}"
            );
        }
        let v = client
            .get(format!("ctr{w}").as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        let v: usize = String::from_utf8(v).unwrap().parse().unwrap();
        assert!(
            v >= log.last_acked_counter && v <= log.last_attempted_counter,
            "writer {w}: counter {v}, last acked {}, last attempted {}",
            log.last_acked_counter,
            log.last_attempted_counter
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_through_changes_and_removing_the_leader() {
    let mut c = Cluster::start(3, Opts::default()).await;
    c.add_node(4);
    wait_status(&c, 4, Duration::from_secs(10), "a waiting joiner", |s| {
        s.role == Role::Joining
    })
    .await;
    let endpoints: Vec<String> = (1..=4).map(|p| c.endpoint(p)).collect();
    let writers = Writers::start(&endpoints, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3 -> 4 under load.
    let peer = format!("4={}", c.peer_addr(4));
    let out = stdout_ok(reconfigure(
        &c,
        &[1, 2, 3],
        &["--nodes", "1,2,3,4", "--peer", &peer],
    ));
    assert!(out.contains("configuration 2"), "{out}");
    wait_status(&c, 4, Duration::from_secs(30), "serving", |s| {
        matches!(s.role, Role::Follower | Role::Leader)
    })
    .await;
    c.members = vec![1, 2, 3, 4];
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4 -> 3, removing the current leader, under load.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let rest: Vec<u64> = (1..=4).filter(|&p| p != leader).collect();
    let list = rest
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let t = Instant::now();
    let out = stdout_ok(reconfigure(&c, &[1, 2, 3, 4], &["--nodes", &list]));
    assert!(out.contains("configuration 3"), "{out}");
    eprintln!("removed the leader ({leader}) in {:?}", t.elapsed());
    let s = wait_status(&c, leader, Duration::from_secs(30), "removed", |s| {
        s.role == Role::Removed
    })
    .await;
    assert_eq!(s.leader, None, "a removed replica reports no leader");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = writers.stop().await;
    c.members = rest.clone();
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    assert!(rest.contains(&new_leader));
    let client = Client::new(
        &rest.iter().map(|&p| c.endpoint(p)).collect::<Vec<_>>(),
        Duration::from_secs(10),
    )
    .unwrap();
    check_writers(&client, &logs).await;
    c.wait_converged(Duration::from_secs(30)).await;

    // The removed replica refuses clients with exit 3 and says why.
    let out = c.kvctl_with(
        &c.endpoint(leader),
        &["--timeout", "2s", "put", "a", "1"],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed"), "{err}");
    match c
        .client_of(leader, Duration::from_secs(2))
        .get(b"u0-1", Consistency::Local)
        .await
    {
        Err(ClientError::Unavailable(m)) => assert!(m.contains("removed"), "{m}"),
        other => panic!("local read on a removed replica: {other:?}"),
    }
    // And stays removed across a restart (never rejoins by accident).
    c.kill(leader);
    c.spawn(leader);
    wait_status(
        &c,
        leader,
        Duration::from_secs(10),
        "removed after restart",
        |s| s.role == Role::Removed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_member_then_compact_and_restart_everyone_with_old_env() {
    let mut c = Cluster::start(3, Opts::compacting(20, 5)).await;
    load(&c, 200).await;
    c.add_node(4);
    wait_status(&c, 4, Duration::from_secs(10), "a waiting joiner", |s| {
        s.role == Role::Joining
    })
    .await;
    // Guards first: a majority replaced at once, an id other than current + 1.
    let out = reconfigure(&c, &[1, 2, 3], &["--nodes", "1,4,5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("majority"));
    let out = reconfigure(&c, &[1, 2, 3], &["--nodes", "1,2,4", "--config-id", "7"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    let peer = format!("4={}", c.peer_addr(4));
    let out = stdout_ok(reconfigure(
        &c,
        &[1, 2, 3],
        &["--nodes", "1,2,4", "--peer", &peer, "--config-id", "2"],
    ));
    assert_eq!(out.trim(), "OK: configuration 2, members 1,2,4");
    // A retry of the same change with the same id succeeds without a new change (kvctl sees
    // it in place and says so).
    let out = stdout_ok(reconfigure(
        &c,
        &[1, 2, 4],
        &["--nodes", "1,2,4", "--config-id", "2"],
    ));
    assert_eq!(
        out.trim(),
        "already in place: configuration 2 with members [1, 2, 4]"
    );
    wait_status(&c, 3, Duration::from_secs(30), "removed", |s| {
        s.role == Role::Removed
    })
    .await;
    wait_status(&c, 4, Duration::from_secs(30), "serving", |s| {
        matches!(s.role, Role::Follower | Role::Leader)
    })
    .await;
    c.members = vec![1, 2, 4];

    // Non-dense pids keep working, compaction included.
    let client = Client::new(
        &[c.endpoint(1), c.endpoint(2), c.endpoint(4)],
        Duration::from_secs(10),
    )
    .unwrap();
    for i in 0..100 {
        client
            .put(format!("after{i}").as_bytes(), b"y".to_vec())
            .await
            .unwrap();
    }
    c.wait_converged(Duration::from_secs(30)).await;
    for p in [1, 2, 4] {
        let s = c.status(p).await.unwrap();
        assert_eq!(
            (s.config_id, s.members.clone()),
            (2, vec![1, 2, 4]),
            "{s:?}"
        );
        assert!(s.compacted_idx > 0, "replica {p} did not compact: {s:?}");
    }
    let members = stdout_ok(c.kvctl_with(&c.endpoint(1), &["members"], None));
    assert!(members.starts_with("config 2, leader "), "{members}");

    // Restart everyone; nodes 1-3 still have CONFIG_ID=1 NODES=[1,2,3] in their env.
    for p in [1, 2, 3, 4] {
        c.kill(p);
    }
    for p in [1, 2, 3, 4] {
        c.spawn(p);
    }
    c.wait_leader(Duration::from_secs(20)).await;
    for p in [1, 2, 4] {
        let s = wait_status(&c, p, Duration::from_secs(20), "back in config 2", |s| {
            s.config_id == 2 && s.role != Role::CatchingUp
        })
        .await;
        assert_eq!(s.members, [1, 2, 4]);
    }
    assert_eq!(c.status(3).await.unwrap().role, Role::Removed);
    check_all(client, 200, Consistency::Linearizable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_around_a_change_ends_in_one_configuration() {
    let mut c = Cluster::start(3, Opts::default()).await;
    load(&c, 100).await;
    c.add_node(4);
    wait_status(&c, 4, Duration::from_secs(10), "a waiting joiner", |s| {
        s.role == Role::Joining
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    // Kill the leader after it proposed the change but before it could be decided: the
    // followers are paused, so the StopSign is stored on the leader only.
    let followers: Vec<u64> = (1..=3).filter(|&p| p != leader).collect();
    for &p in &followers {
        c.pause(p);
    }
    let peer = format!("4={}", c.peer_addr(4));
    let endpoint = c.endpoint(leader);
    let handle = std::thread::spawn(move || {
        crate::harness::kvctl_run(
            &endpoint,
            &[
                "--timeout",
                "3s",
                "reconfigure",
                "--nodes",
                "1,2,3,4",
                "--peer",
                &peer,
            ],
            None,
        )
    });
    wait_status(&c, leader, Duration::from_secs(5), "proposing", |s| {
        s.reconfiguration
            .as_ref()
            .is_some_and(|r| r.phase == Phase::Proposed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill(leader);
    for &p in &followers {
        c.resume(p);
    }
    let out = handle.join().unwrap();
    eprintln!(
        "reconfigure with the leader killed before the decision: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(out.status.code(), Some(3 | 4)), "{out:?}");
    c.spawn(leader);
    c.wait_leader(Duration::from_secs(20)).await;
    // The StopSign reached the paused followers' sockets: the new leader may complete it.
    // Either way nothing stays half-done: no replica keeps a pending change.
    for p in 1..=3 {
        let s = wait_status(&c, p, Duration::from_secs(20), "settled", |s| {
            s.config_id == 2 || s.reconfiguration.is_none()
        })
        .await;
        eprintln!(
            "after the interrupted change: replica {p}: config {} role {}",
            s.config_id, s.role
        );
    }
    // Either the change happened, or it can be completed by retrying with the same id.
    let out = reconfigure(
        &c,
        &[1, 2, 3],
        &[
            "--nodes",
            "1,2,3,4",
            "--config-id",
            "2",
            "--peer",
            &format!("4={}", c.peer_addr(4)),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", c.dump_logs());
    c.members = vec![1, 2, 3, 4];
    for p in 1..=4 {
        wait_status(&c, p, Duration::from_secs(30), "in config 2", |s| {
            s.config_id == 2 && matches!(s.role, Role::Follower | Role::Leader)
        })
        .await;
    }
    // Kill the leader of the new configuration right after a change is decided: 4 -> 3.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let keep: Vec<u64> = (1..=4).filter(|&p| p != 4).collect();
    let out = stdout_ok(reconfigure(&c, &[1, 2, 3, 4], &["--nodes", "1,2,3"]));
    assert!(out.contains("configuration 3"), "{out}");
    if leader != 4 {
        c.kill(leader);
        c.spawn(leader);
    }
    c.members = keep;
    c.wait_leader(Duration::from_secs(20)).await;
    for p in 1..=3 {
        wait_status(&c, p, Duration::from_secs(30), "in config 3", |s| {
            s.config_id == 3
                && s.members == [1, 2, 3]
                && matches!(s.role, Role::Follower | Role::Leader)
        })
        .await;
    }
    wait_status(&c, 4, Duration::from_secs(30), "removed", |s| {
        s.role == Role::Removed
    })
    .await;
    c.wait_converged(Duration::from_secs(30)).await;
    check_all(
        c.client_of(1, Duration::from_secs(10)),
        100,
        Consistency::Linearizable,
    )
    .await;
}
