//! The lease clock: when each lease runs out by this replica's clock, and, on the leader, the
//! log entries that end the leases whose time is up and record the others' remaining time.
//!
//! Rules (etcd's lessor, with its reported pitfalls fixed):
//! - Only the leader decides that a lease expired, by proposing `Op::LeaseExpire`; no replica
//!   deletes anything by its own clock at apply time. The expiry names the renewal count the
//!   leader saw, so a late expiry from a deposed leader cannot undo a keepalive decided before
//!   it (`state_machine::apply`).
//! - Every replica tracks deadlines as it applies: a grant or keepalive lives its TTL from when
//!   this replica applied it, a checkpoint at most its remaining time from then. Applying
//!   happens after the client sent the request, so a tracked deadline is never earlier than the
//!   lease's real one: no key vanishes before its TTL has passed since its last keepalive.
//! - A replica that becomes leader extends every deadline by `grace` (a few election rounds),
//!   so that clients whose keepalives failed during the election can reach it; it does not
//!   reset leases to their full TTL, so a lease without keepalives still expires while
//!   leaders change.
//! - A loaded lease (a restart, an installed checkpoint) gets the remaining time last
//!   checkpointed, counted from the load. The leader checkpoints a lease once a tenth of its
//!   TTL (at least `CHECKPOINT_MIN`) has passed since it was last renewed or checkpointed, so
//!   a restart gives a lease back at most that much (plus the time it was down).

use crate::command::Op;
use crate::state_machine::{LeaseChange, LeaseRecord};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Most expiries proposed in one scan (etcd revokes at most 1000 leases a second).
const MAX_EXPIRIES_PER_SCAN: usize = 1000;
/// Most leases in one checkpoint entry.
const MAX_CHECKPOINTS_PER_ENTRY: usize = 1000;
/// No lease is checkpointed more often than this.
const CHECKPOINT_MIN: Duration = Duration::from_millis(250);
/// How often the leader looks for leases to expire or checkpoint (a scan visits every lease).
const SCAN_EVERY: Duration = Duration::from_millis(100);

struct Tracked {
    deadline: Instant,
    ttl: Duration,
    renewals: u64,
    /// When this replica, as leader, last recorded its remaining time (or saw it renewed).
    recorded: Instant,
    /// When this replica last proposed its expiry (proposed again after `retry`).
    expiry_proposed: Option<Instant>,
}

pub(super) struct LeaseClock {
    leases: BTreeMap<u64, Tracked>,
    grace: Duration,
    leading: bool,
    next_scan: Option<Instant>,
    /// Checkpoints without renewal counts, for older replicas (`Op::LeaseCheckpoint`).
    legacy_checkpoints: bool,
}

impl LeaseClock {
    /// The clock over `leases` as loaded at `now`.
    pub fn new(
        leases: impl Iterator<Item = (u64, LeaseRecord)>,
        now: Instant,
        grace: Duration,
    ) -> Self {
        let mut clock = LeaseClock {
            leases: BTreeMap::new(),
            grace,
            leading: false,
            next_scan: None,
            legacy_checkpoints: false,
        };
        clock.reload(leases, now);
        clock
    }

    /// Proposes checkpoints in the format a kvd from before renewal counts decodes.
    pub fn set_legacy_checkpoints(&mut self, on: bool) {
        self.legacy_checkpoints = on;
    }

    /// Starts again from `leases` (a checkpoint replaced the state).
    pub fn reload(&mut self, leases: impl Iterator<Item = (u64, LeaseRecord)>, now: Instant) {
        self.leases = leases
            .map(|(id, rec)| {
                let tracked = Tracked {
                    deadline: now + Duration::from_millis(rec.remaining_ms),
                    ttl: Duration::from_millis(rec.ttl_ms),
                    renewals: rec.renewals,
                    recorded: now,
                    expiry_proposed: None,
                };
                (id, tracked)
            })
            .collect();
        if self.leading {
            self.extend_all(now);
        }
    }

    /// Follows what applying the log did to leases.
    pub fn apply(&mut self, changes: &[LeaseChange], now: Instant) {
        for change in changes {
            match *change {
                LeaseChange::Renewed {
                    id,
                    ttl_ms,
                    renewals,
                } => {
                    let ttl = Duration::from_millis(ttl_ms);
                    self.leases.insert(
                        id,
                        Tracked {
                            deadline: now + ttl,
                            ttl,
                            renewals,
                            recorded: now,
                            expiry_proposed: None,
                        },
                    );
                }
                LeaseChange::Checkpointed { id, remaining_ms } => {
                    if let Some(t) = self.leases.get_mut(&id) {
                        // Both bounds are at or after the real deadline: keep the nearer.
                        t.deadline = t.deadline.min(now + Duration::from_millis(remaining_ms));
                        t.recorded = now;
                    }
                }
                LeaseChange::Gone { id } => {
                    self.leases.remove(&id);
                }
            }
        }
    }

    /// Tells the clock whether this replica leads now; becoming leader extends every
    /// deadline by the grace period.
    pub fn set_leading(&mut self, leading: bool, now: Instant) {
        if leading && !self.leading {
            self.extend_all(now);
        }
        self.leading = leading;
    }

    fn extend_all(&mut self, now: Instant) {
        for t in self.leases.values_mut() {
            t.deadline = t.deadline.max(now) + self.grace;
            t.expiry_proposed = None;
        }
    }

    /// The leader's upkeep at `now`: expiries of leases whose time is up (not proposed again
    /// within `retry`), then one checkpoint of the leases due for one. Empty unless leading.
    pub fn due(&mut self, now: Instant, retry: Duration) -> Vec<Op> {
        if !self.leading || self.next_scan.is_some_and(|at| now < at) {
            return Vec::new();
        }
        self.next_scan = Some(now + SCAN_EVERY);
        let mut ops = Vec::new();
        let mut checkpoint = Vec::new();
        for (&id, t) in self.leases.iter_mut() {
            if t.deadline <= now {
                let retry_due = t.expiry_proposed.is_none_or(|at| now >= at + retry);
                if retry_due && ops.len() < MAX_EXPIRIES_PER_SCAN {
                    t.expiry_proposed = Some(now);
                    ops.push(Op::LeaseExpire {
                        id,
                        renewals: t.renewals,
                    });
                }
                continue;
            }
            let every = (t.ttl / 10).max(CHECKPOINT_MIN);
            if now >= t.recorded + every && checkpoint.len() < MAX_CHECKPOINTS_PER_ENTRY {
                t.recorded = now;
                let remaining = t.deadline.saturating_duration_since(now);
                checkpoint.push((id, remaining.as_millis() as u64, t.renewals));
            }
        }
        if !checkpoint.is_empty() {
            ops.push(if self.legacy_checkpoints {
                let leases = checkpoint.iter().map(|&(id, ms, _)| (id, ms)).collect();
                Op::LeaseCheckpoint { leases }
            } else {
                Op::LeaseCheckpointAt { leases: checkpoint }
            });
        }
        ops
    }

    /// The time lease `id` has left by this replica's clock.
    pub fn remaining(&self, id: u64, now: Instant) -> Option<Duration> {
        self.leases
            .get(&id)
            .map(|t| t.deadline.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttl_ms: u64, remaining_ms: u64) -> LeaseRecord {
        LeaseRecord {
            ttl_ms,
            remaining_ms,
            renewals: 0,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_a_leader_expires_and_a_new_leader_adds_grace_not_the_full_ttl() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new([(1, rec(10_000, 3_000))].into_iter(), t0, 500 * MS);
        // Loaded: 3 s left, not 10.
        assert_eq!(c.remaining(1, t0), Some(3_000 * MS));
        assert!(c.due(t0 + 5_000 * MS, 1_000 * MS).is_empty(), "not leading");
        c.set_leading(true, t0 + 1_000 * MS);
        assert_eq!(c.remaining(1, t0 + 1_000 * MS), Some(2_500 * MS));
        assert!(matches!(
            c.due(t0 + 3_500 * MS, 1_000 * MS).as_slice(),
            [Op::LeaseExpire { id: 1, renewals: 0 }]
        ));
        // Not proposed again until the retry period has passed.
        assert!(c.due(t0 + 3_600 * MS, 1_000 * MS).is_empty());
        assert_eq!(c.due(t0 + 4_600 * MS, 1_000 * MS).len(), 1);
    }

    #[test]
    fn keepalives_renew_checkpoints_only_shorten_and_the_leader_records_remaining_time() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new(std::iter::empty(), t0, 500 * MS);
        c.set_leading(true, t0);
        c.apply(
            &[LeaseChange::Renewed {
                id: 9,
                ttl_ms: 8_000,
                renewals: 0,
            }],
            t0,
        );
        // A tenth of the TTL later, the remaining time is recorded.
        assert!(c.due(t0 + 700 * MS, 1_000 * MS).is_empty());
        let ops = c.due(t0 + 2_000 * MS, 1_000 * MS);
        let [Op::LeaseCheckpointAt { leases }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(leases, &vec![(9, 6_000, 0)]);
        // For older replicas, the same record without the renewal count.
        c.set_legacy_checkpoints(true);
        let ops = c.due(t0 + 4_000 * MS, 1_000 * MS);
        let [Op::LeaseCheckpoint { leases }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(leases, &vec![(9, 4_000)]);
        c.set_legacy_checkpoints(false);
        c.apply(
            &[LeaseChange::Checkpointed {
                id: 9,
                remaining_ms: 7_000,
            }],
            t0 + 2_000 * MS,
        );
        // 7 s from t0+2 s would be later than the tracked deadline: the nearer one stays.
        assert_eq!(c.remaining(9, t0 + 2_000 * MS), Some(6_000 * MS));
        c.apply(&[LeaseChange::Gone { id: 9 }], t0 + 3_000 * MS);
        assert_eq!(c.remaining(9, t0), None);
    }
}
