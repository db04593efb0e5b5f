//! The simulated world: N replicas (OmniPaxos over kvd's `LogStore` on a real RocksDB, plus
//! kvd's `StateMachine`) driven in one thread, step by step, over a seeded network.
//!
//! Each replica's step mirrors one iteration of kvd's consensus loop (`replica.rs`
//! `finish_iteration`): handle delivered frames and session events, tick, propose, apply
//! decided entries with one cursor (catching up from peers or a checkpoint when the compacted
//! index passed it), detect a decided StopSign from storage, sync, send, compact locally.
//! The rules (frame filtering by configuration, catch-up, checkpoints, stragglers, restarts)
//! follow replica.rs; the step is the unit of time (kvd's timeouts become step counts).
//!
//! Everything random comes from one `StdRng` seeded by the seed: a run is a function of it.

use kvd::checkpoint;
use kvd::codec::encode;
use kvd::command::{LogCmd, Op, ReqId};
use kvd::frame::{crc_items, CheckpointItem, Transition};
use kvd::membership::{
    decided_stopsign, fix_stopsign_resync, stored_stopsign, ClusterMeta, Lifecycle, StopSignResync,
};
use kvd::replica::{stopsign_pending, StaleOwnBallot, StopSignStall};
use kvd::state_machine::{
    pair_hash, Applied, DedupLimits, Outcome, Position, SmMeta, StateMachine,
};
use kvd::storage::{read_log_meta, read_log_range, Db, LogStore, CF_DEDUP, CF_KV, CF_META};
use omnipaxos::messages::sequence_paxos::PaxosMsg;
use omnipaxos::messages::Message;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::rc::Rc;

type Paxos = OmniPaxos<LogCmd, LogStore>;

// kvd's loop constants, in steps (one step = one loop iteration = one tick here).
const MAX_APPLY: u64 = 32;
const CATCHUP_TIMEOUT: u64 = 10;
const CHECKPOINT_RETRY: u64 = 3;
const ANNOUNCE_EVERY: u64 = 5;
const STRAGGLER_EVERY: u64 = 10;
const STRAGGLE_GRACE: u64 = 20;
const CLIENT_RETRY: u64 = 30;
const RECONFIG_RETRY: u64 = 15;
const CHUNK_ITEMS: usize = 16;

/// A deliberate defect, to show that the checks can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Replica `pid` applies its first Put (at or after `after` applied entries) with a
    /// corrupted value.
    CorruptApply { pid: u64, after: u64 },
    /// The apply loop trusts the library's compaction: when the compacted index passes the
    /// cursor it jumps the cursor there (as if the Snapshotted payload held the state).
    TrustLibrarySnapshot,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub n: usize,
    /// Steps with random faults (0 for scripted scenarios).
    pub steps: u64,
    /// Upper bound of the healing phase (liveness).
    pub settle_steps: u64,
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub p_propose: f64,
    pub p_drop: f64,
    pub p_dup: f64,
    pub max_delay: u64,
    /// Let frames overtake earlier frames on the same link (kvd's TCP sessions never do).
    pub reorder_in_link: bool,
    pub p_crash: f64,
    pub p_restart: f64,
    pub p_partition: f64,
    pub p_heal: f64,
    pub p_reconfig: f64,
    pub max_reconfigs: u32,
    pub election_ticks: u64,
    pub resend_ticks: u64,
    pub dedup: DedupLimits,
    pub mutation: Option<Mutation>,
    /// Take the instance's outgoing messages after every handled Paxos message (sent, as
    /// always, only after the step's sync), as kvd's loop does. `false` models the loop from
    /// before that fix, which took them once per iteration and so let OmniPaxos 0.2.4 extend
    /// a stale AcceptDecide after an AcceptSync to the same follower (decided entries then
    /// differ: regressions.rs).
    pub drain_per_message: bool,
    /// Run for a higher ballot when a restarted replica's recovered promise of its own ballot
    /// outlives the grace rounds, as kvd does (`kvd::replica::StaleOwnBallot`). `false` models
    /// the loop from before, where such a replica could wait behind that ballot forever
    /// (regressions.rs, seed 914).
    pub stale_own_ballot_rule: bool,
    /// A leader whose StopSign stays undecided runs for a higher ballot, as kvd does
    /// (`kvd::replica::StopSignStall`). `false` models the loop from before (regressions.rs,
    /// seed 488).
    pub stopsign_stall_rule: bool,
    /// Correct every incoming re-sync over a stored StopSign for the OmniPaxos 0.2.4
    /// off-by-one (`kvd::membership::fix_stopsign_resync`), as kvd's loop does, and check that
    /// each replica's accepted index stays on its stored log (+ StopSign) with the decided
    /// index not past it. `false` models the loop from before that fix (seed 632 then panics the
    /// library: regressions.rs).
    pub fix_stopsign_sync: bool,
    /// Serve a fetch up to a decided StopSign (the entries before it), as kvd does. `false`
    /// models `serve_fetch` from before: a range up to the decided index, which counts the
    /// StopSign although it holds no entry, was refused (regressions.rs, seed 632).
    pub fetch_to_stopsign: bool,
}

impl Params {
    /// Quiet defaults for scripted scenarios: no random faults, small delays.
    pub fn scripted(n: usize) -> Params {
        Params {
            n,
            steps: 0,
            settle_steps: 600,
            snapshot_interval: 5,
            snapshot_keep: 20,
            p_propose: 0.0,
            p_drop: 0.0,
            p_dup: 0.0,
            max_delay: 1,
            reorder_in_link: false,
            p_crash: 0.0,
            p_restart: 0.0,
            p_partition: 0.0,
            p_heal: 0.0,
            p_reconfig: 0.0,
            max_reconfigs: 0,
            election_ticks: 5,
            resend_ticks: 20,
            dedup: DedupLimits {
                ttl_ms: 1 << 40,
                max_records: 10_000,
            },
            mutation: None,
            drain_per_message: false,
            stale_own_ballot_rule: true,
            stopsign_stall_rule: true,
            fix_stopsign_sync: true,
            fetch_to_stopsign: true,
        }
    }

    /// A random schedule's parameters, drawn from the seed.
    pub fn random(rng: &mut StdRng) -> Params {
        let mut p = Params::scripted(if rng.random_bool(0.15) { 5 } else { 3 });
        p.steps = rng.random_range(40..120);
        p.snapshot_interval = [2, 3, 5, 10][rng.random_range(0..4)];
        p.snapshot_keep = [0, 1, 3, 10, 40][rng.random_range(0..5)];
        p.p_propose = rng.random_range(0.2..0.9);
        p.p_drop = [0.0, 0.01, 0.05, 0.15][rng.random_range(0..4)];
        // Duplicates and in-link reordering are off: kvd's peer links are TCP sessions
        // (FIFO, no duplicates), and OmniPaxos 0.2.4 can stall a follower forever when a stale
        // PrepareReq overtakes its Promise (see the report in issue 7). Frames of different
        // links still interleave freely.
        p.p_dup = 0.0;
        p.max_delay = rng.random_range(0..=2);
        p.p_crash = [0.0, 0.01, 0.03][rng.random_range(0..3)];
        p.p_restart = 0.1;
        p.p_partition = [0.0, 0.01, 0.03][rng.random_range(0..3)];
        p.p_heal = 0.08;
        p.p_reconfig = [0.0, 0.01, 0.02][rng.random_range(0..3)];
        p.max_reconfigs = 2;
        // Small caps make dedup eviction (and refusal of too-old retries) happen.
        p.dedup = DedupLimits {
            ttl_ms: [1 << 40, 3_000][rng.random_range(0..2)],
            max_records: [16, 10_000][rng.random_range(0..2)],
        };
        p
    }
}

/// Why a run failed: a safety or liveness violation (or a panic, caught by the runner).
pub type Violation = String;

#[derive(Clone, Debug)]
pub enum Payload {
    Paxos(Message<LogCmd>),
    Fetch {
        from: u64,
        to: u64,
    },
    Entries {
        from: u64,
        entries: Vec<LogCmd>,
    },
    Unavailable {
        from: u64,
        applied: u64,
    },
    CkptRequest {
        id: u64,
        config_id: u32,
    },
    Ckpt {
        id: u64,
        chunks: Vec<Vec<CheckpointItem>>,
        crc: u32,
        meta: SmMeta,
    },
    CkptRefused {
        id: u64,
    },
    NewConfig(Transition),
    NewConfigAck {
        config_id: u32,
        holds: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Msg {
    pub at: u64,
    pub seq: u64,
    pub from: u64,
    pub to: u64,
    pub config: u32,
    pub p: Payload,
}

impl Msg {
    /// The configuration id the frame carries, where kvd's `PeerFrame::config_id` has one.
    fn frame_config(&self) -> Option<u32> {
        match self.p {
            Payload::Paxos(_)
            | Payload::Fetch { .. }
            | Payload::Entries { .. }
            | Payload::Unavailable { .. } => Some(self.config),
            _ => None,
        }
    }

    pub fn is_decide(&self) -> bool {
        matches!(&self.p, Payload::Paxos(Message::SequencePaxos(m)) if matches!(m.msg, PaxosMsg::Decide(_)))
    }

    pub fn describe(&self) -> String {
        let what = match &self.p {
            Payload::Paxos(Message::SequencePaxos(m)) => {
                let mut s = format!("{:?}", m.msg);
                s.truncate(if std::env::var("OMNIKV_SIM_LONG").is_ok() {
                    4000
                } else {
                    90
                });
                s
            }
            Payload::Paxos(Message::BLE(m)) => {
                let mut s = format!("BLE {:?}", m.msg);
                s.truncate(60);
                s
            }
            Payload::Fetch { from, to } => format!("Fetch [{from},{to})"),
            Payload::Entries { from, entries } => format!("Entries {from}+{}", entries.len()),
            Payload::Unavailable { from, applied } => {
                format!("Unavailable from {from} (applied {applied})")
            }
            Payload::CkptRequest { id, config_id } => format!("CkptRequest {id:x} c{config_id}"),
            Payload::Ckpt { id, meta, .. } => format!("Ckpt {id:x} at {:?}", meta.applied),
            Payload::CkptRefused { id } => format!("CkptRefused {id:x}"),
            Payload::NewConfig(t) => format!(
                "NewConfig c{}->c{}@{}",
                t.from_config, t.config_id, t.end_idx
            ),
            Payload::NewConfigAck { config_id, holds } => {
                format!("NewConfigAck c{config_id} holds={holds}")
            }
        };
        format!("{}->{} c{} {what}", self.from, self.to, self.config)
    }
}

/// Counters reported per seed.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub heals: u64,
    pub reconnected: u64,
    pub reconnect_skipped_stopsign: u64,
    pub proposals: u64,
    pub acked: u64,
    pub refused_too_old: u64,
    pub reconfigs: u64,
    pub switches: u64,
    /// Switches where storage saw the decided StopSign but `is_reconfigured()` did not.
    pub stopsign_bug_hits: u64,
    /// Incoming re-syncs over a stored StopSign corrected, emptied or dropped
    /// (`fix_stopsign_resync`).
    pub stopsign_resyncs_fixed: u64,
    pub joins_as_new: u64,
    /// The library compacted a replica's log on its own (not our `snapshot` call).
    pub lib_compactions: u64,
    /// ... past that replica's applied cursor.
    pub lib_compactions_past_cursor: u64,
    pub local_compactions: u64,
    pub catchups: u64,
    pub fetched_entries: u64,
    pub checkpoints: u64,
    pub leader_changes: u64,
    /// Restarted replicas that ran for a higher ballot than their own recovered one.
    pub stale_own_ballot: u64,
    /// Leaders that ran for a higher ballot because their StopSign was not decided.
    pub stopsign_stalls: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        sum!(
            steps,
            sent,
            delivered,
            dropped,
            duplicated,
            crashes,
            restarts,
            partitions,
            heals,
            reconnected,
            reconnect_skipped_stopsign,
            proposals,
            acked,
            refused_too_old,
            reconfigs,
            switches,
            stopsign_bug_hits,
            stopsign_resyncs_fixed,
            joins_as_new,
            lib_compactions,
            lib_compactions_past_cursor,
            local_compactions,
            catchups,
            fetched_entries,
            checkpoints,
            leader_changes,
            stale_own_ballot,
            stopsign_stalls
        );
    }
}

#[derive(Clone, Debug)]
struct ClientReq {
    op: Op,
    next_try: u64,
    done: bool,
    /// Part of the end-of-run presence check (keys written once).
    unique: bool,
}

/// A replica's per-pid counters (scenarios assert on them).
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub fetched_entries: u64,
    pub checkpoints: u64,
    pub catchups: u64,
    pub lib_compactions_past_cursor: u64,
    pub stopsign_bug_hits: u64,
    pub switches: u64,
    pub leader_while_behind: u64,
}

/// A scripted drop rule: true = drop the message.
pub type Filter = Box<dyn FnMut(&Msg) -> bool>;

/// Everything but the replicas: network, clients, checker, trace.
pub struct Env {
    pub p: Params,
    pub rng: StdRng,
    pub step: u64,
    net: Vec<Msg>,
    msg_seq: u64,
    /// Latest delivery step scheduled per directed link (FIFO links).
    link_last: BTreeMap<(u64, u64), u64>,
    /// Cut links, as (low pid, high pid).
    cut: BTreeSet<(u64, u64)>,
    up: Vec<bool>,
    /// (to, peer): sessions that came back, for `reconnected()`.
    peer_up: Vec<(u64, u64)>,
    clients: BTreeMap<(u64, u64), ClientReq>,
    next_seq: u64,
    /// Scripted drop rule: true = drop this message.
    pub filter: Option<Filter>,
    // The checker's knowledge.
    decided: BTreeMap<(u32, u64), u64>,
    hashes: BTreeMap<Position, (u64, u64)>,
    outcomes: BTreeMap<(u64, u64), Outcome>,
    acked: BTreeMap<(u64, u64), (Vec<u8>, Vec<u8>)>,
    transitions: BTreeMap<u32, (u64, u32)>,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub node_stats: Vec<NodeStats>,
    pub trace: Rc<RefCell<Vec<String>>>,
    pub verbose: bool,
    corrupted: bool,
}

impl Env {
    pub fn log(&self, line: impl AsRef<str>) {
        let mut t = self.trace.borrow_mut();
        if t.len() < 200_000 {
            t.push(format!("[{:>4}] {}", self.step, line.as_ref()));
        }
    }

    fn link_ok(&self, a: u64, b: u64) -> bool {
        a == b || !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        a != b && self.up[b as usize] && self.up[a as usize] && self.link_ok(a, b)
    }

    fn send(&mut self, from: u64, to: u64, config: u32, p: Payload) {
        self.stats.sent += 1;
        let mut copies = 1;
        if self.p.p_drop > 0.0 && self.rng.random_bool(self.p.p_drop) {
            copies = 0;
        } else if self.p.p_dup > 0.0 && self.rng.random_bool(self.p.p_dup) {
            copies = 2;
            self.stats.duplicated += 1;
        }
        if copies == 0 || !self.link_ok(from, to) || !self.up[to as usize] {
            self.stats.dropped += 1;
            if self.verbose {
                let m = Msg {
                    at: 0,
                    seq: 0,
                    from,
                    to,
                    config,
                    p,
                };
                self.log(format!("drop {}", m.describe()));
            }
            return;
        }
        for _ in 0..copies {
            let delay = if self.p.max_delay == 0 {
                0
            } else {
                self.rng.random_range(0..=self.p.max_delay)
            };
            self.msg_seq += 1;
            let mut at = self.step + 1 + delay;
            if !self.p.reorder_in_link {
                let last = self.link_last.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            let m = Msg {
                at,
                seq: self.msg_seq,
                from,
                to,
                config,
                p: p.clone(),
            };
            if let Some(f) = &mut self.filter {
                if f(&m) {
                    self.stats.dropped += 1;
                    if self.verbose {
                        self.log(format!("filtered {}", m.describe()));
                    }
                    continue;
                }
            }
            self.net.push(m);
        }
    }

    fn violation(&mut self, v: String) {
        self.log(format!("VIOLATION {v}"));
        self.violations.push(v);
    }

    /// Records a decided (or applied) entry: one value per (configuration, index).
    fn check_entry(&mut self, who: &str, pid: u64, config: u32, idx: u64, e: &LogCmd) {
        let d = pair_hash(b"entry", &encode(e));
        match self.decided.get(&(config, idx)) {
            Some(&old) if old != d => self.violation(format!(
                "replica {pid} {who} entry c{config}#{idx} = {e:?}, differs from what another replica decided"
            )),
            Some(_) => {}
            None => {
                self.decided.insert((config, idx), d);
            }
        }
    }

    fn check_state(&mut self, pid: u64, m: &SmMeta, how: &str) {
        match self.hashes.get(&m.applied) {
            Some(&(h, k)) if (h, k) != (m.hash, m.keys) => self.violation(format!(
                "replica {pid} ({how}) at {:?} has state hash {:x} ({} keys), another replica had {h:x} ({k} keys)",
                m.applied, m.hash, m.keys
            )),
            Some(_) => {}
            None => {
                self.hashes.insert(m.applied, (m.hash, m.keys));
            }
        }
    }
}

pub enum CatchUp {
    Fetching {
        asked: u64,
        next_ask: u64,
        unavailable: BTreeMap<u64, u64>,
    },
    Checkpoint {
        rx: checkpoint::Receiver,
        last_progress: u64,
    },
}

struct Announcing {
    t: Transition,
    pending: BTreeSet<u64>,
    next_push: u64,
}

pub struct Node {
    pub pid: u64,
    dir: tempfile::TempDir,
    pub db: Option<Db>,
    pub op: Option<Box<Paxos>>,
    pub sm: Option<StateMachine>,
    pub meta: ClusterMeta,
    pub catchup: Option<CatchUp>,
    stale_own_ballot: Option<StaleOwnBallot>,
    stopsign_stall: StopSignStall,
    straggling: Option<(Transition, u64)>,
    announcing: Option<Announcing>,
    stragglers_told: BTreeMap<u64, u64>,
    to_propose: Vec<Op>,
    outbox: Vec<Message<LogCmd>>,
    /// Messages of a configuration just left, sent after the step under its id (as kvd).
    retired: Vec<(u32, Message<LogCmd>)>,
    /// Decided entries already shown to the checker: (config, next index).
    observed: (u32, u64),
    leader: Option<u64>,
    rr: usize,
}

fn build_log(p: &Params, db: &Db, pid: u64, config_id: u32, members: &[u64], holds: bool) -> Paxos {
    let store = LogStore::open(db.clone(), config_id).expect("open log store");
    OmniPaxosConfig {
        cluster_config: ClusterConfig {
            configuration_id: config_id,
            nodes: members.to_vec(),
            flexible_quorum: None,
        },
        server_config: ServerConfig {
            pid,
            election_tick_timeout: p.election_ticks,
            resend_message_tick_timeout: p.resend_ticks,
            batch_size: 1,
            flush_batch_tick_timeout: 1,
            buffer_size: 1024,
            leader_priority: u32::from(holds),
        },
    }
    .build(store)
    .expect("valid OmniPaxos config")
}

impl Node {
    fn new(pid: u64, members: &[u64], base: &Path) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("omnikv-sim-")
            .tempdir_in(base)
            .expect("tempdir");
        let db = Db::open(dir.path()).expect("open rocksdb");
        let meta = ClusterMeta {
            cluster_id: 1,
            storage_id: pid,
            pid,
            genesis_config_id: 1,
            genesis_members: members.to_vec(),
            config_id: 1,
            members: members.to_vec(),
            addrs: BTreeMap::new(),
            lifecycle: Lifecycle::Serving,
            last_transition: None,
        };
        meta.save_synced(&db).expect("save meta");
        Node {
            pid,
            dir,
            db: Some(db),
            op: None,
            sm: None,
            meta,
            catchup: None,
            stale_own_ballot: None,
            stopsign_stall: StopSignStall::default(),
            straggling: None,
            announcing: None,
            stragglers_told: BTreeMap::new(),
            to_propose: Vec::new(),
            outbox: Vec::new(),
            retired: Vec::new(),
            observed: (1, 0),
            leader: None,
            rr: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.db.is_some()
    }

    fn db(&self) -> &Db {
        self.db.as_ref().expect("replica is up")
    }

    pub fn sm(&self) -> &StateMachine {
        self.sm.as_ref().expect("replica is up")
    }

    fn sm_mut(&mut self) -> &mut StateMachine {
        self.sm.as_mut().expect("replica is up")
    }

    pub fn decided_idx(&self) -> u64 {
        self.op.as_ref().map_or(0, |op| op.get_decided_idx() as u64)
    }

    pub fn compacted_idx(&self) -> u64 {
        self.op
            .as_ref()
            .map_or(0, |op| op.get_compacted_idx() as u64)
    }

    pub fn current_leader(&self) -> Option<u64> {
        self.op
            .as_ref()
            .and_then(|op| op.get_current_leader())
            .map(|(p, _)| p)
    }

    pub fn config_id(&self) -> u32 {
        self.meta.config_id
    }

    /// Crash: drop everything in memory and close RocksDB. Every write so far was synced at
    /// the end of the replica's last step (kvd syncs before anything leaves), so nothing
    /// durable is lost and nothing unsynced was ever observed by a peer.
    fn crash(&mut self) {
        self.op = None;
        self.sm = None;
        self.db = None;
        self.catchup = None;
        self.stale_own_ballot = None;
        self.stopsign_stall = StopSignStall::default();
        self.straggling = None;
        self.announcing = None;
        self.stragglers_told.clear();
        self.to_propose.clear();
        self.outbox.clear();
        self.retired.clear();
        self.leader = None;
    }

    /// Start (or restart) from what is persisted, as `Replica::new` does.
    fn start(&mut self, env: &mut Env) {
        let db = match self.db.take() {
            Some(db) => db, // first start: the store was just created
            None => Db::open(self.dir.path()).expect("reopen rocksdb"),
        };
        checkpoint::resume_interrupted_install(&db).expect("resume install");
        let mut sm = StateMachine::load(db.clone(), env.p.dedup).expect("load sm");
        let mut meta = ClusterMeta::load(&db)
            .expect("load meta")
            .expect("meta saved");
        if meta.lifecycle == Lifecycle::Serving && sm.applied().config_id != meta.config_id {
            let from_last_config = meta.last_transition.as_ref().is_some_and(|t| {
                sm.applied()
                    == Position {
                        config_id: t.from_config,
                        index: t.end_idx,
                    }
            });
            if sm.applied() == Position::default() || from_last_config {
                sm.set_applied(Position {
                    config_id: meta.config_id,
                    index: 0,
                })
                .expect("set applied");
            } else {
                env.log(format!(
                    "replica {}: state {:?} does not match configuration {}: joining",
                    self.pid,
                    sm.applied(),
                    meta.config_id
                ));
                meta.lifecycle = Lifecycle::Joining;
            }
        }
        let op = (meta.config_id != 0).then(|| {
            Box::new(build_log(
                &env.p,
                &db,
                self.pid,
                meta.config_id,
                &meta.members,
                meta.lifecycle == Lifecycle::Serving,
            ))
        });
        self.observed = (meta.config_id, 0);
        self.meta = meta;
        self.db = Some(db);
        self.sm = Some(sm);
        self.op = op;
        self.watch_own_ballot(env);
        if self.meta.lifecycle == Lifecycle::Joining {
            self.restart_catchup(env);
        }
        if let (Some(t), Lifecycle::Serving) =
            (self.meta.last_transition.clone(), self.meta.lifecycle)
        {
            self.announce(env, t);
        }
        self.db().sync().expect("sync");
    }

    /// As kvd (`Replica::watch_own_ballot`): watch a log just opened for a recovered promise
    /// of our own ballot.
    fn watch_own_ballot(&mut self, env: &Env) {
        if !env.p.stale_own_ballot_rule {
            return;
        }
        self.stale_own_ballot = self
            .op
            .as_ref()
            .and_then(|op| StaleOwnBallot::watch(op.as_ref(), self.pid, env.p.election_ticks));
    }

    // ---- inputs ----------------------------------------------------------------------

    fn peer_up(&mut self, env: &mut Env, peer: u64) {
        let Some(op) = &mut self.op else {
            return;
        };
        // kvd: re-sync with a peer whose session came back, except while a StopSign is
        // stored (the 0.2.4 re-sync bug).
        let stopsign_pending = stopsign_pending(op);
        if self.meta.members.contains(&peer) {
            if stopsign_pending {
                env.stats.reconnect_skipped_stopsign += 1;
            } else {
                env.stats.reconnected += 1;
                op.reconnected(peer);
            }
        }
    }

    fn handle_msg(&mut self, env: &mut Env, m: Msg) {
        if let Some(c) = m.frame_config() {
            if c < self.meta.config_id {
                self.tell_straggler(env, m.from);
            }
            if c != self.meta.config_id || !self.meta.members.contains(&m.from) || self.op.is_none()
            {
                return;
            }
        }
        let from = m.from;
        match m.p {
            Payload::Paxos(mut msg) => {
                let op = self.op.as_mut().expect("checked");
                if env.p.fix_stopsign_sync {
                    // As kvd's handle_peer: a re-sync over our StopSign corrected first.
                    let db = self.db.as_ref().expect("replica is up");
                    let r = fix_stopsign_resync(
                        db,
                        self.meta.config_id,
                        op.get_decided_idx(),
                        &mut msg,
                    )
                    .expect("log meta");
                    if r != StopSignResync::Untouched {
                        env.stats.stopsign_resyncs_fixed += 1;
                        env.log(format!(
                            "replica {}: re-sync over its StopSign: {r:?}",
                            self.pid
                        ));
                    }
                    if r == StopSignResync::Dropped {
                        return;
                    }
                }
                let before = op.get_compacted_idx() as u64;
                op.handle_incoming(msg);
                if env.p.drain_per_message {
                    op.take_outgoing_messages(&mut self.outbox);
                }
                let after = op.get_compacted_idx() as u64;
                if after > before {
                    env.stats.lib_compactions += 1;
                    let applied = self.sm().applied();
                    if applied.config_id == self.meta.config_id && after > applied.index {
                        env.stats.lib_compactions_past_cursor += 1;
                        env.node_stats[self.pid as usize].lib_compactions_past_cursor += 1;
                        env.log(format!(
                            "replica {}: the library compacted its log to {after} past the applied cursor {}",
                            self.pid, applied.index
                        ));
                    }
                }
            }
            Payload::Fetch { from: start, to } => self.serve_fetch(env, from, start, to),
            Payload::Entries {
                from: start,
                entries,
            } => {
                let cur = self.sm().applied().index;
                let Some(CatchUp::Fetching { next_ask, .. }) = &mut self.catchup else {
                    return;
                };
                if start != cur || entries.is_empty() {
                    return;
                }
                *next_ask = env.step;
                env.stats.fetched_entries += entries.len() as u64;
                env.node_stats[self.pid as usize].fetched_entries += entries.len() as u64;
                self.apply_entries(env, &entries);
                self.catchup_tick(env);
            }
            Payload::Unavailable {
                from: start,
                applied,
            } => {
                let cur = self.sm().applied().index;
                if let Some(CatchUp::Fetching {
                    asked,
                    next_ask,
                    unavailable,
                }) = &mut self.catchup
                {
                    if start == cur {
                        unavailable.insert(from, applied);
                        if *asked == from {
                            *next_ask = env.step;
                        }
                    }
                }
                self.catchup_tick(env);
            }
            Payload::CkptRequest { id, config_id } => {
                let holds = self.meta.lifecycle == Lifecycle::Serving
                    && self.catchup.is_none()
                    && self.meta.config_id == config_id
                    && self.sm().applied().config_id == config_id;
                if !holds {
                    env.send(
                        self.pid,
                        from,
                        self.meta.config_id,
                        Payload::CkptRefused { id },
                    );
                    return;
                }
                let p = self.checkpoint_of(id);
                env.send(self.pid, from, self.meta.config_id, p);
            }
            Payload::Ckpt {
                id,
                chunks,
                crc,
                meta,
            } => self.install_checkpoint(env, from, id, chunks, crc, meta),
            Payload::CkptRefused { id } => {
                let Some(CatchUp::Checkpoint { rx, .. }) = &self.catchup else {
                    return;
                };
                if rx.id != id {
                    return;
                }
                self.restart_catchup(env);
                if let Some(CatchUp::Fetching { next_ask, .. }) = &mut self.catchup {
                    *next_ask = env.step + CHECKPOINT_RETRY;
                }
            }
            Payload::NewConfig(t) => self.on_announcement(env, from, t),
            Payload::NewConfigAck { config_id, holds } => {
                let Some(a) = &mut self.announcing else {
                    return;
                };
                if a.t.config_id != config_id || !holds {
                    return;
                }
                a.pending.remove(&from);
                if a.pending.is_empty() {
                    self.announcing = None;
                }
            }
        }
    }

    /// The sender side of a checkpoint: KV and dedup from one RocksDB snapshot, with the
    /// state-machine meta of that same snapshot (as `checkpoint::stream` reads them).
    fn checkpoint_of(&self, id: u64) -> Payload {
        let db = self.db();
        let snap = db.raw().snapshot();
        let meta: SmMeta = snap
            .get_cf(db.cf(CF_META), b"sm")
            .expect("read sm meta")
            .map(|b| kvd::codec::decode(&b).expect("sm meta"))
            .unwrap_or_default();
        let mut crc = crc32fast::Hasher::new();
        let mut chunks = Vec::new();
        let mut items = Vec::new();
        for (cf, is_kv) in [(CF_KV, true), (CF_DEDUP, false)] {
            for item in snap.iterator_cf(db.cf(cf), rocksdb::IteratorMode::Start) {
                let (k, v) = item.expect("read");
                items.push(if is_kv {
                    CheckpointItem::Kv(k.to_vec(), v.to_vec())
                } else {
                    CheckpointItem::Dedup(k.to_vec(), v.to_vec())
                });
                if items.len() >= CHUNK_ITEMS {
                    crc_items(&mut crc, &items);
                    chunks.push(std::mem::take(&mut items));
                }
            }
        }
        if !items.is_empty() {
            crc_items(&mut crc, &items);
            chunks.push(items);
        }
        Payload::Ckpt {
            id,
            chunks,
            crc: crc.finalize(),
            meta,
        }
    }

    fn install_checkpoint(
        &mut self,
        env: &mut Env,
        from: u64,
        id: u64,
        chunks: Vec<Vec<CheckpointItem>>,
        crc: u32,
        meta: SmMeta,
    ) {
        let Some(CatchUp::Checkpoint { rx, .. }) = &self.catchup else {
            return;
        };
        if rx.id != id || rx.from != from {
            return;
        }
        let Some(CatchUp::Checkpoint { mut rx, .. }) = self.catchup.take() else {
            unreachable!()
        };
        if meta.applied.config_id != self.meta.config_id {
            self.restart_catchup(env);
            return;
        }
        let db = self.db().clone();
        for (seq, items) in chunks.iter().enumerate() {
            if rx.chunk(&db, seq as u64, items).is_err() {
                self.restart_catchup(env);
                return;
            }
        }
        match rx.finish(&db, chunks.len() as u64, crc, meta) {
            Ok(m) => {
                self.sm_mut().reload().expect("reload sm");
                env.stats.checkpoints += 1;
                env.node_stats[self.pid as usize].checkpoints += 1;
                env.log(format!(
                    "replica {}: state replaced by a checkpoint from {from} at {:?} ({} keys)",
                    self.pid, m.applied, m.keys
                ));
                let installed = self.sm().meta();
                env.check_state(self.pid, &installed, "checkpoint");
                if self.meta.lifecycle == Lifecycle::Joining {
                    self.meta.lifecycle = Lifecycle::Serving;
                    self.meta.save_synced(&db).expect("save meta");
                    env.log(format!("replica {}: joined, serving", self.pid));
                }
                self.restart_catchup(env);
                self.catchup_tick(env);
            }
            Err(e) => {
                env.violation(format!("replica {}: checkpoint rejected: {e}", self.pid));
                self.restart_catchup(env);
            }
        }
    }

    fn serve_fetch(&mut self, env: &mut Env, peer: u64, start: u64, to: u64) {
        let compacted = self.compacted_idx();
        let decided = self.decided_idx();
        let unavailable = Payload::Unavailable {
            from: start,
            applied: self.sm().applied().index,
        };
        // As kvd: a decided StopSign is no log entry, serve the entries before it.
        let end = match stored_stopsign(self.db(), self.meta.config_id) {
            Ok(Some((_, ss_idx))) if env.p.fetch_to_stopsign => decided.min(ss_idx),
            _ => decided,
        };
        if start < compacted || start >= end {
            env.send(self.pid, peer, self.meta.config_id, unavailable);
            return;
        }
        let end = to.min(end).min(start + MAX_APPLY);
        match read_log_range(self.db(), self.meta.config_id, start as usize, end as usize) {
            Ok(Some(entries)) if !entries.is_empty() => env.send(
                self.pid,
                peer,
                self.meta.config_id,
                Payload::Entries {
                    from: start,
                    entries,
                },
            ),
            _ => env.send(self.pid, peer, self.meta.config_id, unavailable),
        }
    }

    // ---- one loop iteration ----------------------------------------------------------

    fn finish_iteration(&mut self, env: &mut Env) {
        if let Some(op) = &mut self.op {
            op.tick();
            if let Some(w) = &mut self.stale_own_ballot {
                if let Some(ran) = w.tick(op) {
                    if ran {
                        env.stats.stale_own_ballot += 1;
                        env.log(format!(
                            "replica {}: still behind its own ballot from before the restart: runs for {:?}",
                            self.pid,
                            op.get_promise()
                        ));
                    }
                    self.stale_own_ballot = None;
                }
            }
            if env.p.stopsign_stall_rule
                && self.stopsign_stall.tick(op, self.pid, env.p.resend_ticks)
            {
                env.stats.stopsign_stalls += 1;
                env.log(format!(
                    "replica {}: its StopSign is not decided: runs for {:?}",
                    self.pid,
                    op.get_promise()
                ));
            }
        }
        self.check_log_indices(env);
        self.propose_queued(env);
        self.apply_decided(env);
        self.check_stopsign(env);
        if let Some((t, since)) = self.straggling.clone() {
            if env.step - since >= STRAGGLE_GRACE && self.meta.last_transition.as_ref() != Some(&t)
            {
                env.log(format!(
                    "replica {}: StopSign not decided here: taking the state by checkpoint",
                    self.pid
                ));
                self.join_as_new(env, t);
            }
        }
        self.push_announcements(env);
        self.db().sync().expect("WAL sync");
        self.send_outgoing(env);
        self.maybe_compact(env);
        self.observe(env);
    }

    /// With the re-sync correction, the library's accepted index is the stored log end, plus
    /// one with a StopSign stored (batch_size is 1: nothing waits in memory), and its decided
    /// index is never past that. Without it, a re-sync after a StopSign puts both one too high
    /// (kvd::membership::fix_stopsign_resync).
    fn check_log_indices(&self, env: &mut Env) {
        let Some(op) = &self.op else {
            return;
        };
        if !env.p.fix_stopsign_sync {
            return;
        }
        let m = read_log_meta(self.db(), self.meta.config_id).expect("log meta");
        let stored = m.log_end + usize::from(m.stopsign.is_some());
        let (accepted, decided) = (op.get_accepted_idx(), op.get_decided_idx());
        if accepted != stored || decided > stored {
            env.violation(format!(
                "replica {}: c{} accepted index {accepted}, decided {decided}, but it stores a log \
                 up to {} {} a StopSign",
                self.pid,
                self.meta.config_id,
                m.log_end,
                if m.stopsign.is_some() { "with" } else { "without" }
            ));
        }
    }

    fn propose_queued(&mut self, env: &mut Env) {
        if self.to_propose.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.to_propose);
        let n = ops.len();
        if let Some(op) = &mut self.op {
            match op.append(LogCmd { ops }) {
                Ok(()) => env.stats.proposals += n as u64,
                Err(_) => env.log(format!("replica {}: append refused", self.pid)),
            }
        }
    }

    fn apply_decided(&mut self, env: &mut Env) {
        if self.op.is_none() {
            return;
        }
        let decided = self.decided_idx();
        if self.catchup.is_some() {
            self.catchup_tick(env);
            return;
        }
        let applied = self.sm().applied().index;
        if decided <= applied {
            return;
        }
        if self.compacted_idx() > applied {
            if env.p.mutation == Some(Mutation::TrustLibrarySnapshot) {
                let c = self.compacted_idx();
                let config_id = self.meta.config_id;
                self.sm_mut()
                    .set_applied(Position {
                        config_id,
                        index: c,
                    })
                    .expect("set applied");
                let m = self.sm().meta();
                env.check_state(self.pid, &m, "mutation: trusted the library's snapshot");
                return;
            }
            self.start_catchup(env);
            return;
        }
        let config = self.meta.config_id;
        let mut to = decided.min(applied + MAX_APPLY);
        let mut read = read_log_range(self.db(), config, applied as usize, to as usize);
        if let Ok(None) = read {
            if let Ok(Some((_, end))) = stored_stopsign(self.db(), config) {
                if end < to {
                    to = end;
                    read = read_log_range(self.db(), config, applied as usize, to as usize);
                }
            }
        }
        match read {
            Ok(Some(entries)) if entries.is_empty() => {}
            Ok(Some(entries)) => self.apply_entries(env, &entries),
            Ok(None) => self.start_catchup(env),
            Err(e) => panic!("reading decided entries: {e}"),
        }
    }

    fn apply_entries(&mut self, env: &mut Env, entries: &[LogCmd]) {
        let pos = self.sm().applied();
        let mut entries = entries.to_vec();
        for (i, e) in entries.iter().enumerate() {
            env.check_entry("applied", self.pid, pos.config_id, pos.index + i as u64, e);
        }
        if let Some(Mutation::CorruptApply { pid, after }) = env.p.mutation {
            if pid == self.pid && !env.corrupted && pos.index >= after {
                'outer: for e in &mut entries {
                    for op in &mut e.ops {
                        if let Op::Put { value, .. } = op {
                            value.push(b'!');
                            env.corrupted = true;
                            env.log(format!("MUTATION: replica {pid} applies a corrupted value"));
                            break 'outer;
                        }
                    }
                }
            }
        }
        let results = self
            .sm_mut()
            .apply(pos.config_id, &entries)
            .unwrap_or_else(|e| panic!("applying entries: {e}"));
        for r in results {
            if let Applied::Write { req, result } = r {
                let key = (req.client, req.seq);
                match result {
                    Ok(outcome) => {
                        match env.outcomes.get(&key) {
                            Some(o) if *o != outcome => {
                                let o = *o;
                                env.violation(format!(
                                    "replica {}: request {key:?} applied with outcome {outcome:?}, elsewhere {o:?}",
                                    self.pid
                                ));
                            }
                            Some(_) => {}
                            None => {
                                env.outcomes.insert(key, outcome);
                            }
                        }
                        if let Some(c) = env.clients.get_mut(&key) {
                            if !c.done {
                                c.done = true;
                                env.stats.acked += 1;
                                if let (true, Op::Put { key: k, value, .. }) = (c.unique, &c.op) {
                                    env.acked.insert(key, (k.clone(), value.clone()));
                                }
                            }
                        }
                    }
                    Err(_) => {
                        if let Some(c) = env.clients.get_mut(&key) {
                            if !c.done {
                                c.done = true;
                                env.stats.refused_too_old += 1;
                            }
                        }
                    }
                }
            }
        }
        let m = self.sm().meta();
        env.check_state(self.pid, &m, "apply");
    }

    /// Shows the checker every decided entry this replica stores (any replica's decided
    /// entries at one (config, index) must be identical).
    fn observe(&mut self, env: &mut Env) {
        let Some(op) = &self.op else {
            return;
        };
        let config = self.meta.config_id;
        if self.observed.0 != config {
            self.observed = (config, 0);
        }
        let decided = op.get_decided_idx() as u64;
        if decided <= self.observed.1 {
            return;
        }
        let lm = read_log_meta(self.db(), config).expect("log meta");
        let lo = self.observed.1.max(lm.compacted as u64);
        let hi = decided.min(lm.log_end as u64);
        if lo < hi {
            match read_log_range(self.db(), config, lo as usize, hi as usize) {
                Ok(Some(es)) => {
                    for (i, e) in es.iter().enumerate() {
                        env.check_entry("decided", self.pid, config, lo + i as u64, e);
                    }
                }
                _ => env.violation(format!(
                    "replica {}: decided entries [{lo},{hi}) of c{config} not readable",
                    self.pid
                )),
            }
        }
        self.observed.1 = decided;
    }

    fn check_stopsign(&mut self, env: &mut Env) {
        let Some(op) = &self.op else {
            return;
        };
        if self.catchup.is_some()
            || !matches!(self.meta.lifecycle, Lifecycle::Serving | Lifecycle::Joining)
        {
            return;
        }
        let decided = op.get_decided_idx() as u64;
        let reconfigured = op.is_reconfigured().is_some();
        let config = self.meta.config_id;
        let found = match decided_stopsign(self.db(), config, decided) {
            Ok(Some(found)) => Some(found),
            Ok(None) if reconfigured => stored_stopsign(self.db(), config).ok().flatten(),
            Ok(None) => None,
            Err(e) => panic!("reading the stopsign: {e}"),
        };
        let Some((ss, end)) = found else {
            return;
        };
        if self.sm().applied().index < end {
            return;
        }
        if !reconfigured {
            env.stats.stopsign_bug_hits += 1;
            env.node_stats[self.pid as usize].stopsign_bug_hits += 1;
            env.log(format!(
                "replica {}: StopSign decided per storage, is_reconfigured() None (0.2.4 bug)",
                self.pid
            ));
        }
        let mut members = ss.next_config.nodes.clone();
        members.sort_unstable();
        let t = Transition {
            from_config: config,
            end_idx: end,
            config_id: ss.next_config.configuration_id,
            members,
            addrs: BTreeMap::new(),
        };
        self.switch_to(env, t);
    }

    fn switch_to(&mut self, env: &mut Env, t: Transition) {
        match env.transitions.get(&t.from_config) {
            Some(&(end, next)) if (end, next) != (t.end_idx, t.config_id) => {
                env.violation(format!(
                    "replica {}: c{} ends at {} -> c{}, elsewhere at {end} -> c{next}",
                    self.pid, t.from_config, t.end_idx, t.config_id
                ));
            }
            Some(_) => {}
            None => {
                env.transitions
                    .insert(t.from_config, (t.end_idx, t.config_id));
            }
        }
        env.log(format!(
            "replica {}: switch c{}@{} -> c{}",
            self.pid, t.from_config, t.end_idx, t.config_id
        ));
        env.stats.switches += 1;
        env.node_stats[self.pid as usize].switches += 1;
        // The old configuration's final state, as every replica must have it.
        let m = self.sm().meta();
        env.check_state(self.pid, &m, "end of configuration");
        self.straggling = None;
        self.meta.last_transition = Some(t.clone());
        self.meta.config_id = t.config_id;
        self.meta.members = t.members.clone();
        self.meta.lifecycle = Lifecycle::Serving;
        let db = self.db().clone();
        let mut batch = rocksdb::WriteBatch::default();
        self.meta.put(&db, &mut batch);
        self.sm_mut().set_applied_in(
            Position {
                config_id: t.config_id,
                index: 0,
            },
            &mut batch,
        );
        db.write_synced(batch).expect("persist new configuration");
        self.retire_outgoing(t.from_config);
        self.op = Some(Box::new(build_log(
            &env.p,
            &db,
            self.pid,
            t.config_id,
            &t.members,
            true,
        )));
        self.watch_own_ballot(env);
        self.observed = (t.config_id, 0);
        self.announce(env, t);
    }

    fn announce(&mut self, _env: &mut Env, t: Transition) {
        let pending = t
            .members
            .iter()
            .copied()
            .filter(|&p| p != self.pid)
            .collect();
        self.announcing = Some(Announcing {
            t,
            pending,
            next_push: 0,
        });
    }

    fn push_announcements(&mut self, env: &mut Env) {
        let Some(a) = &mut self.announcing else {
            return;
        };
        if env.step < a.next_push {
            return;
        }
        a.next_push = env.step + ANNOUNCE_EVERY;
        for &p in &a.pending {
            env.send(
                self.pid,
                p,
                self.meta.config_id,
                Payload::NewConfig(a.t.clone()),
            );
        }
    }

    fn tell_straggler(&mut self, env: &mut Env, from: u64) {
        let Some(t) = self.meta.last_transition.clone() else {
            return;
        };
        if self
            .stragglers_told
            .get(&from)
            .is_some_and(|&at| env.step - at < STRAGGLER_EVERY)
        {
            return;
        }
        self.stragglers_told.insert(from, env.step);
        env.send(self.pid, from, self.meta.config_id, Payload::NewConfig(t));
    }

    fn on_announcement(&mut self, env: &mut Env, from: u64, t: Transition) {
        let new_config = t.config_id;
        if t.config_id == self.meta.config_id
            && matches!(self.meta.lifecycle, Lifecycle::Serving | Lifecycle::Joining)
        {
            let holds = self.meta.lifecycle == Lifecycle::Serving
                && !matches!(self.catchup, Some(CatchUp::Checkpoint { .. }));
            env.send(
                self.pid,
                from,
                self.meta.config_id,
                Payload::NewConfigAck {
                    config_id: new_config,
                    holds,
                },
            );
            return;
        }
        if t.config_id <= self.meta.config_id
            || self
                .meta
                .last_transition
                .as_ref()
                .is_some_and(|l| l.config_id >= t.config_id)
        {
            return;
        }
        let same_config =
            self.meta.lifecycle == Lifecycle::Serving && t.from_config == self.meta.config_id;
        if same_config && self.sm().applied().index >= t.end_idx && self.catchup.is_none() {
            self.switch_to(env, t);
            env.send(
                self.pid,
                from,
                self.meta.config_id,
                Payload::NewConfigAck {
                    config_id: new_config,
                    holds: true,
                },
            );
            return;
        }
        if same_config {
            let since = match &self.straggling {
                Some((_, since)) => *since,
                None => env.step,
            };
            if env.step - since < STRAGGLE_GRACE {
                self.straggling = Some((t, since));
                return;
            }
        }
        self.join_as_new(env, t);
        env.send(
            self.pid,
            from,
            self.meta.config_id,
            Payload::NewConfigAck {
                config_id: new_config,
                holds: false,
            },
        );
    }

    fn join_as_new(&mut self, env: &mut Env, t: Transition) {
        let old_config = self.meta.config_id;
        env.stats.joins_as_new += 1;
        env.log(format!(
            "replica {}: joins c{} without state",
            self.pid, t.config_id
        ));
        self.straggling = None;
        self.meta.config_id = t.config_id;
        self.meta.members = t.members.clone();
        self.meta.lifecycle = Lifecycle::Joining;
        self.meta.last_transition = Some(t.clone());
        let db = self.db().clone();
        self.meta.save_synced(&db).expect("save meta");
        self.retire_outgoing(old_config);
        self.op = Some(Box::new(build_log(
            &env.p,
            &db,
            self.pid,
            t.config_id,
            &t.members,
            false,
        )));
        self.watch_own_ballot(env);
        self.observed = (t.config_id, 0);
        self.announcing = None;
        self.restart_catchup(env);
    }

    /// As kvd's `retire_outgoing`: what the replaced instance still has to send keeps its
    /// configuration id.
    fn retire_outgoing(&mut self, config: u32) {
        let mut out = std::mem::take(&mut self.outbox);
        if let Some(op) = &mut self.op {
            op.take_outgoing_messages(&mut out);
        }
        self.retired.extend(out.into_iter().map(|m| (config, m)));
    }

    fn send_outgoing(&mut self, env: &mut Env) {
        for (config, msg) in std::mem::take(&mut self.retired) {
            let to = msg.get_receiver();
            env.send(self.pid, to, config, Payload::Paxos(msg));
        }
        let Some(op) = &mut self.op else {
            return;
        };
        let mut out = std::mem::take(&mut self.outbox);
        op.take_outgoing_messages(&mut out);
        for msg in out {
            let to = msg.get_receiver();
            env.send(self.pid, to, self.meta.config_id, Payload::Paxos(msg));
        }
    }

    fn maybe_compact(&mut self, env: &mut Env) {
        if self.catchup.is_some() {
            return;
        }
        let durable_applied = self.sm().applied().index;
        let target = durable_applied.saturating_sub(env.p.snapshot_keep);
        let compacted = self.compacted_idx();
        if target < compacted + env.p.snapshot_interval {
            return;
        }
        if let Some(op) = &mut self.op {
            if op.snapshot(Some(target as usize), true).is_ok() {
                env.stats.local_compactions += 1;
            }
        }
    }

    // ---- catch-up --------------------------------------------------------------------

    fn connected_peers(&self, env: &Env) -> Vec<u64> {
        self.meta
            .members
            .iter()
            .copied()
            .filter(|&p| env.connected(self.pid, p))
            .collect()
    }

    fn start_catchup(&mut self, env: &mut Env) {
        env.stats.catchups += 1;
        env.node_stats[self.pid as usize].catchups += 1;
        env.log(format!(
            "replica {}: catching up: applied {} compacted {} decided {}",
            self.pid,
            self.sm().applied().index,
            self.compacted_idx(),
            self.decided_idx()
        ));
        self.restart_catchup(env);
        self.catchup_tick(env);
    }

    fn restart_catchup(&mut self, env: &mut Env) {
        self.catchup = Some(CatchUp::Fetching {
            asked: 0,
            next_ask: env.step,
            unavailable: BTreeMap::new(),
        });
    }

    fn catchup_tick(&mut self, env: &mut Env) {
        if self.meta.lifecycle == Lifecycle::Joining {
            self.joining_catchup_tick(env);
            return;
        }
        let applied = self.sm().applied().index;
        if applied >= self.compacted_idx()
            && !matches!(self.catchup, Some(CatchUp::Checkpoint { .. }))
        {
            env.log(format!("replica {}: caught up at {applied}", self.pid));
            self.catchup = None;
            return;
        }
        let peers = self.connected_peers(env);
        let decided = self.decided_idx();
        match &mut self.catchup {
            Some(CatchUp::Fetching {
                asked,
                next_ask,
                unavailable,
            }) => {
                if env.step < *next_ask {
                    return;
                }
                unavailable.retain(|p, _| peers.contains(p));
                let candidates: Vec<u64> = peers
                    .iter()
                    .copied()
                    .filter(|p| !unavailable.contains_key(p))
                    .collect();
                if candidates.is_empty() {
                    if let Some((&from, _)) = unavailable
                        .iter()
                        .filter(|(_, &a)| a > applied)
                        .max_by_key(|(_, &a)| a)
                    {
                        self.request_checkpoint(env, from);
                    } else {
                        unavailable.clear();
                        *next_ask = env.step + CATCHUP_TIMEOUT;
                    }
                    return;
                }
                self.rr = self.rr.wrapping_add(1);
                let peer = candidates[self.rr % candidates.len()];
                *asked = peer;
                *next_ask = env.step + CATCHUP_TIMEOUT;
                env.send(
                    self.pid,
                    peer,
                    self.meta.config_id,
                    Payload::Fetch {
                        from: applied,
                        to: decided.max(applied + 1),
                    },
                );
            }
            Some(CatchUp::Checkpoint { last_progress, .. })
                if env.step - *last_progress > CATCHUP_TIMEOUT * 2 =>
            {
                self.restart_catchup(env);
            }
            _ => {}
        }
    }

    fn joining_catchup_tick(&mut self, env: &mut Env) {
        let peers = self.connected_peers(env);
        match &mut self.catchup {
            Some(CatchUp::Fetching { next_ask, .. }) if env.step >= *next_ask => {
                if peers.is_empty() {
                    return;
                }
                *next_ask = env.step + CATCHUP_TIMEOUT;
                self.rr = self.rr.wrapping_add(1);
                let from = peers[self.rr % peers.len()];
                self.request_checkpoint(env, from);
            }
            Some(CatchUp::Checkpoint { last_progress, .. })
                if env.step - *last_progress > CATCHUP_TIMEOUT * 2 =>
            {
                self.restart_catchup(env);
            }
            _ => {}
        }
    }

    fn request_checkpoint(&mut self, env: &mut Env, from: u64) {
        let id: u64 = env.rng.random();
        env.log(format!(
            "replica {}: asks {from} for a checkpoint",
            self.pid
        ));
        let rx = checkpoint::Receiver::start(self.db(), from, id).expect("stage checkpoint");
        env.send(
            self.pid,
            from,
            self.meta.config_id,
            Payload::CkptRequest {
                id,
                config_id: self.meta.config_id,
            },
        );
        self.catchup = Some(CatchUp::Checkpoint {
            rx,
            last_progress: env.step,
        });
    }
}

/// The world: replicas plus everything else.
pub struct World {
    pub nodes: Vec<Node>,
    pub env: Env,
    reconfig: Option<(u32, u64)>,
    reconfigs_started: u32,
}

/// Where replicas' RocksDB directories go: tmpfs when there is one (fsync is free there and
/// a crash in the simulation never loses synced data anyway).
fn base_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("OMNIKV_SIM_DIR") {
        return d.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

impl World {
    pub fn new(seed: u64, p: Params, trace: Rc<RefCell<Vec<String>>>, verbose: bool) -> World {
        let members: Vec<u64> = (1..=p.n as u64).collect();
        let base = base_dir();
        let mut env = Env {
            rng: StdRng::seed_from_u64(seed ^ 0x005e_ed0f_0e11_1b42),
            step: 0,
            net: Vec::new(),
            msg_seq: 0,
            link_last: BTreeMap::new(),
            cut: BTreeSet::new(),
            up: vec![false; p.n + 1],
            peer_up: Vec::new(),
            clients: BTreeMap::new(),
            next_seq: 0,
            filter: None,
            decided: BTreeMap::new(),
            hashes: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            acked: BTreeMap::new(),
            transitions: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            node_stats: vec![NodeStats::default(); p.n + 1],
            trace,
            verbose,
            corrupted: false,
            p,
        };
        env.log(format!("seed {seed}: {:?}", env.p));
        let mut nodes: Vec<Node> = members
            .iter()
            .map(|&pid| Node::new(pid, &members, &base))
            .collect();
        for n in &mut nodes {
            n.start(&mut env);
            env.up[n.pid as usize] = true;
        }
        World {
            nodes,
            env,
            reconfig: None,
            reconfigs_started: 0,
        }
    }

    pub fn node(&self, pid: u64) -> &Node {
        &self.nodes[pid as usize - 1]
    }

    pub fn node_mut(&mut self, pid: u64) -> &mut Node {
        &mut self.nodes[pid as usize - 1]
    }

    // ---- faults (also used by scripted scenarios) ------------------------------------

    pub fn crash(&mut self, pid: u64) {
        if !self.node(pid).is_up() {
            return;
        }
        self.env.log(format!("crash {pid}"));
        self.env.stats.crashes += 1;
        self.nodes[pid as usize - 1].crash();
        self.env.up[pid as usize] = false;
    }

    pub fn restart(&mut self, pid: u64) {
        if self.node(pid).is_up() {
            return;
        }
        self.env.log(format!("restart {pid}"));
        self.env.stats.restarts += 1;
        let env = &mut self.env;
        self.nodes[pid as usize - 1].start(env);
        self.env.up[pid as usize] = true;
        for q in 1..=self.env.p.n as u64 {
            if self.env.connected(pid, q) {
                self.env.peer_up.push((pid, q));
                self.env.peer_up.push((q, pid));
            }
        }
    }

    pub fn cut(&mut self, a: u64, b: u64) {
        if a != b && self.env.cut.insert((a.min(b), a.max(b))) {
            self.env.log(format!("cut {a}-{b}"));
        }
    }

    pub fn isolate(&mut self, pid: u64) {
        for q in 1..=self.env.p.n as u64 {
            self.cut(pid, q);
        }
    }

    pub fn heal(&mut self) {
        let cut = std::mem::take(&mut self.env.cut);
        if cut.is_empty() {
            return;
        }
        self.env.log(format!("heal {cut:?}"));
        self.env.stats.heals += 1;
        for (a, b) in cut {
            if self.env.up[a as usize] && self.env.up[b as usize] {
                self.env.peer_up.push((a, b));
                self.env.peer_up.push((b, a));
            }
        }
    }

    /// A client write handed to replica `pid` (refused there like kvd refuses: no leader
    /// known, not serving, catching up). The client retries with the same id.
    pub fn client_write(&mut self, pid: Option<u64>, unique: bool) {
        let env = &mut self.env;
        env.next_seq += 1;
        let client = env.rng.random_range(1..=3u64);
        let seq = env.next_seq;
        let key = if unique {
            format!("u{client}-{seq}").into_bytes()
        } else {
            format!("h{}", env.rng.random_range(0..4)).into_bytes()
        };
        let op = Op::Put {
            req: ReqId {
                client,
                seq,
                ts_ms: env.step * 10,
            },
            key,
            value: format!("v{seq}@{}", env.step).into_bytes(),
        };
        env.clients.insert(
            (client, seq),
            ClientReq {
                op,
                next_try: env.step,
                done: false,
                unique,
            },
        );
        if let Some(pid) = pid {
            self.attempt((client, seq), pid);
        }
    }

    fn attempt(&mut self, key: (u64, u64), pid: u64) {
        let Some(c) = self.env.clients.get_mut(&key) else {
            return;
        };
        c.next_try = self.env.step + CLIENT_RETRY;
        let op = c.op.clone();
        let node = &mut self.nodes[pid as usize - 1];
        let serving = node.is_up()
            && node.meta.lifecycle == Lifecycle::Serving
            && node.catchup.is_none()
            && node.current_leader().is_some();
        if serving {
            node.to_propose.push(op);
        }
    }

    fn clients_retry(&mut self) {
        let due: Vec<(u64, u64)> = self
            .env
            .clients
            .iter()
            .filter(|(_, c)| !c.done && c.next_try <= self.env.step)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let pid = self.env.rng.random_range(1..=self.env.p.n as u64);
            self.attempt(k, pid);
        }
    }

    pub fn request_reconfig(&mut self) {
        let cur = self
            .nodes
            .iter()
            .map(|n| n.meta.config_id)
            .max()
            .unwrap_or(1);
        self.env.log(format!("reconfigure c{cur} -> c{}", cur + 1));
        self.env.stats.reconfigs += 1;
        self.reconfigs_started += 1;
        self.reconfig = Some((cur + 1, self.env.step));
    }

    /// kvd proposes the StopSign on the leader, retried until one is stored.
    fn drive_reconfig(&mut self) {
        let Some((target, next_try)) = self.reconfig else {
            return;
        };
        if self.nodes.iter().any(|n| n.meta.config_id >= target) {
            self.reconfig = None;
            return;
        }
        if self.env.step < next_try {
            return;
        }
        self.reconfig = Some((target, self.env.step + RECONFIG_RETRY));
        let members: Vec<u64> = (1..=self.env.p.n as u64).collect();
        for n in &mut self.nodes {
            let Some(op) = &mut n.op else { continue };
            if n.meta.config_id + 1 != target
                || n.meta.lifecycle != Lifecycle::Serving
                || op.get_current_leader().map(|l| l.0) != Some(n.pid)
            {
                continue;
            }
            if matches!(
                stored_stopsign(n.db.as_ref().expect("up"), n.meta.config_id),
                Ok(Some(_))
            ) {
                continue;
            }
            let config = ClusterConfig {
                configuration_id: target,
                nodes: members.clone(),
                flexible_quorum: None,
            };
            if op.reconfigure(config, None).is_ok() {
                self.env.log(format!(
                    "replica {}: StopSign for c{target} proposed",
                    n.pid
                ));
            }
        }
    }

    fn random_faults(&mut self) {
        let n = self.env.p.n as u64;
        let p = self.env.p.clone();
        let down = self.nodes.iter().filter(|x| !x.is_up()).count();
        if p.p_crash > 0.0 && self.env.rng.random_bool(p.p_crash) && down < (p.n - 1) / 2 {
            let pid = self.env.rng.random_range(1..=n);
            self.crash(pid);
        }
        for pid in 1..=n {
            if !self.node(pid).is_up() && self.env.rng.random_bool(p.p_restart) {
                self.restart(pid);
            }
        }
        if p.p_partition > 0.0 && self.env.rng.random_bool(p.p_partition) {
            self.env.stats.partitions += 1;
            match self.env.rng.random_range(0..3) {
                0 => {
                    let pid = self.env.rng.random_range(1..=n);
                    self.isolate(pid);
                }
                1 => {
                    let a = self.env.rng.random_range(1..=n);
                    let b = self.env.rng.random_range(1..=n);
                    self.cut(a, b);
                }
                _ => {
                    let side: Vec<bool> = (0..=n).map(|_| self.env.rng.random_bool(0.5)).collect();
                    for a in 1..=n {
                        for b in a + 1..=n {
                            if side[a as usize] != side[b as usize] {
                                self.cut(a, b);
                            }
                        }
                    }
                }
            }
        }
        if !self.env.cut.is_empty() && self.env.rng.random_bool(p.p_heal) {
            self.heal();
        }
        if p.p_reconfig > 0.0
            && self.reconfig.is_none()
            && self.reconfigs_started < p.max_reconfigs
            && self.env.rng.random_bool(p.p_reconfig)
        {
            self.request_reconfig();
        }
    }

    /// One step: faults, clients, delivery, one loop iteration per live replica, checks.
    pub fn step(&mut self, faults: bool) {
        self.env.step += 1;
        self.env.stats.steps += 1;
        if faults {
            self.random_faults();
        }
        if self.env.p.p_propose > 0.0 && self.env.rng.random_bool(self.env.p.p_propose) {
            let pid = self.env.rng.random_range(1..=self.env.p.n as u64);
            let unique = self.env.rng.random_bool(0.8);
            self.client_write(Some(pid), unique);
        }
        self.clients_retry();
        self.drive_reconfig();
        let now = self.env.step;
        let mut due: Vec<Msg> = Vec::new();
        let mut later = Vec::with_capacity(self.env.net.len());
        for m in self.env.net.drain(..) {
            if m.at <= now {
                due.push(m);
            } else {
                later.push(m);
            }
        }
        self.env.net = later;
        due.sort_by_key(|m| (m.at, m.seq));
        let peer_up = std::mem::take(&mut self.env.peer_up);
        for i in 0..self.nodes.len() {
            let pid = self.nodes[i].pid;
            if !self.nodes[i].is_up() {
                continue;
            }
            for &(to, peer) in &peer_up {
                if to == pid {
                    self.nodes[i].peer_up(&mut self.env, peer);
                }
            }
            for m in due.iter().filter(|m| m.to == pid) {
                // A session cut while the frame was in flight loses it.
                if !self.env.link_ok(m.from, m.to) {
                    self.env.stats.dropped += 1;
                    continue;
                }
                self.env.stats.delivered += 1;
                if self.env.verbose {
                    self.env.log(format!("deliver {}", m.describe()));
                }
                self.nodes[i].handle_msg(&mut self.env, m.clone());
            }
            self.nodes[i].finish_iteration(&mut self.env);
            let leader = self.nodes[i].current_leader();
            if leader != self.nodes[i].leader {
                self.nodes[i].leader = leader;
                if leader == Some(pid) {
                    self.env.stats.leader_changes += 1;
                    let applied = self.nodes[i].sm().applied();
                    let best = self
                        .nodes
                        .iter()
                        .filter_map(|n| n.sm.as_ref().map(|s| s.applied()))
                        .max()
                        .unwrap_or_default();
                    let behind = applied < best;
                    if behind {
                        self.env.node_stats[pid as usize].leader_while_behind += 1;
                    }
                    self.env.log(format!(
                        "replica {pid}: leader of c{} (applied {:?}{})",
                        self.nodes[i].meta.config_id,
                        applied,
                        if behind { ", behind" } else { "" }
                    ));
                }
            }
        }
    }

    /// The random schedule: `steps` steps with faults, then heal everything and run until
    /// every replica converges (liveness), then the end-of-run checks.
    pub fn run_random(&mut self) -> Result<(), Violation> {
        for _ in 0..self.env.p.steps {
            self.step(true);
            self.fail_fast()?;
        }
        self.settle()
    }

    /// Every live replica's log meta and stored log, for a failure's trace.
    pub fn dump_logs(&self) {
        for n in self.nodes.iter().filter(|n| n.is_up()) {
            let c = n.meta.config_id;
            let lm = read_log_meta(n.db(), c).expect("meta");
            let mut line = format!(
                "replica {} c{c}: decided {} compacted {} log_end {} accepted_idx {} stopsign {}:",
                n.pid,
                lm.decided,
                lm.compacted,
                lm.log_end,
                n.op.as_ref().map_or(0, |o| o.get_accepted_idx()),
                lm.stopsign.is_some()
            );
            for i in lm.compacted..lm.log_end {
                if let Ok(Some(e)) = read_log_range(n.db(), c, i, i + 1) {
                    let ops: Vec<String> = e[0].ops.iter().map(Op::describe).collect();
                    let _ = write!(line, " #{i}={}", ops.join("+"));
                }
            }
            self.env.log(line);
        }
    }

    fn fail_fast(&self) -> Result<(), Violation> {
        match self.env.violations.first() {
            Some(v) => {
                self.dump_logs();
                Err(v.clone())
            }
            None => Ok(()),
        }
    }

    /// Heals the network, restarts every replica, makes the network reliable, and runs until
    /// all replicas agree on configuration, applied position and state hash, every client
    /// request is resolved, and no reconfiguration is pending. Then checks acknowledged writes.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.env.log("settle: heal, restart all, reliable network");
        self.heal();
        for pid in 1..=self.env.p.n as u64 {
            self.restart(pid);
        }
        self.env.p.p_drop = 0.0;
        self.env.p.p_dup = 0.0;
        self.env.p.max_delay = self.env.p.max_delay.min(1);
        self.env.p.p_propose = 0.0;
        self.env.filter = None;
        let start = self.env.step;
        let mut probes = 0;
        loop {
            self.fail_fast()?;
            if self.converged() {
                break;
            }
            if self.env.step - start >= self.env.p.settle_steps {
                return Err(format!(
                    "liveness: not converged {} steps after healing: {}",
                    self.env.p.settle_steps,
                    self.summary()
                ));
            }
            if self.env.verbose && (self.env.step - start).is_multiple_of(50) {
                let s = self.summary();
                self.env.log(format!("settling: {s}"));
            }
            // Clients keep writing (a lagging follower is only re-synced by new traffic), one
            // probe at a time: a probe every 5 steps regardless can keep the cluster busy for
            // good (a forwarded write takes 4 hops of 1-2 steps to reach every replica of 5),
            // and convergence is judged with no request open.
            let probe_open = self.env.clients.values().any(|c| !c.done);
            if (self.env.step - start).is_multiple_of(5) && probes < 200 && !probe_open {
                probes += 1;
                let pid = self.env.rng.random_range(1..=self.env.p.n as u64);
                self.client_write(Some(pid), true);
            }
            self.step(false);
        }
        self.env.log(format!("converged: {}", self.summary()));
        // Every acknowledged write is in every replica's state.
        for n in &self.nodes {
            for (req, (k, v)) in &self.env.acked {
                let got = n.sm().get(k).expect("read");
                if got.as_deref() != Some(v.as_slice()) {
                    return Err(format!(
                        "acknowledged write {req:?} {}={} missing on replica {}: {:?}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v),
                        n.pid,
                        got.map(|g| String::from_utf8_lossy(&g).into_owned())
                    ));
                }
            }
        }
        self.fail_fast()
    }

    pub fn converged(&self) -> bool {
        let first = &self.nodes[0];
        if self.reconfig.is_some() || self.env.clients.values().any(|c| !c.done) {
            return false;
        }
        let Some(sm0) = &first.sm else { return false };
        let m0 = sm0.meta();
        self.nodes.iter().all(|n| {
            n.is_up()
                && n.catchup.is_none()
                && n.meta.lifecycle == Lifecycle::Serving
                && n.meta.config_id == first.meta.config_id
                && n.sm().meta().applied == m0.applied
                && n.sm().meta().hash == m0.hash
                && n.decided_idx() == m0.applied.index
        })
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            if !n.is_up() {
                let _ = write!(s, "[{} down] ", n.pid);
                continue;
            }
            let m = n.sm().meta();
            let _ = write!(
                s,
                "[{} c{} {:?} applied {:?} decided {} compacted {} leader {:?} catchup {} hash {:x}] ",
                n.pid,
                n.meta.config_id,
                n.meta.lifecycle,
                m.applied,
                n.decided_idx(),
                n.compacted_idx(),
                n.current_leader(),
                n.catchup.is_some(),
                m.hash
            );
        }
        let open: Vec<&(u64, u64)> = self
            .env
            .clients
            .iter()
            .filter(|(_, c)| !c.done)
            .map(|(k, _)| k)
            .collect();
        let _ = write!(s, "open requests {}", open.len());
        if !open.is_empty() {
            let _ = write!(s, " (client, seq) {:?}", &open[..open.len().min(8)]);
        }
        s
    }

    /// A digest of the run (trace excluded): equal for equal seeds.
    pub fn digest(&self) -> u64 {
        let mut d = format!("{:?}", self.env.stats);
        for n in &self.nodes {
            if let Some(sm) = &n.sm {
                let _ = write!(d, "{:?}", sm.meta());
            }
        }
        pair_hash(b"digest", d.as_bytes())
    }
}
