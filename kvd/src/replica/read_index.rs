//! Linearizable reads without log writes (ReadIndex): the leader confirms with a quorum round
//! that it still leads, then serves each read once it has applied up to the read index it took
//! when the round began. A follower asks the leader for a read index and serves from its own
//! state once it has applied that far. Nothing is appended to the log, nothing is fsynced.
//!
//! The rules, and why they make a read linearizable (docs/architecture.md, "Linearizable
//! reads"):
//! - A round starts only on a leader in OmniPaxos's Accept phase with no StopSign stored. Its
//!   read index is the leader's accepted index then: the leader's log holds every entry
//!   decided in a lower ballot (its Prepare phase adopted a majority's longest log) and every
//!   entry it decided itself.
//! - A round is confirmed when a majority of the members (the leader included) answered a
//!   probe of it, or of a later round, saying that their promise is still exactly the
//!   leader's ballot. Probes leave after the round's reads arrived, so at some moment after
//!   each read arrived a majority had promised no higher ballot: no other leader can have
//!   decided a write the read would miss.
//! - A read is answered only once the replica serving it has applied up to the read index, in
//!   the same configuration. Reads of one iteration share one round: one probe per member
//!   serves every read that was waiting.

use super::{unavailable, Defect, Log, Replica};
use crate::command::{KeyRange, ReadOpts};
use crate::frame::PeerFrame;
use crate::inbox::{ReadAnswer, Reply};
use crate::omnipaxos_workarounds::stopsign_pending;
use crate::peers::Peers;
use omnipaxos::ballot_leader_election::Ballot;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tracing::debug;

pub(super) struct PendingRead {
    pub(super) range: KeyRange,
    pub(super) opts: ReadOpts,
    pub(super) deadline: Instant,
    pub(super) reply: Reply<ReadAnswer>,
}

/// A leader's quorum round: confirmed by a majority of acks for its ballot.
struct Round {
    ballot: Ballot,
    /// The leader's accepted index when the round began (exclusive end).
    index: u64,
    acks: BTreeSet<u64>,
    reads: Vec<PendingRead>,
    /// Followers' requests (pid, request id) answered with `index` once confirmed.
    remote: Vec<(u64, u64)>,
    /// Unconfirmed by then (lost probes or acks, a lost leadership): its reads start over.
    give_up: Instant,
}

/// A follower's reads whose read index it asked the leader for.
struct Asked {
    reads: Vec<PendingRead>,
    /// No answer by then: ask again (maybe another leader).
    retry_at: Instant,
}

/// A read whose index is known: served once the replica applied up to `index` in
/// configuration `config_id`.
struct Confirmed {
    config_id: u32,
    index: u64,
    read: PendingRead,
}

/// The linearizable reads in flight on this replica.
pub(super) struct Reads {
    /// Drawn at start: probes and acks carry it, so an ack sent to an earlier run of this
    /// replica (still queued on a peer's link) confirms nothing in this one.
    nonce: u64,
    /// Arrived since the last round (leader) or request (follower).
    waiting: Vec<PendingRead>,
    /// Leader: followers' read-index requests for the next round.
    remote_waiting: Vec<(u64, u64)>,
    rounds: BTreeMap<u64, Round>,
    next_seq: u64,
    asked: BTreeMap<u64, Asked>,
    next_ask: u64,
    confirmed: Vec<Confirmed>,
}

impl Reads {
    /// Request ids start at a random point of a 2^63 space, so that an answer to a request of
    /// an earlier run of this replica does not match one of this run.
    pub(super) fn new(rng: &mut impl rand::Rng) -> Reads {
        Reads {
            nonce: rng.random(),
            waiting: Vec::new(),
            remote_waiting: Vec::new(),
            rounds: BTreeMap::new(),
            next_seq: 0,
            asked: BTreeMap::new(),
            next_ask: rng.random::<u64>() >> 1,
            confirmed: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, read: PendingRead) {
        self.waiting.push(read);
    }

    /// Every read held, to answer or to start over (followers' requests are dropped: they
    /// ask again).
    fn take_all(&mut self) -> Vec<PendingRead> {
        let mut all: Vec<PendingRead> = std::mem::take(&mut self.waiting);
        for r in std::mem::take(&mut self.rounds).into_values() {
            all.extend(r.reads);
        }
        for a in std::mem::take(&mut self.asked).into_values() {
            all.extend(a.reads);
        }
        all.extend(
            std::mem::take(&mut self.confirmed)
                .into_iter()
                .map(|c| c.read),
        );
        self.remote_waiting.clear();
        all
    }
}

impl<P: Peers> Replica<P> {
    /// Starts this iteration's read round (leader), or asks the leader for a read index
    /// (follower), for every read that arrived since the last one.
    pub(super) fn start_reads(&mut self) {
        if self.reads.waiting.is_empty() && self.reads.remote_waiting.is_empty() {
            return;
        }
        let config_id = self.meta.config_id;
        let pid = self.cfg.pid;
        let (leader, ready, ballot, index) = match &self.log {
            Log::Local(_) => {
                // Standalone: every entry is decided when appended, so the decided index is
                // the read index and there is nobody to confirm with.
                let index = self.decided_idx();
                let reads = std::mem::take(&mut self.reads.waiting);
                self.reads
                    .confirmed
                    .extend(reads.into_iter().map(|read| Confirmed {
                        config_id,
                        index,
                        read,
                    }));
                return;
            }
            Log::None => return,
            Log::Paxos(op) => match op.get_current_leader() {
                None => (None, false, Ballot::default(), 0),
                Some((p, accept)) => (
                    Some(p),
                    accept && p == pid && !stopsign_pending(op) && self.catchup.is_none(),
                    op.get_promise(),
                    op.get_accepted_idx() as u64,
                ),
            },
        };
        if leader != Some(pid) {
            for (to, id) in std::mem::take(&mut self.reads.remote_waiting) {
                self.peers.send(
                    to,
                    PeerFrame::ReadIndexReply {
                        config_id,
                        id,
                        index: None,
                    },
                );
            }
        }
        match leader {
            Some(p) if p == pid => {
                if !ready {
                    // Still preparing, or closing the configuration: the reads wait.
                    return;
                }
                let seq = self.reads.next_seq;
                self.reads.next_seq += 1;
                let round = Round {
                    ballot,
                    index,
                    acks: BTreeSet::from([pid]),
                    reads: std::mem::take(&mut self.reads.waiting),
                    remote: std::mem::take(&mut self.reads.remote_waiting),
                    give_up: self.now + self.cfg.timers.retry,
                };
                self.metrics.read_rounds.inc();
                self.reads.rounds.insert(seq, round);
                if self.cfg.defect == Some(Defect::ReadBeforeQuorum) {
                    // The defect: serve as if the round were confirmed already.
                    self.confirm_round(seq);
                    return;
                }
                self.send_probe(seq, false);
                self.check_rounds(ballot);
            }
            Some(p) => {
                let reads = std::mem::take(&mut self.reads.waiting);
                if reads.is_empty() {
                    return;
                }
                let id = self.reads.next_ask;
                self.reads.next_ask += 1;
                self.peers
                    .send(p, PeerFrame::ReadIndexRequest { config_id, id });
                self.reads.asked.insert(
                    id,
                    Asked {
                        reads,
                        retry_at: self.now + self.cfg.timers.retry,
                    },
                );
            }
            // No leader known: the reads wait for one (or their deadline).
            None => {}
        }
    }

    /// Sends round `seq`'s probe to every other member (`missing_only`: to those not yet
    /// heard from).
    fn send_probe(&mut self, seq: u64, missing_only: bool) {
        let Some(round) = self.reads.rounds.get(&seq) else {
            return;
        };
        let frame = PeerFrame::ReadProbe {
            config_id: self.meta.config_id,
            ballot: round.ballot,
            nonce: self.reads.nonce,
            seq,
        };
        for &m in &self.meta.members {
            if m == self.cfg.pid || (missing_only && round.acks.contains(&m)) {
                continue;
            }
            if !self.peers.send(m, frame.clone()) {
                self.metrics.peer_frames_dropped.inc();
            }
        }
    }

    /// Confirms every round of `ballot` a majority has answered.
    fn check_rounds(&mut self, ballot: Ballot) {
        let majority = self.meta.members.len() / 2 + 1;
        let done: Vec<u64> = self
            .reads
            .rounds
            .iter()
            .filter(|(_, r)| r.ballot == ballot && r.acks.len() >= majority)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in done {
            self.confirm_round(seq);
        }
    }

    fn confirm_round(&mut self, seq: u64) {
        let Some(round) = self.reads.rounds.remove(&seq) else {
            return;
        };
        let config_id = self.meta.config_id;
        for (to, id) in round.remote {
            self.peers.send(
                to,
                PeerFrame::ReadIndexReply {
                    config_id,
                    id,
                    index: Some(round.index),
                },
            );
        }
        if self.cfg.defect == Some(Defect::ReadBeforeQuorum) {
            for r in round.reads {
                let answer = self.read_local(&r.range, &r.opts);
                self.read_replies.push((r.reply, answer));
            }
            return;
        }
        self.reads
            .confirmed
            .extend(round.reads.into_iter().map(|read| Confirmed {
                config_id,
                index: round.index,
                read,
            }));
    }

    /// A leader's probe: answered when our promise is exactly its ballot.
    pub(super) fn on_read_probe(&mut self, from: u64, ballot: Ballot, nonce: u64, seq: u64) {
        let Log::Paxos(op) = &self.log else {
            return;
        };
        if ballot.pid != from || op.get_promise() != ballot {
            return;
        }
        let frame = PeerFrame::ReadProbeAck {
            config_id: self.meta.config_id,
            ballot,
            nonce,
            seq,
        };
        if !self.peers.send(from, frame) {
            self.metrics.peer_frames_dropped.inc();
        }
    }

    /// A follower still follows `ballot` as of probe `seq`: it confirms every round up to it.
    pub(super) fn on_read_probe_ack(&mut self, from: u64, ballot: Ballot, nonce: u64, seq: u64) {
        let Log::Paxos(op) = &self.log else {
            return;
        };
        if nonce != self.reads.nonce || op.get_promise() != ballot {
            return; // we no longer lead in that ballot; the rounds give up in time
        }
        for (_, r) in self.reads.rounds.range_mut(..=seq) {
            if r.ballot == ballot {
                r.acks.insert(from);
            }
        }
        self.check_rounds(ballot);
    }

    /// A follower asks for a read index: it joins the next round, or hears that we cannot
    /// give one (not the leader).
    pub(super) fn on_read_index_request(&mut self, from: u64, id: u64) {
        if self.current_leader() == Some(self.cfg.pid) {
            self.reads.remote_waiting.push((from, id));
        } else {
            self.peers.send(
                from,
                PeerFrame::ReadIndexReply {
                    config_id: self.meta.config_id,
                    id,
                    index: None,
                },
            );
        }
    }

    /// The leader's answer to our request `id`.
    pub(super) fn on_read_index_reply(&mut self, id: u64, index: Option<u64>) {
        match index {
            Some(index) => {
                let Some(asked) = self.reads.asked.remove(&id) else {
                    return; // given up on already: those reads were asked again
                };
                let config_id = self.meta.config_id;
                self.reads
                    .confirmed
                    .extend(asked.reads.into_iter().map(|read| Confirmed {
                        config_id,
                        index,
                        read,
                    }));
            }
            None => {
                // Not the leader (any more): ask again at the next tick, maybe someone else.
                if let Some(a) = self.reads.asked.get_mut(&id) {
                    a.retry_at = a.retry_at.min(self.now + self.cfg.timers.tick);
                }
            }
        }
    }

    /// Answers the confirmed reads this replica has applied far enough for.
    pub(super) fn serve_confirmed(&mut self) {
        if self.reads.confirmed.is_empty() || self.installing_checkpoint() {
            return;
        }
        let applied = self.sm.applied();
        let (ready, rest): (Vec<Confirmed>, Vec<Confirmed>) =
            std::mem::take(&mut self.reads.confirmed)
                .into_iter()
                .partition(|c| c.config_id == applied.config_id && applied.index >= c.index);
        self.reads.confirmed = rest;
        for c in ready {
            let answer = self.read_local(&c.read.range, &c.read.opts);
            self.read_replies.push((c.read.reply, answer));
        }
    }

    /// Once a tick: answers the reads past their deadline, starts over the rounds and
    /// requests not answered in time, and resends the newest round's probe to the members
    /// that have not answered it (a lost probe then costs a tick, not a retry period).
    pub(super) fn scan_read_timeouts(&mut self) {
        let now = self.now;
        let late = |r: &PendingRead| now >= r.deadline;
        let mut expired: Vec<PendingRead> = Vec::new();
        let mut split = |reads: &mut Vec<PendingRead>| {
            let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(reads).into_iter().partition(late);
            *reads = live;
            expired.extend(gone);
        };
        split(&mut self.reads.waiting);
        let mut again: Vec<PendingRead> = Vec::new();
        let mut again_remote: Vec<(u64, u64)> = Vec::new();
        let mut given_up = Vec::new();
        for (&seq, r) in self.reads.rounds.iter_mut() {
            split(&mut r.reads);
            if now >= r.give_up {
                given_up.push(seq);
            }
        }
        for seq in given_up {
            let r = self.reads.rounds.remove(&seq).expect("listed");
            debug!(
                seq,
                "read round not confirmed in time: its reads start over"
            );
            again.extend(r.reads);
            again_remote.extend(r.remote);
        }
        let mut reask = Vec::new();
        for (&id, a) in self.reads.asked.iter_mut() {
            split(&mut a.reads);
            if now >= a.retry_at || a.reads.is_empty() {
                reask.push(id);
            }
        }
        for id in reask {
            again.extend(self.reads.asked.remove(&id).expect("listed").reads);
        }
        let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.confirmed)
            .into_iter()
            .partition(|c| late(&c.read));
        self.reads.confirmed = live;
        expired.extend(gone.into_iter().map(|c| c.read));
        self.reads.waiting.extend(again);
        self.reads.remote_waiting.extend(again_remote);
        for r in expired {
            self.read_replies.push((
                r.reply,
                Err(unavailable(
                    "linearizable read not confirmed before the deadline (no quorum?)",
                )),
            ));
        }
        if let Some(&seq) = self.reads.rounds.keys().next_back() {
            self.send_probe(seq, true);
        }
    }

    /// After a configuration switch: every read starts over in the new configuration.
    pub(super) fn restart_reads(&mut self) {
        let all = self.reads.take_all();
        self.reads.waiting = all;
    }

    /// This replica will serve no reads: every one held is answered with `msg`.
    pub(super) fn fail_reads(&mut self, msg: &str) {
        for r in self.reads.take_all() {
            self.read_replies
                .push((r.reply, Err(unavailable(msg.to_string()))));
        }
    }
}
