//! Membership changes in the loop: a reconfigure request on the leader (guards, then a
//! StopSign proposed until one is stored), the switch once storage shows the StopSign
//! decided, announcements of the decided change to the new members, joining a configuration
//! without state, stragglers, and retiring a removed replica. A standalone replica grows the
//! same way: it stores (and so decides) its own StopSign, switches, and holds writes back
//! until a majority of the grown configuration holds the state (`check_change`'s rule).

use super::{build_log, unavailable, Log, Replica};
use crate::codec::encode;
use crate::frame::{Announcement, PeerFrame, Transition};
use crate::inbox::Reply;
use crate::membership::{
    check_change, cluster_id, grows_from_one, majority_holds, release_disks, stored_stopsign,
    Lifecycle, StopSignMeta,
};
use crate::omnipaxos_workarounds::decided_stopsign;
use crate::peers::Peers;
use crate::state_machine::Position;
use omnikv_common::api::{ApiError, ErrorCode, ReconfigureRequest, ReconfigureResult};
use omnipaxos::storage::{StopSign, Storage, StorageOp};
use omnipaxos::ClusterConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tracing::{debug, info, warn};

/// A reconfigure request on the leader: waits for the new members to be reachable, then
/// proposes the StopSign (again, until one is stored) and answers once it is decided.
pub(super) struct ReconfigInFlight {
    pub(super) nodes: Vec<u64>,
    addrs: BTreeMap<u64, String>,
    force: bool,
    replies: Vec<Reply<ReconfigureResult>>,
    deadline: Instant,
    quorum_deadline: Instant,
    proposed: bool,
    next_retry: Instant,
}

/// A decided change being pushed to the new members until they hold the state.
pub(super) struct Announcing {
    transition: Transition,
    /// New members that have not acknowledged holding the state.
    pending: BTreeSet<u64>,
    /// New members that have.
    holding: BTreeSet<u64>,
    next_push: Instant,
}

impl<P: Peers> Replica<P> {
    /// Opens an outbound session to each of `pids` that has none, at its known address.
    pub(super) fn ensure_links(&mut self, pids: &[u64]) {
        for &pid in pids {
            if pid == self.cfg.pid || self.peers.has_link(pid) {
                continue;
            }
            let addr = (self.cfg.peer_address)(pid).or_else(|| self.meta.addrs.get(&pid).cloned());
            match addr {
                Some(addr) => self.peers.connect(pid, &addr),
                None => warn!(peer = pid, "no address known for member; cannot reach it"),
            }
        }
    }

    /// A reconfigure request: checked here, then driven by `drive_reconfig`.
    pub(super) fn handle_reconfigure(
        &mut self,
        req: ReconfigureRequest,
        deadline: Instant,
        reply: Reply<ReconfigureResult>,
    ) {
        let rejected = |m: String| Err(ApiError::new(ErrorCode::Rejected, m));
        if self.meta.lifecycle != Lifecycle::Serving {
            let _ = reply.send(Err(unavailable(self.not_serving_message())));
            return;
        }
        let c = self.meta.config_id;
        let mut nodes = req.nodes.clone();
        nodes.sort_unstable();
        let want = req.config_id.unwrap_or(c + 1);
        if want == c && nodes == self.meta.members {
            // A retry of a change that already happened.
            let _ = reply.send(Ok(ReconfigureResult {
                config_id: c,
                members: self.meta.members.clone(),
            }));
            return;
        }
        if want != c + 1 {
            let _ = reply.send(rejected(format!(
                "configuration id {want} refused: the current configuration is {c} (members \
                 {:?}); a change must create configuration {}",
                self.meta.members,
                c + 1
            )));
            return;
        }
        if let Err(e) = check_change(&self.meta.members, &req.nodes) {
            let _ = reply.send(rejected(e));
            return;
        }
        if self.current_leader() != Some(self.cfg.pid) {
            let _ = reply.send(Err(unavailable(format!(
                "replica {} is not the leader of configuration {c} (leader: {}); changes are \
                 proposed by the leader",
                self.cfg.pid,
                self.current_leader()
                    .map_or("unknown".to_string(), |l| l.to_string())
            ))));
            return;
        }
        if let Some(r) = &mut self.reconfig {
            if r.nodes == nodes {
                r.replies.push(reply);
            } else {
                let _ = reply.send(rejected(format!(
                    "a change to configuration {} with members {:?} is already in flight",
                    c + 1,
                    r.nodes
                )));
            }
            return;
        }
        let now = self.now;
        if let Ok(Some((ss, _))) = stored_stopsign(&self.db, c) {
            let mut pending = ss.next_config.nodes.clone();
            pending.sort_unstable();
            if pending == nodes && ss.next_config.configuration_id == want {
                // The same change, already in the log (e.g. proposed by a leader that died):
                // answer when it is decided.
                self.reconfig = Some(ReconfigInFlight {
                    nodes,
                    addrs: StopSignMeta::from_stopsign(&ss).addrs,
                    force: true,
                    replies: vec![reply],
                    deadline,
                    quorum_deadline: now,
                    proposed: true,
                    next_retry: now + self.cfg.timers.retry,
                });
                return;
            }
            let _ = reply.send(rejected(format!(
                "a change to configuration {} with members {:?} is already in flight",
                ss.next_config.configuration_id, ss.next_config.nodes
            )));
            return;
        }
        let mut addrs = BTreeMap::new();
        for &p in &nodes {
            let addr = req
                .peers
                .get(&p)
                .cloned()
                .or_else(|| self.meta.addrs.get(&p).cloned())
                .or_else(|| (self.cfg.peer_address)(p));
            match addr {
                Some(a) => {
                    addrs.insert(p, a);
                }
                None if p == self.cfg.pid => {}
                None => {
                    let _ = reply.send(rejected(format!(
                        "no peer address for node {p}: pass --peer {p}=host:port (or start the \
                         replicas with a peer template)"
                    )));
                    return;
                }
            }
        }
        for (&p, a) in &addrs {
            self.meta.addrs.entry(p).or_insert_with(|| a.clone());
        }
        self.ensure_links(&nodes);
        info!(config_id = c + 1, members = ?nodes, "reconfiguration requested");
        self.reconfig = Some(ReconfigInFlight {
            nodes,
            addrs,
            force: req.force,
            replies: vec![reply],
            deadline,
            quorum_deadline: (now + self.cfg.timers.quorum_wait).min(deadline),
            proposed: false,
            next_retry: now,
        });
    }

    /// Proposes the StopSign once a majority of the new members is reachable, again after a
    /// retry period while none is stored (a proposal can be lost with a leader change), and
    /// answers what cannot succeed.
    pub(super) fn drive_reconfig(&mut self) {
        let now = self.now;
        let Some(r) = &mut self.reconfig else {
            return;
        };
        let next_id = self.meta.config_id + 1;
        if now >= r.deadline {
            let r = self.reconfig.take().expect("present");
            let err = if r.proposed {
                ApiError::new(
                    ErrorCode::Indeterminate,
                    format!(
                        "the change to configuration {next_id} was proposed but not decided in \
                         time: it may still happen; retry with --config-id {next_id}"
                    ),
                )
            } else {
                unavailable("the change was not proposed before the deadline")
            };
            for reply in r.replies {
                self.reconfig_replies.push((reply, Err(err.clone())));
            }
            return;
        }
        if !r.proposed {
            let pid = self.cfg.pid;
            let reachable = r
                .nodes
                .iter()
                .filter(|&&p| p == pid || self.peers.is_connected(p))
                .count();
            if reachable * 2 <= r.nodes.len() && !r.force {
                if now >= r.quorum_deadline {
                    let r = self.reconfig.take().expect("present");
                    let msg = format!(
                        "only {reachable} of the {} members of the new configuration are \
                         reachable from the leader: a majority must be; start the new replicas \
                         first (or pass --force)",
                        r.nodes.len()
                    );
                    for reply in r.replies {
                        self.reconfig_replies
                            .push((reply, Err(ApiError::new(ErrorCode::Rejected, msg.clone()))));
                    }
                }
                return;
            }
        }
        if now < r.next_retry {
            return;
        }
        r.next_retry = now + self.cfg.timers.retry;
        if matches!(stored_stopsign(&self.db, self.meta.config_id), Ok(Some(_))) {
            r.proposed = true;
            return;
        }
        let meta = StopSignMeta {
            addrs: r.addrs.clone(),
        };
        let config = ClusterConfig {
            configuration_id: next_id,
            nodes: r.nodes.clone(),
            flexible_quorum: None,
        };
        if let Log::Local(store) = &mut self.log {
            // A standalone replica is its configuration's only member: its StopSign is
            // decided once stored (decided index one past the log, as a decided StopSign
            // stands in storage). Nothing is appended after it; check_stopsign switches once
            // every entry before it is applied, in this iteration or after a restart.
            let end =
                store.get_log_len().expect("cached") + store.get_compacted_idx().expect("cached");
            let ss = StopSign {
                next_config: config,
                metadata: Some(encode(&meta)),
            };
            store
                .write_atomically(vec![
                    StorageOp::SetStopsign(Some(ss)),
                    StorageOp::SetDecidedIndex(end + 1),
                ])
                .unwrap_or_else(|e| panic!("storing the standalone StopSign: {e}"));
            // Synced at once, as membership records are: a restart from here on finishes
            // the growth by itself.
            self.db
                .sync()
                .unwrap_or_else(|e| panic!("syncing the standalone StopSign: {e}"));
            r.proposed = true;
            info!(config_id = next_id, members = ?r.nodes, end_idx = end,
                  "standalone replica closes its configuration to grow");
            return;
        }
        let leader = match &self.log {
            Log::Paxos(op) => op.get_current_leader().map(|(p, _)| p),
            _ => None,
        };
        if leader != Some(self.cfg.pid) {
            return; // leadership moved: wait (a new leader may still decide it) or time out
        }
        if let Log::Paxos(op) = &mut self.log {
            match op.reconfigure(config, Some(encode(&meta))) {
                Ok(()) => {
                    r.proposed = true;
                    info!(config_id = next_id, members = ?r.nodes, "StopSign proposed");
                }
                Err(e) => debug!(error = ?e, "StopSign not proposed"),
            }
        }
    }

    /// After applying: a StopSign that storage shows decided, with every entry before it
    /// applied, switches this replica to the next configuration.
    pub(super) fn check_stopsign(&mut self) {
        let (decided, reconfigured) = match &self.log {
            Log::Paxos(op) => (op.get_decided_idx() as u64, op.is_reconfigured().is_some()),
            // A standalone log stores its StopSign as decided (drive_reconfig).
            Log::Local(s) => (s.get_decided_idx().expect("cached") as u64, true),
            Log::None => return,
        };
        if self.catchup.is_some()
            || !matches!(self.meta.lifecycle, Lifecycle::Serving | Lifecycle::Joining)
        {
            return;
        }
        let found = match decided_stopsign(&self.db, self.meta.config_id, decided) {
            Ok(Some(found)) => Some(found),
            Ok(None) if reconfigured => stored_stopsign(&self.db, self.meta.config_id)
                .ok()
                .flatten(),
            Ok(None) => None,
            Err(e) => panic!("reading the stopsign: {e}"),
        };
        let Some((ss, end)) = found else {
            return;
        };
        if self.sm.applied().index < end {
            return; // apply_decided gets there first
        }
        if !reconfigured {
            self.metrics.workaround("stopsign_from_storage");
        }
        let mut addrs = StopSignMeta::from_stopsign(&ss).addrs;
        for p in &ss.next_config.nodes {
            if let (false, Some(a)) = (addrs.contains_key(p), self.meta.addrs.get(p)) {
                addrs.insert(*p, a.clone());
            }
        }
        let mut members = ss.next_config.nodes.clone();
        members.sort_unstable();
        self.switch_to(Transition {
            from_config: self.meta.config_id,
            end_idx: end,
            config_id: ss.next_config.configuration_id,
            members,
            addrs,
        });
    }

    /// A member told of a change whose StopSign its own log has not decided takes the state
    /// by checkpoint once the grace period is over.
    pub(super) fn check_straggling(&mut self) {
        let Some((t, since)) = self.straggling.clone() else {
            return;
        };
        let waited = self.now.saturating_duration_since(since);
        if waited >= self.cfg.timers.straggle_grace
            && self.meta.last_transition.as_ref() != Some(&t)
        {
            info!(
                config_id = t.config_id,
                "the StopSign is not decided here: taking the state by checkpoint"
            );
            self.join_as_new(t);
        }
    }

    /// Keeps what the instance about to be replaced still has to send (the Decide of its
    /// StopSign above all: without it the other members never see the decision), tagged with
    /// its configuration id, to be sent after this iteration's sync.
    fn retire_outgoing(&mut self, config: u32) {
        if let Log::Paxos(op) = &mut self.log {
            op.take_outgoing_messages(&mut self.outgoing);
        }
        self.retired_outgoing
            .extend(self.outgoing.drain(..).map(|m| (config, m)));
    }

    /// Leaves the current configuration, whose every entry is applied, for `t`.
    fn switch_to(&mut self, t: Transition) {
        info!(from = t.from_config, to = t.config_id, members = ?t.members, end_idx = t.end_idx,
              "configuration change decided");
        self.metrics.reconfigurations.inc();
        self.straggling = None;
        if let Some(r) = self.reconfig.take() {
            for reply in r.replies {
                self.reconfig_replies.push((
                    reply,
                    Ok(ReconfigureResult {
                        config_id: t.config_id,
                        members: t.members.clone(),
                    }),
                ));
            }
        }
        for (&p, a) in &t.addrs {
            self.meta.addrs.insert(p, a.clone());
        }
        self.ensure_links(&t.members);
        let grown = grows_from_one(&self.meta.members);
        let gone: Vec<u64> = (self.meta.members.iter().copied())
            .filter(|p| !t.members.contains(p))
            .collect();
        self.meta.last_transition = Some(t.clone());
        if t.members.contains(&self.cfg.pid) {
            self.meta.config_id = t.config_id;
            self.meta.members = t.members.clone();
            self.meta.lifecycle = Lifecycle::Serving;
            crate::failpoint::hit("switch");
            // The new configuration's log starts at 0; the state carries over. Meta,
            // position and the removed members' disks forgotten in one synced batch.
            let mut batch = rocksdb::WriteBatch::default();
            self.meta.put(&self.db, &mut batch);
            release_disks(&self.db, &mut batch, &gone);
            self.sm.set_applied_in(
                Position {
                    config_id: t.config_id,
                    index: 0,
                },
                &mut batch,
            );
            self.db
                .write_synced(batch)
                .unwrap_or_else(|e| panic!("persisting the new configuration: {e}"));
            self.retire_outgoing(t.from_config);
            self.log = build_log(&self.cfg, &self.db, t.config_id, &t.members, true)
                .unwrap_or_else(|e| panic!("starting configuration {}: {e}", t.config_id));
            self.watch_own_ballot();
            self.last_decided = 0;
            self.growth_pending = grown;
            if grown {
                info!(config_id = t.config_id, members = ?t.members,
                      "grown from a single server: writes wait until a majority of the new \
                       configuration holds the state");
            }
            self.retry_in_new_configuration();
        } else {
            self.meta.lifecycle = Lifecycle::Leaving;
            self.meta
                .save_synced(&self.db)
                .unwrap_or_else(|e| panic!("persisting the new configuration: {e}"));
            info!(
                config_id = t.config_id,
                "this replica was removed; handing over to the new members"
            );
            self.fail_all_requests(true);
        }
        self.announce(t);
    }

    pub(super) fn announce(&mut self, t: Transition) {
        let pending = t
            .members
            .iter()
            .copied()
            .filter(|&p| p != self.cfg.pid)
            .collect();
        let mut holding = BTreeSet::new();
        if t.members.contains(&self.cfg.pid) && self.meta.lifecycle == Lifecycle::Serving {
            holding.insert(self.cfg.pid);
        }
        self.announcing = Some(Announcing {
            transition: t,
            pending,
            holding,
            next_push: self.now,
        });
    }

    fn announcement(&self, t: &Transition) -> PeerFrame {
        PeerFrame::NewConfig(Announcement {
            cluster_id: self.meta.cluster_id,
            genesis_config_id: self.meta.genesis_config_id,
            genesis_members: self.meta.genesis_members.clone(),
            transition: t.clone(),
        })
    }

    /// Pushes the decided change to the new members that do not hold the state yet.
    pub(super) fn push_announcements(&mut self) {
        let Some(a) = &mut self.announcing else {
            return;
        };
        if self.now < a.next_push {
            return;
        }
        a.next_push = self.now + self.cfg.timers.announce_every;
        let pending: Vec<u64> = a.pending.iter().copied().collect();
        let transition = a.transition.clone();
        let frame = self.announcement(&transition);
        for p in pending {
            self.peers.send(p, frame.clone());
        }
    }

    pub(super) fn on_announcement_ack(&mut self, from: u64, config_id: u32, holds_state: bool) {
        let Some(a) = &mut self.announcing else {
            return;
        };
        if a.transition.config_id != config_id
            || !holds_state
            || !a.transition.members.contains(&from)
        {
            return;
        }
        a.pending.remove(&from);
        a.holding.insert(from);
        if self.growth_pending && majority_holds(&a.transition.members, a.holding.len()) {
            self.growth_pending = false;
            info!(config_id, holding = ?a.holding,
                  "a majority of the grown configuration holds the state: writes go ahead");
            self.retry_in_new_configuration();
        }
        let Some(a) = &mut self.announcing else {
            return;
        };
        if self.meta.lifecycle == Lifecycle::Leaving
            && majority_holds(&a.transition.members, a.holding.len())
        {
            self.retire();
        } else if a.pending.is_empty() {
            info!(
                config_id,
                "every member of the new configuration holds the state"
            );
            self.announcing = None;
        }
    }

    /// A removed replica whose successors hold the state stops for good (keeping its data).
    fn retire(&mut self) {
        let Some(t) = self.meta.last_transition.clone() else {
            return;
        };
        info!(config_id = t.config_id, members = ?t.members,
              "a majority of the new configuration holds the state: this replica is removed");
        self.meta.lifecycle = Lifecycle::Removed;
        self.retire_outgoing(self.meta.config_id);
        self.meta.config_id = t.config_id;
        self.meta.members = t.members.clone();
        self.meta
            .save_synced(&self.db)
            .unwrap_or_else(|e| panic!("persisting removal: {e}"));
        self.log = Log::None;
        self.catchup = None;
        self.announcing = None;
        self.fail_all_requests(false);
    }

    /// A member told us about a decided change.
    pub(super) fn on_announcement(&mut self, from: u64, a: Announcement) {
        let t = a.transition.clone();
        let new_config = t.config_id;
        let ack = |s: &mut Self, holds_state: bool| {
            s.peers.send(
                from,
                PeerFrame::NewConfigAck {
                    config_id: new_config,
                    holds_state,
                },
            );
        };
        if t.config_id == self.meta.config_id
            && matches!(self.meta.lifecycle, Lifecycle::Serving | Lifecycle::Joining)
        {
            let holds = self.meta.lifecycle == Lifecycle::Serving && !self.installing_checkpoint();
            if !holds {
                // A joiner (however it came to join: told of the change, after the straggle
                // grace, or restarted) learns every replica that announces the change: one
                // that left the old configuration may be the only holder of the state.
                self.announcers.insert(from);
                self.ensure_links(&[from]);
            }
            ack(self, holds);
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
        if self.meta.cluster_id == 0 {
            // A new replica: trust the cluster id only if our token derives it.
            let derived = cluster_id(
                &self.cfg.cluster_token,
                a.genesis_config_id,
                &a.genesis_members,
            );
            if derived != a.cluster_id {
                warn!(
                    peer = from,
                    "announcement from another cluster (or another token); ignored"
                );
                return;
            }
            self.meta.cluster_id = a.cluster_id;
            self.meta.genesis_config_id = a.genesis_config_id;
            self.meta.genesis_members = a.genesis_members.clone();
            self.peers.set_cluster_id(a.cluster_id);
        } else if a.cluster_id != self.meta.cluster_id {
            return;
        }
        for (&p, addr) in &t.addrs {
            self.meta.addrs.insert(p, addr.clone());
        }
        if !t.members.contains(&self.cfg.pid) {
            info!(config_id = t.config_id, members = ?t.members, "told of a change that removed this replica");
            self.meta.last_transition = Some(t);
            self.retire();
            return;
        }
        let same_config =
            self.meta.lifecycle == Lifecycle::Serving && t.from_config == self.meta.config_id;
        if same_config && self.sm.applied().index >= t.end_idx && self.catchup.is_none() {
            self.switch_to(t);
            ack(self, true);
            return;
        }
        if same_config {
            // Our own log will most likely decide the StopSign soon: give it a moment.
            let since = match &self.straggling {
                Some((_, since)) => *since,
                None => self.now,
            };
            if self.now.saturating_duration_since(since) < self.cfg.timers.straggle_grace {
                self.straggling = Some((t, since));
                return;
            }
        }
        self.join_as_new(t);
        self.announcers.insert(from);
        self.ensure_links(&[from]);
        ack(self, false);
    }

    /// Enters configuration `t` as a member without state: consensus at once, the state by
    /// checkpoint from a member that holds it.
    fn join_as_new(&mut self, t: Transition) {
        info!(config_id = t.config_id, members = ?t.members, "joining configuration");
        self.straggling = None;
        self.announcers.clear();
        self.retire_outgoing(self.meta.config_id);
        self.meta.config_id = t.config_id;
        self.meta.members = t.members.clone();
        self.meta.lifecycle = Lifecycle::Joining;
        self.meta.last_transition = Some(t.clone());
        self.meta
            .save_synced(&self.db)
            .unwrap_or_else(|e| panic!("persisting the configuration: {e}"));
        self.ensure_links(&t.members);
        self.log = build_log(&self.cfg, &self.db, t.config_id, &t.members, false)
            .unwrap_or_else(|e| panic!("starting configuration {}: {e}", t.config_id));
        self.watch_own_ballot();
        self.last_decided = 0;
        self.announcing = None;
        self.start_joining_catchup();
    }

    /// A joiner that just installed the state tells the replicas that announced the change
    /// at once, rather than at their next announcement: a configuration grown from a single
    /// server holds writes back until it hears this from enough members.
    pub(super) fn tell_announcers_we_hold_the_state(&mut self) {
        let config_id = self.meta.config_id;
        for &p in &self.announcers {
            self.peers.send(
                p,
                PeerFrame::NewConfigAck {
                    config_id,
                    holds_state: true,
                },
            );
        }
    }

    /// True when this replica serves a configuration grown from a single server: its last
    /// change left the genesis configuration, which had one member (every later
    /// configuration has at least two). Such a replica holds writes back after a restart
    /// until it hears again that a majority holds the state (`growth_pending`).
    pub(super) fn serves_grown_configuration(&self) -> bool {
        let m = &self.meta;
        m.lifecycle == Lifecycle::Serving
            && grows_from_one(&m.genesis_members)
            && m.last_transition
                .as_ref()
                .is_some_and(|t| t.from_config == m.genesis_config_id && t.config_id == m.config_id)
    }

    /// Answers a frame of an older configuration: its sender missed a change.
    pub(super) fn tell_straggler(&mut self, from: u64) {
        let Some(t) = self.meta.last_transition.clone() else {
            return;
        };
        let now = self.now;
        if self
            .stragglers_told
            .get(&from)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.cfg.timers.straggler_every)
        {
            return;
        }
        self.stragglers_told.insert(from, now);
        self.ensure_links(&[from]);
        let frame = self.announcement(&t);
        debug!(
            peer = from,
            config_id = t.config_id,
            "telling a straggler about the change"
        );
        self.peers.send(from, frame);
    }
}
