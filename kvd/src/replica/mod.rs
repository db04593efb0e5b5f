//! The consensus loop as a sans-IO state machine: the one owner of the OmniPaxos instance and
//! the state machine. Time, the network and randomness come from outside: the caller passes
//! `now` to `handle` and `finish_iteration`, peers are reached through the `Peers` trait, and
//! the RNG is seeded from the config. kvd's consensus thread (`consensus_thread.rs`) drives it
//! with the real clock, inbox and TCP sessions; the deterministic simulator (kvd/tests/sim)
//! drives this very code with its seeded clock and network.
//!
//! One iteration: `handle` each queued input -> `finish_iteration`: tick, retry and time out,
//! propose, apply newly decided entries, make every write durable with ONE WAL sync (group
//! commit), send outgoing messages, answer clients, compact. Nothing leaves before the sync
//! that covers it, except a leader's AcceptDecide/Decide (docs/architecture.md, "Design
//! decisions": the durability rule).
//!
//! The loop is split by concern: `requests` (writes, local reads, timeouts), `read_index`
//! (linearizable reads: quorum rounds, no log writes), `reconfig`
//! (changes, announcements, joining, retiring), `catchup` (fetching entries, checkpoints),
//! `views` (status and the other read-only answers), `handoff` (moving leadership, the drain
//! before a stop); the OmniPaxos 0.2.4 workarounds live in
//! `crate::omnipaxos_workarounds`.

mod catchup;
mod handoff;
mod leases;
mod phases;
mod read_index;
mod reconfig;
mod requests;
#[cfg(test)]
mod tests;
mod views;

use crate::command::{LogCmd, Op};
use crate::frame::{PeerFrame, Transition};
pub use crate::inbox::Drained;
use crate::inbox::{Input, ReadAnswer, Reply, WriteAnswer};
use crate::membership::{ClusterMeta, Lifecycle};
use crate::metrics::Metrics;
use crate::omnipaxos_workarounds::{
    fix_stopsign_resync, stopsign_pending, without_entry_reads, StaleOwnBallot, StopSignResync,
    StopSignStall,
};
use crate::peers::Peers;
use crate::space::SpaceGuard;
use crate::state_machine::{DedupLimits, HistoryLimits, Position, SmMeta, StateMachine};
use crate::storage::{read_log_range, Db, LogStore};
use catchup::CatchUp;
use omnikv_common::api::{ApiError, ErrorCode, ReconfigureResult};
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use omnipaxos::storage::{Storage, StorageOp};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use reconfig::{Announcing, ReconfigInFlight};
use requests::PendingWrite;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Largest batch of operations carried by one log entry, in bytes.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// A loop iteration at least this long that is the longest so far is logged with its phases.
const LONG_ITERATION: Duration = Duration::from_millis(20);
/// Most entries applied in one iteration (also bounded by `LoopConfig::max_apply`): a backlog
/// (the entries decided while a checkpoint was installed, 1,110 in the behind-compaction
/// benchmark) is applied over several iterations, each well under 50 ms, instead of in one
/// (102 ms there). Steady state applies far fewer per iteration.
const APPLY_PER_ITERATION: u64 = 256;
/// Largest answer to a FetchEntries, in bytes.
const FETCH_BYTES: usize = 4 * 1024 * 1024;

/// The loop's timers. `Default` holds kvd's values (tick and retry come from its flags); the
/// simulator scales them to its steps.
#[derive(Clone, Debug)]
pub struct Timers {
    /// One OmniPaxos tick (its election, resend and flush clocks count these).
    pub tick: Duration,
    /// A write not decided after this is proposed again (backing off), a read round not
    /// confirmed (or a read-index request not answered) starts over, and a
    /// StopSign not stored after this is proposed again.
    pub retry: Duration,
    /// A catch-up request unanswered this long goes to another peer.
    pub catchup: Duration,
    /// A refused checkpoint request is sent again (to the next member) after this long.
    pub checkpoint_retry: Duration,
    /// A decided change is pushed to the new members this often until they hold the state.
    pub announce_every: Duration,
    /// A straggler is told about the change at most this often.
    pub straggler_every: Duration,
    /// How long a member told of a change waits for its own log to decide the StopSign
    /// before it takes the state by checkpoint instead.
    pub straggle_grace: Duration,
    /// How long a reconfigure waits for a majority of the new members to become reachable.
    pub quorum_wait: Duration,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            tick: Duration::from_millis(10),
            retry: Duration::from_secs(1),
            catchup: Duration::from_secs(3),
            checkpoint_retry: Duration::from_millis(300),
            announce_every: Duration::from_millis(500),
            straggler_every: Duration::from_secs(1),
            straggle_grace: Duration::from_secs(2),
            quorum_wait: Duration::from_secs(3),
        }
    }
}

/// A deliberate defect, switched on only by tests to show that they catch each one: the
/// simulator's mutation tests, and the chaos test through kvd's `KVD_TEST_DEFECT` (never set
/// in a deployment; kvd logs a warning when it is). Each breaks one rule the loop depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// Apply ignores the dedup table: a retried write is applied again.
    ApplyIgnoresDedup,
    /// Everything is sent before the iteration's sync: a follower acknowledges entries that a
    /// power cut can still take away.
    SendBeforeSync,
    /// The apply cursor trusts the library's compaction: when the compacted index passes it,
    /// it jumps there instead of fetching the missing entries.
    TrustLibraryCompaction,
    /// A linearizable read is served by the leader at once, before the quorum round that
    /// confirms it still leads (a deposed leader then serves stale values).
    ReadBeforeQuorum,
    /// OmniPaxos's outgoing messages are taken once per iteration instead of after each
    /// handled message (the loop before the fix for simulator seed 3: a stale AcceptDecide).
    OutgoingOncePerIteration,
    /// Lease checkpoints carry no renewal counts (what `--legacy-lease-checkpoints` proposes):
    /// one decided after a keepalive it predates cuts the renewed lease short.
    UncountedLeaseCheckpoints,
}

impl Defect {
    const ALL: [Defect; 6] = [
        Defect::ApplyIgnoresDedup,
        Defect::SendBeforeSync,
        Defect::TrustLibraryCompaction,
        Defect::ReadBeforeQuorum,
        Defect::OutgoingOncePerIteration,
        Defect::UncountedLeaseCheckpoints,
    ];

    /// The defect named in kebab case (`read-before-quorum`), as `KVD_TEST_DEFECT` names it.
    pub fn parse(name: &str) -> Option<Defect> {
        Defect::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Its kebab-case name.
    pub fn name(self) -> String {
        let mut out = String::new();
        for (i, ch) in format!("{self:?}").chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        }
        out
    }
}

/// Static settings of the loop.
pub struct LoopConfig {
    pub pid: u64,
    /// Proves a cluster id a joiner is told (with the initial members it is derived from).
    pub cluster_token: String,
    /// A member's peer address from env (explicit map, then template), if it names one.
    pub peer_address: Arc<dyn Fn(u64) -> Option<String> + Send + Sync>,
    pub timers: Timers,
    pub election_ticks: u64,
    pub resend_ticks: u64,
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub max_inflight: usize,
    /// Most entries applied per iteration, and served per FetchEntries (keeps iterations
    /// short while catching up).
    pub max_apply: usize,
    pub dedup: DedupLimits,
    /// How much change history (for watch) to keep.
    pub history: HistoryLimits,
    /// Where applied changes are published to live watchers.
    pub watch_hub: crate::watch::Hub,
    /// The data dir and the free space to keep on it (0: no guard).
    pub data_dir: std::path::PathBuf,
    pub min_free_bytes: u64,
    /// The loop's clock at start, and the wall clock (ms since the Unix epoch) then: a write's
    /// timestamp is `started_unix_ms` + the time since `started` (dedup ages by it).
    pub started: Instant,
    pub started_unix_ms: u64,
    /// Seeds the loop's RNG (client ids of anonymous writes, barrier and checkpoint ids).
    pub seed: u64,
    /// Test-only: a deliberate defect (`Defect`). None in kvd unless `KVD_TEST_DEFECT` names
    /// one.
    pub defect: Option<Defect>,
    /// Leases that may exist at once: a grant beyond them is refused (by the proposer).
    pub max_leases: usize,
    /// Lease checkpoints in the format older replicas decode (`--legacy-lease-checkpoints`).
    pub legacy_lease_checkpoints: bool,
    /// Whether received checkpoints are written on a thread of their own (kvd) or inline
    /// when the loop hands them over (the simulator, whose runs must be a function of the
    /// seed): `checkpoint::Installer`.
    pub install_on_thread: bool,
}

/// The log under the state machine: OmniPaxos, or a trivial local log when the
/// configuration has a single member (standalone mode; OmniPaxos refuses one node).
enum Log {
    Paxos(Box<OmniPaxos<LogCmd, LogStore>>),
    Local(Box<LogStore>),
    /// No configuration to run: a joiner not yet told its configuration, or retired.
    None,
}

/// Why the log did not take an entry.
enum AppendError {
    /// A StopSign is stored: the configuration is closing; retry in the next one.
    Reconfiguring,
    Other(String),
}

pub struct Replica<P: Peers> {
    cfg: LoopConfig,
    /// The time of the event being handled (`handle` / `finish_iteration` set it).
    now: Instant,
    rng: StdRng,
    space: SpaceGuard,
    /// Persisted identity, configuration (id and members: the log this replica runs) and
    /// lifecycle.
    meta: ClusterMeta,
    peers: P,
    reconfig: Option<ReconfigInFlight>,
    reconfig_replies: Vec<(
        Reply<ReconfigureResult>,
        Result<ReconfigureResult, ApiError>,
    )>,
    announcing: Option<Announcing>,
    /// Serving a configuration grown from a single server that a majority of it is not yet
    /// known to hold the state of: writes are held back (`check_change`'s growth rule).
    growth_pending: bool,
    /// A change we were told of but cannot bridge yet (our log has not decided its StopSign).
    straggling: Option<(Transition, Instant)>,
    stragglers_told: BTreeMap<u64, Instant>,
    /// Replicas that announced the change we are joining (re-announced every
    /// `announce_every` until we hold the state, so a restart loses nothing here): they hold
    /// its starting state.
    announcers: BTreeSet<u64>,
    db: Db,
    log: Log,
    sm: StateMachine,
    metrics: Arc<Metrics>,
    // Ordered maps: iteration order is part of what the loop does (retries are batched in
    // it), and the simulator needs a run to be a function of its seed.
    pending_writes: BTreeMap<(u64, u64), PendingWrite>,
    to_propose: Vec<Op>,
    /// Linearizable reads in flight (`read_index`).
    reads: read_index::Reads,
    /// Replies held until the iteration's sync.
    write_replies: Vec<(Reply<WriteAnswer>, Result<WriteAnswer, ApiError>)>,
    read_replies: Vec<(Reply<ReadAnswer>, Result<ReadAnswer, ApiError>)>,
    catchup: Option<CatchUp>,
    /// Writes received checkpoints (off the loop in kvd).
    installer: crate::checkpoint::Installer,
    /// A checkpoint's first chunk is staged (or a switch emptied the state), and the install
    /// has not completed: the state counts as incomplete until a checkpoint lands (persisted
    /// as `checkpoint_receiving`).
    state_replaced: bool,
    /// How long to wait for the sender of an interrupted transfer before starting over.
    resume_deadline: Option<Instant>,
    /// Ticks spent leading with an undecided StopSign (`StopSignStall`).
    stopsign_stall: StopSignStall,
    /// A recovered promise of our own ballot, watched until it is replaced (`StaleOwnBallot`).
    stale_own_ballot: Option<StaleOwnBallot>,
    lease_clock: leases::LeaseClock,
    /// Leader hand-off and the drain before a stop (`handoff`).
    handoff: handoff::Handoff,
    leader: Option<u64>,
    last_decided: u64,
    outgoing: Vec<Message<LogCmd>>,
    /// Messages of a configuration this replica just left (its last Decide among them), sent
    /// after the sync under that configuration's id.
    retired_outgoing: Vec<(u32, Message<LogCmd>)>,
    next_tick: Instant,
    next_timeout_scan: Instant,
    rr: usize,
    /// Where the current iteration's time went (logged for the longest iteration).
    phases: phases::Phases,
}

/// The log of configuration `config_id`: OmniPaxos, or the standalone local log.
/// `holds_state`: a replica without state (a joiner) gets the lower leader priority, so a fresh
/// configuration elects a member that holds the state rather than one about to spend its
/// loop installing a checkpoint (priority breaks ties between equal ballots, as at start).
fn build_log(
    cfg: &LoopConfig,
    db: &Db,
    config_id: u32,
    members: &[u64],
    holds_state: bool,
) -> Result<Log, String> {
    let store = LogStore::open(db.clone(), config_id).map_err(|e| e.to_string())?;
    if members.len() == 1 {
        return Ok(Log::Local(Box::new(store)));
    }
    let server_config = ServerConfig {
        pid: cfg.pid,
        election_tick_timeout: cfg.election_ticks,
        resend_message_tick_timeout: cfg.resend_ticks,
        // Never buffer entries in memory: each append is written (and synced by the loop)
        // before its Accept leaves. Our own batching is the LogCmd batch.
        batch_size: 1,
        flush_batch_tick_timeout: 1,
        buffer_size: 1024,
        leader_priority: u32::from(holds_state),
    };
    let op_config = OmniPaxosConfig {
        cluster_config: ClusterConfig {
            configuration_id: config_id,
            nodes: members.to_vec(),
            flexible_quorum: None,
        },
        server_config,
    };
    Ok(Log::Paxos(Box::new(
        op_config.build(store).map_err(|e| e.to_string())?,
    )))
}

fn unavailable(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
}

impl<P: Peers> Replica<P> {
    /// Builds the loop over the persisted state: the configuration, lifecycle and member
    /// addresses in `meta`, the log and state machine in `db`. `now` is the loop's clock.
    pub fn new(
        cfg: LoopConfig,
        mut meta: ClusterMeta,
        db: Db,
        peers: P,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Self, String> {
        let switched =
            crate::checkpoint::resume_interrupted_install(&db).map_err(|e| e.to_string())?;
        let receiving = crate::checkpoint::Progress::load(&db).map_err(|e| e.to_string())?;
        let limits = (cfg.dedup, cfg.history);
        let installer = if cfg.install_on_thread {
            crate::checkpoint::Installer::threaded(db.clone(), limits)
        } else {
            crate::checkpoint::Installer::inline(db.clone(), limits)
        };
        let mut sm =
            StateMachine::load(db.clone(), cfg.dedup, cfg.history).map_err(|e| e.to_string())?;
        sm.set_ignore_dedup(cfg.defect == Some(Defect::ApplyIgnoresDedup));
        if switched {
            // A checkpoint's switch, interrupted by a crash, was finished just now: its state
            // is this configuration's (or the one it started from; the install checked).
            metrics.checkpoints_installed.inc();
            if meta.lifecycle == Lifecycle::Joining {
                meta.lifecycle = Lifecycle::Serving;
                meta.save_synced(&db).map_err(|e| e.to_string())?;
                info!(
                    config_id = meta.config_id,
                    "joined: holds the state and serves"
                );
            }
        }
        if meta.lifecycle == Lifecycle::Serving && sm.applied().config_id != meta.config_id {
            let from_last_config = meta
                .last_transition
                .as_ref()
                .is_some_and(|t| sm.applied() == t.ends_at());
            if sm.applied() == Position::default() || from_last_config {
                // A fresh store, or the end of the configuration we switched from.
                sm.set_applied(Position {
                    config_id: meta.config_id,
                    index: 0,
                })
                .map_err(|e| e.to_string())?;
            } else {
                warn!(applied = ?sm.applied(), config_id = meta.config_id,
                      "state does not match the configuration; taking it from a member");
                meta.lifecycle = Lifecycle::Joining;
            }
        }
        let log = match meta.lifecycle {
            Lifecycle::Removed => Log::None,
            _ if meta.config_id == 0 => Log::None,
            _ => build_log(
                &cfg,
                &db,
                meta.config_id,
                &meta.members,
                meta.lifecycle == Lifecycle::Serving,
            )?,
        };
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let reads = read_index::Reads::new(&mut rng);
        // A new leader gives clients the time an election takes (about three rounds) to reach
        // it with their keepalives.
        let lease_grace = cfg.timers.tick * (cfg.election_ticks as u32).saturating_mul(3);
        let mut lease_clock = leases::LeaseClock::new(sm.leases().iter(), now, lease_grace);
        let uncounted = cfg.defect == Some(Defect::UncountedLeaseCheckpoints);
        lease_clock.set_legacy_checkpoints(cfg.legacy_lease_checkpoints || uncounted);
        let mut r = Replica {
            lease_clock,
            space: SpaceGuard::new(cfg.data_dir.clone(), cfg.min_free_bytes, now),
            next_tick: now + cfg.timers.tick,
            now,
            rng,
            meta,
            cfg,
            peers,
            reconfig: None,
            reconfig_replies: Vec::new(),
            announcing: None,
            growth_pending: false,
            straggling: None,
            stragglers_told: BTreeMap::new(),
            announcers: BTreeSet::new(),
            db,
            log,
            sm,
            metrics,
            pending_writes: BTreeMap::new(),
            to_propose: Vec::new(),
            reads,
            write_replies: Vec::new(),
            read_replies: Vec::new(),
            catchup: None,
            installer,
            state_replaced: receiving.is_some(),
            resume_deadline: None,
            stale_own_ballot: None,
            stopsign_stall: StopSignStall::default(),
            handoff: Default::default(),
            leader: None,
            last_decided: 0,
            outgoing: Vec::new(),
            retired_outgoing: Vec::new(),
            next_timeout_scan: now,
            rr: 0,
            phases: phases::Phases::new(),
        };
        let mut known: Vec<u64> = r.meta.members.clone();
        if let Some(t) = &r.meta.last_transition {
            known.extend(&t.members);
        }
        r.ensure_links(&known);
        r.watch_own_ballot();
        if r.meta.lifecycle == Lifecycle::Joining && r.meta.config_id != 0 {
            r.start_joining_catchup();
        } else if r.state_replaced && r.meta.lifecycle == Lifecycle::Serving {
            warn!("a checkpoint transfer was interrupted: resuming it");
            r.start_catchup();
        }
        if let (Some(t), Lifecycle::Serving | Lifecycle::Leaving) =
            (r.meta.last_transition.clone(), r.meta.lifecycle)
        {
            // Re-announce after a restart: members that hold the state answer at once.
            r.announce(t);
        }
        r.growth_pending = r.serves_grown_configuration();
        r.last_decided = r.decided_idx();
        r.metrics.applied_idx.set(r.sm.applied().index as i64);
        r.metrics.revision.set(r.sm.meta().revision as i64);
        r.metrics.leases.set(r.sm.leases().len() as i64);
        r.metrics
            .history_first_revision
            .set(r.sm.history().first as i64);
        r.db.sync().map_err(|e| e.to_string())?;
        Ok(r)
    }

    /// When the loop next has timed work to do (its next tick), if no input comes first.
    pub fn next_wakeup(&self) -> Instant {
        self.next_tick
    }

    /// Makes everything durable before the loop stops.
    pub fn shutdown(&mut self) {
        if let Err(e) = self.db.sync() {
            warn!(error = %e, "final sync failed");
        }
        info!("consensus loop stopped");
    }

    /// Handles one input at `now`. Its effects (messages, replies) leave in the next
    /// `finish_iteration`, after the sync that covers them.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = now;
        let kind = phases::input_kind(&input);
        self.handle_input(input);
        self.phases.mark(kind);
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Peer { from, frame } => self.handle_peer(from, frame),
            Input::PeerUp(pid) => {
                if let Log::Paxos(op) = &mut self.log {
                    // Re-sync with a peer whose session came back, except while a StopSign is
                    // stored (OmniPaxos 0.2.4 re-sync bug, docs/architecture.md).
                    if self.meta.members.contains(&pid) && !stopsign_pending(op) {
                        op.reconnected(pid);
                    }
                }
            }
            Input::Client(req) => {
                if let Some(req) = self.refuse_if_draining(req) {
                    self.handle_client(req)
                }
            }
            Input::Drain { deadline, reply } => self.start_drain(deadline, reply),
            Input::Shutdown => {}
        }
    }

    /// Ends an iteration at `now`: timed work, proposals, applying, the one sync, sending,
    /// answering, compacting. Storage errors panic: the process then ends (kvd's panic hook
    /// aborts), as OmniPaxos itself does on them.
    pub fn finish_iteration(&mut self, now: Instant) {
        self.now = now;
        self.phases.mark("inputs");
        if now >= self.next_tick {
            self.tick();
            self.next_tick += self.cfg.timers.tick;
            if self.next_tick < now {
                self.next_tick = now + self.cfg.timers.tick;
            }
            self.phases.mark("tick");
        }
        let scan = now >= self.next_timeout_scan;
        if let Some(low) = self.space.refresh(now) {
            self.metrics.nospace.set(i64::from(low));
            if low {
                warn!(free = ?self.space.free(), "{}", self.space.message());
            } else {
                info!(free = ?self.space.free(), "free space back above the minimum: writes accepted again");
            }
        }
        if scan {
            self.scan_timeouts();
            self.drive_reconfig();
            self.drive_leases();
            self.next_timeout_scan = now + self.cfg.timers.tick;
        }
        self.drive_handoff();
        if !self.holds_proposals() {
            self.propose_queued();
        }
        self.start_reads();
        self.phases.mark("timers+propose");
        self.apply_decided();
        self.phases.mark("apply");
        self.serve_confirmed();
        if scan || self.reconfig.is_some() {
            // Storage is checked, not `is_reconfigured()` (0.2.4 re-sync bug, docs/architecture.md).
            self.check_stopsign();
        }
        self.check_straggling();
        self.push_announcements();
        self.phases.mark("reads+changes");
        // Group commit: one WAL sync covers the log and Paxos writes of this iteration (and
        // the applied batches before them). An iteration that only applied decided entries
        // does not sync: they are durable in the log already. A leader's AcceptDecide and
        // Decide leave before the sync (they overlap the followers' fsyncs): a decision needs
        // Accepted replies, which this loop handles in a later iteration, after this sync made
        // the leader's own entries durable. Everything else leaves after it.
        let send_all_first = self.cfg.defect == Some(Defect::SendBeforeSync);
        self.send_outgoing(!send_all_first);
        self.phases.mark("send");
        crate::failpoint::hit("before-sync");
        self.db.sync_required().expect("WAL sync failed");
        crate::failpoint::hit("after-sync");
        self.phases.mark("sync");
        self.metrics.fsyncs.inner().store(
            self.db.syncs.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.send_outgoing(false);
        self.phases.mark("send");
        for (reply, result) in self.write_replies.drain(..) {
            let _ = reply.send(result);
        }
        for (reply, result) in self.read_replies.drain(..) {
            let _ = reply.send(result);
        }
        for (reply, result) in self.reconfig_replies.drain(..) {
            let _ = reply.send(result);
        }
        self.phases.mark("replies");
        self.maybe_compact();
        self.phases.mark("compact");
        self.observe_leader();
        self.phases.mark("leader");
    }

    /// Starts the account of an iteration's phases (kvd's consensus thread, before its
    /// first input).
    pub fn begin_iteration(&mut self) {
        self.phases.begin();
    }

    /// Records how long one iteration (its inputs and `finish_iteration`) took, as measured
    /// by the driver (kvd's consensus thread: the real clock). The longest so far is logged
    /// with where its time went, once it exceeds `LONG_ITERATION`.
    pub fn observe_iteration(&self, took: Duration) {
        self.metrics
            .loop_iteration_seconds
            .observe(took.as_secs_f64());
        let us = took.as_micros().min(i64::MAX as u128) as i64;
        if us > self.metrics.loop_longest_iteration_us.get() {
            self.metrics.loop_longest_iteration_us.set(us);
            if took >= LONG_ITERATION {
                info!(
                    took_ms = us / 1000,
                    phases = %self.phases.describe(),
                    "longest loop iteration so far"
                );
            }
        }
    }

    /// One OmniPaxos tick, and the workarounds that count ticks.
    fn tick(&mut self) {
        let Log::Paxos(op) = &mut self.log else {
            return;
        };
        op.tick();
        if let Some(w) = &mut self.stale_own_ballot {
            if let Some(ran) = w.tick(op) {
                if ran {
                    self.metrics.workaround("stale_own_ballot");
                    warn!(promise = ?op.get_promise(),
                          "still behind our own ballot from before the restart: running for a higher one");
                }
                self.stale_own_ballot = None;
            }
        }
        if self
            .stopsign_stall
            .tick(op, self.cfg.pid, self.cfg.resend_ticks)
        {
            self.metrics.workaround("stopsign_stall");
            warn!(promise = ?op.get_promise(),
                  "our StopSign is not decided: running for a higher ballot to collect the followers' accepted indices");
        }
    }

    // ---- read-only accessors (status, tests, the simulator's checks) ---------------------

    /// The persisted membership record this replica runs on.
    pub fn meta(&self) -> &ClusterMeta {
        &self.meta
    }

    /// The state machine's position, key count and state hash.
    pub fn state(&self) -> SmMeta {
        self.sm.meta()
    }

    /// A key's value in the local state (no consistency guarantee).
    pub fn local_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sm.get(key).expect("reading the local state")
    }

    /// The library's accepted and decided indices (None without an OmniPaxos log).
    pub fn paxos_indices(&self) -> Option<(u64, u64)> {
        match &self.log {
            Log::Paxos(op) => Some((op.get_accepted_idx() as u64, op.get_decided_idx() as u64)),
            _ => None,
        }
    }

    pub fn is_catching_up(&self) -> bool {
        self.catchup.is_some()
    }

    // ---- log abstraction -------------------------------------------------------------

    pub fn decided_idx(&self) -> u64 {
        match &self.log {
            Log::Paxos(op) => op.get_decided_idx() as u64,
            Log::Local(s) => s.get_decided_idx().expect("cached") as u64,
            Log::None => 0,
        }
    }

    pub fn compacted_idx(&self) -> u64 {
        match &self.log {
            Log::Paxos(op) => op.get_compacted_idx() as u64,
            Log::Local(s) => s.get_compacted_idx().expect("cached") as u64,
            Log::None => 0,
        }
    }

    /// Leader of the current configuration as this replica believes; never a leader for a
    /// replica that is leaving or removed (status reports the current configuration only).
    pub fn current_leader(&self) -> Option<u64> {
        if matches!(self.meta.lifecycle, Lifecycle::Leaving | Lifecycle::Removed) {
            return None;
        }
        match &self.log {
            Log::Paxos(op) => op.get_current_leader().map(|(p, _)| p),
            Log::Local(_) => Some(self.cfg.pid),
            Log::None => None,
        }
    }

    /// Hands one entry to the log. Err = not handed over.
    fn append(&mut self, cmd: LogCmd) -> Result<(), AppendError> {
        match &mut self.log {
            Log::Paxos(op) => op.append(cmd).map_err(|e| match e {
                omnipaxos::ProposeErr::PendingReconfigEntry(_) => AppendError::Reconfiguring,
                other => AppendError::Other(format!("{other:?}")),
            }),
            Log::Local(s) => {
                let other = |e: Box<dyn std::error::Error>| AppendError::Other(e.to_string());
                if s.get_stopsign().map_err(other)?.is_some() {
                    return Err(AppendError::Reconfiguring); // growing: closed (reconfig.rs)
                }
                s.append_entry(cmd).map_err(other)?;
                let end = s.get_log_len().expect("cached") + s.get_compacted_idx().expect("cached");
                s.set_decided_idx(end).map_err(other)
            }
            Log::None => Err(AppendError::Other(
                "this replica runs no configuration".into(),
            )),
        }
    }

    /// Watches the log just opened for a recovered promise of our own ballot.
    fn watch_own_ballot(&mut self) {
        self.stale_own_ballot = match &self.log {
            Log::Paxos(op) => StaleOwnBallot::watch(op, self.cfg.pid, self.cfg.election_ticks),
            _ => None,
        };
    }

    // ---- peer frames -----------------------------------------------------------------

    fn handle_peer(&mut self, from: u64, frame: PeerFrame) {
        if let Some(c) = frame.config_id() {
            if c < self.meta.config_id {
                self.tell_straggler(from);
            }
            if c != self.meta.config_id
                || !self.meta.members.contains(&from)
                || matches!(self.log, Log::None)
            {
                self.metrics.peer_frames_dropped.inc();
                return;
            }
        }
        match frame {
            PeerFrame::NewConfig(a) => self.on_announcement(from, a),
            PeerFrame::NewConfigAck {
                config_id,
                holds_state,
            } => self.on_announcement_ack(from, config_id, holds_state),
            PeerFrame::Hello(_) => {}
            PeerFrame::Paxos { msg, .. } => self.handle_paxos(from, msg),
            PeerFrame::FetchEntries {
                from: start, to, ..
            } => self.serve_fetch(from, start, to),
            PeerFrame::Entries {
                from: start,
                entries,
                ..
            } => self.on_entries(from, start, entries),
            PeerFrame::EntriesUnavailable {
                from: start,
                applied,
                ..
            } => self.on_entries_unavailable(from, start, applied),
            PeerFrame::CheckpointRequest { id, config_id } => {
                self.on_checkpoint_request(from, id, config_id)
            }
            PeerFrame::CheckpointChunk { id, seq, items } => {
                self.on_checkpoint_chunk(from, id, seq, items)
            }
            PeerFrame::CheckpointStart { id, keys, bytes } => {
                self.on_checkpoint_start(from, id, keys, bytes)
            }
            PeerFrame::CheckpointAck { id, seq } => self.on_checkpoint_ack(from, id, seq),
            PeerFrame::CheckpointResume {
                id,
                next_seq,
                crc,
                after,
                ..
            } => self.on_checkpoint_resume(
                from,
                id,
                crate::checkpoint::Resume {
                    next_seq,
                    crc,
                    after,
                },
            ),
            PeerFrame::CheckpointDone {
                id,
                chunks,
                crc,
                meta,
            } => self.on_checkpoint_done(from, id, chunks, crc, meta),
            PeerFrame::CheckpointRefused { id, reason } => {
                self.on_checkpoint_refused(from, id, &reason)
            }
            PeerFrame::TakeLeadership { accepted_idx, .. } => {
                self.on_take_leadership(from, accepted_idx)
            }
            PeerFrame::LeadershipRefused { reason, .. } => {
                self.on_leadership_refused(from, &reason)
            }
            PeerFrame::ReadProbe {
                ballot, nonce, seq, ..
            } => self.on_read_probe(from, ballot, nonce, seq),
            PeerFrame::ReadProbeAck {
                ballot, nonce, seq, ..
            } => self.on_read_probe_ack(from, ballot, nonce, seq),
            PeerFrame::ReadIndexRequest { id, .. } => self.on_read_index_request(from, id),
            PeerFrame::ReadIndexReply { id, index, .. } => self.on_read_index_reply(id, index),
        }
    }

    fn handle_paxos(&mut self, from: u64, mut msg: Message<LogCmd>) {
        let Log::Paxos(op) = &mut self.log else {
            return;
        };
        // A re-sync over our stored StopSign, corrected for the 0.2.4 off-by-one first
        // (omnipaxos_workarounds.rs): left as it is, it puts our accepted and decided indices
        // past the StopSign, and a later re-sync panics the library.
        let c = self.meta.config_id;
        match fix_stopsign_resync(&self.db, c, op.get_decided_idx(), &mut msg) {
            Ok(StopSignResync::Untouched) => {}
            Ok(StopSignResync::Dropped) => {
                self.metrics.workaround("stopsign_resync");
                debug!(from, "re-sync over our decided StopSign not handed over");
                return;
            }
            Ok(r) => {
                self.metrics.workaround("stopsign_resync");
                debug!(from, result = ?r, "re-sync over our StopSign corrected")
            }
            Err(e) => panic!("reading the log metadata: {e}"),
        }
        op.handle_incoming(msg);
        if self.cfg.defect == Some(Defect::OutgoingOncePerIteration) {
            return;
        }
        // Take what it queued at once (sent after the sync as ever). OmniPaxos 0.2.4 appends
        // later entries to a queued AcceptDecide; after a Promise handled in the same batch
        // (AcceptSync queued, that AcceptDecide not forgotten), the follower stores them one
        // slot early and decides a different entry there (found by the simulator, seed 3).
        op.take_outgoing_messages(&mut self.outgoing);
    }

    // ---- applying --------------------------------------------------------------------

    fn apply_decided(&mut self) {
        let decided = self.decided_idx();
        if decided > self.last_decided {
            self.metrics.decided.inc_by(decided - self.last_decided);
            self.last_decided = decided;
        }
        self.metrics.decided_idx.set(decided as i64);
        self.metrics.compacted_idx.set(self.compacted_idx() as i64);
        if self.catchup.is_some() {
            self.catchup_tick();
            return;
        }
        let applied = self.sm.applied().index;
        if decided <= applied {
            return;
        }
        if self.compacted_idx() > applied {
            if self.cfg.defect == Some(Defect::TrustLibraryCompaction) {
                // The defect: take the library's compaction as if it held the state.
                let to = Position {
                    config_id: self.meta.config_id,
                    index: self.compacted_idx(),
                };
                self.sm.set_applied(to).expect("moving the applied cursor");
                return;
            }
            // The library compacted past our cursor (a re-sync): fetch what we missed.
            self.start_catchup();
            return;
        }
        let mut to = decided.min(applied + self.apply_batch());
        let mut read = read_log_range(&self.db, self.meta.config_id, applied as usize, to as usize);
        if let Ok(None) = read {
            // A decided StopSign counts in the decided index but is no log entry: apply up
            // to it (the switch follows in check_stopsign).
            if let Ok(Some((_, end))) =
                crate::membership::stored_stopsign(&self.db, self.meta.config_id)
            {
                if end < to {
                    to = end;
                    read = read_log_range(
                        &self.db,
                        self.meta.config_id,
                        applied as usize,
                        to as usize,
                    );
                }
            }
        }
        let entries = match read {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.start_catchup();
                return;
            }
            Err(e) => panic!("reading decided entries: {e}"),
        };
        if entries.is_empty() {
            return;
        }
        self.apply_entries(&entries);
    }

    /// How many decided entries one iteration applies (or one FetchEntries asks for).
    fn apply_batch(&self) -> u64 {
        (self.cfg.max_apply as u64).min(APPLY_PER_ITERATION)
    }

    fn apply_entries(&mut self, entries: &[LogCmd]) {
        self.phases.mark("apply");
        let first = self.sm.applied().index;
        // The per-entry log line costs string building per operation: only when it is shown.
        let described = if tracing::enabled!(tracing::Level::INFO) {
            entries
        } else {
            &[][..]
        };
        for (i, e) in described.iter().enumerate() {
            let ops: Vec<String> = e.ops.iter().take(4).map(Op::describe).collect();
            let more = e.ops.len().saturating_sub(4);
            if more > 0 {
                info!(
                    idx = first + i as u64,
                    "decided: {} (+{more} more)",
                    ops.join("; ")
                );
            } else {
                info!(idx = first + i as u64, "decided: {}", ops.join("; "));
            }
        }
        let pending = &self.pending_writes;
        let wanted = |req: &crate::command::ReqId| pending.contains_key(&(req.client, req.seq));
        let results = self
            .sm
            .apply(self.meta.config_id, entries, &wanted)
            .unwrap_or_else(|e| panic!("applying entries: {e}"));
        self.metrics.applied.inc_by(entries.len() as u64);
        self.metrics.applied_idx.set(self.sm.applied().index as i64);
        let events = self.sm.take_events();
        let revision = self.sm.meta().revision;
        self.metrics.revision.set(revision as i64);
        self.metrics
            .history_first_revision
            .set(self.sm.history().first as i64);
        self.cfg.watch_hub.publish(events, revision);
        let lease_changes = self.sm.take_lease_changes();
        self.lease_clock.apply(&lease_changes, self.now);
        self.metrics.leases.set(self.sm.leases().len() as i64);
        self.answer_applied(results);
        self.phases.mark("apply-entries");
    }

    // ---- compaction ------------------------------------------------------------------

    /// Compacts locally every `snapshot_interval` entries, only below the applied index that
    /// the last sync made durable, keeping `snapshot_keep` entries for behind peers.
    fn maybe_compact(&mut self) {
        if self.catchup.is_some() {
            return;
        }
        let durable_applied = self.sm.applied().index;
        let target = durable_applied.saturating_sub(self.cfg.snapshot_keep);
        let compacted = self.compacted_idx();
        if target < compacted + self.cfg.snapshot_interval {
            return;
        }
        crate::failpoint::hit("compact");
        let result = match &mut self.log {
            Log::Paxos(op) => without_entry_reads(|| op.snapshot(Some(target as usize), true))
                .map_err(|e| format!("{e:?}")),
            Log::None => return,
            Log::Local(s) => s
                .write_atomically(vec![
                    StorageOp::Trim(target as usize),
                    StorageOp::SetCompactedIdx(target as usize),
                    StorageOp::SetSnapshot(Some(crate::command::Marker)),
                ])
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => info!(
                upto = target,
                "log compacted: entries [0, {target}) squashed into a snapshot marker"
            ),
            Err(e) => debug!(error = %e, "compaction skipped"),
        }
    }

    // ---- outputs ---------------------------------------------------------------------

    /// Sends OmniPaxos's outgoing messages: before the iteration's sync only a leader's
    /// AcceptDecide and Decide (see `finish_iteration`), the rest held until after it.
    fn send_outgoing(&mut self, only_early: bool) {
        if !only_early {
            for (config_id, msg) in std::mem::take(&mut self.retired_outgoing) {
                let to = msg.get_receiver();
                self.peers.send(to, PeerFrame::Paxos { config_id, msg });
            }
        }
        let Log::Paxos(op) = &mut self.log else {
            return;
        };
        op.take_outgoing_messages(&mut self.outgoing);
        let send: Vec<Message<LogCmd>> = if only_early {
            // A leader's AcceptDecide and Decide may leave before the sync, but never ahead
            // of a held message to the same peer: an AcceptDecide overtaking the AcceptSync
            // it follows finds the follower still preparing, is dropped, and the next one's
            // sequence gap forces a re-sync (the library's own, past our StopSign guard).
            let mut early = Vec::new();
            let mut held = Vec::new();
            let mut held_for = HashSet::new();
            for m in std::mem::take(&mut self.outgoing) {
                let to = m.get_receiver();
                let decide = matches!(
                    m,
                    Message::SequencePaxos(PaxosMessage {
                        msg: PaxosMsg::AcceptDecide(_) | PaxosMsg::Decide(_),
                        ..
                    })
                );
                if decide && !held_for.contains(&to) {
                    early.push(m);
                } else {
                    held_for.insert(to);
                    held.push(m);
                }
            }
            self.outgoing = held;
            early
        } else {
            std::mem::take(&mut self.outgoing)
        };
        for msg in send {
            let to = msg.get_receiver();
            let frame = PeerFrame::Paxos {
                config_id: self.meta.config_id,
                msg,
            };
            if !self.peers.send(to, frame) {
                self.metrics.peer_frames_dropped.inc();
            }
        }
    }

    fn observe_leader(&mut self) {
        let leader = self.current_leader();
        if leader != self.leader {
            if leader.is_some() {
                self.metrics.leader_changes.inc();
            }
            info!(pid = self.cfg.pid, leader = ?leader, "leader changed");
            self.leader = leader;
        }
    }

    /// Milliseconds since the Unix epoch by the loop's clock (write timestamps).
    fn unix_ms(&self) -> u64 {
        let since = self.now.saturating_duration_since(self.cfg.started);
        self.cfg.started_unix_ms + since.as_millis() as u64
    }
}
