//! Unit tests of the loop, driven by hand: a fake clock (an `Instant` advanced by the test),
//! an in-memory network the test delivers (or drops) frame by frame, and real RocksDB in
//! temporary directories. No processes, no sockets, no sleeps.

use super::{Defect, LoopConfig, Replica, Timers};
use crate::command::{KeyRange, ReadOpts};
use crate::frame::PeerFrame;
use crate::inbox::{ClientRequest, Input, ReadAnswer, WriteAnswer, WriteKind};
use crate::membership::{ClusterMeta, Lifecycle};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::state_machine::{DedupLimits, HistoryLimits};
use crate::storage::Db;
use omnikv_common::api::{ApiError, ErrorCode, ReconfigureRequest, ReconfigureResult};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TICK: Duration = Duration::from_millis(10);

/// Frames in flight, in send order: (from, to, frame).
type Wire = Rc<RefCell<VecDeque<(u64, u64, PeerFrame)>>>;

struct TestPeers {
    pid: u64,
    wire: Wire,
    links: BTreeSet<u64>,
    /// Peers this one reaches (the test cuts and heals).
    reachable: Rc<RefCell<BTreeSet<(u64, u64)>>>,
}

impl Peers for TestPeers {
    fn connect(&mut self, pid: u64, _addr: &str) {
        self.links.insert(pid);
    }
    fn has_link(&self, pid: u64) -> bool {
        self.links.contains(&pid)
    }
    fn is_connected(&self, pid: u64) -> bool {
        self.reachable.borrow().contains(&(self.pid, pid))
    }
    fn send(&mut self, to: u64, frame: PeerFrame) -> bool {
        self.wire.borrow_mut().push_back((self.pid, to, frame));
        true
    }
    /// Streams inline onto the wire, as the simulator does.
    fn stream_checkpoint(
        &mut self,
        to: u64,
        id: u64,
        db: &Db,
        resume: Option<crate::checkpoint::Resume>,
    ) {
        let sink = WireSink {
            from: self.pid,
            to,
            wire: self.wire.clone(),
        };
        crate::checkpoint::stream(db, &sink, to, id, 64 * 1024, resume);
    }
    fn set_cluster_id(&mut self, _cluster_id: u64) {}
}

struct WireSink {
    from: u64,
    to: u64,
    wire: Wire,
}

impl crate::checkpoint::ChunkSink for WireSink {
    fn send_bulk(&self, frame: PeerFrame) -> bool {
        self.wire
            .borrow_mut()
            .push_back((self.from, self.to, frame));
        true
    }
}

/// Replicas of one configuration, stepped together by the test.
struct Cluster {
    now: Instant,
    members: Vec<u64>,
    replicas: BTreeMap<u64, Replica<TestPeers>>,
    metrics: BTreeMap<u64, Arc<Metrics>>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    wire: Wire,
    reachable: Rc<RefCell<BTreeSet<(u64, u64)>>>,
    /// While true, checkpoint requests are held back (in `held`) instead of delivered.
    hold_checkpoints: bool,
    held: Vec<(u64, u64, PeerFrame)>,
}

fn loop_config(
    pid: u64,
    now: Instant,
    defect: Option<Defect>,
    dir: &std::path::Path,
) -> LoopConfig {
    LoopConfig {
        pid,
        cluster_token: "test".into(),
        peer_address: Arc::new(|pid| Some(format!("peer-{pid}"))),
        timers: Timers {
            tick: TICK,
            retry: TICK * 30,
            ..Timers::default()
        },
        election_ticks: 5,
        resend_ticks: 20,
        snapshot_interval: 1000,
        snapshot_keep: 100,
        max_inflight: 100,
        max_apply: 64,
        dedup: DedupLimits {
            ttl_ms: 1 << 40,
            max_records: 1000,
        },
        history: HistoryLimits::default(),
        watch_hub: crate::watch::Hub::new(16, 16, Default::default()),
        data_dir: dir.to_path_buf(),
        min_free_bytes: 0,
        started: now,
        started_unix_ms: 1_700_000_000_000,
        seed: pid,
        defect,
        max_leases: 100,
        legacy_lease_checkpoints: false,
        install_on_thread: false,
    }
}

impl Cluster {
    fn new(members: &[u64]) -> Cluster {
        Cluster::with_defect(members, None)
    }

    fn with_defect(members: &[u64], defect: Option<Defect>) -> Cluster {
        let now = Instant::now();
        let mut c = Cluster {
            now,
            members: members.to_vec(),
            replicas: BTreeMap::new(),
            metrics: BTreeMap::new(),
            dirs: BTreeMap::new(),
            wire: Rc::default(),
            reachable: Rc::default(),
            hold_checkpoints: false,
            held: Vec::new(),
        };
        for &a in members {
            for &b in members {
                if a != b {
                    c.reachable.borrow_mut().insert((a, b));
                }
            }
        }
        for &pid in members {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path()).unwrap();
            let meta = ClusterMeta {
                cluster_id: crate::membership::cluster_id("test", 1, members),
                storage_id: pid,
                pid,
                genesis_config_id: 1,
                genesis_members: members.to_vec(),
                config_id: 1,
                members: members.to_vec(),
                addrs: members.iter().map(|&p| (p, format!("peer-{p}"))).collect(),
                lifecycle: Lifecycle::Serving,
                last_transition: None,
            };
            meta.save_synced(&db).unwrap();
            drop(db);
            c.dirs.insert(pid, dir);
            c.start_replica(pid, defect);
        }
        c
    }

    fn start_replica(&mut self, pid: u64, defect: Option<Defect>) {
        let dir = self.dirs[&pid].path();
        let db = Db::open(dir).unwrap();
        let meta = ClusterMeta::load(&db).unwrap().unwrap();
        let metrics = Arc::new(Metrics::new());
        let peers = TestPeers {
            pid,
            wire: self.wire.clone(),
            links: BTreeSet::new(),
            reachable: self.reachable.clone(),
        };
        let cfg = loop_config(pid, self.now, defect, dir);
        let r = Replica::new(cfg, meta, db, peers, metrics.clone(), self.now).unwrap();
        self.replicas.insert(pid, r);
        self.metrics.insert(pid, metrics);
    }

    /// Starts `pid` as a new, empty replica waiting to be told its configuration (kvd
    /// started with CONFIG_ID > 1 on an empty data dir), reachable from everyone.
    fn add_joiner(&mut self, pid: u64) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        ClusterMeta::joiner(pid, pid).save_synced(&db).unwrap();
        drop(db);
        self.dirs.insert(pid, dir);
        for &other in self.dirs.keys() {
            if other != pid {
                self.reachable.borrow_mut().insert((pid, other));
                self.reachable.borrow_mut().insert((other, pid));
            }
        }
        self.start_replica(pid, None);
    }

    /// Delivers the checkpoint requests held back so far (and no longer holds them).
    fn release_checkpoints(&mut self) {
        self.hold_checkpoints = false;
        self.wire.borrow_mut().extend(self.held.drain(..));
    }

    fn crash(&mut self, pid: u64) {
        self.replicas.remove(&pid);
        self.wire
            .borrow_mut()
            .retain(|(from, to, _)| *from != pid && *to != pid);
    }

    fn isolate(&mut self, pid: u64) {
        self.reachable
            .borrow_mut()
            .retain(|&(a, b)| a != pid && b != pid);
    }

    /// One step: the clock moves one tick, every frame sent so far is delivered (unless its
    /// link is cut), every replica ends an iteration.
    fn step(&mut self) {
        self.now += TICK;
        let frames: Vec<_> = self.wire.borrow_mut().drain(..).collect();
        for (from, to, frame) in frames {
            if !self.reachable.borrow().contains(&(from, to)) {
                continue;
            }
            if self.hold_checkpoints && matches!(frame, PeerFrame::CheckpointRequest { .. }) {
                self.held.push((from, to, frame));
                continue;
            }
            if let Some(r) = self.replicas.get_mut(&to) {
                r.handle(self.now, Input::Peer { from, frame });
            }
        }
        for r in self.replicas.values_mut() {
            r.finish_iteration(self.now);
        }
    }

    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    fn leader(&mut self) -> u64 {
        for _ in 0..300 {
            self.step();
            let leaders: BTreeSet<Option<u64>> =
                self.replicas.values().map(|r| r.current_leader()).collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                return l;
            }
        }
        panic!("no leader elected");
    }

    fn client(&mut self, pid: u64, req: ClientRequest) {
        let now = self.now;
        self.replicas
            .get_mut(&pid)
            .unwrap()
            .handle(now, Input::Client(req));
    }

    fn put(&mut self, pid: u64, key: &str, id: (u64, u64)) -> Rx<WriteAnswer> {
        self.put_within(pid, key, id, 100)
    }

    /// A put whose client waits `ticks` ticks.
    fn put_within(&mut self, pid: u64, key: &str, id: (u64, u64), ticks: u32) -> Rx<WriteAnswer> {
        let (reply, rx) = oneshot::channel();
        let deadline = self.now + TICK * ticks;
        self.client(
            pid,
            ClientRequest::Write {
                kind: WriteKind::Put {
                    key: key.into(),
                    value: b"v".to_vec(),
                },
                id: Some(id),
                deadline,
                reply,
            },
        );
        rx
    }

    fn read(&mut self, pid: u64, key: &str) -> Rx<ReadAnswer> {
        let (reply, rx) = oneshot::channel();
        let deadline = self.now + TICK * 100;
        self.client(
            pid,
            ClientRequest::Read {
                range: KeyRange::Key(key.into()),
                opts: ReadOpts::default(),
                linearizable: true,
                deadline,
                reply,
            },
        );
        rx
    }

    fn reconfigure(
        &mut self,
        pid: u64,
        nodes: &[u64],
        config_id: Option<u32>,
    ) -> Rx<ReconfigureResult> {
        let (reply, rx) = oneshot::channel();
        // Longer than the quorum wait (3 s), as kvctl's reconfigure deadline is.
        let deadline = self.now + TICK * 500;
        let request = ReconfigureRequest {
            nodes: nodes.to_vec(),
            config_id,
            force: false,
            peers: BTreeMap::new(),
        };
        self.client(
            pid,
            ClientRequest::Reconfigure {
                request,
                deadline,
                reply,
            },
        );
        rx
    }
}

type Rx<T> = oneshot::Receiver<Result<T, ApiError>>;

/// The answer, if one came.
fn answer<T>(rx: &mut Rx<T>) -> Option<Result<T, ApiError>> {
    rx.try_recv().ok()
}

fn code<T: std::fmt::Debug>(r: Option<Result<T, ApiError>>) -> ErrorCode {
    match r {
        Some(Err(e)) => e.error.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The decided index of the current configuration on `pid`.
fn decided(c: &Cluster, pid: u64) -> u64 {
    c.replicas[&pid].decided_idx()
}

/// Quorum rounds `pid` has started to confirm reads.
fn read_rounds(c: &Cluster, pid: u64) -> u64 {
    c.replicas[&pid].metrics.read_rounds.get()
}

fn value_of(r: Option<Result<ReadAnswer, ApiError>>) -> Option<Vec<u8>> {
    match r {
        Some(Ok(a)) => a.result.kvs.first().map(|kv| kv.value.clone()),
        other => panic!("expected a read answer, got {other:?}"),
    }
}

#[test]
fn reads_of_one_iteration_share_one_quorum_round_and_write_nothing() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    let before = decided(&c, l);
    let rounds = read_rounds(&c, l);
    // Three reads in one iteration: one round.
    let mut rs: Vec<_> = (0..3).map(|_| c.read(l, "k")).collect();
    c.step();
    // A read that arrives after that round began waits for the next one.
    let mut late = c.read(l, "k");
    for _ in 0..20 {
        c.step();
    }
    for r in &mut rs {
        assert_eq!(value_of(answer(r)), None);
    }
    assert_eq!(value_of(answer(&mut late)), None);
    assert_eq!(
        read_rounds(&c, l) - rounds,
        2,
        "two rounds: one for the three early reads, one for the late read"
    );
    assert_eq!(decided(&c, l), before, "reads appended nothing to the log");
}

#[test]
fn a_read_is_not_answered_before_a_quorum_confirms_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    // The followers hear nothing: no round can be confirmed.
    c.isolate(l);
    let mut r = c.read(l, "k");
    for _ in 0..50 {
        c.step();
        assert!(answer(&mut r).is_none(), "answered without a quorum");
    }
    // Past its deadline it fails, saying why.
    c.steps(60);
    assert_eq!(code(answer(&mut r)), ErrorCode::Unavailable);
}

/// What a deposed leader, which has not heard of its successor and still believes it leads,
/// answers to a read of the key its successor overwrote.
fn read_on_a_deposed_leader(defect: Option<Defect>) -> Result<ReadAnswer, ApiError> {
    let mut c = Cluster::with_defect(&[1, 2, 3], defect);
    let old = c.leader();
    let mut w = c.put(old, "k", (7, 1));
    c.steps(10);
    assert!(matches!(answer(&mut w), Some(Ok(_))));
    c.isolate(old);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&p| p != old).collect();
    for &a in &others {
        for &b in &others {
            if a != b {
                c.reachable.borrow_mut().insert((a, b));
            }
        }
    }
    // The other two elect a leader among themselves and delete k.
    let mut new_leader = None;
    for _ in 0..400 {
        c.step();
        let l = c.replicas[&others[0]].current_leader();
        if l.is_some() && l != Some(old) && l == c.replicas[&others[1]].current_leader() {
            new_leader = l;
            break;
        }
    }
    let new_leader = new_leader.expect("the majority side elected a leader");
    let (reply, mut rx) = oneshot::channel();
    let deadline = c.now + TICK * 100;
    c.client(
        new_leader,
        ClientRequest::Write {
            kind: WriteKind::Delete { key: "k".into() },
            id: Some((7, 2)),
            deadline,
            reply,
        },
    );
    c.steps(20);
    assert!(matches!(answer(&mut rx), Some(Ok(_))));
    assert_eq!(
        c.replicas[&old].current_leader(),
        Some(old),
        "still believes it leads"
    );
    let mut r = c.read(old, "k");
    for _ in 0..150 {
        c.step();
        if let Some(a) = answer(&mut r) {
            return a;
        }
    }
    panic!("the read was never answered");
}

#[test]
fn a_deposed_leader_never_serves_a_stale_value() {
    let a = read_on_a_deposed_leader(None);
    assert!(
        matches!(&a, Err(e) if e.error.code == ErrorCode::Unavailable),
        "the deposed leader answered {a:?}"
    );
    // The same schedule catches a leader that serves before its quorum round: it returns the
    // deleted value.
    let stale = read_on_a_deposed_leader(Some(Defect::ReadBeforeQuorum)).expect("served");
    assert_eq!(
        stale.result.kvs.len(),
        1,
        "the defect served the deleted key"
    );
}

#[test]
fn a_follower_serves_a_linearizable_read_from_its_own_state() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    let f = if l == 1 { 2 } else { 1 };
    c.steps(5);
    let before = decided(&c, l);
    let mut w = c.put(l, "k", (8, 1));
    // The read arrives at the follower right after the leader acknowledged the write.
    let mut r = None;
    for _ in 0..50 {
        c.step();
        if let Some(a) = answer(&mut w) {
            assert!(a.is_ok());
            r = Some(c.read(f, "k"));
            break;
        }
    }
    let mut r = r.expect("the write was acknowledged");
    let mut got = None;
    for _ in 0..50 {
        c.step();
        if let Some(a) = answer(&mut r) {
            got = Some(a);
            break;
        }
    }
    assert_eq!(value_of(got), Some(b"v".to_vec()));
    assert_eq!(read_rounds(&c, f), 0, "the follower led no round");
    assert!(
        read_rounds(&c, l) >= 1,
        "the leader confirmed the follower's read"
    );
    assert_eq!(decided(&c, l), before + 1, "only the write was logged");
}

#[test]
fn a_proposed_write_that_times_out_is_indeterminate() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    c.isolate(l);
    let mut w = c.put(l, "k", (9, 1));
    c.steps(120);
    assert_eq!(
        code(answer(&mut w)),
        ErrorCode::Indeterminate,
        "handed to consensus: it may still be applied"
    );
}

#[test]
fn a_write_without_a_leader_is_unavailable_at_once() {
    let mut c = Cluster::new(&[1, 2, 3]);
    // Before any election: no leader known, nothing handed over.
    let mut w = c.put(1, "k", (9, 1));
    c.step();
    assert_eq!(code(answer(&mut w)), ErrorCode::Unavailable);
}

#[test]
fn a_retried_write_is_applied_once() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    let f = *c.members.iter().find(|&&p| p != l).unwrap();
    let mut a = c.put(l, "k", (5, 1));
    c.steps(10);
    let first = answer(&mut a).unwrap().unwrap();
    // The same (client, seq) again, through a follower: the remembered outcome.
    let mut b = c.put(f, "k", (5, 1));
    c.steps(10);
    let again = answer(&mut b).unwrap().unwrap();
    assert_eq!(first.outcome, again.outcome);
    assert!(
        first.results.is_some(),
        "the first answer carries what the put did"
    );
    assert!(
        again.results.is_none(),
        "the retry is answered from the remembered outcome"
    );
}

#[test]
fn reconfiguration_guards() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    let f = *c.members.iter().find(|&&p| p != l).unwrap();
    c.steps(5);
    let mut cases = vec![
        // Not the next configuration id.
        (
            c.reconfigure(l, &[1, 2, 3, 4], Some(7)),
            ErrorCode::Rejected,
        ),
        // Replaces a majority at once.
        (c.reconfigure(l, &[1, 5, 6], None), ErrorCode::Rejected),
        // Fewer than two members.
        (c.reconfigure(l, &[1], None), ErrorCode::Rejected),
        // Proposed by a follower.
        (
            c.reconfigure(f, &[1, 2, 3, 4], None),
            ErrorCode::Unavailable,
        ),
    ];
    c.step();
    for (rx, want) in &mut cases {
        assert_eq!(code(answer(rx)), *want);
    }
    // The current configuration again, with its id: a retry of what happened: success.
    let mut same = c.reconfigure(l, &[3, 2, 1], Some(1));
    c.step();
    assert_eq!(answer(&mut same).unwrap().unwrap().config_id, 1);
    // With a follower cut off, a new member nobody reaches leaves only 2 of the 4 new
    // members reachable: refused once the quorum wait is over (no --force), though the old
    // configuration still has its quorum.
    c.isolate(f);
    let mut unreachable = c.reconfigure(l, &[1, 2, 3, 4], None);
    c.steps(20);
    assert!(
        answer(&mut unreachable).is_none(),
        "waits for the new members"
    );
    c.steps(400);
    let Some(Err(e)) = answer(&mut unreachable) else {
        panic!("not refused")
    };
    assert_eq!(e.error.code, ErrorCode::Rejected);
    assert!(e.error.message.contains("reachable"), "{}", e.error.message);
}

/// Steps until `f` holds (at most `max` steps).
fn run_until(c: &mut Cluster, max: usize, what: &str, f: impl Fn(&Cluster) -> bool) {
    for _ in 0..max {
        if f(c) {
            return;
        }
        c.step();
    }
    panic!("{what}: not within {max} steps");
}

/// Every replica serves configuration 2 = {1,2,3} at one applied position, revision and
/// state hash, with every key.
fn grown_and_converged(c: &Cluster, keys: &[String]) -> bool {
    let states: Vec<_> = c.replicas.values().map(|r| r.state()).collect();
    c.replicas.values().all(|r| {
        r.meta().lifecycle == Lifecycle::Serving
            && r.meta().config_id == 2
            && r.meta().members == [1, 2, 3]
            && keys.iter().all(|k| r.local_value(k.as_bytes()).is_some())
    }) && states.windows(2).all(|w| w[0] == w[1])
}

/// Puts `k1..=kn` on replica 1 (ids (1, i)), each answered before the next.
fn put_keys(c: &mut Cluster, n: u64) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 1..=n {
        let key = format!("k{i}");
        let mut w = c.put(1, &key, (1, i));
        c.step();
        assert!(matches!(answer(&mut w), Some(Ok(_))), "put {key}");
        keys.push(key);
    }
    keys
}

/// A standalone replica grows into {1,2,3}: the joiners take its state (keys, revision,
/// dedup records), and the grown configuration holds writes back (reads go on) until a
/// majority of it holds the state.
#[test]
fn a_standalone_replica_grows_and_holds_writes_until_a_majority_has_the_state() {
    let mut c = Cluster::new(&[1]);
    c.step();
    let keys = put_keys(&mut c, 20);
    // The guard: the only holder of the state must stay.
    let mut r = c.reconfigure(1, &[2, 3], None);
    c.step();
    let Some(Err(e)) = answer(&mut r) else {
        panic!("growth without replica 1 not refused")
    };
    assert_eq!(e.error.code, ErrorCode::Rejected);
    assert!(
        e.error.message.contains("only one holding"),
        "{:?}",
        e.error
    );
    c.add_joiner(2);
    c.add_joiner(3);
    c.hold_checkpoints = true;
    let mut r = c.reconfigure(1, &[1, 2, 3], None);
    c.steps(2);
    let grown = answer(&mut r).expect("answered").expect("grown");
    assert_eq!((grown.config_id, grown.members), (2, vec![1, 2, 3]));
    assert_eq!(c.leader(), 1, "the replica holding the state leads");
    assert!(c.replicas[&2].meta().lifecycle == Lifecycle::Joining);
    // Nobody else holds the state: a write waits, a read is answered.
    let mut w = c.put_within(1, "during", (2, 1), 400);
    let mut rd = c.read(1, "k7");
    c.steps(60);
    assert!(answer(&mut w).is_none(), "a write went ahead of the state");
    assert!(c.replicas[&1].local_value(b"during").is_none());
    let read = answer(&mut rd).expect("read answered").expect("read ok");
    assert_eq!(read.result.kvs.len(), 1);
    // The joiners take the state; once one acknowledges it, the write goes ahead.
    c.release_checkpoints();
    run_until(&mut c, 300, "the held write answered", |c| {
        c.replicas[&1].local_value(b"during").is_some()
    });
    c.step();
    assert!(matches!(answer(&mut w), Some(Ok(_))));
    let mut all = keys.clone();
    all.push("during".into());
    run_until(&mut c, 300, "converged", |c| grown_and_converged(c, &all));
    // The dedup records came along: a retry of a write from before the growth, on a
    // joiner, is answered from its record (applied in configuration 1), not applied again.
    let revision = c.replicas[&2].state().revision;
    let mut retry = c.put(2, "k5", (1, 5));
    c.steps(60);
    let again = answer(&mut retry).expect("answered").expect("ok");
    assert_eq!(again.outcome.config_id, 1, "{again:?}");
    assert!(again.results.is_none(), "replayed: {again:?}");
    assert_eq!(c.replicas[&2].state().revision, revision);
}

/// The standalone replica crashes mid-growth (its StopSign stored, the switch not yet
/// persisted) and finishes the growth by itself on restart; then it restarts again while
/// writes are held back, and a joiner restarts once it holds the state: no write is lost
/// and all three converge.
#[test]
fn growth_survives_restarts_of_the_single_replica_and_of_a_joiner() {
    let mut c = Cluster::new(&[1]);
    c.step();
    let mut keys = put_keys(&mut c, 10);
    c.add_joiner(2);
    c.add_joiner(3);
    c.hold_checkpoints = true;
    let _r = c.reconfigure(1, &[1, 2, 3], None);
    crate::failpoint::unwind_at(Some("switch"));
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.step())).is_err();
    crate::failpoint::unwind_at(None);
    assert!(crashed, "the switch was not reached");
    c.crash(1);
    c.start_replica(1, None);
    assert_eq!(
        c.replicas[&1].meta().config_id,
        1,
        "the switch was not persisted"
    );
    run_until(&mut c, 50, "the growth finished after the restart", |c| {
        c.replicas[&1].meta().config_id == 2
    });
    assert_eq!(c.leader(), 1);
    // Restarted while the write is held back: it holds writes back again.
    let mut lost = c.put_within(1, "lost-with-the-crash", (2, 1), 400);
    c.steps(20);
    assert!(answer(&mut lost).is_none());
    c.crash(1);
    c.start_replica(1, None);
    c.leader();
    let mut w = c.put_within(1, "after-restart", (2, 2), 400);
    c.steps(60);
    assert!(
        answer(&mut w).is_none(),
        "a write went ahead of the state after a restart"
    );
    c.release_checkpoints();
    run_until(&mut c, 300, "joiners serving", |c| {
        c.replicas
            .values()
            .all(|r| r.meta().lifecycle == Lifecycle::Serving)
    });
    // A joiner holding the state restarts.
    c.crash(3);
    c.start_replica(3, None);
    run_until(&mut c, 300, "the held write answered", |c| {
        c.replicas[&1].local_value(b"after-restart").is_some()
    });
    c.step();
    assert!(matches!(answer(&mut w), Some(Ok(_))));
    keys.push("after-restart".into());
    run_until(&mut c, 300, "converged", |c| grown_and_converged(c, &keys));
    let mut w = c.put(3, "on-a-joiner", (3, 1));
    run_until(&mut c, 100, "written through a joiner", |c| {
        c.replicas
            .values()
            .all(|r| r.local_value(b"on-a-joiner").is_some())
    });
    c.step();
    assert!(matches!(answer(&mut w), Some(Ok(_))));
}

/// A leader restarted alone: its recovered promise is its own ballot, which nobody leads any
/// more. After the grace rounds it runs for a higher ballot (`StaleOwnBallot`), once.
#[test]
fn a_restart_behind_its_own_ballot_runs_for_a_higher_one() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    c.crash(l);
    c.isolate(l);
    c.start_replica(l, None);
    // Within the grace rounds (3 election rounds of 5 ticks) it waits.
    c.steps(10);
    assert_eq!(c.metrics[&l].workaround_count("stale_own_ballot"), 0);
    c.steps(10);
    assert_eq!(
        c.metrics[&l].workaround_count("stale_own_ballot"),
        1,
        "runs for a higher ballot once"
    );
    // A restart that hears a higher ballot within the grace rounds does not.
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.crash(l);
    c.steps(40); // the others elect a leader with a higher ballot
    c.start_replica(l, None);
    c.steps(40);
    assert_eq!(c.metrics[&l].workaround_count("stale_own_ballot"), 0);
    assert_ne!(c.replicas[&l].current_leader(), Some(l));
}

/// A replica joining configuration 2 without state, restarted (so it remembers no announcer),
/// whose members cannot give it the state: the replica that left the old configuration and
/// re-announces the change is the one it must ask for a checkpoint.
#[test]
fn a_joiner_asks_the_replica_that_announces_the_change() {
    use crate::frame::{Announcement, Transition};
    let now = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let t = Transition {
        from_config: 1,
        end_idx: 5,
        config_id: 2,
        members: vec![1, 2, 4],
        addrs: [1, 2, 3, 4]
            .iter()
            .map(|&p| (p, format!("peer-{p}")))
            .collect(),
    };
    let meta = ClusterMeta {
        cluster_id: 7,
        storage_id: 4,
        pid: 4,
        genesis_config_id: 1,
        genesis_members: vec![1, 2, 3],
        config_id: 2,
        members: vec![1, 2, 4],
        addrs: t.addrs.clone(),
        lifecycle: Lifecycle::Joining,
        last_transition: Some(t.clone()),
    };
    meta.save_synced(&db).unwrap();
    let wire: Wire = Rc::default();
    // Only the replica that left (3) is reachable; the members are down.
    let reachable: Rc<RefCell<BTreeSet<(u64, u64)>>> = Rc::default();
    reachable.borrow_mut().insert((4, 3));
    let peers = TestPeers {
        pid: 4,
        wire: wire.clone(),
        links: BTreeSet::new(),
        reachable,
    };
    let cfg = loop_config(4, now, None, dir.path());
    let metrics = Arc::new(Metrics::new());
    let mut r = Replica::new(cfg, meta, db, peers, metrics, now).unwrap();
    let asked_3 = |wire: &Wire| {
        wire.borrow().iter().any(|(_, to, f)| {
            *to == 3 && matches!(f, PeerFrame::CheckpointRequest { config_id: 2, .. })
        })
    };
    let mut at = now;
    for _ in 0..10 {
        at += TICK;
        r.finish_iteration(at);
    }
    assert!(!asked_3(&wire), "nobody announced anything yet");
    let announcement = PeerFrame::NewConfig(Announcement {
        cluster_id: 7,
        genesis_config_id: 1,
        genesis_members: vec![1, 2, 3],
        transition: t,
    });
    r.handle(
        at,
        Input::Peer {
            from: 3,
            frame: announcement,
        },
    );
    for _ in 0..400 {
        at += TICK;
        r.finish_iteration(at);
        if asked_3(&wire) {
            break;
        }
    }
    assert!(
        asked_3(&wire),
        "the joiner never asked the replica that announced the change"
    );
    let acked = wire.borrow().iter().any(|(_, to, f)| {
        *to == 3
            && matches!(
                f,
                PeerFrame::NewConfigAck {
                    config_id: 2,
                    holds_state: false
                }
            )
    });
    assert!(acked, "the announcement is acknowledged without state");
}

// ---- leader hand-off (handoff.rs) ---------------------------------------------------------

fn move_leader(c: &mut Cluster, pid: u64, to: u64) -> Rx<omnikv_common::MoveLeaderResult> {
    let (reply, rx) = oneshot::channel();
    let deadline = c.now + TICK * 200;
    c.client(
        pid,
        ClientRequest::MoveLeader {
            to,
            deadline,
            reply,
        },
    );
    rx
}

/// What the process does on SIGTERM: `Input::Drain` to `pid` (200 ticks to hand over).
fn drain(c: &mut Cluster, pid: u64) -> oneshot::Receiver<super::Drained> {
    let (reply, rx) = oneshot::channel();
    let deadline = c.now + TICK * 200;
    let now = c.now;
    c.replicas
        .get_mut(&pid)
        .unwrap()
        .handle(now, Input::Drain { deadline, reply });
    rx
}

/// Steps until `rx` is answered; the answer and the steps it took.
fn step_until<T>(c: &mut Cluster, rx: &mut oneshot::Receiver<T>, most: usize) -> (T, usize) {
    for i in 1..=most {
        c.step();
        if let Ok(v) = rx.try_recv() {
            return (v, i);
        }
    }
    panic!("no answer within {most} steps");
}

#[test]
fn move_leader_hands_over_faster_than_an_election_and_loses_no_write() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    let t = *c.members.iter().rev().find(|&&p| p != l).unwrap();
    // Writes in flight across the hand-off, queued in the same iteration as the request.
    let mut writes: Vec<_> = (1..=5)
        .map(|i| c.put(l, &format!("a{i}"), (11, i)))
        .collect();
    let mut mv = move_leader(&mut c, l, t);
    let (moved, steps) = step_until(&mut c, &mut mv, 100);
    let moved = moved.unwrap();
    assert_eq!((moved.leader, moved.previous), (t, l));
    // An election takes at least two rounds of 5 ticks (one to miss the leader, one to take
    // over); the hand-off is a few message hops.
    assert!(steps < 10, "hand-off took {steps} steps");
    c.steps(20);
    for (i, w) in writes.iter_mut().enumerate() {
        assert!(
            matches!(answer(w), Some(Ok(_))),
            "write {} in flight across the hand-off",
            i + 1
        );
    }
    for (pid, r) in &c.replicas {
        assert_eq!(r.current_leader(), Some(t), "replica {pid} follows {t}");
    }
    // Writes go on, through the new leader and through the old one (now a follower).
    let mut via_new = c.put(t, "b1", (12, 1));
    let mut via_old = c.put(l, "b2", (12, 2));
    c.steps(20);
    assert!(matches!(answer(&mut via_new), Some(Ok(_))));
    assert!(matches!(answer(&mut via_old), Some(Ok(_))));
    for k in ["a1", "a5", "b1", "b2"] {
        assert!(c.replicas[&t].local_value(k.as_bytes()).is_some(), "{k}");
    }
}

#[test]
fn move_leader_guards() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    let f = *c.members.iter().find(|&&p| p != l).unwrap();
    let mut not_member = move_leader(&mut c, l, 7);
    let mut on_follower = move_leader(&mut c, f, f);
    let mut to_itself = move_leader(&mut c, l, l);
    c.step();
    for (rx, want, says) in [
        (&mut not_member, ErrorCode::Rejected, "not a member"),
        (&mut on_follower, ErrorCode::Unavailable, "not the leader"),
    ] {
        let e = answer(rx).unwrap().unwrap_err();
        assert_eq!(e.error.code, want, "{}", e.error.message);
        assert!(e.error.message.contains(says), "{}", e.error.message);
    }
    let same = answer(&mut to_itself).unwrap().unwrap();
    assert_eq!((same.leader, same.previous), (l, l));
    // A member the leader does not reach: unavailable at once.
    c.isolate(f);
    let mut unreachable = move_leader(&mut c, l, f);
    c.step();
    assert_eq!(code(answer(&mut unreachable)), ErrorCode::Unavailable);
}

#[test]
fn a_draining_leader_hands_over_to_a_reachable_member_and_refuses_new_requests() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    let others: Vec<u64> = c.members.iter().copied().filter(|&p| p != l).collect();
    // One follower is cut off: the drain must pick the other.
    c.isolate(others[0]);
    let mut inflight = c.put(l, "k1", (21, 1));
    let mut drained = drain(&mut c, l);
    let mut refused = c.put(l, "k2", (21, 2));
    let mut refused_read = c.read(l, "k1");
    let (outcome, steps) = step_until(&mut c, &mut drained, 100);
    match outcome {
        super::Drained::HandedTo { to, .. } => assert_eq!(to, others[1]),
        other => panic!("drain ended {other:?}"),
    }
    assert!(steps < 10, "hand-off took {steps} steps");
    assert_eq!(code(answer(&mut refused)), ErrorCode::Unavailable);
    assert_eq!(code(answer(&mut refused_read)), ErrorCode::Unavailable);
    c.steps(10);
    assert!(
        matches!(answer(&mut inflight), Some(Ok(_))),
        "a write in flight when the drain began is applied and answered"
    );
    // The old leader stops; the new one serves with the remaining member.
    c.crash(l);
    c.reachable.borrow_mut().clear();
    for &a in &others {
        for &b in &others {
            if a != b {
                c.reachable.borrow_mut().insert((a, b));
            }
        }
    }
    let mut after = c.put(others[1], "k3", (22, 1));
    c.steps(20);
    assert!(matches!(answer(&mut after), Some(Ok(_))));
}

#[test]
fn a_draining_follower_has_nothing_to_hand_over() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.leader();
    c.steps(5);
    let f = *c.members.iter().find(|&&p| p != l).unwrap();
    let mut drained = drain(&mut c, f);
    assert_eq!(drained.try_recv().unwrap(), super::Drained::NotLeading);
    c.steps(20);
    assert_eq!(c.replicas[&f].current_leader(), Some(l), "nothing moved");
}
