//! The consensus loop: the one owner of the OmniPaxos instance and the state machine.
//!
//! Everything else talks to it through one bounded inbox (`Input`). Each iteration:
//! drain what is queued -> feed OmniPaxos (peer frames, proposals, ticks) -> apply newly
//! decided entries -> make every write durable with ONE WAL sync (group commit) -> send
//! outgoing messages -> answer clients -> compact. Nothing leaves before the sync that
//! covers it (DESIGN.md, durability rule).

use crate::checkpoint;
use crate::command::{LogCmd, Op, ReqId};
use crate::frame::PeerFrame;
use crate::metrics::Metrics;
use crate::state_machine::{Applied, DedupLimits, Position, Refusal, StateMachine};
use crate::storage::{read_log_range, Db, LogStore};
use crate::transport::PeerLink;
use omnikv_common::api::{ApiError, ErrorCode, LogEntryView, LogView, StatusView, WriteResult};
use omnipaxos::messages::Message;
use omnipaxos::storage::{Storage, StorageOp};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// Largest batch of operations carried by one log entry, in bytes.
const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Most inputs handled per iteration before the loop syncs and answers.
const MAX_DRAIN: usize = 8192;
/// Most entries applied per iteration (keeps iterations short while catching up).
const MAX_APPLY: usize = 2048;
/// Largest answer to a FetchEntries, in bytes.
const FETCH_BYTES: usize = 4 * 1024 * 1024;
/// A catch-up request unanswered this long goes to another peer.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the consensus loop reacts to.
pub enum Input {
    Peer { from: u64, frame: PeerFrame },
    PeerUp(u64),
    Client(ClientRequest),
    Shutdown,
}

pub enum WriteKind {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// A value read, and the applied position it was read at.
pub struct ReadValue {
    pub value: Option<Vec<u8>>,
    pub index: u64,
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum ClientRequest {
    Write {
        kind: WriteKind,
        /// (client id, seq) from the caller; None = kvd picks a fresh one.
        id: Option<(u64, u64)>,
        deadline: Instant,
        reply: Reply<WriteResult>,
    },
    Read {
        key: Vec<u8>,
        linearizable: bool,
        deadline: Instant,
        reply: Reply<ReadValue>,
    },
    Status {
        reply: oneshot::Sender<StatusView>,
    },
    Log {
        limit: usize,
        reply: oneshot::Sender<LogView>,
    },
}

/// Static settings of the loop.
pub struct LoopConfig {
    pub pid: u64,
    pub cluster_id: u64,
    pub tick: Duration,
    pub election_ticks: u64,
    pub resend_ticks: u64,
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub max_inflight: usize,
    pub retry: Duration,
    pub dedup: DedupLimits,
}

/// The log under the state machine: OmniPaxos, or a trivial local log when the
/// configuration has a single member (standalone mode; OmniPaxos refuses one node).
enum Log {
    Paxos(Box<OmniPaxos<LogCmd, LogStore>>),
    Local(LogStore),
}

struct PendingWrite {
    op: Op,
    replies: Vec<Reply<WriteResult>>,
    deadline: Instant,
    next_retry: Instant,
    /// Proposals so far: retries back off (waits of 1x, 2x, 4x, then 8x the retry period) so a
    /// long stall
    /// does not fill the log with copies (they would be applied once, but still logged).
    proposals: u32,
    /// Handed to OmniPaxos at least once: a timeout is then indeterminate, not unavailable.
    handed: bool,
}

struct PendingRead {
    key: Vec<u8>,
    deadline: Instant,
    reply: Reply<ReadValue>,
}

struct BarrierWait {
    reads: Vec<PendingRead>,
    next_retry: Instant,
}

enum CatchUp {
    Fetching {
        asked: u64,
        asked_at: Instant,
        unavailable: HashMap<u64, u64>,
    },
    Checkpoint {
        rx: checkpoint::Receiver,
        last_progress: Instant,
    },
}

pub struct Replica {
    cfg: LoopConfig,
    config_id: u32,
    members: Vec<u64>,
    db: Db,
    log: Log,
    sm: StateMachine,
    peers: HashMap<u64, PeerLink>,
    metrics: Arc<Metrics>,
    pending_writes: HashMap<(u64, u64), PendingWrite>,
    to_propose: Vec<Op>,
    reads_waiting: Vec<PendingRead>,
    barriers: HashMap<u64, BarrierWait>,
    next_id: u64,
    /// Replies held until the iteration's sync.
    write_replies: Vec<(Reply<WriteResult>, Result<WriteResult, ApiError>)>,
    read_replies: Vec<(Reply<ReadValue>, Result<ReadValue, ApiError>)>,
    catchup: Option<CatchUp>,
    leader: Option<u64>,
    last_decided: u64,
    outgoing: Vec<Message<LogCmd>>,
    /// Id of the checkpoint stream each peer currently wants from us.
    checkpoint_streams: HashMap<u64, Arc<std::sync::atomic::AtomicU64>>,
    next_tick: Instant,
    next_timeout_scan: Instant,
    rr: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unavailable(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
}

impl Replica {
    /// Builds the loop over the persisted state of configuration `config_id`.
    pub fn new(
        cfg: LoopConfig,
        config_id: u32,
        members: Vec<u64>,
        db: Db,
        peers: HashMap<u64, PeerLink>,
        metrics: Arc<Metrics>,
    ) -> Result<Replica, String> {
        checkpoint::resume_interrupted_install(&db).map_err(|e| e.to_string())?;
        let store = LogStore::open(db.clone(), config_id).map_err(|e| e.to_string())?;
        let log = if members.len() == 1 {
            Log::Local(store)
        } else {
            let server_config = ServerConfig {
                pid: cfg.pid,
                election_tick_timeout: cfg.election_ticks,
                resend_message_tick_timeout: cfg.resend_ticks,
                // Never buffer entries in memory: each append is written (and synced by the
                // loop) before its Accept leaves. Our own batching is the LogCmd batch.
                batch_size: 1,
                flush_batch_tick_timeout: 1,
                buffer_size: 1024,
                ..Default::default()
            };
            let op_config = OmniPaxosConfig {
                cluster_config: ClusterConfig {
                    configuration_id: config_id,
                    nodes: members.clone(),
                    flexible_quorum: None,
                },
                server_config,
            };
            Log::Paxos(Box::new(op_config.build(store).map_err(|e| e.to_string())?))
        };
        let mut sm = StateMachine::load(db.clone(), cfg.dedup).map_err(|e| e.to_string())?;
        if sm.applied().config_id != config_id {
            // Fresh store (or, later, a new configuration): the applied cursor starts at 0.
            sm.set_applied(Position {
                config_id,
                index: 0,
            })
            .map_err(|e| e.to_string())?;
        }
        let now = Instant::now();
        let mut r = Replica {
            next_tick: now + cfg.tick,
            cfg,
            config_id,
            members,
            db,
            log,
            sm,
            peers,
            metrics,
            pending_writes: HashMap::new(),
            to_propose: Vec::new(),
            reads_waiting: Vec::new(),
            barriers: HashMap::new(),
            next_id: now_ms() << 16,
            write_replies: Vec::new(),
            read_replies: Vec::new(),
            catchup: None,
            leader: None,
            last_decided: 0,
            outgoing: Vec::new(),
            checkpoint_streams: HashMap::new(),
            next_timeout_scan: now,
            rr: 0,
        };
        r.last_decided = r.decided_idx();
        r.db.sync().map_err(|e| e.to_string())?;
        Ok(r)
    }

    /// Runs until `Shutdown` or until every sender is gone. Storage errors panic: the
    /// process then ends (kvd's panic hook aborts), as OmniPaxos itself does on them.
    pub fn run(mut self, inbox: Receiver<Input>) {
        info!(pid = self.cfg.pid, config_id = self.config_id, members = ?self.members,
              applied = self.sm.applied().index, decided = self.decided_idx(), "consensus loop started");
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Input::Shutdown) => break,
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..MAX_DRAIN {
                        match inbox.try_recv() {
                            Ok(Input::Shutdown) => {
                                self.finish_iteration();
                                return self.shutdown();
                            }
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.finish_iteration();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.db.sync() {
            warn!(error = %e, "final sync failed");
        }
        info!("consensus loop stopped");
    }

    fn finish_iteration(&mut self) {
        let now = Instant::now();
        if now >= self.next_tick {
            if let Log::Paxos(op) = &mut self.log {
                op.tick();
            }
            self.next_tick += self.cfg.tick;
            if self.next_tick < now {
                self.next_tick = now + self.cfg.tick;
            }
        }
        if now >= self.next_timeout_scan {
            self.scan_timeouts(now);
            self.next_timeout_scan = now + self.cfg.tick;
        }
        self.propose_queued();
        self.apply_decided();
        // Group commit: one WAL sync covers the log writes, the applied batch and the
        // compaction of this iteration.
        self.db.sync().expect("WAL sync failed");
        self.metrics
            .fsyncs
            .inner()
            .store(self.db.syncs.load(Ordering::Relaxed), Ordering::Relaxed);
        self.send_outgoing();
        for (reply, result) in self.write_replies.drain(..) {
            let _ = reply.send(result);
        }
        for (reply, result) in self.read_replies.drain(..) {
            let _ = reply.send(result);
        }
        self.maybe_compact();
        self.observe_leader();
    }

    // ---- log abstraction -------------------------------------------------------------

    fn decided_idx(&self) -> u64 {
        match &self.log {
            Log::Paxos(op) => op.get_decided_idx() as u64,
            Log::Local(s) => s.get_decided_idx().expect("cached") as u64,
        }
    }

    fn compacted_idx(&self) -> u64 {
        match &self.log {
            Log::Paxos(op) => op.get_compacted_idx() as u64,
            Log::Local(s) => s.get_compacted_idx().expect("cached") as u64,
        }
    }

    fn current_leader(&self) -> Option<u64> {
        match &self.log {
            Log::Paxos(op) => op.get_current_leader().map(|(p, _)| p),
            Log::Local(_) => Some(self.cfg.pid),
        }
    }

    /// Hands one entry to the log. Err = not handed over.
    fn append(&mut self, cmd: LogCmd) -> Result<(), String> {
        match &mut self.log {
            Log::Paxos(op) => op.append(cmd).map_err(|e| format!("{e:?}")),
            Log::Local(s) => {
                s.append_entry(cmd).map_err(|e| e.to_string())?;
                let end = s.get_log_len().expect("cached") + s.get_compacted_idx().expect("cached");
                s.set_decided_idx(end).map_err(|e| e.to_string())
            }
        }
    }

    // ---- inputs ----------------------------------------------------------------------

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer { from, frame } => self.handle_peer(from, frame),
            Input::PeerUp(pid) => {
                if let Log::Paxos(op) = &mut self.log {
                    // Re-sync with a peer whose session came back, except while a StopSign is
                    // stored (OmniPaxos 0.2.4 re-sync bug, DESIGN.md).
                    let stopsign_pending = op
                        .read_entries(op.get_decided_idx()..)
                        .map(|es| {
                            es.iter()
                                .any(|e| matches!(e, omnipaxos::util::LogEntry::StopSign(..)))
                        })
                        .unwrap_or(false);
                    if self.members.contains(&pid) && !stopsign_pending {
                        op.reconnected(pid);
                    }
                }
            }
            Input::Client(req) => self.handle_client(req),
            Input::Shutdown => {}
        }
    }

    fn handle_client(&mut self, req: ClientRequest) {
        match req {
            ClientRequest::Write {
                kind,
                id,
                deadline,
                reply,
            } => self.handle_write(kind, id, deadline, reply),
            ClientRequest::Read {
                key,
                linearizable,
                deadline,
                reply,
            } => {
                if !linearizable {
                    let r = self.read_local(&key);
                    let _ = reply.send(r);
                } else if self.current_leader().is_none() {
                    self.metrics.requests_refused.inc();
                    let _ = reply.send(Err(unavailable(self.no_leader_message())));
                } else {
                    self.reads_waiting.push(PendingRead {
                        key,
                        deadline,
                        reply,
                    });
                }
            }
            ClientRequest::Status { reply } => {
                let _ = reply.send(self.status());
            }
            ClientRequest::Log { limit, reply } => {
                let _ = reply.send(self.log_view(limit));
            }
        }
    }

    fn no_leader_message(&self) -> String {
        let connected = self.peers.values().filter(|l| l.is_connected()).count();
        format!(
            "no leader known (replica {} reaches {} of {} peers)",
            self.cfg.pid,
            connected,
            self.members.len().saturating_sub(1)
        )
    }

    fn read_local(&self, key: &[u8]) -> Result<ReadValue, ApiError> {
        if matches!(self.catchup, Some(CatchUp::Checkpoint { .. })) {
            return Err(unavailable("replica is installing a checkpoint"));
        }
        let value = self
            .sm
            .get(key)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(ReadValue {
            value,
            index: self.sm.applied().index,
        })
    }

    fn handle_write(
        &mut self,
        kind: WriteKind,
        id: Option<(u64, u64)>,
        deadline: Instant,
        reply: Reply<WriteResult>,
    ) {
        let (client, seq) = id.unwrap_or_else(|| (rand::random::<u64>() | 1, 1));
        if let Some(p) = self.pending_writes.get_mut(&(client, seq)) {
            p.replies.push(reply);
            return;
        }
        if self.current_leader().is_none() {
            self.metrics.requests_refused.inc();
            let _ = reply.send(Err(unavailable(self.no_leader_message())));
            return;
        }
        if self.pending_writes.len() >= self.cfg.max_inflight {
            self.metrics.requests_refused.inc();
            let _ = reply.send(Err(unavailable(format!(
                "overloaded: {} writes in flight on replica {}",
                self.pending_writes.len(),
                self.cfg.pid
            ))));
            return;
        }
        let req = ReqId {
            client,
            seq,
            ts_ms: now_ms(),
        };
        let op = match kind {
            WriteKind::Put { key, value } => Op::Put { req, key, value },
            WriteKind::Delete { key } => Op::Delete { req, key },
        };
        self.to_propose.push(op.clone());
        self.pending_writes.insert(
            (client, seq),
            PendingWrite {
                op,
                replies: vec![reply],
                deadline,
                next_retry: Instant::now() + self.cfg.retry,
                proposals: 1,
                handed: false,
            },
        );
    }

    /// Proposes the writes queued this iteration, plus one read barrier for the reads that
    /// arrived before it (a read is only answered by a barrier proposed after it arrived).
    fn propose_queued(&mut self) {
        if !self.reads_waiting.is_empty() {
            let id = self.next_id;
            self.next_id += 1;
            self.to_propose.push(Op::Barrier {
                origin: self.cfg.pid,
                id,
            });
            self.barriers.insert(
                id,
                BarrierWait {
                    reads: std::mem::take(&mut self.reads_waiting),
                    next_retry: Instant::now() + self.cfg.retry,
                },
            );
        }
        if self.to_propose.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.to_propose);
        let mut batch = Vec::new();
        let mut size = 0;
        for op in ops {
            if size + op.size() > MAX_ENTRY_BYTES && !batch.is_empty() {
                self.propose_batch(std::mem::take(&mut batch));
                size = 0;
            }
            size += op.size();
            batch.push(op);
        }
        if !batch.is_empty() {
            self.propose_batch(batch);
        }
    }

    fn propose_batch(&mut self, ops: Vec<Op>) {
        let n = ops.len() as u64;
        let ids: Vec<(u64, u64)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { req, .. } | Op::Delete { req, .. } => Some((req.client, req.seq)),
                Op::Barrier { .. } => None,
            })
            .collect();
        match self.append(LogCmd { ops }) {
            Ok(()) => {
                self.metrics.proposals.inc_by(n);
                for id in ids {
                    if let Some(p) = self.pending_writes.get_mut(&id) {
                        p.handed = true;
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "proposal refused by the log");
                for id in ids {
                    if let Some(p) = self.pending_writes.get(&id) {
                        if !p.handed {
                            let p = self.pending_writes.remove(&id).expect("present");
                            for r in p.replies {
                                self.write_replies
                                    .push((r, Err(unavailable(format!("not proposed: {e}")))));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Retries writes and barriers that were not decided in time (a lost forward is never
    /// resent by OmniPaxos) and answers those past their deadline.
    fn scan_timeouts(&mut self, now: Instant) {
        let leader_known = self.current_leader().is_some();
        let mut expired = Vec::new();
        for (id, p) in self.pending_writes.iter_mut() {
            if now >= p.deadline {
                expired.push(*id);
            } else if now >= p.next_retry && leader_known {
                p.next_retry = now + self.cfg.retry * (1 << p.proposals.min(3));
                p.proposals += 1;
                self.to_propose.push(p.op.clone());
            }
        }
        for id in expired {
            let p = self.pending_writes.remove(&id).expect("present");
            let err = if p.handed {
                ApiError::new(
                    ErrorCode::Indeterminate,
                    format!("write proposed but not confirmed before the deadline (replica {}): it may still be applied", self.cfg.pid),
                )
            } else {
                unavailable(self.no_leader_message())
            };
            for r in p.replies {
                self.write_replies.push((r, Err(err.clone())));
            }
        }
        let mut retry = Vec::new();
        let mut gone = Vec::new();
        for (id, b) in self.barriers.iter_mut() {
            let (late, live): (Vec<_>, Vec<_>) = b.reads.drain(..).partition(|r| now >= r.deadline);
            b.reads = live;
            for r in late {
                self.read_replies.push((
                    r.reply,
                    Err(unavailable(
                        "linearizable read not confirmed before the deadline (no quorum?)",
                    )),
                ));
            }
            if b.reads.is_empty() {
                gone.push(*id);
            } else if now >= b.next_retry && leader_known {
                retry.push(*id);
            }
        }
        for id in gone {
            self.barriers.remove(&id);
        }
        for id in retry {
            // Re-propose under a fresh barrier; the old one answers nobody if it shows up.
            let b = self.barriers.remove(&id).expect("present");
            self.reads_waiting.extend(b.reads);
        }
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
            // The library compacted past our cursor (a re-sync): fetch what we missed.
            self.start_catchup();
            return;
        }
        let to = decided.min(applied + MAX_APPLY as u64);
        let entries = match read_log_range(&self.db, self.config_id, applied as usize, to as usize)
        {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.start_catchup();
                return;
            }
            Err(e) => panic!("reading decided entries: {e}"),
        };
        self.apply_entries(&entries);
    }

    fn apply_entries(&mut self, entries: &[LogCmd]) {
        let first = self.sm.applied().index;
        for (i, e) in entries.iter().enumerate() {
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
        let results = self
            .sm
            .apply(self.config_id, entries)
            .unwrap_or_else(|e| panic!("applying entries: {e}"));
        self.metrics.applied.inc_by(entries.len() as u64);
        self.metrics.applied_idx.set(self.sm.applied().index as i64);
        for r in results {
            match r {
                Applied::Write { req, result } => {
                    if let Some(p) = self.pending_writes.remove(&(req.client, req.seq)) {
                        let answer = match result {
                            Ok(o) => Ok(WriteResult {
                                config_id: o.config_id,
                                index: o.index,
                                existed: o.existed,
                            }),
                            Err(Refusal::TooOld) => Err(ApiError::new(
                                ErrorCode::Rejected,
                                "request too old for the dedup window: refused so it cannot apply twice",
                            )),
                        };
                        for reply in p.replies {
                            self.write_replies.push((reply, answer.clone()));
                        }
                    }
                }
                Applied::Barrier { origin, id } => {
                    if origin != self.cfg.pid {
                        continue;
                    }
                    if let Some(b) = self.barriers.remove(&id) {
                        for r in b.reads {
                            let answer = self.read_local(&r.key);
                            self.read_replies.push((r.reply, answer));
                        }
                    }
                }
            }
        }
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
        let result = match &mut self.log {
            Log::Paxos(op) => op
                .snapshot(Some(target as usize), true)
                .map_err(|e| format!("{e:?}")),
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

    // ---- catch-up --------------------------------------------------------------------

    fn connected_peers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .peers
            .values()
            .filter(|l| l.is_connected() && self.members.contains(&l.pid))
            .map(|l| l.pid)
            .collect();
        v.sort_unstable();
        v
    }

    fn start_catchup(&mut self) {
        info!(
            applied = self.sm.applied().index,
            compacted = self.compacted_idx(),
            "catching up: entries below the compacted index are missing"
        );
        self.metrics.catching_up.set(1);
        self.catchup = Some(CatchUp::Fetching {
            asked: 0,
            asked_at: Instant::now() - CATCHUP_TIMEOUT,
            unavailable: HashMap::new(),
        });
        self.catchup_tick();
    }

    fn finish_catchup(&mut self) {
        info!(applied = self.sm.applied().index, "caught up");
        self.catchup = None;
        self.metrics.catching_up.set(0);
    }

    /// Drives catch-up: asks a (next) peer when the last request timed out.
    fn catchup_tick(&mut self) {
        let applied = self.sm.applied().index;
        if applied >= self.compacted_idx()
            && !matches!(self.catchup, Some(CatchUp::Checkpoint { .. }))
        {
            self.finish_catchup();
            return;
        }
        let peers = self.connected_peers();
        let decided = self.decided_idx();
        match &mut self.catchup {
            Some(CatchUp::Fetching {
                asked,
                asked_at,
                unavailable,
            }) => {
                if asked_at.elapsed() < CATCHUP_TIMEOUT {
                    return;
                }
                unavailable.retain(|p, _| peers.contains(p));
                let candidates: Vec<u64> = peers
                    .iter()
                    .copied()
                    .filter(|p| !unavailable.contains_key(p))
                    .collect();
                if candidates.is_empty() {
                    // Nobody holds the entries: take a checkpoint from the most advanced peer.
                    if let Some((&from, _)) = unavailable
                        .iter()
                        .filter(|(_, &a)| a > applied)
                        .max_by_key(|(_, &a)| a)
                    {
                        let id = rand::random::<u64>();
                        match checkpoint::Receiver::start(&self.db, from, id) {
                            Ok(rx) => {
                                info!(peer = from, "catching up from a checkpoint");
                                if let Some(l) = self.peers.get(&from) {
                                    l.send(PeerFrame::CheckpointRequest { id });
                                }
                                self.catchup = Some(CatchUp::Checkpoint {
                                    rx,
                                    last_progress: Instant::now(),
                                });
                            }
                            Err(e) => panic!("staging checkpoint: {e}"),
                        }
                    } else {
                        unavailable.clear();
                        *asked_at = Instant::now();
                    }
                    return;
                }
                self.rr = self.rr.wrapping_add(1);
                let peer = candidates[self.rr % candidates.len()];
                *asked = peer;
                *asked_at = Instant::now();
                if let Some(l) = self.peers.get(&peer) {
                    l.send(PeerFrame::FetchEntries {
                        config_id: self.config_id,
                        from: applied,
                        to: decided.max(applied + 1),
                    });
                }
            }
            Some(CatchUp::Checkpoint { rx, last_progress })
                if last_progress.elapsed() > CATCHUP_TIMEOUT * 2 =>
            {
                warn!(peer = rx.from, "checkpoint stalled; starting over");
                self.restart_catchup();
            }
            Some(CatchUp::Checkpoint { .. }) | None => {}
        }
    }

    // ---- peer frames -----------------------------------------------------------------

    fn handle_peer(&mut self, from: u64, frame: PeerFrame) {
        if let Some(c) = frame.config_id() {
            if c != self.config_id || !self.members.contains(&from) {
                self.metrics.peer_frames_dropped.inc();
                return;
            }
        }
        match frame {
            PeerFrame::Hello(_) => {}
            PeerFrame::Paxos { msg, .. } => {
                if let Log::Paxos(op) = &mut self.log {
                    op.handle_incoming(msg);
                }
            }
            PeerFrame::FetchEntries {
                from: start, to, ..
            } => self.serve_fetch(from, start, to),
            PeerFrame::Entries {
                from: start,
                entries,
                ..
            } => {
                let Some(CatchUp::Fetching { asked_at, .. }) = &mut self.catchup else {
                    return;
                };
                if start != self.sm.applied().index || entries.is_empty() {
                    return;
                }
                *asked_at = Instant::now() - CATCHUP_TIMEOUT; // ask again at once
                debug!(
                    peer = from,
                    start,
                    n = entries.len(),
                    "catch-up entries received"
                );
                self.apply_entries(&entries);
                self.catchup_tick();
            }
            PeerFrame::EntriesUnavailable {
                from: start,
                applied,
                ..
            } => {
                if let Some(CatchUp::Fetching {
                    unavailable,
                    asked_at,
                    asked,
                }) = &mut self.catchup
                {
                    if start == self.sm.applied().index {
                        unavailable.insert(from, applied);
                        if *asked == from {
                            *asked_at = Instant::now() - CATCHUP_TIMEOUT;
                        }
                    }
                }
                self.catchup_tick();
            }
            PeerFrame::CheckpointRequest { id } => {
                if let Some(link) = self.peers.get(&from).cloned() {
                    let db = self.db.clone();
                    // One stream per peer: a newer request supersedes a running one.
                    let current = self.checkpoint_streams.entry(from).or_default().clone();
                    current.store(id, std::sync::atomic::Ordering::Relaxed);
                    info!(peer = from, "streaming a checkpoint");
                    std::thread::Builder::new()
                        .name("checkpoint-send".into())
                        .spawn(move || checkpoint::stream(db, link, id, current))
                        .expect("spawn checkpoint thread");
                }
            }
            PeerFrame::CheckpointChunk { id, seq, items } => {
                let Some(CatchUp::Checkpoint { rx, last_progress }) = &mut self.catchup else {
                    return;
                };
                if rx.id != id || rx.from != from {
                    return;
                }
                if let Err(e) = rx.chunk(&self.db, seq, &items) {
                    warn!(error = %e, "checkpoint chunk refused; starting over");
                    self.restart_catchup();
                    return;
                }
                *last_progress = Instant::now();
            }
            PeerFrame::CheckpointDone {
                id,
                chunks,
                crc,
                meta,
            } => {
                let Some(CatchUp::Checkpoint { rx, .. }) = &self.catchup else {
                    return;
                };
                if rx.id != id || rx.from != from {
                    return;
                }
                let Some(CatchUp::Checkpoint { rx, .. }) = self.catchup.take() else {
                    unreachable!()
                };
                if meta.applied.config_id != self.config_id {
                    warn!("checkpoint from another configuration; ignoring");
                    self.restart_catchup();
                    return;
                }
                match rx.finish(&self.db, chunks, crc, meta) {
                    Ok(m) => {
                        self.sm
                            .reload()
                            .unwrap_or_else(|e| panic!("reloading state after checkpoint: {e}"));
                        info!(
                            index = m.applied.index,
                            keys = m.keys,
                            "state replaced by checkpoint"
                        );
                        self.restart_catchup();
                        self.catchup_tick();
                    }
                    Err(e) => {
                        warn!(error = %e, "checkpoint rejected; starting over");
                        self.restart_catchup();
                    }
                }
            }
            PeerFrame::CheckpointRefused { id, reason } => {
                warn!(peer = from, id, %reason, "checkpoint refused");
                self.restart_catchup();
            }
        }
    }

    fn restart_catchup(&mut self) {
        self.catchup = Some(CatchUp::Fetching {
            asked: 0,
            asked_at: Instant::now() - CATCHUP_TIMEOUT,
            unavailable: HashMap::new(),
        });
    }

    /// Answers a peer's FetchEntries with decided entries we still hold.
    fn serve_fetch(&mut self, peer: u64, start: u64, to: u64) {
        let Some(link) = self.peers.get(&peer) else {
            return;
        };
        let compacted = self.compacted_idx();
        let decided = self.decided_idx();
        let unavailable = PeerFrame::EntriesUnavailable {
            config_id: self.config_id,
            from: start,
            compacted,
            applied: self.sm.applied().index,
        };
        if start < compacted || start >= decided {
            link.send(unavailable);
            return;
        }
        let end = to.min(decided).min(start + MAX_APPLY as u64);
        match read_log_range(&self.db, self.config_id, start as usize, end as usize) {
            Ok(Some(mut entries)) => {
                let mut size = 0;
                let keep = entries
                    .iter()
                    .take_while(|e| {
                        size += e.ops.iter().map(Op::size).sum::<usize>();
                        size <= FETCH_BYTES
                    })
                    .count()
                    .max(1);
                entries.truncate(keep);
                link.send(PeerFrame::Entries {
                    config_id: self.config_id,
                    from: start,
                    entries,
                });
            }
            _ => {
                link.send(unavailable);
            }
        }
    }

    // ---- outputs ---------------------------------------------------------------------

    fn send_outgoing(&mut self) {
        let Log::Paxos(op) = &mut self.log else {
            return;
        };
        op.take_outgoing_messages(&mut self.outgoing);
        for msg in self.outgoing.drain(..) {
            let to = msg.get_receiver();
            match self.peers.get(&to) {
                Some(link) => {
                    if !link.send(PeerFrame::Paxos {
                        config_id: self.config_id,
                        msg,
                    }) {
                        self.metrics.peer_frames_dropped.inc();
                    }
                }
                None => {
                    self.metrics.peer_frames_dropped.inc();
                }
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

    fn role(&self) -> &'static str {
        if self.catchup.is_some() {
            return "catching-up";
        }
        match (&self.log, self.current_leader()) {
            (Log::Local(_), _) => "standalone",
            (_, Some(l)) if l == self.cfg.pid => "leader",
            (_, Some(_)) => "follower",
            (_, None) => "candidate",
        }
    }

    pub fn status(&self) -> StatusView {
        let meta = self.sm.meta();
        StatusView {
            pid: self.cfg.pid,
            role: self.role().to_string(),
            leader: self.current_leader(),
            config_id: self.config_id,
            members: self.members.clone(),
            decided_idx: self.decided_idx(),
            applied_idx: meta.applied.index,
            compacted_idx: self.compacted_idx(),
            keys: meta.keys,
            state_hash: format!("{:016x}", meta.hash),
            cluster_id: format!("{:016x}", self.cfg.cluster_id),
            connected_peers: self.connected_peers(),
        }
    }

    fn log_view(&self, limit: usize) -> LogView {
        let decided = self.decided_idx();
        let compacted = self.compacted_idx();
        let start = decided.saturating_sub(limit as u64).max(compacted);
        let mut entries = Vec::new();
        if compacted > 0 {
            entries.push(LogEntryView::Snapshot { upto: compacted });
        }
        if let Ok(Some(cmds)) =
            read_log_range(&self.db, self.config_id, start as usize, decided as usize)
        {
            for (i, c) in cmds.iter().enumerate() {
                entries.push(LogEntryView::Entry {
                    index: start + i as u64,
                    ops: c.ops.iter().map(Op::describe).collect(),
                });
            }
        }
        LogView {
            config_id: self.config_id,
            decided_idx: decided,
            compacted_idx: compacted,
            entries,
        }
    }
}
