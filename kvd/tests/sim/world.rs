//! The simulated world: replicas running kvd's shipped `Replica` (real RocksDB in temporary
//! directories, real `LogStore`, `StateMachine` and checkpoint code), stepped in one thread
//! over the seeded network of `net.rs`, fed by the clients of `clients.rs`. It owns only the
//! environment (clock, network, crashes, power cuts, pauses, partitions, an operator changing
//! membership) and the checks; every rule of the loop is the loop's own.
//!
//! A step: faults -> clients send -> each live replica handles its due frames and ends its
//! iteration (`finish_iteration` at the step's time) -> clients collect replies -> checks.
//!
//! Checks: decided entries agree per (configuration, index) on every replica; the state hash
//! agrees per applied position; the library's accepted index stays on the stored log; after
//! healing, every replica converges (members serving one identical state, removed replicas
//! retired), every acknowledged write is present, local reads returned written values, and
//! the client history is linearizable per key.
//!
//! Everything random comes from generators seeded by the seed: a run is a function of it.

use crate::clients::{self, Answer, Client, ClientOp, HeldLease, History, InFlight};
use crate::linearizability::{check_with_budget, KvModel, Verdict};
use crate::net::{Filter, Msg, Net, SharedNet};
use crate::node::{NodeSettings, SimNode, TICK};
use kvd::command::{LeaseOp, LogCmd, Op};
use kvd::inbox::{ClientRequest, Input};
use kvd::membership::{check_change, Lifecycle};
use kvd::replica::Defect;
use kvd::state_machine::{pair_hash, Position};
use kvd::storage::{read_log_meta, read_log_range};
use omnikv_common::api::{ErrorCode, ReconfigureRequest, ReconfigureResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Why a run failed: a safety or liveness violation (or a panic, caught by the runner).
pub type Violation = String;

/// The simulated wall clock's value at step 0, in ms since the Unix epoch.
const SIM_EPOCH_MS: u64 = 1_700_000_000_000;

/// The persistence steps a replica can crash at in the middle of an iteration
/// (`kvd::failpoint`): within a log write, an apply batch, around the WAL sync (messages half
/// sent), a compaction.
const CRASH_POINTS: [&str; 6] = [
    "log-write",
    "decide",
    "apply",
    "before-sync",
    "after-sync",
    "compact",
];

#[derive(Clone, Debug)]
pub struct Params {
    /// Members of the initial configuration (1..=n).
    pub n: usize,
    /// Steps with random faults (0 for scripted scenarios).
    pub steps: u64,
    /// Upper bound of the healing phase (liveness).
    pub settle_steps: u64,
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub clients: u64,
    /// Per step, the chance an idle client starts an operation.
    pub p_op: f64,
    /// Shares of reads (linearizable and local) among operations; the rest are writes.
    pub p_lin_read: f64,
    pub p_local_read: f64,
    pub p_drop: f64,
    pub max_delay: u64,
    pub p_crash: f64,
    /// Share of crashes that are power cuts (unsynced writes lost).
    pub p_power_cut: f64,
    /// Per step, the chance every live replica loses power at once.
    pub p_cluster_power_cut: f64,
    pub p_restart: f64,
    pub p_pause: f64,
    pub p_partition: f64,
    pub p_heal: f64,
    pub p_reconfig: f64,
    pub max_reconfigs: u32,
    /// Share of new client operations that are compactions of the change history (drawn from
    /// a stream of their own, so that every other draw of a schedule stays as it was).
    pub p_compact: f64,
    /// Share of new client operations that are lease operations (a stream of their own too).
    pub p_lease: f64,
    pub election_ticks: u64,
    pub resend_ticks: u64,
    pub dedup_ttl_secs: u64,
    pub dedup_max_records: usize,
    pub max_apply: usize,
    pub defect: Option<Defect>,
}

impl Params {
    /// Quiet defaults for scripted scenarios: no random faults, small delays.
    pub fn scripted(n: usize) -> Params {
        Params {
            n,
            steps: 0,
            settle_steps: 1200,
            snapshot_interval: 5,
            snapshot_keep: 20,
            clients: 3,
            p_op: 0.0,
            p_lin_read: 0.2,
            p_local_read: 0.1,
            p_drop: 0.0,
            max_delay: 1,
            p_crash: 0.0,
            p_power_cut: 0.5,
            p_cluster_power_cut: 0.0,
            p_restart: 0.0,
            p_pause: 0.0,
            p_partition: 0.0,
            p_heal: 0.0,
            p_reconfig: 0.0,
            max_reconfigs: 0,
            p_compact: 0.0,
            p_lease: 0.0,
            election_ticks: 5,
            resend_ticks: 20,
            dedup_ttl_secs: 1 << 30,
            dedup_max_records: 10_000,
            max_apply: 32,
            defect: None,
        }
    }

    /// A random schedule's parameters, drawn from the seed.
    pub fn random(rng: &mut StdRng) -> Params {
        let mut p = Params::scripted(if rng.random_bool(0.15) { 5 } else { 3 });
        p.steps = rng.random_range(40..120);
        p.snapshot_interval = [2, 3, 5, 10][rng.random_range(0..4)];
        p.snapshot_keep = [0, 1, 3, 10, 40][rng.random_range(0..5)];
        p.clients = rng.random_range(3..=6);
        p.p_op = rng.random_range(0.2..0.9);
        p.p_lin_read = [0.0, 0.2, 0.4][rng.random_range(0..3)];
        p.p_local_read = [0.0, 0.1][rng.random_range(0..2)];
        p.p_drop = [0.0, 0.01, 0.05, 0.15][rng.random_range(0..4)];
        p.max_delay = rng.random_range(0..=2);
        p.p_crash = [0.0, 0.01, 0.03][rng.random_range(0..3)];
        p.p_power_cut = [0.0, 0.5, 1.0][rng.random_range(0..3)];
        p.p_cluster_power_cut = [0.0, 0.0, 0.005][rng.random_range(0..3)];
        p.p_restart = 0.1;
        p.p_pause = [0.0, 0.01][rng.random_range(0..2)];
        p.p_partition = [0.0, 0.01, 0.03][rng.random_range(0..3)];
        p.p_heal = 0.08;
        p.p_reconfig = [0.0, 0.01, 0.02][rng.random_range(0..3)];
        p.max_reconfigs = rng.random_range(1..=3);
        // Small caps make dedup eviction (and refusal of too-old retries) happen.
        p.dedup_ttl_secs = [1 << 30, 3][rng.random_range(0..2)];
        p.dedup_max_records = [16, 10_000][rng.random_range(0..2)];
        // Drawn last: the draws above are those of the schedules before compactions came.
        p.p_compact = [0.0, 0.0, 0.04][rng.random_range(0..3)];
        p.p_lease = [0.0, 0.0, 0.15][rng.random_range(0..3)];
        p
    }
}

/// Counters reported per seed (and summed over seeds).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub crashes: u64,
    pub power_cuts: u64,
    /// Crashes and power cuts in the middle of an iteration, at a persistence step.
    pub mid_iteration_crashes: u64,
    pub cluster_power_cuts: u64,
    pub restarts: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub heals: u64,
    pub writes_acked: u64,
    /// Compare-and-swaps answered (in `writes_acked`), and how many swapped.
    pub cas_answered: u64,
    pub cas_swapped: u64,
    /// Compactions answered, and how many raised the compact revision.
    pub compacts_answered: u64,
    pub compacts_raised: u64,
    /// Leases granted, keepalives answered as renewed, leases found gone (a keepalive or a
    /// put answered "not found"), and checks that a live lease's key is still there.
    pub leases_granted: u64,
    pub lease_keepalives: u64,
    pub leases_found_gone: u64,
    pub leased_key_checks: u64,
    /// Change-history events read back from the members' stores at the end and checked.
    pub history_events_checked: u64,
    pub lin_reads_checked: u64,
    pub local_reads_checked: u64,
    pub unknown_outcomes: u64,
    /// Writes every attempt of which was refused `unavailable`: left out of the history, as
    /// never applied.
    pub writes_not_applied: u64,
    pub reconfigs_requested: u64,
    pub reconfigs_done: u64,
    pub switches: u64,
    /// Replicas seen going from joining to serving (new members, and old ones that joined
    /// a configuration without state).
    pub joins_completed: u64,
    /// Removed replicas seen retiring.
    pub removals_retired: u64,
    pub checkpoints_installed: u64,
    pub checkpoint_streams: u64,
    /// Checkpoints whose last frame came from a replica leaving its configuration.
    pub checkpoints_from_leaving: u64,
    pub catchups: u64,
    pub fetched_entries: u64,
    pub leader_changes: u64,
    /// OmniPaxos 0.2.4 workarounds that acted (`kvd::omnipaxos_workarounds`).
    pub stale_own_ballot: u64,
    pub stopsign_stalls: u64,
    pub stopsign_resyncs_fixed: u64,
    pub stopsign_from_storage: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        sum!(
            steps,
            sent,
            delivered,
            dropped,
            crashes,
            power_cuts,
            mid_iteration_crashes,
            cluster_power_cuts,
            restarts,
            pauses,
            partitions,
            heals,
            writes_acked,
            cas_answered,
            cas_swapped,
            compacts_answered,
            compacts_raised,
            leases_granted,
            lease_keepalives,
            leases_found_gone,
            leased_key_checks,
            history_events_checked,
            lin_reads_checked,
            local_reads_checked,
            unknown_outcomes,
            writes_not_applied,
            reconfigs_requested,
            reconfigs_done,
            switches,
            joins_completed,
            removals_retired,
            checkpoints_installed,
            checkpoint_streams,
            checkpoints_from_leaving,
            catchups,
            fetched_entries,
            leader_changes,
            stale_own_ballot,
            stopsign_stalls,
            stopsign_resyncs_fixed,
            stopsign_from_storage
        );
    }
}

/// Per-replica catch-up counters summed over its restarts (scenarios assert on them).
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub fetched_entries: u64,
    pub checkpoints_installed: u64,
    pub checkpoints_resumed: u64,
    pub catchups: u64,
}

/// A membership change the operator is driving: retried on replicas until it is answered.
struct OperatorChange {
    target: u32,
    nodes: Vec<u64>,
    give_up: u64,
    next_try: u64,
    attempt: Option<(
        u64,
        oneshot::Receiver<Result<ReconfigureResult, omnikv_common::api::ApiError>>,
    )>,
}

pub struct World {
    pub p: Params,
    pub settings: NodeSettings,
    pub nodes: BTreeMap<u64, SimNode>,
    pub net: SharedNet,
    pub rng: StdRng,
    /// Which hot-key puts are compare-and-swaps, and what they expect: a stream of its own,
    /// so the schedule (`rng`) draws what it drew before there were any.
    cas_rng: StdRng,
    compact_rng: StdRng,
    lease_rng: StdRng,
    pub step: u64,
    base: PathBuf,
    start: Instant,
    clients: Vec<Client>,
    pub history: History,
    change: Option<OperatorChange>,
    changes_started: u32,
    /// Pids never used yet (joiners get the next one; a removed pid is never reused).
    next_pid: u64,
    /// (configuration, index) -> hash of the entry decided there.
    decided: BTreeMap<(u32, u64), u64>,
    /// Applied position -> (state hash, keys, revision).
    hashes: BTreeMap<Position, (u64, u64, u64)>,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub node_stats: BTreeMap<u64, NodeStats>,
    pub trace: Rc<RefCell<Vec<String>>>,
    pub verbose: bool,
}

/// Where replicas' RocksDB directories go: tmpfs when there is one (fsync is cheap there;
/// power cuts are simulated by copying, not by the medium).
fn base_dir() -> PathBuf {
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
        let max_pid = p.n as u64 + 3 * u64::from(p.max_reconfigs.max(1));
        let net = Net::new(
            max_pid,
            StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b21),
            trace.clone(),
            verbose,
        );
        let net = Rc::new(RefCell::new(net));
        {
            let mut n = net.borrow_mut();
            n.p_drop = p.p_drop;
            n.max_delay = p.max_delay;
        }
        let settings = NodeSettings {
            initial_members: members.clone(),
            snapshot_interval: p.snapshot_interval,
            snapshot_keep: p.snapshot_keep,
            election_ticks: p.election_ticks,
            resend_ticks: p.resend_ticks,
            dedup_ttl_secs: p.dedup_ttl_secs,
            dedup_max_records: p.dedup_max_records,
            max_apply: p.max_apply,
            defect: p.defect,
        };
        let base = base_dir();
        let mut w = World {
            clients: (1..=p.clients)
                .map(|id| Client {
                    id,
                    next_seq: 1,
                    op: None,
                    lease: None,
                })
                .collect(),
            p,
            settings,
            nodes: BTreeMap::new(),
            net,
            rng: StdRng::seed_from_u64(seed ^ 0x005e_ed0f_0e11_1b42),
            cas_rng: StdRng::seed_from_u64(seed ^ 0x0063_6173_2d6f_7073),
            compact_rng: StdRng::seed_from_u64(seed ^ 0x636f_6d70_6163_7473),
            lease_rng: StdRng::seed_from_u64(seed ^ 0x6c65_6173_6573),
            step: 0,
            base,
            start: Instant::now(),
            history: History::default(),
            change: None,
            changes_started: 0,
            next_pid: members.len() as u64 + 1,
            decided: BTreeMap::new(),
            hashes: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            node_stats: BTreeMap::new(),
            trace,
            verbose,
        };
        w.log(format!("seed {seed}: {:?}", w.p));
        for &pid in &members {
            let node = SimNode::new(pid, &w.base, &w.settings, false);
            w.nodes.insert(pid, node);
            w.start_node(pid);
        }
        w
    }

    pub fn log(&self, line: impl AsRef<str>) {
        self.net.borrow().log(line);
    }

    pub fn now(&self) -> Instant {
        self.start + TICK * self.step as u32
    }

    pub fn node(&self, pid: u64) -> &SimNode {
        &self.nodes[&pid]
    }

    pub fn set_filter(&mut self, f: Option<Filter>) {
        self.net.borrow_mut().filter = f;
    }

    fn violation(&mut self, v: String) {
        self.log(format!("VIOLATION {v}"));
        self.violations.push(v);
    }

    // ---- replicas: start, crash, power cut, restart -------------------------------------

    fn start_node(&mut self, pid: u64) {
        let seed = self.rng.random();
        let now = self.now();
        // The wall clock a replica reads at start moves on with the simulated time.
        let unix_ms = SIM_EPOCH_MS + (now - self.start).as_millis() as u64;
        let node = self.nodes.get_mut(&pid).expect("known pid");
        node.start(&self.settings, &self.net, now, unix_ms, seed);
        let others: Vec<u64> = self.nodes.keys().copied().filter(|&q| q != pid).collect();
        let mut net = self.net.borrow_mut();
        net.up[pid as usize] = true;
        net.sessions_up(pid, others.into_iter());
    }

    fn fold_node_stats(&mut self, pid: u64) {
        let node = &self.nodes[&pid];
        if !node.is_up() {
            return;
        }
        let m = &node.metrics;
        let s = self.node_stats.entry(pid).or_default();
        s.fetched_entries += m.fetched_entries.get();
        s.checkpoints_installed += m.checkpoints_installed.get();
        s.checkpoints_resumed += m.checkpoints_resumed.get();
        s.catchups += m.catchups.get();
        let w = |name| m.workaround_count(name);
        self.stats.stale_own_ballot += w("stale_own_ballot");
        self.stats.stopsign_stalls += w("stopsign_stall");
        self.stats.stopsign_resyncs_fixed += w("stopsign_resync");
        self.stats.stopsign_from_storage += w("stopsign_from_storage");
        self.stats.fetched_entries += m.fetched_entries.get();
        self.stats.checkpoints_installed += m.checkpoints_installed.get();
        self.stats.catchups += m.catchups.get();
        self.stats.switches += m.reconfigurations.get();
    }

    fn take_down(&mut self, pid: u64, power_cut: bool) {
        self.fold_node_stats(pid);
        let node = self.nodes.get_mut(&pid).expect("known pid");
        if power_cut {
            node.power_cut();
        } else {
            node.crash();
        }
        let mut net = self.net.borrow_mut();
        net.up[pid as usize] = false;
        net.forget(pid);
    }

    /// The process of `pid` dies (what RocksDB wrote survives).
    pub fn crash(&mut self, pid: u64) {
        self.take_down_counted(pid, false);
    }

    /// `pid` loses power (only what was synced survives).
    pub fn power_cut(&mut self, pid: u64) {
        self.take_down_counted(pid, true);
    }

    fn take_down_counted(&mut self, pid: u64, power: bool) {
        if !self.node(pid).is_up() {
            return;
        }
        let (what, count) = if power {
            ("power cut", &mut self.stats.power_cuts)
        } else {
            ("crash", &mut self.stats.crashes)
        };
        *count += 1;
        self.log(format!("{what} {pid}"));
        self.take_down(pid, power);
    }

    fn crash_now(&mut self, pid: u64, power: bool) {
        self.stats.mid_iteration_crashes += 1;
        if power {
            self.power_cut(pid);
        } else {
            self.crash(pid);
        }
    }

    pub fn restart(&mut self, pid: u64) {
        if self.node(pid).is_up() {
            return;
        }
        self.log(format!("restart {pid}"));
        self.stats.restarts += 1;
        self.start_node(pid);
    }

    pub fn cut(&mut self, a: u64, b: u64) {
        if a != b && self.net.borrow_mut().cut.insert((a.min(b), a.max(b))) {
            self.log(format!("cut {a}-{b}"));
        }
    }

    pub fn isolate(&mut self, pid: u64) {
        let all: Vec<u64> = self.nodes.keys().copied().collect();
        for q in all {
            self.cut(pid, q);
        }
    }

    pub fn heal(&mut self) {
        let cut = std::mem::take(&mut self.net.borrow_mut().cut);
        if cut.is_empty() {
            return;
        }
        self.log(format!("heal {cut:?}"));
        self.stats.heals += 1;
        let mut net = self.net.borrow_mut();
        for (a, b) in cut {
            net.sessions_up(a, std::iter::once(b));
        }
    }

    // ---- clients ------------------------------------------------------------------------

    /// A new operation for idle client `c`, drawn from the seed.
    fn new_op(&mut self, c: usize) {
        let client = self.clients[c].id;
        let seq = self.clients[c].next_seq;
        self.clients[c].next_seq += 1;
        let r: f64 = self.rng.random();
        let hot = format!("h{}", self.rng.random_range(0..4)).into_bytes();
        let op = if r < self.p.p_lin_read {
            ClientOp::Get {
                key: hot,
                linearizable: true,
            }
        } else if r < self.p.p_lin_read + self.p.p_local_read {
            ClientOp::Get {
                key: hot,
                linearizable: false,
            }
        } else if self.rng.random_bool(0.1) {
            ClientOp::Delete { key: hot }
        } else {
            let unique = self.rng.random_bool(0.6);
            let key = if unique {
                format!("u{client}-{seq}").into_bytes()
            } else {
                hot
            };
            let value = format!("v{client}.{seq}@{}", self.step).into_bytes();
            if !unique && self.cas_rng.random_bool(0.5) {
                self.new_cas(key, value)
            } else {
                ClientOp::Put { key, value }
            }
        };
        // Some clients give up soon, as a kvctl with a short --timeout does; their failed
        // writes are what the checker holds `unavailable` to.
        let patience = if self.rng.random_bool(0.3) {
            self.rng.random_range(10..60)
        } else {
            400
        };
        // Now and then a compaction or a lease operation instead, each from its own stream
        // (the draws above stay).
        let op = if self.p.p_compact > 0.0 && self.compact_rng.random_bool(self.p.p_compact) {
            self.new_compact()
        } else if self.p.p_lease > 0.0 && self.lease_rng.random_bool(self.p.p_lease) {
            self.new_lease_op(c, seq)
        } else {
            op
        };
        self.begin_op(c, seq, op, self.step, self.step + patience, None);
    }

    /// Client `c`'s next lease operation: a grant when it holds no lease, then a put of a key
    /// of its own under it, then keepalives, now and then a revoke (the client lets the lease
    /// go as it asks: its key may vanish from then on).
    fn new_lease_op(&mut self, c: usize, seq: u64) -> ClientOp {
        let client = self.clients[c].id;
        match &self.clients[c].lease {
            None => ClientOp::Lease(LeaseOp::Grant {
                id: 0,
                ttl_ms: [300, 600, 1500][self.lease_rng.random_range(0..3)],
            }),
            Some(l) if l.key.is_none() => ClientOp::PutLeased {
                key: format!("l{client}-{seq}").into_bytes(),
                value: format!("lv{client}.{seq}@{}", self.step).into_bytes(),
                lease: l.id,
            },
            Some(l) => {
                let id = l.id;
                if self.lease_rng.random_bool(0.15) {
                    self.clients[c].lease = None;
                    ClientOp::Lease(LeaseOp::Revoke { id })
                } else {
                    ClientOp::Lease(LeaseOp::KeepAlive { id })
                }
            }
        }
    }

    /// What an answered lease operation tells client `c` about its lease. A lease found gone
    /// while it should live is a violation.
    fn follow_lease(&mut self, c: usize, f: &InFlight, outcome: &Option<(u64, Answer)>) {
        let Some((ret, Answer::Written(applied))) = outcome else {
            // Unknown: a grant may have happened (the lease then expires unseen); a keepalive
            // may have renewed it (the protection stays as the acknowledged ones made it).
            return;
        };
        let (sent, answered) = (f.call / 2, ret / 2);
        let client = self.clients[c].id;
        match f.op {
            ClientOp::Lease(LeaseOp::Grant { ttl_ms, .. }) => {
                // Answered from the dedup table or found existing after an eviction: either
                // way the lease is this request's, applied no earlier than it was sent.
                let ttl_steps = ttl_ms / TICK.as_millis() as u64;
                let id = omnikv_wire::request::lease_id_for(client, f.seq);
                self.log(format!(
                    "client {client}: lease {id:x} granted (sent in step {sent}, TTL {ttl_steps} \
                     steps)"
                ));
                self.clients[c].lease = Some(HeldLease {
                    id,
                    ttl_steps,
                    protected_until: sent + ttl_steps,
                    key: None,
                });
                self.stats.leases_granted += 1;
            }
            ClientOp::Lease(LeaseOp::KeepAlive { id }) | ClientOp::PutLeased { lease: id, .. } => {
                let Some(l) = self.clients[c].lease.as_mut().filter(|l| l.id == id) else {
                    return;
                };
                if !applied.succeeded {
                    let until = l.protected_until;
                    self.clients[c].lease = None;
                    self.stats.leases_found_gone += 1;
                    if answered < until {
                        self.violation(format!(
                            "client {client}: lease {id:x} not found at step {answered}, but \
                             a grant or keepalive sent before made it live until step {until}"
                        ));
                    }
                } else if let ClientOp::PutLeased { key, .. } = &f.op {
                    l.key = Some((key.clone(), applied.revision));
                } else {
                    l.protected_until = l.protected_until.max(sent + l.ttl_steps);
                    let line = format!(
                        "client {client}: lease {id:x} renewed (sent in step {sent}): lives \
                         until step {} at least",
                        l.protected_until
                    );
                    self.stats.lease_keepalives += 1;
                    self.log(line);
                }
            }
            _ => {}
        }
    }

    /// A compaction a little below the highest revision answered so far: mostly raising the
    /// compact revision, sometimes not above it (refused, nothing applied).
    fn new_compact(&mut self) -> ClientOp {
        let back = self.compact_rng.random_range(0..8);
        ClientOp::Compact {
            revision: self.history.highest_revision.saturating_sub(back).max(1),
        }
    }

    /// A compare-and-swap of hot key `key` to `value`, drawn from `cas_rng`: mostly from the
    /// value last written to it (which often holds), else from an older value or from absent.
    fn new_cas(&mut self, key: Vec<u8>, value: Vec<u8>) -> ClientOp {
        let written = self
            .history
            .written
            .get(&key)
            .map_or(&[][..], Vec::as_slice);
        let expect = match self.cas_rng.random_range(0..4) {
            0 => None,
            1 if !written.is_empty() => {
                Some(written[self.cas_rng.random_range(0..written.len())].clone())
            }
            _ => written.last().cloned(),
        };
        ClientOp::Cas {
            key,
            expect,
            value,
            by_version: self.cas_rng.random_bool(0.5),
        }
    }

    /// Client `c` starts `op` (its `seq`): first tried in step `start` (on `first_to` when
    /// given), given up after step `give_up`. A put's value joins the values ever written.
    fn begin_op(
        &mut self,
        c: usize,
        seq: u64,
        op: ClientOp,
        start: u64,
        give_up: u64,
        first_to: Option<u64>,
    ) {
        if let ClientOp::Put { key, value } | ClientOp::Cas { key, value, .. } = &op {
            self.history
                .written
                .entry(key.clone())
                .or_default()
                .push(value.clone());
        }
        self.clients[c].op = Some(InFlight {
            op,
            seq,
            call: 2 * start,
            give_up,
            attempt: None,
            next_try: start,
            attempts: 0,
            first_to,
            maybe_applied: false,
        });
    }

    /// A live replica, drawn from the seed (clients and the operator try them in turn, as
    /// kvctl tries its endpoints).
    fn pick_replica(&mut self) -> Option<u64> {
        let up: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_up())
            .map(|(&p, _)| p)
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.random_range(0..up.len())])
    }

    /// Client `c`'s next attempt, if one is due.
    fn attempt(&mut self, c: usize) {
        let step = self.step;
        let due =
            matches!(&self.clients[c].op, Some(f) if f.attempt.is_none() && f.next_try <= step);
        if !due {
            return;
        }
        let first_to = self.clients[c].op.as_mut().and_then(|f| f.first_to.take());
        let Some(pid) = first_to.or_else(|| self.pick_replica()) else {
            return;
        };
        let now = self.now();
        let client = self.clients[c].id;
        let f = self.clients[c].op.as_mut().expect("due");
        f.attempts += 1;
        // kvctl's default deadline, scaled: the loop retries within it.
        let deadline = now + TICK * 150;
        let (req, waiting) = clients::request(&f.op, (client, f.seq), deadline);
        f.attempt = Some((pid, waiting));
        let node = self.nodes.get_mut(&pid).expect("picked");
        node.replica_mut().handle(now, Input::Client(req));
    }

    fn clients_send(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].op.is_none()
                && self.p.p_op > 0.0
                && self.rng.random_bool(self.p.p_op)
            {
                self.new_op(c);
            }
            self.attempt(c);
        }
    }

    /// Collects the replies that came this step; finished operations go to the history.
    fn clients_collect(&mut self) {
        let ret = 2 * self.step + 1;
        for c in 0..self.clients.len() {
            let client = self.clients[c].id;
            let Some(f) = &mut self.clients[c].op else {
                continue;
            };
            let answer = match &mut f.attempt {
                Some((_, w)) => w.poll(),
                None => None,
            };
            let done = match answer {
                None => {
                    if f.attempt.is_none() && self.step >= f.give_up {
                        Some(None)
                    } else {
                        None
                    }
                }
                Some(Answer::Failed(e)) => {
                    if self.verbose {
                        let via = f.attempt.as_ref().map_or(0, |(p, _)| *p);
                        let line = format!(
                            "client {client} seq {} via {via}: {:?}: {}",
                            f.seq, e.error.code, e.error.message
                        );
                        self.net.borrow().log(line);
                    }
                    f.attempt = None;
                    // `unavailable` promises the write was not applied by this attempt; any
                    // other failure may hide one that was (or will be).
                    f.maybe_applied |= e.error.code != ErrorCode::Unavailable;
                    // Rejected (a stale retry refused): the client sees a definite error.
                    if e.error.code == ErrorCode::Rejected || self.step >= f.give_up {
                        Some(None)
                    } else {
                        f.next_try = self.step + 1 + u64::from(f.attempts.min(10));
                        None
                    }
                }
                Some(Answer::Lost) => {
                    f.attempt = None;
                    f.maybe_applied = true;
                    f.next_try = self.step + 5;
                    None
                }
                Some(a) => Some(Some((ret, a))),
            };
            if let Some(outcome) = done {
                let f = self.clients[c].op.take().expect("in flight");
                self.finish_op(c, f, outcome);
            }
        }
    }

    /// Client `c`'s operation `f` ended with `outcome`.
    fn finish_op(&mut self, c: usize, f: InFlight, outcome: Option<(u64, Answer)>) {
        let client = self.clients[c].id;
        if matches!(f.op, ClientOp::Lease(_) | ClientOp::PutLeased { .. }) {
            self.follow_lease(c, &f, &outcome);
        }
        match (&f.op, &outcome) {
            (ClientOp::Put { key, value }, Some((_, Answer::Written(_))))
                if key.starts_with(b"u") =>
            {
                self.history.acked_unique.insert(key.clone(), value.clone());
            }
            (
                ClientOp::Get {
                    key,
                    linearizable: false,
                },
                Some((_, Answer::Read(v))),
            ) => {
                self.history.local_reads += 1;
                if let Some(v) = v {
                    let known = self
                        .history
                        .written
                        .get(key)
                        .is_some_and(|vs| vs.contains(v));
                    if !known {
                        self.violation(format!(
                            "local read of {} returned {}, which no client wrote",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(v)
                        ));
                    }
                }
            }
            _ => {}
        }
        self.history.record(client, &f, outcome);
    }

    // ---- the operator: membership changes -----------------------------------------------

    /// The newest configuration a serving replica runs, with its members.
    pub fn current_config(&self) -> (u32, Vec<u64>) {
        self.nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.meta().lifecycle == Lifecycle::Serving)
            .map(|r| (r.meta().config_id, r.meta().members.clone()))
            .max()
            .unwrap_or((1, self.settings.initial_members.clone()))
    }

    /// Starts a new replica with an empty data dir, as a joiner; its pid.
    pub fn fresh_pid(&mut self) -> Option<u64> {
        let pid = self.next_pid;
        if pid as usize >= self.net.borrow().up.len() {
            return None;
        }
        self.next_pid += 1;
        let node = SimNode::new(pid, &self.base, &self.settings, true);
        self.nodes.insert(pid, node);
        self.log(format!("new replica {pid} (joiner)"));
        self.start_node(pid);
        Some(pid)
    }

    /// Asks for a membership change: add a new replica, remove one, or replace one, as the
    /// guards allow. A new replica is started (empty, as a joiner) before the request.
    pub fn request_change(&mut self, kind: Option<u32>) {
        let (_, members) = self.current_config();
        let kind = kind.unwrap_or_else(|| self.rng.random_range(0..3));
        let mut nodes = members.clone();
        match kind {
            0 if members.len() < 5 => {
                let Some(p) = self.fresh_pid() else { return };
                nodes.push(p);
            }
            1 if members.len() > 3 => {
                let i = self.rng.random_range(0..nodes.len());
                nodes.remove(i);
            }
            _ => {
                let i = self.rng.random_range(0..nodes.len());
                nodes.remove(i);
                let Some(p) = self.fresh_pid() else { return };
                nodes.push(p);
            }
        }
        self.request_nodes(nodes);
    }

    /// Asks for the change to exactly `nodes` (a new pid must have been started as a joiner).
    pub fn request_nodes(&mut self, mut nodes: Vec<u64>) {
        let (config, members) = self.current_config();
        nodes.sort_unstable();
        if check_change(&members, &nodes).is_err() {
            return;
        }
        self.log(format!(
            "operator: reconfigure c{config} {members:?} -> c{} {nodes:?}",
            config + 1
        ));
        self.stats.reconfigs_requested += 1;
        self.changes_started += 1;
        self.change = Some(OperatorChange {
            target: config + 1,
            nodes,
            give_up: self.step + 600,
            next_try: self.step,
            attempt: None,
        });
    }

    /// Sends the change to a replica (kvctl tries them in turn) until it is answered.
    fn drive_change(&mut self) {
        if self.change.is_none() {
            return;
        }
        let step = self.step;
        let (config, _) = self.current_config();
        let Some(ch) = &mut self.change else {
            return;
        };
        if config >= ch.target || step >= ch.give_up {
            let done = config >= ch.target;
            let target = ch.target;
            if done {
                self.stats.reconfigs_done += 1;
            }
            self.change = None;
            self.log(format!(
                "operator: change to c{target} {}",
                if done { "done" } else { "given up" }
            ));
            return;
        }
        if let Some((_, rx)) = &mut ch.attempt {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => ch.next_try = step + 10,
            }
            ch.attempt = None;
            return;
        }
        if step < ch.next_try {
            return;
        }
        let request = ReconfigureRequest {
            nodes: ch.nodes.clone(),
            config_id: Some(ch.target),
            force: false,
            peers: BTreeMap::new(),
        };
        let Some(pid) = self.pick_replica() else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        let now = self.now();
        self.change.as_mut().expect("driven").attempt = Some((pid, rx));
        let req = ClientRequest::Reconfigure {
            request,
            deadline: now + TICK * 200,
            reply,
        };
        self.nodes
            .get_mut(&pid)
            .expect("up")
            .replica_mut()
            .handle(now, Input::Client(req));
    }

    // ---- faults -------------------------------------------------------------------------

    fn random_faults(&mut self) {
        let p = self.p.clone();
        let pids: Vec<u64> = self.nodes.keys().copied().collect();
        let down = self.nodes.values().filter(|x| !x.is_up()).count();
        if p.p_crash > 0.0 && self.rng.random_bool(p.p_crash) && down < (p.n - 1) / 2 {
            let pid = pids[self.rng.random_range(0..pids.len())];
            let power = self.rng.random_bool(p.p_power_cut);
            if self.rng.random_bool(0.5) {
                // In the middle of its next iteration, at one of its persistence steps.
                let at = CRASH_POINTS[self.rng.random_range(0..CRASH_POINTS.len())];
                self.nodes.get_mut(&pid).expect("known").crash_at = Some((at, power));
            } else if power {
                self.power_cut(pid);
            } else {
                self.crash(pid);
            }
        }
        if p.p_cluster_power_cut > 0.0 && self.rng.random_bool(p.p_cluster_power_cut) {
            self.log("power cut of the whole cluster");
            self.stats.cluster_power_cuts += 1;
            for &pid in &pids {
                self.power_cut(pid);
            }
        }
        for &pid in &pids {
            if !self.node(pid).is_up() && self.rng.random_bool(p.p_restart) {
                self.restart(pid);
            }
        }
        if p.p_pause > 0.0 && self.rng.random_bool(p.p_pause) {
            let pid = pids[self.rng.random_range(0..pids.len())];
            let until = self.step + self.rng.random_range(5..40);
            self.log(format!("pause {pid} until step {until}"));
            self.stats.pauses += 1;
            self.nodes.get_mut(&pid).expect("known").paused_until = until;
        }
        if p.p_partition > 0.0 && self.rng.random_bool(p.p_partition) {
            self.stats.partitions += 1;
            match self.rng.random_range(0..3) {
                0 => {
                    let pid = pids[self.rng.random_range(0..pids.len())];
                    self.isolate(pid);
                }
                1 => {
                    let a = pids[self.rng.random_range(0..pids.len())];
                    let b = pids[self.rng.random_range(0..pids.len())];
                    self.cut(a, b);
                }
                _ => {
                    let side: Vec<bool> = pids.iter().map(|_| self.rng.random_bool(0.5)).collect();
                    for i in 0..pids.len() {
                        for j in i + 1..pids.len() {
                            if side[i] != side[j] {
                                self.cut(pids[i], pids[j]);
                            }
                        }
                    }
                }
            }
        }
        if !self.net.borrow().cut.is_empty() && self.rng.random_bool(p.p_heal) {
            self.heal();
        }
        if p.p_reconfig > 0.0
            && self.change.is_none()
            && self.changes_started < p.max_reconfigs
            && self.rng.random_bool(p.p_reconfig)
        {
            self.request_change(None);
        }
    }

    // ---- one step -----------------------------------------------------------------------

    /// One step: faults, clients, delivery and one loop iteration per live replica, checks.
    pub fn step(&mut self, faults: bool) {
        self.step += 1;
        self.stats.steps += 1;
        self.net.borrow_mut().step = self.step;
        if faults {
            self.random_faults();
        }
        self.clients_send();
        self.drive_change();
        let now = self.now();
        let (due, peer_up) = {
            let mut net = self.net.borrow_mut();
            let paused: BTreeSet<u64> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.paused_until > self.step)
                .map(|(&p, _)| p)
                .collect();
            let due = net.due(self.step, &paused);
            let peer_up = std::mem::take(&mut net.peer_up);
            (due, peer_up)
        };
        let verbose = self.verbose;
        // Each replica's frames, in delivery order.
        let mut inbound: BTreeMap<u64, Vec<Msg>> = BTreeMap::new();
        for m in due {
            if matches!(m.frame, kvd::frame::PeerFrame::CheckpointDone { .. })
                && self.nodes[&m.from].lifecycle() == Some(Lifecycle::Leaving)
            {
                self.stats.checkpoints_from_leaving += 1;
            }
            inbound.entry(m.to).or_default().push(m);
        }
        let pids: Vec<u64> = self.nodes.keys().copied().collect();
        for pid in pids {
            let node = self.nodes.get_mut(&pid).expect("known");
            if !node.is_up() || node.paused_until > self.step {
                continue;
            }
            let crash_at = node.crash_at.take();
            let armed = crash_at.or(node.crash_when_reached);
            let frames = inbound.remove(&pid).unwrap_or_default();
            let r = node.replica.as_mut().expect("up");
            kvd::failpoint::unwind_at(armed.map(|(at, _)| at));
            let iteration = catch_unwind(AssertUnwindSafe(|| {
                for &(to, peer) in &peer_up {
                    if to == pid {
                        r.handle(now, Input::PeerUp(peer));
                    }
                }
                for m in frames {
                    if verbose {
                        self.net.borrow().log(format!("deliver {}", m.describe()));
                    }
                    r.handle(
                        now,
                        Input::Peer {
                            from: m.from,
                            frame: m.frame,
                        },
                    );
                }
                r.finish_iteration(now);
            }));
            kvd::failpoint::unwind_at(None);
            match (iteration, crash_at) {
                (Ok(()), None) => self.observe(pid),
                (Ok(()), Some((at, power))) => {
                    // The step was not reached this iteration: the crash comes after it.
                    self.log(format!(
                        "{pid} did not reach {at}: crashes after its iteration"
                    ));
                    self.crash_now(pid, power);
                }
                (Err(p), _) if p.is::<kvd::failpoint::Crashed>() => {
                    let (at, power) = armed.expect("a crash only where one was armed");
                    self.nodes.get_mut(&pid).expect("known").crash_when_reached = None;
                    self.log(format!("{pid} crashes at {at}"));
                    self.crash_now(pid, power);
                }
                (Err(p), _) => std::panic::resume_unwind(p),
            }
        }
        self.clients_collect();
    }

    /// The checks after a replica's iteration.
    fn observe(&mut self, pid: u64) {
        let node = &self.nodes[&pid];
        let r = node.replica();
        let db = node.db.as_ref().expect("up").clone();
        let config = r.meta().config_id;
        let leader = r.current_leader();
        let lifecycle = r.meta().lifecycle;
        let state = r.state();
        let decided = r.decided_idx();
        let indices = r.paxos_indices();
        let (mut observed, prev_leader) = (node.observed, node.leader);
        // The library's accepted index is the stored log end, plus one with a StopSign stored
        // (nothing waits in memory), and its decided index is never past that.
        let lm = read_log_meta(&db, config).expect("log meta");
        if let Some((accepted, dec)) = indices {
            let stored = lm.log_end as u64 + u64::from(lm.stopsign.is_some());
            if accepted != stored || dec > stored {
                self.violation(format!(
                    "replica {pid}: c{config} accepted index {accepted}, decided {dec}, but it \
                     stores a log up to {} {} a StopSign",
                    lm.log_end,
                    if lm.stopsign.is_some() {
                        "with"
                    } else {
                        "without"
                    }
                ));
            }
        }
        // Decided entries agree with what every other replica decided at that index.
        if observed.0 != config {
            observed = (config, 0);
        }
        if lifecycle != Lifecycle::Removed && decided > observed.1 {
            let lo = observed.1.max(lm.compacted as u64);
            let hi = decided.min(lm.log_end as u64);
            if lo < hi {
                match read_log_range(&db, config, lo as usize, hi as usize) {
                    Ok(Some(es)) => {
                        for (i, e) in es.iter().enumerate() {
                            self.check_entry(pid, config, lo + i as u64, e);
                        }
                    }
                    _ => self.violation(format!(
                        "replica {pid}: decided entries [{lo},{hi}) of c{config} not readable"
                    )),
                }
            }
            observed.1 = decided;
        }
        // The state at an applied position is the same everywhere.
        if !self.nodes[&pid].replica().is_catching_up() && lifecycle != Lifecycle::Joining {
            let here = (state.hash, state.keys, state.revision);
            match self.hashes.get(&state.applied) {
                Some(&(h, k, rev)) if (h, k, rev) != here => self.violation(format!(
                    "replica {pid} at {:?} has state hash {:x} ({} keys, revision {}), another \
                     replica had {h:x} ({k} keys, revision {rev})",
                    state.applied, state.hash, state.keys, state.revision
                )),
                Some(_) => {}
                None => {
                    self.hashes.insert(state.applied, here);
                }
            }
        }
        if !self.nodes[&pid].replica().is_catching_up() && lifecycle != Lifecycle::Joining {
            self.check_leased_keys(pid, state.revision);
        }
        if leader != prev_leader && leader == Some(pid) {
            self.stats.leader_changes += 1;
            self.log(format!(
                "replica {pid}: leader of c{config} (applied {:?})",
                state.applied
            ));
        }
        let node = self.nodes.get_mut(&pid).expect("known");
        node.observed = observed;
        node.leader = leader;
        let before = node.lifecycle_seen.replace(lifecycle);
        match (before, lifecycle) {
            (Some(Lifecycle::Joining), Lifecycle::Serving) => self.stats.joins_completed += 1,
            (Some(b), Lifecycle::Removed) if b != Lifecycle::Removed => {
                self.stats.removals_retired += 1
            }
            _ => {}
        }
    }

    /// A key under a lease that must still live is on replica `pid` (at store revision
    /// `revision`) wherever its put was applied. Not judged while a replica catches up or
    /// joins, as the state hash is not.
    fn check_leased_keys(&mut self, pid: u64, revision: u64) {
        let mut gone = Vec::new();
        for cl in &self.clients {
            let Some(l) = &cl.lease else { continue };
            let Some((key, put_at)) = &l.key else {
                continue;
            };
            if self.step < l.protected_until && revision >= *put_at {
                self.stats.leased_key_checks += 1;
                if self.nodes[&pid].replica().local_value(key).is_none() {
                    gone.push(format!(
                        "replica {pid} at step {} (revision {revision}): {} is gone, but its \
                         lease {:x} lives until step {} at least",
                        self.step,
                        String::from_utf8_lossy(key),
                        l.id,
                        l.protected_until
                    ));
                }
            }
        }
        for v in gone {
            self.violation(v);
        }
    }

    fn check_entry(&mut self, pid: u64, config: u32, idx: u64, e: &LogCmd) {
        let d = pair_hash(b"entry", &kvd::codec::encode(e));
        match self.decided.get(&(config, idx)) {
            Some(&old) if old != d => self.violation(format!(
                "replica {pid} decided entry c{config}#{idx} = {e:?}, differs from what another \
                 replica decided"
            )),
            Some(_) => {}
            None => {
                self.decided.insert((config, idx), d);
            }
        }
    }

    // ---- runs ---------------------------------------------------------------------------

    /// The random schedule: `steps` steps with faults, then heal everything and run until
    /// every replica converges (liveness), then the end-of-run checks.
    pub fn run_random(&mut self) -> Result<(), Violation> {
        for _ in 0..self.p.steps {
            self.step(true);
            self.fail_fast()?;
        }
        self.settle()
    }

    /// Every live replica's log meta and stored log, for a failure's trace.
    pub fn dump_logs(&self) {
        for n in self.nodes.values().filter(|n| n.is_up()) {
            let c = n.replica().meta().config_id;
            let db = n.db.as_ref().expect("up");
            let Ok(lm) = read_log_meta(db, c) else {
                continue;
            };
            let mut line = format!(
                "replica {} c{c}: decided {} compacted {} log_end {} indices {:?} stopsign {}:",
                n.pid,
                lm.decided,
                lm.compacted,
                lm.log_end,
                n.replica().paxos_indices(),
                lm.stopsign.is_some()
            );
            for i in lm.compacted..lm.log_end {
                if let Ok(Some(e)) = read_log_range(db, c, i, i + 1) {
                    let ops: Vec<String> = e[0].ops.iter().map(Op::describe).collect();
                    let _ = write!(line, " #{i}={}", ops.join("+"));
                }
            }
            self.log(line);
        }
    }

    fn fail_fast(&self) -> Result<(), Violation> {
        match self.violations.first() {
            Some(v) => {
                self.dump_logs();
                Err(v.clone())
            }
            None => Ok(()),
        }
    }

    /// Heals the network, restarts every replica, makes the network reliable, and runs until
    /// all replicas agree (members serving one state, removed ones retired), every client
    /// operation is resolved, and no change is pending. Then the end-of-run checks.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.log("settle: heal, restart all, reliable network");
        self.heal();
        let pids: Vec<u64> = self.nodes.keys().copied().collect();
        for &pid in &pids {
            let node = self.nodes.get_mut(&pid).expect("known");
            node.paused_until = 0;
            node.crash_at = None;
            self.restart(pid);
        }
        {
            let mut net = self.net.borrow_mut();
            net.p_drop = 0.0;
            net.max_delay = net.max_delay.min(1);
            net.filter = None;
        }
        self.p.p_op = 0.0;
        let start = self.step;
        let mut probes = 0;
        loop {
            self.fail_fast()?;
            if self.converged() {
                break;
            }
            if self.step - start >= self.p.settle_steps {
                return Err(format!(
                    "liveness: not converged {} steps after healing: {}",
                    self.p.settle_steps,
                    self.summary()
                ));
            }
            if self.verbose && (self.step - start).is_multiple_of(50) {
                let s = self.summary();
                self.log(format!("settling: {s}"));
            }
            // A probe write at a time keeps traffic flowing (a lagging follower is only
            // re-synced by new traffic); convergence is judged with no operation open.
            let open = self.clients.iter().any(|c| c.op.is_some());
            if (self.step - start).is_multiple_of(5) && probes < 200 && !open {
                probes += 1;
                self.probe();
            }
            self.step(false);
        }
        self.log(format!("converged: {}", self.summary()));
        for pid in pids {
            self.fold_node_stats(pid);
        }
        self.end_checks()
    }

    /// A unique-key write by client 1 (the settle phase's traffic).
    fn probe(&mut self) {
        self.put_unique(None);
    }

    /// A unique-key write by client 1 (once it is idle), sent in the next step, first to `via`
    /// when given, then retried as every write is.
    pub fn put_unique(&mut self, via: Option<u64>) {
        // Client 1 finishes what it is doing first.
        for _ in 0..1000 {
            if self.clients[0].op.is_none() {
                break;
            }
            self.step(false);
        }
        assert!(
            self.clients[0].op.is_none(),
            "client 1 stays busy: {}",
            self.summary()
        );
        let client = self.clients[0].id;
        let seq = self.clients[0].next_seq;
        self.clients[0].next_seq += 1;
        let op = ClientOp::Put {
            key: format!("u{client}-{seq}").into_bytes(),
            value: format!("probe{seq}").into_bytes(),
        };
        self.begin_op(0, seq, op, self.step + 1, self.step + 400, via);
    }

    /// Converged: no client operation or change open; the members of the newest
    /// configuration up, serving, not catching up, at one applied position and state hash,
    /// decided = applied; every other replica that ever ran a configuration retired.
    pub fn converged(&self) -> bool {
        if self.change.is_some() || self.clients.iter().any(|c| c.op.is_some()) {
            return false;
        }
        let (config, members) = self.current_config();
        let mut first = None;
        for n in self.nodes.values() {
            let Some(r) = &n.replica else { return false };
            let m = r.meta();
            if members.contains(&n.pid) {
                let ok = m.lifecycle == Lifecycle::Serving
                    && !r.is_catching_up()
                    && m.config_id == config
                    && r.decided_idx() == r.state().applied.index;
                if !ok {
                    return false;
                }
                let s = r.state();
                match first {
                    None => first = Some((s.applied, s.hash, s.revision)),
                    Some(f) if f != (s.applied, s.hash, s.revision) => return false,
                    Some(_) => {}
                }
            } else if m.config_id != 0 && m.lifecycle != Lifecycle::Removed {
                return false;
            }
        }
        true
    }

    fn end_checks(&mut self) -> Result<(), Violation> {
        let (_, members) = self.current_config();
        // Every acknowledged write is in every member's state.
        for pid in &members {
            let r = self.nodes[pid].replica();
            for (k, v) in &self.history.acked_unique {
                let got = r.local_value(k);
                if got.as_deref() != Some(v.as_slice()) {
                    return Err(format!(
                        "acknowledged write {}={} missing on replica {pid}: {:?}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v),
                        got.map(|g| String::from_utf8_lossy(&g).into_owned())
                    ));
                }
            }
        }
        // The client history is linearizable per key.
        match check_with_budget(&KvModel, &self.history.ops, 2_000_000) {
            Some(Verdict::Linearizable) => {}
            Some(Verdict::NotLinearizable(v)) => {
                let ops: Vec<String> = v
                    .ops
                    .iter()
                    .map(|&i| format!("{:?}", self.history.ops[i]))
                    .collect();
                return Err(format!(
                    "not linearizable: {v}\n  sub-history:\n  {}",
                    ops.join("\n  ")
                ));
            }
            None => {
                return Err(format!(
                    "linearizability check inconclusive ({} ops)",
                    self.history.ops.len()
                ))
            }
        }
        self.check_histories()?;
        self.stats.writes_acked = self.history.writes_acked;
        self.stats.cas_answered = self.history.cas_answered;
        self.stats.cas_swapped = self.history.cas_swapped;
        self.stats.compacts_answered = self.history.compacts_answered;
        self.stats.compacts_raised = self.history.compacts_raised;
        self.stats.lin_reads_checked = self.history.lin_reads;
        self.stats.local_reads_checked = self.history.local_reads;
        self.stats.unknown_outcomes = self.history.unknown;
        self.stats.writes_not_applied = self.history.not_applied;
        let net = self.net.borrow();
        self.stats.sent = net.stats.sent;
        self.stats.delivered = net.stats.delivered;
        self.stats.dropped = net.stats.dropped;
        self.stats.checkpoint_streams = net.stats.checkpoint_streams;
        drop(net);
        self.fail_fast()
    }

    /// Each member's stored change history (the events watch serves) against the applied
    /// writes: it starts at or above the compact revision, which is the same on every member
    /// and not below any acknowledged compaction; whole revisions from its first to the
    /// store's revision, with no gap; the same events at a revision on every member;
    /// replaying it (from an empty store when it starts at revision 1) gives each key's final
    /// value and counters, its events' `prev_value`, versions and create revisions follow
    /// from the ones before; and every acknowledged change is at the revision its client was
    /// answered with.
    pub fn check_histories(&mut self) -> Result<(), Violation> {
        use kvd::state_machine::history::{self, HistoryRead};
        use kvd::state_machine::{Event, EventKind, KvRecord, Overlay};
        let (_, members) = self.current_config();
        // Revision -> its events, as the first member read them.
        let mut seen: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        let mut lowest_first = u64::MAX;
        let mut compact_revisions = std::collections::BTreeSet::new();
        for pid in &members {
            let node = &self.nodes[pid];
            let db = node.db.as_ref().expect("a converged member is up");
            let revision = node.replica().state().revision;
            let err = |what: &str| format!("replica {pid}'s change history: {what}");
            let first = match history::read(db, 0, 0) {
                Ok(HistoryRead::Compacted { first }) => first,
                Ok(HistoryRead::Events { .. }) => return Err(err("holds revision 0")),
                Err(e) => return Err(err(&e.to_string())),
            };
            lowest_first = lowest_first.min(first);
            // Compactions: every member applied each one acknowledged (the compact revision
            // is state, a checkpoint carries it), so its history starts at or above it.
            let compacted =
                kvd::state_machine::load_compacted(db).map_err(|e| err(&e.to_string()))?;
            if compacted < self.history.compacted_to {
                return Err(err(&format!(
                    "compact revision {compacted}, below {} which a compaction was \
                     acknowledged with",
                    self.history.compacted_to
                )));
            }
            if first < compacted {
                return Err(err(&format!(
                    "starts at revision {first}, below its compact revision {compacted}"
                )));
            }
            compact_revisions.insert(compacted);
            let (events, through) = match history::read(db, first, usize::MAX) {
                Ok(HistoryRead::Events { events, through }) => (events, through),
                Ok(HistoryRead::Compacted { first: f }) => {
                    return Err(err(&format!(
                        "read from its first revision {first}: compacted at {f}"
                    )))
                }
                Err(e) => return Err(err(&e.to_string())),
            };
            if through != revision {
                return Err(err(&format!(
                    "read through revision {through}, the store is at {revision}"
                )));
            }
            self.stats.history_events_checked += events.len() as u64;
            // Whole revisions, in order, none missing.
            let mut next = first;
            for group in events.chunk_by(|a, b| a.revision == b.revision) {
                let rev = group[0].revision;
                if rev != next {
                    return Err(err(&format!("revision {rev} follows {}", next - 1)));
                }
                next += 1;
                match seen.get(&rev) {
                    Some(other) if other.as_slice() != group => {
                        return Err(err(&format!(
                            "revision {rev} is {group:?}, another member's is {other:?}"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(rev, group.to_vec());
                    }
                }
            }
            if next != revision + 1 {
                return Err(err(&format!(
                    "ends at revision {}, the store is at {revision}",
                    next - 1
                )));
            }
            // Replay. Keys whose state before the history is unknown (it starts after
            // revision 1 and has not touched them yet) are not judged until it does.
            let from_empty = first == 1;
            let mut replay: BTreeMap<Vec<u8>, Option<KvRecord>> = BTreeMap::new();
            for e in &events {
                let before = match replay.get(&e.key) {
                    Some(b) => Some(b.clone()),
                    None if from_empty => Some(None),
                    None => None,
                };
                let after = match e.kind {
                    EventKind::Put => Some(KvRecord {
                        create_revision: e.create_revision,
                        mod_revision: e.revision,
                        version: e.version,
                        value: e.value.clone(),
                        // Events do not carry the lease (compared without it below).
                        lease: 0,
                    }),
                    EventKind::Delete => None,
                };
                if let Some(before) = before {
                    let want = after.as_ref().map(|_| match &before {
                        Some(b) => (b.create_revision, b.version + 1),
                        None => (e.revision, 1),
                    });
                    let got = after.as_ref().map(|a| (a.create_revision, a.version));
                    let prev = before.as_ref().map(|b| &b.value);
                    if e.prev_value.as_ref() != prev || got != want {
                        return Err(err(&format!(
                            "event {e:?} after {before:?}: expected prev {prev:?} and \
                             (create revision, version) {want:?}"
                        )));
                    }
                }
                replay.insert(e.key.clone(), after);
            }
            let mut state: BTreeMap<Vec<u8>, KvRecord> = BTreeMap::new();
            Overlay::default()
                .scan(db, &kvd::command::KeyRange::prefix(b""), |k, r| {
                    state.insert(k.to_vec(), r.clone());
                    true
                })
                .map_err(|e| err(&e.to_string()))?;
            for (k, r) in &replay {
                let held = state.get(k).map(|r| KvRecord {
                    lease: 0,
                    ..r.clone()
                });
                if held.as_ref() != r.as_ref() {
                    return Err(err(&format!(
                        "its last event for {} leaves {r:?}, the store holds {:?}",
                        String::from_utf8_lossy(k),
                        state.get(k)
                    )));
                }
            }
            for (k, r) in &state {
                if (from_empty || r.mod_revision >= first) && !replay.contains_key(k) {
                    return Err(err(&format!(
                        "no event for {} (mod revision {}), held since revision {first}",
                        String::from_utf8_lossy(k),
                        r.mod_revision
                    )));
                }
            }
        }
        if compact_revisions.len() > 1 {
            return Err(format!(
                "the members' compact revisions differ: {compact_revisions:?}"
            ));
        }
        // Each acknowledged change is in the history at its revision.
        for (rev, key, value) in &self.history.changes {
            if *rev < lowest_first {
                continue;
            }
            let kind = if value.is_some() {
                EventKind::Put
            } else {
                EventKind::Delete
            };
            let found = seen.get(rev).is_some_and(|es| {
                es.iter().any(|e| {
                    e.kind == kind && &e.key == key && value.as_ref().is_none_or(|v| &e.value == v)
                })
            });
            if !found {
                return Err(format!(
                    "acknowledged {kind:?} of {}={:?} at revision {rev} is not in the change \
                     history there: {:?}",
                    String::from_utf8_lossy(key),
                    value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                    seen.get(rev)
                ));
            }
        }
        Ok(())
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        for n in self.nodes.values() {
            let Some(r) = &n.replica else {
                let _ = write!(s, "[{} down] ", n.pid);
                continue;
            };
            let m = r.state();
            let _ = write!(
                s,
                "[{} c{} {:?} applied {:?} decided {} compacted {} leader {:?} catchup {} hash {:x}] ",
                n.pid,
                r.meta().config_id,
                r.meta().lifecycle,
                m.applied,
                r.decided_idx(),
                r.compacted_idx(),
                r.current_leader(),
                r.is_catching_up(),
                m.hash
            );
        }
        let open = self.clients.iter().filter(|c| c.op.is_some()).count();
        let _ = write!(s, "open ops {open} change {}", self.change.is_some());
        s
    }

    /// A digest of the run (trace excluded): equal for equal seeds.
    pub fn digest(&self) -> u64 {
        let mut d = format!("{:?}", self.stats);
        for n in self.nodes.values() {
            if let Some(r) = &n.replica {
                let _ = write!(d, "{:?}", r.state());
            }
        }
        pair_hash(b"digest", d.as_bytes())
    }
}
