//! Client requests in the loop: writes (deduplicated by (client, seq), retried until decided
//! or past their deadline), reads (local ones answered at once, linearizable ones handed to
//! `read_index`), and the answers once entries are applied.

use super::read_index::PendingRead;
use super::{unavailable, AppendError, Replica, MAX_ENTRY_BYTES};
use crate::command::{KeyRange, LeaseOp, LogCmd, Op, ReadOpts, ReqId};
use crate::inbox::{
    ClientRequest, LeaseInfo, LeasesAnswer, ReadAnswer, Reply, WriteAnswer, WriteKind,
};
use crate::membership::Lifecycle;
use crate::peers::Peers;
use crate::state_machine::{Applied, Refusal};
use omnikv_common::api::{ApiError, ErrorCode};
use rand::Rng;
use std::time::Instant;
use tracing::debug;

pub(super) struct PendingWrite {
    op: Op,
    replies: Vec<Reply<WriteAnswer>>,
    deadline: Instant,
    next_retry: Instant,
    /// Proposals so far: retries back off (waits of 1x, 2x, 4x, then 8x the retry period) so
    /// a long stall does not fill the log with copies (they would be applied once, but still
    /// logged).
    proposals: u32,
    /// Handed to OmniPaxos at least once: a timeout is then indeterminate, not unavailable.
    handed: bool,
    /// A checkpoint was installed while it was pending, and its dedup table did not show it
    /// applied: it may have been applied (its record evicted), so it is never answered as
    /// certainly not applied.
    unsure: bool,
}

impl<P: Peers> Replica<P> {
    pub(super) fn handle_client(&mut self, req: ClientRequest) {
        match req {
            ClientRequest::Write {
                kind,
                id,
                deadline,
                reply,
            } => {
                if self.meta.lifecycle != Lifecycle::Serving {
                    self.metrics.requests_refused.inc();
                    let _ = reply.send(Err(unavailable(self.not_serving_message())));
                    return;
                }
                self.handle_write(kind, id, deadline, reply)
            }
            ClientRequest::Read {
                range,
                opts,
                linearizable,
                deadline,
                reply,
            } => {
                let may_read = match self.meta.lifecycle {
                    Lifecycle::Serving => true,
                    // A leaving replica still holds the state: local reads only.
                    Lifecycle::Leaving => !linearizable,
                    Lifecycle::Joining | Lifecycle::Removed => false,
                };
                if !may_read {
                    self.metrics.requests_refused.inc();
                    let _ = reply.send(Err(unavailable(self.not_serving_message())));
                } else if !linearizable {
                    let r = self.read_local(&range, &opts);
                    let _ = reply.send(r);
                } else if self.current_leader().is_none() {
                    self.metrics.requests_refused.inc();
                    let _ = reply.send(Err(unavailable(self.no_leader_message())));
                } else {
                    self.reads.push(PendingRead {
                        range,
                        opts,
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
            ClientRequest::Reconfigure {
                request,
                deadline,
                reply,
            } => self.handle_reconfigure(request, deadline, reply),
            ClientRequest::Members { reply } => {
                let _ = reply.send(self.members_view());
            }
            ClientRequest::Leases { id, keys, reply } => {
                let _ = reply.send(self.leases_view(id, keys));
            }
            ClientRequest::MoveLeader {
                to,
                deadline,
                reply,
            } => self.handle_move_leader(to, deadline, reply),
        }
    }

    /// Lease `id` (or every lease) from the applied state, with the time left by this
    /// replica's lease clock.
    fn leases_view(&self, id: Option<u64>, keys: bool) -> Result<LeasesAnswer, ApiError> {
        if !matches!(self.meta.lifecycle, Lifecycle::Serving | Lifecycle::Leaving) {
            return Err(unavailable(self.not_serving_message()));
        }
        let all = self.sm.leases();
        let chosen: Vec<(u64, crate::state_machine::LeaseRecord)> = match id {
            Some(id) => match all.get(id) {
                Some(rec) => vec![(id, rec)],
                None => return Err(ApiError::new(ErrorCode::NotFound, "lease not found")),
            },
            None => all.iter().collect(),
        };
        let mut leases = Vec::with_capacity(chosen.len());
        for (id, rec) in chosen {
            let keys = if keys {
                let k = self.sm.lease_keys(id).map_err(|e| {
                    ApiError::new(ErrorCode::Internal, format!("reading lease keys: {e}"))
                })?;
                Some(k)
            } else {
                None
            };
            let remaining = self.lease_clock.remaining(id, self.now).unwrap_or_default();
            leases.push(LeaseInfo {
                id,
                ttl_ms: rec.ttl_ms,
                remaining_ms: remaining.as_millis() as u64,
                keys,
            });
        }
        Ok(LeasesAnswer {
            leases,
            revision: self.sm.meta().revision,
        })
    }

    pub(super) fn read_local(
        &self,
        range: &KeyRange,
        opts: &ReadOpts,
    ) -> Result<ReadAnswer, ApiError> {
        if self.installing_checkpoint() {
            return Err(unavailable("replica is installing a checkpoint"));
        }
        let result = self
            .sm
            .read(range, opts)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let meta = self.sm.meta();
        Ok(ReadAnswer {
            result,
            index: meta.applied.index,
            revision: meta.revision,
        })
    }

    fn handle_write(
        &mut self,
        kind: WriteKind,
        id: Option<(u64, u64)>,
        deadline: Instant,
        reply: Reply<WriteAnswer>,
    ) {
        let (client, seq) = id.unwrap_or_else(|| (self.rng.random::<u64>() | 1, 1));
        if let Some(p) = self.pending_writes.get_mut(&(client, seq)) {
            p.replies.push(reply);
            return;
        }
        if self.space.is_low() {
            self.metrics.requests_refused.inc();
            let _ = reply.send(Err(unavailable(self.space.message())));
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
        if matches!(kind, WriteKind::Lease(LeaseOp::Grant { .. }))
            && self.sm.leases().len() >= self.cfg.max_leases
        {
            self.metrics.requests_refused.inc();
            let _ = reply.send(Err(ApiError::new(
                ErrorCode::Rejected,
                format!(
                    "too many leases: {} exist (--max-leases); revoke some first",
                    self.sm.leases().len()
                ),
            )));
            return;
        }
        let req = ReqId {
            client,
            seq,
            ts_ms: self.unix_ms(),
        };
        let op = match kind {
            WriteKind::Put { key, value } => Op::Put { req, key, value },
            WriteKind::Delete { key } => Op::Delete { req, key },
            WriteKind::Txn(txn) => Op::Txn { req, txn },
            WriteKind::PutLeased { key, value, lease } => Op::PutLeased {
                req,
                key,
                value,
                lease,
            },
            WriteKind::Lease(LeaseOp::Grant { id: 0, ttl_ms }) => Op::Lease {
                req,
                op: LeaseOp::Grant {
                    id: omnikv_wire::request::lease_id_for(client, seq),
                    ttl_ms,
                },
            },
            WriteKind::Lease(op) => Op::Lease { req, op },
            WriteKind::Compact { revision } => Op::Compact { req, revision },
        };
        self.to_propose.push(op.clone());
        self.pending_writes.insert(
            (client, seq),
            PendingWrite {
                op,
                replies: vec![reply],
                deadline,
                next_retry: self.now + self.cfg.timers.retry,
                proposals: 1,
                handed: false,
                unsure: false,
            },
        );
    }

    /// The leader's lease upkeep (expiries, checkpoints), proposed with this iteration's
    /// writes. Only a serving leader proposes any.
    pub(super) fn drive_leases(&mut self) {
        let leading = self.meta.lifecycle == Lifecycle::Serving
            && self.catchup.is_none()
            && self.current_leader() == Some(self.cfg.pid);
        self.lease_clock.set_leading(leading, self.now);
        let ops = self.lease_clock.due(self.now, self.cfg.timers.retry);
        let expiries = ops
            .iter()
            .filter(|op| matches!(op, Op::LeaseExpire { .. }))
            .count();
        self.metrics.lease_expiries.inc_by(expiries as u64);
        self.to_propose.extend(ops);
    }

    /// Proposes the writes queued this iteration.
    pub(super) fn propose_queued(&mut self) {
        if self.growth_pending {
            // Grown from a single server, the state not yet held by a majority: writes wait
            // (pending, retried once it is).
            self.to_propose.clear();
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
            .filter_map(|op| op.req().map(|req| (req.client, req.seq)))
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
            Err(AppendError::Reconfiguring) => {
                // The configuration is closing: these go again in the next one (same ids, so
                // never applied twice).
                debug!(
                    "proposal refused: a StopSign is stored; retrying in the next configuration"
                );
            }
            Err(AppendError::Other(e)) => {
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

    /// Retries writes that were not decided in time (a lost forward is never resent by
    /// OmniPaxos) and answers those past their deadline; then the reads' timeouts.
    pub(super) fn scan_timeouts(&mut self) {
        let now = self.now;
        let leader_known = self.current_leader().is_some();
        let mut expired = Vec::new();
        for (id, p) in self.pending_writes.iter_mut() {
            if now >= p.deadline {
                expired.push(*id);
            } else if now >= p.next_retry && leader_known {
                p.next_retry = now + self.cfg.timers.retry * (1 << p.proposals.min(3));
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
        self.scan_read_timeouts();
    }

    /// Answers the writes that `results` (just applied) complete.
    pub(super) fn answer_applied(&mut self, results: Vec<Applied>) {
        for r in results {
            match r {
                Applied::Write {
                    req,
                    result,
                    results,
                } => {
                    if let Some(p) = self.pending_writes.remove(&(req.client, req.seq)) {
                        let answer = match result {
                            Ok(outcome) => Ok(WriteAnswer { outcome, results }),
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
                // Barrier entries (written by older versions, and the no-op entries of the
                // OmniPaxos workarounds) answer nobody.
                Applied::Barrier { .. } => {}
            }
        }
    }

    /// After a checkpoint replaced the state: the pending writes it shows applied (the dedup
    /// table came with it) are answered with their outcome; the others stay pending, marked
    /// unsure (a record can have been evicted).
    pub(super) fn answer_from_checkpoint(&mut self) {
        let ids: Vec<(u64, u64)> = self.pending_writes.keys().copied().collect();
        for id in ids {
            let Some(o) = self.sm.outcome_of(id.0, id.1) else {
                self.pending_writes.get_mut(&id).expect("listed").unsure = true;
                continue;
            };
            let p = self.pending_writes.remove(&id).expect("listed");
            let answer = Ok(WriteAnswer {
                outcome: o,
                results: None,
            });
            for reply in p.replies {
                self.write_replies.push((reply, answer.clone()));
            }
        }
    }

    /// Writes and reads caught in the StopSign window go again in the new configuration
    /// (same ids: never applied twice).
    pub(super) fn retry_in_new_configuration(&mut self) {
        let now = self.now;
        for p in self.pending_writes.values_mut() {
            p.next_retry = now;
        }
        self.restart_reads();
    }

    /// Answers every waiting client: this replica will not apply their requests. `seen_all`:
    /// every entry of the old configuration was applied, so a write not applied never will be.
    pub(super) fn fail_all_requests(&mut self, seen_all: bool) {
        let msg = self.not_serving_message();
        for p in std::mem::take(&mut self.pending_writes).into_values() {
            let err = if p.handed && (!seen_all || p.unsure) {
                ApiError::new(
                    ErrorCode::Indeterminate,
                    format!("{msg}: the write may have been applied"),
                )
            } else {
                unavailable(msg.clone())
            };
            for r in p.replies {
                self.write_replies.push((r, Err(err.clone())));
            }
        }
        self.to_propose.clear();
        self.fail_reads(&msg);
    }

    pub(super) fn not_serving_message(&self) -> String {
        let pid = self.cfg.pid;
        match (self.meta.lifecycle, &self.meta.last_transition) {
            (Lifecycle::Joining, _) if self.meta.config_id == 0 => format!(
                "replica {pid} is a new replica waiting to be added (kvctl reconfigure) and holds no state"
            ),
            (Lifecycle::Joining, _) => format!(
                "replica {pid} is joining configuration {} and receiving the state",
                self.meta.config_id
            ),
            (Lifecycle::Leaving | Lifecycle::Removed, Some(t)) => format!(
                "replica {pid} was removed from the cluster (configuration {}: members {:?})",
                t.config_id, t.members
            ),
            (Lifecycle::Leaving | Lifecycle::Removed, None) => {
                format!("replica {pid} was removed from the cluster")
            }
            (Lifecycle::Serving, _) => format!("replica {pid} is serving"),
        }
    }

    pub(super) fn no_leader_message(&self) -> String {
        format!(
            "no leader known (replica {} reaches {} of {} peers)",
            self.cfg.pid,
            self.connected_peers().len(),
            self.meta
                .members
                .iter()
                .filter(|&&p| p != self.cfg.pid)
                .count()
        )
    }
}
