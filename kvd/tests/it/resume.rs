//! Checkpoint transfers interrupted half-way go on from where they stopped, between real kvd
//! processes: after a crash of the sender (restarted), and across a leader change. (After a
//! crash of the receiver: membership.rs, the 100k-key joiner, with the helpers here.) Each
//! checks kvd's own records that nothing started over (the resume counter and log line, one
//! request for the state, the bytes received against the state's) and that the new member
//! ends with the others' state hash.

use crate::harness::*;
use crate::membership::{load_with, reconfigure, wait_status};
use omnikv_common::{Role, TransferView};
use std::time::{Duration, Instant};

/// Keys loaded before replica 4 joins, of `VALUE_BYTES` each: about 20 MB, 20 chunks (large
/// values: few writes to load, yet a transfer of many chunks).
const KEYS: usize = 5_000;
const VALUE_BYTES: usize = 4000;

fn value(i: usize) -> Vec<u8> {
    format!("{i:0>w$}", w = VALUE_BYTES).into_bytes()
}

/// A 3-replica cluster holding `n` keys (`k{i}` = `value(i)`) that adds replica 4: returns
/// once 4 has written part of the state, with 4 stopped (SIGSTOP: without its
/// acknowledgements the sender's window holds the stream), and the sender's pid.
pub(crate) async fn joiner_receiving(n: usize, value: fn(usize) -> Vec<u8>) -> (Cluster, u64) {
    let mut c = Cluster::start(3, Opts::default()).await;
    let t = Instant::now();
    load_with(&c, n, value).await;
    eprintln!("loaded {n} keys in {:?}", t.elapsed());
    c.add_node(4);
    let s = wait_status(&c, 4, Duration::from_secs(10), "a waiting joiner", |s| {
        s.role == Role::Joining
    })
    .await;
    assert_eq!(
        s.config_id, 0,
        "a joiner never starts a configuration itself"
    );
    // The joiner is alive but not ready.
    let ready = reqwest::get(format!("http://{}/readyz", c.endpoint(4)))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    add_four(&c);
    let s = wait_status(
        &c,
        4,
        Duration::from_secs(30),
        "receiving a checkpoint",
        |s| {
            s.transfer.as_ref().is_some_and(|t| t.bytes > 0)
                || matches!(s.role, Role::Follower | Role::Leader)
        },
    )
    .await;
    c.pause(4);
    let sender = s
        .transfer
        .unwrap_or_else(|| panic!("the transfer finished before it could be interrupted"))
        .from;
    (c, sender)
}

/// Asks 1, 2 and 3 to add replica 4 (configuration 2).
fn add_four(c: &Cluster) {
    let peer = format!("4={}", c.peer_addr(4));
    let out = stdout_ok(reconfigure(
        c,
        &[1, 2, 3],
        &["--nodes", "1,2,3,4", "--peer", &peer],
    ));
    assert_eq!(out.trim(), "OK: configuration 2, members 1,2,3,4");
}

/// Lets the stopped receiver `r` run in short bursts (each as long as one status answer)
/// until it has written half the keys; leaves it stopped and returns the transfer as it was.
pub(crate) async fn run_receiver_to_half(c: &Cluster, r: u64) -> TransferView {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        c.resume(r);
        let t = c.status(r).await.ok().and_then(|s| s.transfer);
        c.pause(r);
        if let Some(t) = t
            .as_ref()
            .filter(|t| t.keys_total > 0 && 2 * t.keys >= t.keys_total)
        {
            assert!(t.keys < t.keys_total, "the transfer ended first: {t:?}");
            return t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "half-way not reached: {t:?}\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What replica `r`'s own records say about the checkpoint it installed.
#[derive(Debug)]
pub(crate) struct Evidence {
    /// The installed state's key and value bytes (its "checkpoint installed" log line).
    pub state_bytes: u64,
    /// `omnikv_checkpoint_bytes_received_total` of its current process.
    pub received: u64,
    /// `omnikv_checkpoints_resumed_total` of its current process.
    pub resumed: u64,
    /// Requests for a fresh checkpoint in its log (every run of it).
    pub requests: usize,
    /// Resumptions in its log (every run of it).
    pub resumptions: usize,
}

impl Evidence {
    /// Asserts that the transfer, interrupted at `half`, never started over: the state was
    /// asked for once, and no more bytes came than the state (to the current process of a
    /// `restarted` receiver: only the rest). Starting over brings the state again, on top of
    /// what came before the interruption.
    pub(crate) fn assert_never_started_over(&self, half: &TransferView, restarted: bool) {
        assert_eq!(self.requests, 1, "{self:?}");
        let bound = match restarted {
            true => self.state_bytes - half.bytes / 2,
            false => self.state_bytes + half.bytes / 2,
        };
        assert!(self.received < bound, "{self:?} {half:?}");
    }

    /// Asserts that the transfer interrupted at `half` resumed, and never started over.
    pub(crate) fn assert_resumed(&self, half: &TransferView, restarted: bool) {
        assert!(self.resumptions >= 1 && self.resumed >= 1, "{self:?}");
        self.assert_never_started_over(half, restarted);
    }
}

pub(crate) async fn evidence(c: &Cluster, r: u64) -> Evidence {
    let log = c.log_text(r);
    let state_bytes = log
        .lines()
        .rfind(|l| l.contains("checkpoint installed"))
        .and_then(|l| l.split(" bytes=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("replica {r} logged no install:\n{log}"));
    let counter = |name: &'static str| async move {
        c.metric(r, name)
            .await
            .unwrap_or_else(|| panic!("no {name} in replica {r}'s metrics")) as u64
    };
    Evidence {
        state_bytes,
        received: counter("omnikv_checkpoint_bytes_received_total").await,
        resumed: counter("omnikv_checkpoints_resumed_total").await,
        requests: log.matches("asking for the state (checkpoint)").count(),
        resumptions: log
            .matches("resuming the checkpoint transfer where it stopped")
            .count(),
    }
}

/// Waits until replica 4 serves at least `n` keys in configuration 2 and holds the others'
/// state (their state hash).
async fn serves_the_others_state(c: &mut Cluster, n: usize) {
    let t = Instant::now();
    let s = wait_status(c, 4, Duration::from_secs(120), "serving", |s| {
        matches!(s.role, Role::Follower | Role::Leader) && s.keys as usize >= n
    })
    .await;
    eprintln!("node 4 serves {} keys {:?} later", s.keys, t.elapsed());
    assert_eq!((s.config_id, &s.members[..]), (2, &[1, 2, 3, 4][..]));
    c.members = vec![1, 2, 3, 4];
    let hash = c.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(c.status(4).await.unwrap().state_hash, hash);
}

/// Waits until replica 4 serves at least `n` keys in configuration 2 and holds the others'
/// state; returns what it says about its transfer.
pub(crate) async fn joined(c: &mut Cluster, n: usize) -> Evidence {
    serves_the_others_state(c, n).await;
    let e = evidence(c, 4).await;
    eprintln!("{e:?}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_sender_crashes_half_way_resumes_from_it_once_restarted() {
    let (mut c, sender) = joiner_receiving(KEYS, value).await;
    let half = run_receiver_to_half(&c, 4).await;
    c.kill(sender);
    eprintln!("killed the sender, {sender}, at {half:?}");
    c.resume(4);
    // The receiver notices the session drop itself (not 6 s without a chunk later) ...
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log_text(4).contains("its sender's session is down") {
        assert!(Instant::now() < deadline, "{}", c.log_text(4));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.spawn(sender);
    // ... waits for its sender, and takes the rest of the same stream from it.
    joined(&mut c, KEYS).await.assert_resumed(&half, false);
    assert_eq!(
        get_from(&c, 4, &format!("k{}", KEYS - 1)).await,
        Some(value(KEYS - 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_goes_on_across_a_leader_change() {
    let (mut c, sender) = joiner_receiving(KEYS, value).await;
    let half = run_receiver_to_half(&c, 4).await;
    // 1, 2 and 3 are a quorum of the four members while 4 is stopped.
    let leader = leader_of_three(&c).await;
    let to = [1, 2, 3]
        .into_iter()
        .find(|&p| p != leader && p != sender)
        .unwrap();
    let moved = c
        .client_of(leader, Duration::from_secs(10))
        .move_leader(to)
        .await
        .unwrap_or_else(|e| panic!("move-leader {leader} -> {to}: {e}"));
    eprintln!("leader {leader} -> {to} ({moved:?}) with the transfer from {sender} at {half:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_of_three(&c).await != to {
        assert!(Instant::now() < deadline, "{}", c.dump_logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.resume(4);
    // One stream from start to end (or its resumption): never a fresh one.
    joined(&mut c, KEYS)
        .await
        .assert_never_started_over(&half, false);
}

/// The receiver dies in the middle of switching the received state in (kvd's failpoint
/// `checkpoint-ingest`: its old state emptied, the staged files not yet ingested).
/// Restarted, it finishes the switch from its staged files before its loop starts: it asks
/// for the state no more, and ends with the others' state hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_dies_while_switching_the_state_in_finishes_it_when_restarted() {
    let mut c = Cluster::start(3, Opts::default()).await;
    load_with(&c, KEYS, value).await;
    c.add_node_stopped(4);
    c.spawn_with(4, &[("KVD_FAILPOINT", "checkpoint-ingest:1")]);
    add_four(&c);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.exited(4) {
        assert!(
            Instant::now() < deadline,
            "replica 4 did not reach the failpoint\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.log_text(4)
            .contains("failpoint checkpoint-ingest:1 reached"),
        "replica 4 died, but not at the failpoint\n{}",
        c.log_text(4)
    );
    c.spawn(4);
    serves_the_others_state(&mut c, KEYS).await;
    let log = c.log_text(4);
    assert!(
        log.contains("interrupted checkpoint switch finished"),
        "{log}"
    );
    assert_eq!(
        log.matches("asking for the state (checkpoint)").count(),
        1,
        "{log}"
    );
    assert_eq!(
        get_from(&c, 4, &format!("k{}", KEYS - 1)).await,
        Some(value(KEYS - 1))
    );
}

/// The leader that 1, 2 and 3 all report.
async fn leader_of_three(c: &Cluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for p in [1, 2, 3] {
            seen.push(c.status(p).await.ok().and_then(|s| s.leader));
        }
        if let Some(Some(l)) = seen.first().filter(|l| seen.iter().all(|s| s == *l)) {
            return *l;
        }
        assert!(Instant::now() < deadline, "{seen:?}\n{}", c.dump_logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
