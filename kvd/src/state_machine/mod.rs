//! The replicated state machine: applies decided entries to the `kv` column family, with
//! (client, seq) deduplication as replicated state. Everything here is a pure function of
//! the log content (no wall clock): every replica applying the same entries ends in the same
//! state, revision, dedup table and eviction included.
//!
//! Invariant: the applied position, the revision, the dedup changes and the KV mutations of a
//! batch of entries are written in ONE RocksDB batch.

pub mod history;
pub mod lease;
mod record;
mod txn;
mod view;

use crate::codec::{decode, encode};
use crate::command::{KeyRange, LeaseOp, LogCmd, Op, ReadOpts, ReqId, Txn, TxnOp};
use crate::storage::{Db, StoreError, CF_DEDUP, CF_LEASE, CF_META};
use record::META_SM;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

pub use history::{Event, EventKind, HistoryLimits, HistoryMeta};
pub use lease::{LeaseChange, LeaseRecord};
pub use omnikv_wire::state::{pair_hash, Position, SmMeta};
pub use record::{KeyValue, KvRecord, UPGRADE_REVISION};
pub use txn::{LeaseResult, OpResult};
pub use view::{Overlay, RangeResult, PAGE_BYTES};

/// What a write did, as remembered for duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub config_id: u32,
    pub index: u64,
    /// The store's revision once the write was applied (the write's own revision when it
    /// changed something).
    pub revision: u64,
    /// Plain put and delete: whether the key existed before the write. False for transactions.
    pub existed: bool,
    /// Transactions: whether the compares held (true for plain writes). Compact: whether it
    /// raised the compact revision.
    pub succeeded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub ts_ms: u64,
    pub outcome: Outcome,
}

/// Why a write was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request is older than the dedup window: a retry of it could run twice.
    TooOld,
}

/// The result of one applied operation, for the loop to answer waiting clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Write {
        req: ReqId,
        result: Result<Outcome, Refusal>,
        /// What each operation did, for a write applied now (not for a duplicate, which is
        /// answered from its remembered outcome alone).
        results: Option<Vec<OpResult>>,
    },
    Barrier {
        origin: u64,
        id: u64,
    },
}

/// Dedup limits.
#[derive(Clone, Copy, Debug)]
pub struct DedupLimits {
    pub ttl_ms: u64,
    pub max_records: usize,
}

pub struct StateMachine {
    db: Db,
    meta: SmMeta,
    limits: DedupLimits,
    history_limits: HistoryLimits,
    /// What the change history holds (local to this replica). Invariant: `history.first >=
    /// compacted` once an apply batch is written, so nothing below the compact revision is
    /// served (a checkpoint's history starts after its revision, never below its compact
    /// revision).
    history: HistoryMeta,
    /// The compact revision: replicated state, raised only by `Op::Compact` (0: never).
    compacted: u64,
    /// The changes the last `apply` made, for live watchers (`take_events`).
    events: Vec<Event>,
    records: HashMap<(u64, u64), DedupRecord>,
    leases: lease::Leases,
    /// Eviction order: oldest timestamp first, ties by (client, seq): deterministic.
    by_age: BTreeSet<(u64, u64, u64)>,
    /// Test-only defect (`replica::Defect::ApplyIgnoresDedup`): duplicates apply again.
    ignore_dedup: bool,
}

/// Where the compact revision (etcd's `Compact`) is stored: in the `lease` family, a state
/// family a checkpoint and a backup carry, under a key outside the lease records' `l` and
/// `k` prefixes (which `lease` iterates, so it never sees this one). Absent: 0, never
/// compacted.
const COMPACT_KEY: &[u8] = b"compact";

/// The stored compact revision (past-revision reads below it are `compacted`).
pub fn load_compacted(db: &Db) -> Result<u64, StoreError> {
    match db.get(CF_LEASE, COMPACT_KEY)? {
        Some(b) => decode(&b).map_err(|e| StoreError::Corrupt {
            what: "compact revision",
            detail: e.to_string(),
        }),
        None => Ok(0),
    }
}

pub fn dedup_key(client: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl StateMachine {
    /// Loads the state machine's metadata and dedup table from `db`.
    /// A store written before revisions existed is upgraded first (`record`).
    pub fn load(
        db: Db,
        limits: DedupLimits,
        history_limits: HistoryLimits,
    ) -> Result<StateMachine, StoreError> {
        let meta = record::load_meta(&db)?;
        let history = history::load_meta(&db, meta.revision)?;
        let leases = lease::Leases::load(&db)?;
        let compacted = load_compacted(&db)?;
        let mut sm = StateMachine {
            compacted,
            leases,
            db,
            meta,
            limits,
            history_limits,
            history,
            events: Vec::new(),
            records: HashMap::new(),
            by_age: BTreeSet::new(),
            ignore_dedup: false,
        };
        sm.reload_dedup()?;
        Ok(sm)
    }

    fn reload_dedup(&mut self) -> Result<(), StoreError> {
        self.records.clear();
        self.by_age.clear();
        for item in self
            .db
            .raw()
            .iterator_cf(self.db.cf(CF_DEDUP), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            if k.len() != 16 {
                continue;
            }
            let client = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let seq = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
            let rec: DedupRecord = decode(&v).map_err(|e| StoreError::Corrupt {
                what: "dedup record",
                detail: e.to_string(),
            })?;
            self.records.insert((client, seq), rec);
            self.by_age.insert((rec.ts_ms, client, seq));
        }
        Ok(())
    }

    /// Re-reads everything from disk.
    pub fn reload(&mut self) -> Result<(), StoreError> {
        let ignore_dedup = self.ignore_dedup;
        *self = StateMachine::load(self.db.clone(), self.limits, self.history_limits)?;
        self.ignore_dedup = ignore_dedup;
        Ok(())
    }

    pub fn meta(&self) -> SmMeta {
        self.meta
    }

    /// What the change history holds.
    pub fn history(&self) -> HistoryMeta {
        self.history
    }

    /// The compact revision (0: never compacted).
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// The changes the last `apply` made, in order (for live watchers).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn applied(&self) -> Position {
        self.meta.applied
    }

    /// The leases as applied so far.
    pub fn leases(&self) -> &lease::Leases {
        &self.leases
    }

    /// The keys lease `id` holds.
    pub fn lease_keys(&self, id: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.leases.keys(&self.db, id)
    }

    /// What the applies since the last call did to leases, in order (for the lease clock).
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        self.leases.take_changes()
    }

    pub fn dedup_len(&self) -> usize {
        self.records.len()
    }

    /// Reads a key's value from the applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Overlay::default().get(&self.db, key)?.map(|r| r.value))
    }

    /// Reads a key or a range from the applied state.
    pub fn read(&self, range: &KeyRange, opts: &ReadOpts) -> Result<RangeResult, StoreError> {
        Overlay::default().read(&self.db, range, opts)
    }

    /// Moves the applied position without applying anything (a new configuration starts, or
    /// a checkpoint positioned us). Written unsynced, like every apply.
    pub fn set_applied(&mut self, applied: Position) -> Result<(), StoreError> {
        self.meta.applied = applied;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), META_SM, encode(&self.meta));
        self.db.write(batch)
    }

    /// Moves the applied position as part of the caller's `batch` (a configuration switch
    /// writes it with the new configuration).
    pub fn set_applied_in(&mut self, applied: Position, batch: &mut WriteBatch) {
        self.meta.applied = applied;
        batch.put_cf(self.db.cf(CF_META), META_SM, encode(&self.meta));
    }

    /// Applies `entries`, which are the decided entries starting exactly at the applied
    /// position of configuration `config_id`. One RocksDB batch for all of them. `wanted`
    /// says which writes someone waits for here: only they get their per-operation results.
    pub fn apply(
        &mut self,
        config_id: u32,
        entries: &[LogCmd],
        wanted: &dyn Fn(&ReqId) -> bool,
    ) -> Result<Vec<Applied>, StoreError> {
        debug_assert_eq!(self.meta.applied.config_id, config_id);
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay::default();
        // The keys these entries touch, read in one batched read instead of one point read
        // each as they are applied (the reads do not change what is applied: the overlay
        // holds what the store holds until the batch writes it).
        let mut keys = Vec::new();
        for op in entries.iter().flat_map(|e| &e.ops) {
            op_keys(op, &mut keys);
        }
        overlay.read_ahead(&self.db, keys)?;
        let mut results = Vec::new();
        let mut events = Vec::new();
        let db = self.db.clone();
        let cf_dedup = db.cf(CF_DEDUP);
        for entry in entries {
            let index = self.meta.applied.index;
            for op in &entry.ops {
                let Some(req) = op.req() else {
                    match op {
                        Op::Barrier { origin, id } => results.push(Applied::Barrier {
                            origin: *origin,
                            id: *id,
                        }),
                        Op::LeaseExpire { id, renewals } => {
                            let current = self.leases.get(*id).map(|l| l.renewals);
                            // Renewed since the leader decided (or gone): not expired.
                            if current == Some(*renewals) {
                                self.with_executor(
                                    false,
                                    (&mut overlay, &mut batch, &mut events),
                                    |ex| ex.end_lease(*id),
                                )?;
                            }
                        }
                        Op::LeaseCheckpoint { leases } => {
                            for &(id, remaining_ms) in leases {
                                self.leases
                                    .checkpoint(&db, &mut batch, id, remaining_ms, None);
                            }
                        }
                        Op::LeaseCheckpointAt { leases } => {
                            for &(id, remaining_ms, renewals) in leases {
                                let at = Some(renewals);
                                self.leases
                                    .checkpoint(&db, &mut batch, id, remaining_ms, at);
                            }
                        }
                        _ => {}
                    }
                    continue;
                };
                let (result, op_results) = match self.check_dedup(req) {
                    Err(r) => (Err(r), None),
                    Ok(Some(previous)) => (Ok(previous), None),
                    Ok(None) => {
                        let answering = wanted(req);
                        let (outcome, op_results) = self.execute(
                            op,
                            Position { config_id, index },
                            answering,
                            (&mut overlay, &mut batch, &mut events),
                        )?;
                        let rec = DedupRecord {
                            ts_ms: req.ts_ms,
                            outcome,
                        };
                        self.records.insert((req.client, req.seq), rec);
                        self.by_age.insert((req.ts_ms, req.client, req.seq));
                        batch.put_cf(cf_dedup, dedup_key(req.client, req.seq), encode(&rec));
                        self.meta.clock_ms = self.meta.clock_ms.max(req.ts_ms);
                        (Ok(outcome), answering.then_some(op_results))
                    }
                };
                results.push(Applied::Write {
                    req: *req,
                    result,
                    results: op_results,
                });
            }
            self.evict(&mut batch);
            self.meta.applied.index += 1;
        }
        history::append(
            &db,
            &mut self.history,
            self.history_limits,
            &events,
            &mut batch,
        )?;
        history::raise_floor(&db, &mut self.history, self.compacted, &events, &mut batch)?;
        self.events = events;
        batch.put_cf(self.db.cf(CF_META), META_SM, encode(&self.meta));
        // Not synced on its own: the entries are durable in the log, so a crash that loses
        // this batch only moves the applied position back (WAL order keeps a prefix), and the
        // entries are applied again. The next required sync covers it.
        crate::failpoint::hit("apply");
        // A decided index waiting to be written rides along (`Db::write_lazy_carrying`; it is
        // never below what this batch applies).
        self.db.write_lazy_carrying(batch)?;
        self.leases.end_apply();
        Ok(results)
    }

    /// Runs `f` with an executor whose writes get the next revision, and makes that revision
    /// current if it wrote anything.
    fn with_executor<R>(
        &mut self,
        answering: bool,
        (overlay, batch, events): (&mut Overlay, &mut WriteBatch, &mut Vec<Event>),
        f: impl FnOnce(&mut txn::Executor) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut ex = txn::Executor {
            db: &self.db,
            overlay,
            batch,
            revision: self.meta.revision + 1,
            meta: &mut self.meta,
            wrote: false,
            answering,
            events,
            leases: &mut self.leases,
        };
        let r = f(&mut ex)?;
        if ex.wrote {
            self.meta.revision += 1;
        }
        Ok(r)
    }

    /// Applies one client write (not a duplicate) under the next revision, at log position
    /// `at`. `answering`: someone waits for its results here (else a transaction's reads are
    /// skipped: only the outcome is kept).
    fn execute(
        &mut self,
        op: &Op,
        at: Position,
        answering: bool,
        parts: (&mut Overlay, &mut WriteBatch, &mut Vec<Event>),
    ) -> Result<(Outcome, Vec<OpResult>), StoreError> {
        if let Op::Compact { revision, .. } = op {
            // Like etcd: only a revision above the compact revision and not above the store's
            // raises it; the history is cut when the batch ends (`history::raise_floor`).
            let raised = *revision > self.compacted && *revision <= self.meta.revision;
            if raised {
                self.compacted = *revision;
                parts
                    .1
                    .put_cf(self.db.cf(CF_LEASE), COMPACT_KEY, encode(revision));
            }
            let outcome = Outcome {
                config_id: at.config_id,
                index: at.index,
                revision: self.meta.revision,
                existed: false,
                succeeded: raised,
            };
            return Ok((outcome, Vec::new()));
        }
        let (existed, succeeded, results) =
            self.with_executor(answering, parts, |ex| -> Result<_, StoreError> {
                Ok(match op {
                    Op::Put { key, value, .. } => {
                        let prev = ex.put(key, value, 0)?;
                        (prev.is_some(), true, vec![OpResult::Put { prev }])
                    }
                    Op::PutLeased {
                        key, value, lease, ..
                    } => {
                        if ex.leases.get(*lease).is_none() {
                            let missing = LeaseResult::NotFound { id: *lease };
                            (false, false, vec![OpResult::Lease(missing)])
                        } else {
                            let prev = ex.put(key, value, *lease)?;
                            (prev.is_some(), true, vec![OpResult::Put { prev }])
                        }
                    }
                    Op::Delete { key, .. } => {
                        let prev = ex.delete(&KeyRange::Key(key.clone()))?;
                        (!prev.is_empty(), true, vec![OpResult::Delete { prev }])
                    }
                    Op::Txn { txn, .. } => {
                        let path = ex.path(txn)?;
                        let succeeded = path.succeeded;
                        match ex.missing_lease(txn, &path) {
                            // Like etcd: a put naming a missing lease fails the whole request.
                            Some(id) => (
                                false,
                                false,
                                vec![OpResult::Lease(LeaseResult::NotFound { id })],
                            ),
                            None => (false, succeeded, ex.run(txn, &path)?),
                        }
                    }
                    Op::Lease { op, .. } => {
                        let r = execute_lease(ex, op)?;
                        let done =
                            !matches!(r, LeaseResult::NotFound { .. } | LeaseResult::Exists { .. });
                        (false, done, vec![OpResult::Lease(r)])
                    }
                    // Never here (`apply` handles the first three, `execute` the last).
                    Op::Barrier { .. }
                    | Op::LeaseExpire { .. }
                    | Op::LeaseCheckpoint { .. }
                    | Op::LeaseCheckpointAt { .. }
                    | Op::Compact { .. } => (false, true, Vec::new()),
                })
            })?;
        let outcome = Outcome {
            config_id: at.config_id,
            index: at.index,
            revision: self.meta.revision,
            existed,
            succeeded,
        };
        Ok((outcome, results))
    }

    /// The remembered outcome of write (client, seq), if it was applied and its record is
    /// still kept.
    pub fn outcome_of(&self, client: u64, seq: u64) -> Option<Outcome> {
        self.records.get(&(client, seq)).map(|r| r.outcome)
    }

    /// Test-only: switches on the `ApplyIgnoresDedup` defect (the simulator's mutation
    /// tests show it is caught). kvd never calls it with true.
    pub fn set_ignore_dedup(&mut self, on: bool) {
        self.ignore_dedup = on;
    }

    /// `Ok(Some)` for a duplicate (its remembered outcome), `Ok(None)` to apply, `Err` to refuse.
    fn check_dedup(&self, req: &ReqId) -> Result<Option<Outcome>, Refusal> {
        if let Some(rec) = self.records.get(&(req.client, req.seq)) {
            if !self.ignore_dedup {
                return Ok(Some(rec.outcome));
            }
        }
        let too_old = req.ts_ms.saturating_add(self.limits.ttl_ms / 2) < self.meta.clock_ms
            || (self.meta.horizon_ms > 0 && req.ts_ms <= self.meta.horizon_ms);
        if too_old {
            Err(Refusal::TooOld)
        } else {
            Ok(None)
        }
    }

    /// Drops expired records (older than the TTL by the state machine's clock) and the oldest
    /// beyond the cap. Deterministic: depends only on applied entries.
    fn evict(&mut self, batch: &mut WriteBatch) {
        let expire_before = self.meta.clock_ms.saturating_sub(self.limits.ttl_ms);
        while let Some(&(ts, client, seq)) = self.by_age.first() {
            if ts >= expire_before && self.records.len() <= self.limits.max_records {
                break;
            }
            self.by_age.pop_first();
            self.records.remove(&(client, seq));
            batch.delete_cf(self.db.cf(CF_DEDUP), dedup_key(client, seq));
            self.meta.horizon_ms = self.meta.horizon_ms.max(ts);
        }
    }
}

/// Adds the single keys `op` reads or writes to `keys` (a range's keys are found by scanning).
fn op_keys<'k>(op: &'k Op, keys: &mut Vec<&'k [u8]>) {
    match op {
        Op::Put { key, .. } | Op::PutLeased { key, .. } | Op::Delete { key, .. } => keys.push(key),
        Op::Txn { txn, .. } => txn_keys(txn, keys),
        Op::Barrier { .. }
        | Op::Lease { .. }
        | Op::Compact { .. }
        | Op::LeaseExpire { .. }
        | Op::LeaseCheckpoint { .. }
        | Op::LeaseCheckpointAt { .. } => {}
    }
}

/// The single keys a transaction (and those nested in it) compares, reads or writes.
fn txn_keys<'k>(txn: &'k Txn, keys: &mut Vec<&'k [u8]>) {
    keys.extend(txn.compares.iter().map(|c| c.key.as_slice()));
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put { key, .. } | TxnOp::PutLeased { key, .. } => keys.push(key),
            TxnOp::Delete {
                range: KeyRange::Key(key),
            }
            | TxnOp::Get {
                range: KeyRange::Key(key),
                ..
            } => keys.push(key),
            TxnOp::Delete { .. } | TxnOp::Get { .. } => {}
            TxnOp::Txn(nested) => txn_keys(nested, keys),
        }
    }
}

/// A client's lease operation. A grant or keepalive changes no key, so no revision.
fn execute_lease(ex: &mut txn::Executor, op: &LeaseOp) -> Result<LeaseResult, StoreError> {
    Ok(match *op {
        LeaseOp::Grant { id, ttl_ms } => {
            if ex.leases.grant(ex.db, ex.batch, id, ttl_ms) {
                LeaseResult::Granted { id, ttl_ms }
            } else {
                LeaseResult::Exists { id }
            }
        }
        LeaseOp::KeepAlive { id } => match ex.leases.renew(ex.db, ex.batch, id) {
            Some(rec) => LeaseResult::Renewed {
                id,
                ttl_ms: rec.ttl_ms,
            },
            None => LeaseResult::NotFound { id },
        },
        LeaseOp::Revoke { id } => ex.end_lease(id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Compare, CompareOp, CompareTarget, Txn};

    fn put(client: u64, seq: u64, ts: u64, k: &str, v: &str) -> Op {
        Op::Put {
            req: ReqId {
                client,
                seq,
                ts_ms: ts,
            },
            key: k.into(),
            value: v.into(),
        }
    }

    fn apply_ops(sm: &mut StateMachine, ops: Vec<Op>) -> Result<Vec<Applied>, StoreError> {
        sm.apply(1, &[LogCmd { ops }], &|_| true)
    }

    fn sm(dir: &std::path::Path, ttl_ms: u64, max_records: usize) -> StateMachine {
        let db = Db::open(dir).unwrap();
        let mut sm = StateMachine::load(
            db,
            DedupLimits {
                ttl_ms,
                max_records,
            },
            HistoryLimits::default(),
        )
        .unwrap();
        sm.set_applied(Position {
            config_id: 1,
            index: 0,
        })
        .unwrap();
        sm
    }

    #[test]
    fn duplicate_applies_once_and_returns_first_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        let r1 = apply_ops(&mut sm, vec![put(7, 1, 1000, "a", "1")]).unwrap();
        let r2 = apply_ops(
            &mut sm,
            vec![put(9, 1, 1001, "a", "2"), put(7, 1, 1000, "a", "1")],
        )
        .unwrap();
        assert_eq!(sm.get(b"a").unwrap().unwrap(), b"2");
        let Applied::Write {
            result: Ok(first), ..
        } = &r1[0]
        else {
            panic!()
        };
        let Applied::Write {
            result: Ok(dup), ..
        } = &r2[1]
        else {
            panic!()
        };
        assert_eq!(first, dup);
        assert_eq!(sm.meta().keys, 1);
        assert_eq!(sm.applied().index, 2);
    }

    /// A batch reads the stored keys it touches ahead, in one read, and sees its own writes
    /// over them; whether anyone waits for the results changes nothing that is applied.
    #[test]
    fn a_batch_over_stored_keys_applies_the_same_answered_or_not() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut sms: Vec<StateMachine> = dirs.iter().map(|d| sm(d.path(), 60_000, 100)).collect();
        let first = vec![put(1, 1, 10, "a", "1"), put(1, 2, 10, "b", "2")];
        let a_is_x = Compare {
            key: b"a".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(b"x".to_vec()),
        };
        let second = vec![
            put(2, 1, 11, "a", "x"),
            Op::Delete {
                req: req(2, 2),
                key: b"b".to_vec(),
            },
            put(2, 3, 11, "b", "y"),
            Op::Txn {
                req: req(2, 4),
                txn: Txn {
                    compares: vec![a_is_x],
                    success: vec![TxnOp::Put {
                        key: b"c".to_vec(),
                        value: b"z".to_vec(),
                    }],
                    failure: vec![],
                },
            },
        ];
        let mut answers = Vec::new();
        for (sm, answering) in sms.iter_mut().zip([true, false]) {
            sm.apply(1, &[LogCmd { ops: first.clone() }], &|_| answering)
                .unwrap();
            let r = sm
                .apply(
                    1,
                    &[LogCmd {
                        ops: second.clone(),
                    }],
                    &|_| answering,
                )
                .unwrap();
            answers.push(r);
        }
        for sm in &sms {
            assert_eq!(sm.get(b"a").unwrap().unwrap(), b"x");
            assert_eq!(sm.get(b"b").unwrap().unwrap(), b"y");
            assert_eq!(
                sm.get(b"c").unwrap().unwrap(),
                b"z",
                "the compare saw the put"
            );
            assert_eq!(sm.meta().keys, 3);
            assert_eq!(
                sm.meta().hash,
                pair_hash(b"a", b"x") ^ pair_hash(b"b", b"y") ^ pair_hash(b"c", b"z")
            );
            assert_eq!(record(sm, "b"), Some((5, 5, 1)), "b was created again");
        }
        assert_eq!(sms[0].meta(), sms[1].meta());
        let outcomes = |r: &[Applied]| -> Vec<Outcome> {
            r.iter()
                .filter_map(|a| match a {
                    Applied::Write { result: Ok(o), .. } => Some(*o),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(outcomes(&answers[0]), outcomes(&answers[1]));
        let Applied::Write {
            results: Some(results),
            ..
        } = &answers[0][0]
        else {
            panic!("{:?}", answers[0][0])
        };
        let [OpResult::Put { prev: Some(prev) }] = results.as_slice() else {
            panic!("{results:?}")
        };
        assert_eq!(
            (prev.key.as_slice(), prev.value.as_slice()),
            (&b"a"[..], &b"1"[..])
        );
        assert!(matches!(
            answers[1][0],
            Applied::Write { results: None, .. }
        ));
    }

    #[test]
    fn eviction_is_bounded_and_old_retries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 10_000, 3);
        for seq in 1..=5 {
            apply_ops(&mut sm, vec![put(1, seq, 1000 + seq, "k", "v")]).unwrap();
        }
        assert_eq!(sm.dedup_len(), 3);
        // seq 1 was evicted by the cap: its retry must be refused, not applied again.
        let r = apply_ops(&mut sm, vec![put(1, 1, 1001, "k", "x")]).unwrap();
        assert!(matches!(
            &r[0],
            Applied::Write {
                result: Err(Refusal::TooOld),
                ..
            }
        ));
        assert_eq!(sm.get(b"k").unwrap().unwrap(), b"v");
        // Time moves on (by log content): a request older than TTL/2 is refused.
        apply_ops(&mut sm, vec![put(2, 1, 100_000, "t", "1")]).unwrap();
        let r = apply_ops(&mut sm, vec![put(3, 1, 90_000, "t", "2")]).unwrap();
        assert!(matches!(
            &r[0],
            Applied::Write {
                result: Err(Refusal::TooOld),
                ..
            }
        ));
        // Everything older than the TTL is gone.
        assert_eq!(sm.dedup_len(), 1);
    }

    fn lease_op(client: u64, seq: u64, op: LeaseOp) -> Op {
        Op::Lease {
            req: ReqId {
                client,
                seq,
                ts_ms: 1000 + seq,
            },
            op,
        }
    }

    fn leased_put(seq: u64, k: &str, lease: u64) -> Op {
        Op::PutLeased {
            req: ReqId {
                client: 5,
                seq,
                ts_ms: 1000 + seq,
            },
            key: k.into(),
            value: b"v".to_vec(),
            lease,
        }
    }

    fn lease_result(a: &Applied) -> LeaseResult {
        match a {
            Applied::Write {
                results: Some(r), ..
            } => match r.as_slice() {
                [OpResult::Lease(l)] => *l,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    /// Keys go with their lease in one revision; a stale expiry (the lease was renewed since)
    /// and a put naming a missing lease change nothing.
    #[test]
    fn leases_end_with_their_keys_and_stale_expiries_do_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        let grant = LeaseOp::Grant {
            id: 7,
            ttl_ms: 5000,
        };
        let r = apply_ops(&mut sm, vec![lease_op(9, 1, grant)]).unwrap();
        assert_eq!(
            lease_result(&r[0]),
            LeaseResult::Granted {
                id: 7,
                ttl_ms: 5000
            }
        );
        let r = apply_ops(&mut sm, vec![lease_op(9, 2, grant)]).unwrap();
        assert_eq!(lease_result(&r[0]), LeaseResult::Exists { id: 7 });
        // A grant changes no key: no revision.
        assert_eq!(sm.meta().revision, 0);
        // Attached and put in the same batch as the missing-lease put, which writes nothing.
        let r = apply_ops(
            &mut sm,
            vec![
                leased_put(1, "a", 7),
                leased_put(2, "b", 7),
                leased_put(3, "c", 8),
                put(6, 1, 1010, "d", "plain"),
            ],
        )
        .unwrap();
        assert_eq!(lease_result(&r[2]), LeaseResult::NotFound { id: 8 });
        assert_eq!(sm.get(b"c").unwrap(), None);
        assert_eq!(
            sm.lease_keys(7).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        // A compare on a key's lease: a's is 7, d has none, c is absent (none either).
        let lease_is = |k: &str, op, id| Compare {
            key: k.into(),
            op,
            target: CompareTarget::Lease(id),
        };
        let holds = |sm: &mut StateMachine, seq, c: Compare| {
            let r = run(sm, vec![txn(seq, vec![c], vec![], vec![])]);
            r[0].0.succeeded
        };
        assert!(holds(&mut sm, 1, lease_is("a", CompareOp::Equal, 7)));
        assert!(holds(&mut sm, 2, lease_is("d", CompareOp::Equal, 0)));
        assert!(holds(&mut sm, 3, lease_is("c", CompareOp::Equal, 0)));
        assert!(holds(&mut sm, 4, lease_is("a", CompareOp::Greater, 6)));
        assert!(!holds(&mut sm, 5, lease_is("a", CompareOp::NotEqual, 7)));
        assert!(!holds(&mut sm, 6, lease_is("d", CompareOp::Less, 0)));
        let rev = sm.meta().revision;
        // Renewed (renewals 1): the leader's expiry that saw renewals 0 is stale.
        apply_ops(&mut sm, vec![lease_op(9, 3, LeaseOp::KeepAlive { id: 7 })]).unwrap();
        apply_ops(&mut sm, vec![Op::LeaseExpire { id: 7, renewals: 0 }]).unwrap();
        assert!(sm.get(b"a").unwrap().is_some());
        assert_eq!(sm.meta().revision, rev);
        // b moves off the lease; the current expiry takes a alone, in one revision.
        apply_ops(&mut sm, vec![put(6, 2, 1011, "b", "mine")]).unwrap();
        apply_ops(&mut sm, vec![Op::LeaseExpire { id: 7, renewals: 1 }]).unwrap();
        assert_eq!(sm.get(b"a").unwrap(), None);
        assert_eq!(sm.get(b"b").unwrap().unwrap(), b"mine");
        assert_eq!(sm.meta().revision, rev + 2);
        assert!(sm.leases().is_empty());
        let changes = sm.take_lease_changes();
        assert!(matches!(changes.last(), Some(LeaseChange::Gone { id: 7 })));
        let r = apply_ops(&mut sm, vec![lease_op(9, 4, LeaseOp::Revoke { id: 7 })]).unwrap();
        assert_eq!(lease_result(&r[0]), LeaseResult::NotFound { id: 7 });
    }

    /// A checkpoint measured before a keepalive and applied after it leaves the renewed lease
    /// its whole TTL; one measured at the current renewal count records the time left.
    #[test]
    fn a_checkpoint_measured_before_a_keepalive_does_not_shorten_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        let grant = LeaseOp::Grant {
            id: 7,
            ttl_ms: 3000,
        };
        apply_ops(&mut sm, vec![lease_op(9, 1, grant)]).unwrap();
        apply_ops(&mut sm, vec![lease_op(9, 2, LeaseOp::KeepAlive { id: 7 })]).unwrap();
        sm.take_lease_changes();
        let measured_at = |renewals| Op::LeaseCheckpointAt {
            leases: vec![(7, 400, renewals)],
        };
        apply_ops(&mut sm, vec![measured_at(0)]).unwrap();
        assert_eq!(sm.leases().get(7).unwrap().remaining_ms, 3000);
        assert!(sm.take_lease_changes().is_empty());
        apply_ops(&mut sm, vec![measured_at(1)]).unwrap();
        assert_eq!(sm.leases().get(7).unwrap().remaining_ms, 400);
        assert!(matches!(
            sm.take_lease_changes().as_slice(),
            [LeaseChange::Checkpointed {
                id: 7,
                remaining_ms: 400
            }]
        ));
        // A checkpoint logged without the count (by an older kvd) still applies.
        apply_ops(
            &mut sm,
            vec![Op::LeaseCheckpoint {
                leases: vec![(7, 200)],
            }],
        )
        .unwrap();
        assert_eq!(sm.leases().get(7).unwrap().remaining_ms, 200);
    }

    #[test]
    fn state_survives_reload_and_hash_tracks_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm1 = sm(dir.path(), 60_000, 100);
        apply_ops(
            &mut sm1,
            vec![put(1, 1, 5, "a", "1"), put(1, 2, 5, "b", "2")],
        )
        .unwrap();
        let h = sm1.meta().hash;
        apply_ops(
            &mut sm1,
            vec![Op::Delete {
                req: ReqId {
                    client: 1,
                    seq: 3,
                    ts_ms: 6,
                },
                key: b"b".to_vec(),
            }],
        )
        .unwrap();
        assert_ne!(sm1.meta().hash, h);
        assert_eq!(sm1.meta().hash, pair_hash(b"a", b"1"));
        sm1.reload().unwrap();
        assert_eq!(sm1.meta().keys, 1);
        assert_eq!(sm1.dedup_len(), 3);
    }

    fn compact(seq: u64, revision: u64) -> Op {
        Op::Compact {
            req: ReqId {
                client: 70,
                seq,
                ts_ms: 5,
            },
            revision,
        }
    }

    /// A compact raises the compact revision and the history's floor with it (its events below
    /// are gone, counted out of the history's size), in the apply's batch: both survive a
    /// reopen. One at or below it, or above the store's revision, does nothing and does not
    /// succeed; the larger of two in one batch wins whatever their order; a retry answers the
    /// first outcome.
    #[test]
    fn compact_raises_the_floor_durably_and_only_upwards() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm1 = sm(dir.path(), 60_000, 100);
        for i in 1..=6u64 {
            apply_ops(&mut sm1, vec![put(1, i, 5, "k", &i.to_string())]).unwrap();
        }
        assert_eq!((sm1.meta().revision, sm1.history().first), (6, 1));
        assert_eq!(sm1.history().events, 6);
        let outcomes = |r: Vec<(Outcome, Option<Vec<OpResult>>)>| -> Vec<bool> {
            r.iter().map(|(o, _)| o.succeeded).collect()
        };
        // Above the store's revision: nothing.
        assert_eq!(outcomes(run(&mut sm1, vec![compact(1, 7)])), [false]);
        assert_eq!((sm1.compacted(), sm1.history().first), (0, 1));
        // Two racing in one batch, the larger first: the smaller does not succeed.
        let r = run(&mut sm1, vec![compact(2, 4), compact(3, 3)]);
        assert_eq!(outcomes(r.clone()), [true, false]);
        assert_eq!(r[0].0.revision, 6, "a compact makes no revision");
        assert_eq!((sm1.compacted(), sm1.history().first), (4, 4));
        assert_eq!(sm1.history().events, 3, "revisions 4, 5 and 6 are kept");
        assert!(matches!(
            history::read(&sm1.db, 3, 100).unwrap(),
            history::HistoryRead::Compacted { first: 4 }
        ));
        // At the compact revision again: compacted. A retry of the first: its outcome.
        assert_eq!(outcomes(run(&mut sm1, vec![compact(4, 4)])), [false]);
        assert_eq!(outcomes(run(&mut sm1, vec![compact(2, 4)])), [true]);
        // A put and a compact at its revision in one batch: the put's event is kept, the
        // earlier ones go.
        let r = run(&mut sm1, vec![put(1, 7, 5, "k", "7"), compact(5, 7)]);
        assert_eq!(outcomes(r), [true, true]);
        assert_eq!((sm1.compacted(), sm1.history().first), (7, 7));
        assert_eq!(sm1.history().events, 1);
        match history::read(&sm1.db, 7, 100).unwrap() {
            history::HistoryRead::Events { events, .. } => {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].value, b"7");
            }
            history::HistoryRead::Compacted { first } => panic!("compacted at {first}"),
        }
        let (compacted, history) = (sm1.compacted(), sm1.history());
        drop(sm1);
        let sm2 = sm(dir.path(), 60_000, 100);
        assert_eq!((sm2.compacted(), sm2.history()), (compacted, history));
        assert_eq!(load_compacted(&sm2.db).unwrap(), 7);
        assert!(sm2.leases().is_empty(), "the lease table does not see it");
        // A checkpoint and a backup carry the state families: the compact revision rides them.
        assert!(crate::storage::STATE_CFS.contains(&CF_LEASE));
    }

    fn req(client: u64, seq: u64) -> ReqId {
        ReqId {
            client,
            seq,
            ts_ms: 10,
        }
    }

    fn txn(seq: u64, compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Op {
        Op::Txn {
            req: req(50, seq),
            txn: Txn {
                compares,
                success,
                failure,
            },
        }
    }

    fn tput(k: &str, v: &str) -> TxnOp {
        TxnOp::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    /// Applies one entry of `ops` and returns each write's outcome and results.
    fn run(sm: &mut StateMachine, ops: Vec<Op>) -> Vec<(Outcome, Option<Vec<OpResult>>)> {
        apply_ops(sm, ops)
            .unwrap()
            .into_iter()
            .filter_map(|a| match a {
                Applied::Write {
                    result: Ok(o),
                    results,
                    ..
                } => Some((o, results)),
                _ => None,
            })
            .collect()
    }

    fn record(sm: &StateMachine, k: &str) -> Option<(u64, u64, u64)> {
        sm.read(&KeyRange::Key(k.into()), &ReadOpts::default())
            .unwrap()
            .kvs
            .first()
            .map(|kv| (kv.create_revision, kv.mod_revision, kv.version))
    }

    /// etcd's rule: one revision per write that changed something; a delete of nothing and a
    /// failed compare change nothing; a key's counters follow its puts.
    #[test]
    fn revisions_follow_etcds_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        assert_eq!(sm.meta().revision, 0);
        let r = run(
            &mut sm,
            vec![put(1, 1, 10, "a", "1"), put(1, 2, 10, "a", "2")],
        );
        assert_eq!((r[0].0.revision, r[0].0.existed), (1, false));
        assert_eq!((r[1].0.revision, r[1].0.existed), (2, true));
        assert_eq!(record(&sm, "a"), Some((1, 2, 2)));
        // A delete of a missing key: no new revision.
        let r = run(
            &mut sm,
            vec![Op::Delete {
                req: req(1, 3),
                key: b"zz".to_vec(),
            }],
        );
        assert_eq!((r[0].0.revision, r[0].0.existed), (2, false));
        // A failed compare: the failure branch (a read) runs, no new revision.
        let cmp = Compare {
            key: b"a".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(b"nope".to_vec()),
        };
        let get_a = TxnOp::Get {
            range: KeyRange::Key(b"a".to_vec()),
            opts: ReadOpts::default(),
        };
        let r = run(
            &mut sm,
            vec![txn(1, vec![cmp.clone()], vec![tput("a", "x")], vec![get_a])],
        );
        assert!(!r[0].0.succeeded);
        assert_eq!(r[0].0.revision, 2);
        let Some([OpResult::Get(g)]) = r[0].1.as_deref() else {
            panic!("{:?}", r[0].1)
        };
        assert_eq!(g.kvs[0].value, b"2");
        // A transaction's writes share one revision.
        let r = run(
            &mut sm,
            vec![txn(2, vec![], vec![tput("b", "1"), tput("c", "1")], vec![])],
        );
        assert!(r[0].0.succeeded);
        assert_eq!(r[0].0.revision, 3);
        assert_eq!(record(&sm, "b"), Some((3, 3, 1)));
        assert_eq!(record(&sm, "c"), Some((3, 3, 1)));
        // Deleted and created again: a new life.
        run(
            &mut sm,
            vec![
                Op::Delete {
                    req: req(1, 4),
                    key: b"a".to_vec(),
                },
                put(1, 5, 10, "a", "again"),
            ],
        );
        assert_eq!(record(&sm, "a"), Some((5, 5, 1)));
        assert_eq!(sm.meta().revision, 5);
        // Survives a reload.
        sm.reload().unwrap();
        assert_eq!(sm.meta().revision, 5);
    }

    /// etcd's nested transactions: every compare on the path is decided before any write of
    /// the request (the inner one sees a = 1 although the outer put a = 2 before it), reads
    /// run in order (the inner get sees a = 2), and a missing lease anywhere on the path fails
    /// the whole request.
    #[test]
    fn nested_transactions_decide_their_path_first_then_run_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        run(&mut sm, vec![put(1, 1, 10, "a", "1")]);
        let a_is = |v: &str| Compare {
            key: b"a".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(v.into()),
        };
        let get_a = TxnOp::Get {
            range: KeyRange::Key(b"a".to_vec()),
            opts: ReadOpts::default(),
        };
        let inner = |put: TxnOp| Txn {
            compares: vec![a_is("1")],
            success: vec![get_a.clone(), put],
            failure: vec![tput("never", "x")],
        };
        let outer = |seq: u64, put: TxnOp| {
            txn(
                seq,
                vec![a_is("1")],
                vec![tput("a", "2"), TxnOp::Txn(Box::new(inner(put)))],
                vec![],
            )
        };
        let leased = TxnOp::PutLeased {
            key: b"b".to_vec(),
            value: b"v".to_vec(),
            lease: 99,
        };
        let r = run(&mut sm, vec![outer(1, leased)]);
        assert!(!r[0].0.succeeded, "lease 99 does not exist");
        assert_eq!(
            r[0].1.as_deref(),
            Some(&[OpResult::Lease(LeaseResult::NotFound { id: 99 })][..])
        );
        assert_eq!(sm.get(b"a").unwrap().unwrap(), b"1", "nothing ran");
        let mut r = run(&mut sm, vec![outer(2, tput("b", "v"))]);
        assert!(r[0].0.succeeded);
        let outer = r.pop().unwrap().1.unwrap_or_default();
        let [OpResult::Put { prev: Some(prev) }, OpResult::Txn { succeeded, results }] = &outer[..]
        else {
            panic!("outer branch results");
        };
        assert_eq!(prev.value, b"1");
        assert!(*succeeded, "decided against a = 1, before the outer put");
        let [OpResult::Get(g), OpResult::Put { prev: None }] = &results[..] else {
            panic!("inner branch results: {results:?}");
        };
        assert_eq!(g.kvs[0].value, b"2", "the read runs after the outer put");
        assert_eq!(sm.get(b"b").unwrap().unwrap(), b"v");
        assert_eq!(sm.get(b"never").unwrap(), None);
    }

    /// Compare-and-swap: the compare sees what earlier writes in the same batch did, and a
    /// duplicate of a transaction is answered with its first outcome, not run again.
    #[test]
    fn compare_and_swap_in_one_batch_and_its_retry() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        let absent = |k: &str| Compare {
            key: k.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        };
        let r = run(
            &mut sm,
            vec![
                txn(1, vec![absent("lock")], vec![tput("lock", "me")], vec![]),
                txn(2, vec![absent("lock")], vec![tput("lock", "you")], vec![]),
            ],
        );
        assert!(r[0].0.succeeded);
        assert!(!r[1].0.succeeded, "the second sees the first's put");
        assert_eq!(sm.get(b"lock").unwrap().unwrap(), b"me");
        let again = run(
            &mut sm,
            vec![txn(
                1,
                vec![absent("lock")],
                vec![tput("lock", "me")],
                vec![],
            )],
        );
        assert_eq!(again[0].0, r[0].0);
        assert!(again[0].1.is_none(), "a duplicate carries no results");
        let swap = Compare {
            key: b"lock".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(1),
        };
        let r = run(
            &mut sm,
            vec![txn(3, vec![swap], vec![tput("lock", "next")], vec![])],
        );
        assert!(r[0].0.succeeded);
        assert_eq!(record(&sm, "lock"), Some((1, 2, 2)));
    }

    /// Ranges and prefix deletes, through the writes of the same batch (the overlay).
    #[test]
    fn ranges_see_pending_writes_and_prefix_deletes_are_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 60_000, 100);
        let ops = ["app/a", "app/b", "app/c", "apq", "b"]
            .iter()
            .enumerate()
            .map(|(i, k)| put(1, i as u64 + 1, 10, k, "v"))
            .collect();
        run(&mut sm, ops);
        let all = ReadOpts::default();
        let r = sm.read(&KeyRange::prefix(b"app/"), &all).unwrap();
        let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [&b"app/a"[..], b"app/b", b"app/c"]);
        assert_eq!((r.count, r.more), (3, false));
        let page = ReadOpts {
            limit: 2,
            keys_only: true,
            count_only: false,
        };
        let r = sm.read(&KeyRange::prefix(b"ap"), &page).unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (2, 4, true));
        assert!(r.kvs[0].value.is_empty());
        let r = sm
            .read(
                &KeyRange::prefix(b""),
                &ReadOpts {
                    count_only: true,
                    ..all
                },
            )
            .unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
        // In one transaction: put app/d, delete the prefix app/a..app/c only, read app/.
        let del = TxnOp::Delete {
            range: KeyRange::Span {
                start: b"app/a".to_vec(),
                end: Some(b"app/d".to_vec()),
            },
        };
        let get = TxnOp::Get {
            range: KeyRange::prefix(b"app/"),
            opts: all,
        };
        let r = run(
            &mut sm,
            vec![txn(9, vec![], vec![tput("app/d", "new"), del, get], vec![])],
        );
        let Some([OpResult::Put { prev: None }, OpResult::Delete { prev }, OpResult::Get(g)]) =
            r[0].1.as_deref()
        else {
            panic!("{:?}", r[0].1)
        };
        assert_eq!(prev.len(), 3);
        assert_eq!(g.kvs.len(), 1);
        assert_eq!(g.kvs[0].key, b"app/d");
        assert_eq!(r[0].0.revision, 6, "five puts, then one transaction");
        assert_eq!(sm.meta().keys, 3);
        let h = sm.meta().hash;
        assert_eq!(
            h,
            pair_hash(b"app/d", b"new") ^ pair_hash(b"apq", b"v") ^ pair_hash(b"b", b"v")
        );
    }
}
