//! Leader hand-off: moving leadership to a chosen member (`POST /v1/move-leader`), and a
//! leader that is about to stop (SIGTERM: `Input::Drain`) handing it to the most up-to-date
//! connected member instead of leaving the cluster to wait out an election.
//!
//! The protocol, on top of OmniPaxos 0.2.4's `try_become_leader` (ballot n = promise.n + 1,
//! which every member promises, as it outranks the ballot they follow):
//! 1. The leader checks the target: a member, connected (our session to it is up), and not
//!    behind: OmniPaxos's leader state (`get_ui_states().cluster_state.accepted_indexes`)
//!    records, per follower, the highest index it acknowledged as accepted in our ballot.
//! 2. Once that index reaches our decided index, the leader holds new proposals (writes wait
//!    in their queue), so its accepted index stops moving; once the
//!    target's reaches it, the target holds every entry the leader holds.
//! 3. The leader sends `TakeLeadership { accepted_idx }` (again every `ASK_AGAIN` while it
//!    leads). The target checks that the sender is the leader it follows and that its own
//!    log reaches `accepted_idx`, then calls `try_become_leader`: its Prepare reaches the
//!    old leader, which promises and follows; nothing the old leader accepted is lost, as
//!    the new leader's log already holds it.
//! 4. The old leader releases its held proposals as soon as it follows someone else (they
//!    are forwarded to the new leader), and answers once it is in the new leader's accept
//!    phase: the new leader then has a quorum of promises and serves.
//!
//! The hold lasts at most `HOLD_MAX`: a target that does not take over by then is given up
//! (a drain then tries the next member), so writes never wait on a hand-off for longer.

use super::{unavailable, Log, Replica};
use crate::frame::PeerFrame;
use crate::inbox::{ClientRequest, Drained, Reply};
use crate::membership::Lifecycle;
use crate::omnipaxos_workarounds::stopsign_pending;
use crate::peers::Peers;
use omnikv_common::api::{ApiError, ErrorCode};
use omnikv_common::MoveLeaderResult;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Longest time the leader holds new proposals for one target.
const HOLD_MAX: Duration = Duration::from_millis(500);
/// A `TakeLeadership` not acted on is sent again after this long (a frame can be lost).
const ASK_AGAIN: Duration = Duration::from_millis(50);

/// Hand-off state of the loop.
#[derive(Default)]
pub(super) struct Handoff {
    /// Set by a drain: the process is stopping and refuses new client requests.
    draining: bool,
    drain_reply: Option<oneshot::Sender<Drained>>,
    moving: Option<Moving>,
}

/// A hand-off under way on this (leading) replica.
struct Moving {
    to: u64,
    /// A drain's: on a refusal, try the next most up-to-date member.
    pick_next: bool,
    /// Members that refused (a drain does not ask them again).
    refused: BTreeSet<u64>,
    replies: Vec<Reply<MoveLeaderResult>>,
    started: Instant,
    deadline: Instant,
    /// Since when proposals are held for `to` (step 2).
    hold_since: Option<Instant>,
    /// When `TakeLeadership` last went to `to`.
    asked: Option<Instant>,
}

impl Handoff {
    /// Whether new client requests are refused (the process is stopping).
    pub(super) fn draining(&self) -> bool {
        self.draining
    }
}

impl<P: Peers> Replica<P> {
    /// Whether proposals are held: a hand-off waits for its target to hold our whole log.
    pub(super) fn holds_proposals(&self) -> bool {
        self.handoff
            .moving
            .as_ref()
            .is_some_and(|m| m.hold_since.is_some())
            && self.current_leader() == Some(self.cfg.pid)
    }

    /// A client request while draining is refused (`unavailable`: the client tries another
    /// replica); views still answer. Returns the request when it is to be handled.
    pub(super) fn refuse_if_draining(&mut self, req: ClientRequest) -> Option<ClientRequest> {
        if !self.handoff.draining() {
            return Some(req);
        }
        let err = || {
            unavailable(format!(
                "replica {} is shutting down: ask another replica",
                self.cfg.pid
            ))
        };
        match req {
            ClientRequest::Write { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            ClientRequest::Read { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            ClientRequest::Reconfigure { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            ClientRequest::MoveLeader { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            other => return Some(other),
        }
        self.metrics.requests_refused.inc();
        None
    }

    /// `POST /v1/move-leader`: checked here, then driven by `drive_handoff`.
    pub(super) fn handle_move_leader(
        &mut self,
        to: u64,
        deadline: Instant,
        reply: Reply<MoveLeaderResult>,
    ) {
        let rejected = |m: String| Err(ApiError::new(ErrorCode::Rejected, m));
        let c = self.meta.config_id;
        match &self.log {
            Log::Local(_) => {
                let _ = reply.send(rejected(
                    "this is a standalone (single-server) replica: there is no other member to \
                     lead"
                        .into(),
                ));
                return;
            }
            Log::None => {
                let _ = reply.send(Err(unavailable(self.not_serving_message())));
                return;
            }
            Log::Paxos(_) => {}
        }
        if self.meta.lifecycle != Lifecycle::Serving {
            let _ = reply.send(Err(unavailable(self.not_serving_message())));
            return;
        }
        if !self.meta.members.contains(&to) {
            let _ = reply.send(rejected(format!(
                "node {to} is not a member of configuration {c} (members {:?})",
                self.meta.members
            )));
            return;
        }
        let me = self.cfg.pid;
        if self.current_leader() != Some(me) {
            let _ = reply.send(Err(unavailable(format!(
                "replica {me} is not the leader of configuration {c} (leader: {}); leadership \
                 is moved by the leader",
                self.current_leader()
                    .map_or("unknown".to_string(), |l| l.to_string())
            ))));
            return;
        }
        if to == me {
            let _ = reply.send(Ok(MoveLeaderResult {
                leader: me,
                previous: me,
                config_id: c,
                elapsed_ms: 0,
            }));
            return;
        }
        if let Some(m) = &mut self.handoff.moving {
            if m.to == to {
                m.replies.push(reply);
            } else {
                let _ = reply.send(rejected(format!(
                    "a hand-off to node {} is already under way",
                    m.to
                )));
            }
            return;
        }
        if let Some(why) = self.cannot_hand_off() {
            let _ = reply.send(Err(unavailable(why)));
            return;
        }
        if !self.peers.is_connected(to) {
            let _ = reply.send(Err(unavailable(format!(
                "node {to} is not connected to the leader (replica {me} reaches {:?})",
                self.connected_peers()
            ))));
            return;
        }
        info!(to, "leader hand-off requested");
        self.handoff.moving = Some(Moving {
            to,
            pick_next: false,
            refused: BTreeSet::new(),
            replies: vec![reply],
            started: self.now,
            deadline,
            hold_since: None,
            asked: None,
        });
    }

    /// Why this leader cannot hand off now, if it cannot: a membership change in flight
    /// (its StopSign must be decided under one leader's watch first).
    fn cannot_hand_off(&self) -> Option<String> {
        let Log::Paxos(op) = &self.log else {
            return Some("this replica runs no replicated log".into());
        };
        if self.reconfig.is_some() || stopsign_pending(op) {
            return Some(
                "a membership change is in flight: move the leader once it is done".into(),
            );
        }
        None
    }

    /// `Input::Drain`: refuse new client requests from now on and, when leading, hand
    /// leadership to the most up-to-date connected member by `deadline`.
    pub(super) fn start_drain(&mut self, deadline: Instant, reply: oneshot::Sender<Drained>) {
        self.handoff.draining = true;
        let leading = matches!(self.log, Log::Paxos(_))
            && self.meta.lifecycle == Lifecycle::Serving
            && self.current_leader() == Some(self.cfg.pid);
        if !leading {
            let _ = reply.send(Drained::NotLeading);
            return;
        }
        if let Some(m) = &mut self.handoff.moving {
            // A requested hand-off is under way: the drain waits for it, and tries others.
            m.pick_next = true;
            m.deadline = m.deadline.min(deadline);
            self.handoff.drain_reply = Some(reply);
            return;
        }
        if let Some(why) = self.cannot_hand_off() {
            let _ = reply.send(Drained::Failed(why));
            return;
        }
        let Some(to) = self.best_successor(&BTreeSet::new()) else {
            let _ = reply.send(Drained::Failed("no member is connected".into()));
            return;
        };
        info!(to, "stopping: handing leadership over");
        self.handoff.drain_reply = Some(reply);
        self.handoff.moving = Some(Moving {
            to,
            pick_next: true,
            refused: BTreeSet::new(),
            replies: Vec::new(),
            started: self.now,
            deadline,
            hold_since: None,
            asked: None,
        });
    }

    /// The connected member, not in `skip`, whose accepted index (as our leader state
    /// records it) is highest; the lowest pid among equals.
    fn best_successor(&self, skip: &BTreeSet<u64>) -> Option<u64> {
        let Log::Paxos(op) = &self.log else {
            return None;
        };
        let accepted = op.get_ui_states().cluster_state.accepted_indexes;
        self.connected_peers()
            .into_iter()
            .filter(|p| !skip.contains(p))
            .max_by_key(|&p| {
                let idx = accepted.get(p as usize).copied().unwrap_or(0);
                (idx, std::cmp::Reverse(p))
            })
    }

    /// Moves a hand-off along (every iteration): done once we follow the target in its
    /// accept phase, given up at the deadline, on a refusal or after `HOLD_MAX` of holding.
    pub(super) fn drive_handoff(&mut self) {
        let now = self.now;
        let me = self.cfg.pid;
        let c = self.meta.config_id;
        let Some(m) = &mut self.handoff.moving else {
            return;
        };
        let Log::Paxos(op) = &mut self.log else {
            self.finish_handoff(Err("this replica no longer runs a replicated log".into()));
            return;
        };
        let to = m.to;
        match op.get_current_leader() {
            Some((l, true)) if l == to => {
                let elapsed = now.saturating_duration_since(m.started);
                info!(
                    to,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "leadership handed over"
                );
                self.finish_handoff(Ok(()));
                return;
            }
            // The target runs its prepare phase: wait (our proposals go to it meanwhile).
            Some((l, false)) if l == to => {}
            Some((l, _)) if l == me => {}
            other => {
                let who = other.map_or("nobody".to_string(), |(l, _)| l.to_string());
                self.finish_handoff(Err(format!(
                    "leadership went to {who} instead of node {to}"
                )));
                return;
            }
        }
        if now >= m.deadline {
            self.finish_handoff(Err(format!(
                "node {to} did not take over before the deadline"
            )));
            return;
        }
        if op.get_current_leader() != Some((me, true)) {
            return;
        }
        if m.hold_since.is_some_and(|t| now >= t + HOLD_MAX) {
            self.give_up_on_target(format!(
                "node {to} did not take over within {} ms of holding proposals for it",
                HOLD_MAX.as_millis()
            ));
            return;
        }
        if !self.peers.is_connected(to) {
            self.give_up_on_target(format!("node {to} is not connected to the leader"));
            return;
        }
        // How we know the target is caught up: OmniPaxos's leader state holds, per follower,
        // the highest index it acknowledged (Promise or Accepted) in our ballot.
        let theirs = op
            .get_ui_states()
            .cluster_state
            .accepted_indexes
            .get(to as usize)
            .copied()
            .unwrap_or(0) as u64;
        let decided = op.get_decided_idx() as u64;
        let accepted = op.get_accepted_idx() as u64;
        if m.hold_since.is_none() {
            if theirs < decided {
                return; // Far behind: let it catch up without holding anything.
            }
            m.hold_since = Some(now);
        }
        if theirs < accepted || m.asked.is_some_and(|t| now < t + ASK_AGAIN) {
            return;
        }
        m.asked = Some(now);
        let frame = PeerFrame::TakeLeadership {
            config_id: c,
            accepted_idx: accepted,
        };
        if !self.peers.send(to, frame) {
            self.metrics.peer_frames_dropped.inc();
        }
    }

    /// The target will not do: a drain tries the next member, a requested move fails.
    fn give_up_on_target(&mut self, why: String) {
        let Some(m) = &mut self.handoff.moving else {
            return;
        };
        warn!(to = m.to, reason = %why, "leader hand-off: giving up on this member");
        if m.pick_next {
            m.refused.insert(m.to);
            let skip = m.refused.clone();
            if let Some(next) = self.best_successor(&skip) {
                let m = self.handoff.moving.as_mut().expect("present");
                info!(to = next, "leader hand-off: trying the next member");
                m.to = next;
                m.hold_since = None;
                m.asked = None;
                return;
            }
        }
        self.finish_handoff(Err(why));
    }

    /// Answers everyone waiting on the hand-off and ends it.
    fn finish_handoff(&mut self, result: Result<(), String>) {
        let Some(m) = self.handoff.moving.take() else {
            return;
        };
        let elapsed = self.now.saturating_duration_since(m.started);
        let answer = match &result {
            Ok(()) => Ok(MoveLeaderResult {
                leader: m.to,
                previous: self.cfg.pid,
                config_id: self.meta.config_id,
                elapsed_ms: elapsed.as_millis() as u64,
            }),
            Err(why) => Err(unavailable(format!("leader hand-off failed: {why}"))),
        };
        for reply in m.replies {
            let _ = reply.send(answer.clone());
        }
        if let Some(reply) = self.handoff.drain_reply.take() {
            let _ = reply.send(match result {
                Ok(()) => Drained::HandedTo { to: m.to, elapsed },
                Err(why) => Drained::Failed(why),
            });
        }
    }

    /// `TakeLeadership` from `from`: take over when it is the leader we follow and our log
    /// holds everything it accepted; else say why not.
    pub(super) fn on_take_leadership(&mut self, from: u64, accepted_idx: u64) {
        let me = self.cfg.pid;
        let refusal = match &self.log {
            _ if self.meta.lifecycle != Lifecycle::Serving => Some(self.not_serving_message()),
            _ if self.handoff.draining() => Some(format!("replica {me} is shutting down")),
            _ if self.catchup.is_some() => Some(format!("replica {me} is catching up")),
            Log::Paxos(op) => {
                let leader = op.get_current_leader().map(|(l, _)| l);
                if leader == Some(me) {
                    return; // Already done (a repeated ask).
                }
                if leader != Some(from) {
                    Some(format!(
                        "replica {me} follows {}, not {from}",
                        leader.map_or("nobody".into(), |l| l.to_string())
                    ))
                } else if (op.get_accepted_idx() as u64) < accepted_idx {
                    Some(format!(
                        "replica {me} holds the log up to {} of {accepted_idx}",
                        op.get_accepted_idx()
                    ))
                } else if stopsign_pending(op) {
                    Some("a membership change is in flight".into())
                } else {
                    None
                }
            }
            _ => Some(format!("replica {me} runs no replicated log")),
        };
        if let Some(reason) = refusal {
            info!(from, reason = %reason, "not taking over leadership");
            let frame = PeerFrame::LeadershipRefused {
                config_id: self.meta.config_id,
                reason,
            };
            self.peers.send(from, frame);
            return;
        }
        let Log::Paxos(op) = &mut self.log else {
            return;
        };
        info!(from, "taking over leadership at the leader's request");
        op.try_become_leader();
        // The Prepare leaves after this iteration's sync (our promise in it is durable).
        op.take_outgoing_messages(&mut self.outgoing);
    }

    /// `LeadershipRefused` from `from`: give up on it if it is our target.
    pub(super) fn on_leadership_refused(&mut self, from: u64, reason: &str) {
        if self.handoff.moving.as_ref().is_some_and(|m| m.to == from) {
            self.give_up_on_target(format!("node {from} refused: {reason}"));
        }
    }
}
