//! The replicated state machine: applies decided entries to the `kv` column family, with
//! (client, seq) deduplication as replicated state. Everything here is a pure function of
//! the log content (no wall clock): every replica applying the same entries ends in the same
//! state, dedup table and eviction included.
//!
//! Invariant: the applied position, the dedup changes and the KV mutations of a batch of
//! entries are written in ONE RocksDB batch.

use crate::codec::{decode, encode};
use crate::command::{LogCmd, Op, ReqId};
use crate::storage::{Db, StoreError, CF_DEDUP, CF_KV, CF_META};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

const META_SM: &[u8] = b"sm";

pub use omnikv_wire::state::{pair_hash, Position, SmMeta};

/// What a write did, as remembered for duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub config_id: u32,
    pub index: u64,
    pub existed: bool,
}

impl From<Outcome> for omnikv_common::api::WriteResult {
    /// What a client is answered for a write applied with this outcome.
    fn from(o: Outcome) -> Self {
        omnikv_common::api::WriteResult {
            config_id: o.config_id,
            index: o.index,
            existed: o.existed,
        }
    }
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
    records: HashMap<(u64, u64), DedupRecord>,
    /// Eviction order: oldest timestamp first, ties by (client, seq): deterministic.
    by_age: BTreeSet<(u64, u64, u64)>,
    /// Test-only defect (`replica::Defect::ApplyIgnoresDedup`): duplicates apply again.
    ignore_dedup: bool,
}

pub fn dedup_key(client: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl StateMachine {
    /// Loads the state machine's metadata and dedup table from `db`.
    pub fn load(db: Db, limits: DedupLimits) -> Result<StateMachine, StoreError> {
        let meta = match db.get(CF_META, META_SM)? {
            Some(b) => decode(&b).map_err(|e| StoreError::Corrupt {
                what: "state machine meta",
                detail: e.to_string(),
            })?,
            None => SmMeta::default(),
        };
        let mut sm = StateMachine {
            db,
            meta,
            limits,
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

    /// Re-reads everything from disk (after a checkpoint was switched in).
    pub fn reload(&mut self) -> Result<(), StoreError> {
        let ignore_dedup = self.ignore_dedup;
        *self = StateMachine::load(self.db.clone(), self.limits)?;
        self.ignore_dedup = ignore_dedup;
        Ok(())
    }

    pub fn meta(&self) -> SmMeta {
        self.meta
    }

    pub fn applied(&self) -> Position {
        self.meta.applied
    }

    pub fn dedup_len(&self) -> usize {
        self.records.len()
    }

    /// Reads a key from the applied state.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(CF_KV, key)
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
    /// position of configuration `config_id`. One RocksDB batch for all of them.
    pub fn apply(
        &mut self,
        config_id: u32,
        entries: &[LogCmd],
    ) -> Result<Vec<Applied>, StoreError> {
        debug_assert_eq!(self.meta.applied.config_id, config_id);
        let mut batch = WriteBatch::default();
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut results = Vec::new();
        let db = self.db.clone();
        let cf_kv = db.cf(CF_KV);
        let cf_dedup = db.cf(CF_DEDUP);
        for entry in entries {
            let index = self.meta.applied.index;
            for op in &entry.ops {
                match op {
                    Op::Barrier { origin, id } => results.push(Applied::Barrier {
                        origin: *origin,
                        id: *id,
                    }),
                    Op::Put { req, key, .. } | Op::Delete { req, key } => {
                        let result = match self.check_dedup(req) {
                            Err(r) => Err(r),
                            Ok(Some(previous)) => Ok(previous),
                            Ok(None) => {
                                let old = match overlay.get(key) {
                                    Some(v) => v.clone(),
                                    None => self.db.get(CF_KV, key)?,
                                };
                                if let Some(old) = &old {
                                    self.meta.hash ^= pair_hash(key, old);
                                    self.meta.keys -= 1;
                                }
                                let new = match op {
                                    Op::Put { value, .. } => {
                                        batch.put_cf(cf_kv, key, value);
                                        self.meta.hash ^= pair_hash(key, value);
                                        self.meta.keys += 1;
                                        Some(value.clone())
                                    }
                                    _ => {
                                        batch.delete_cf(cf_kv, key);
                                        None
                                    }
                                };
                                overlay.insert(key.clone(), new);
                                let outcome = Outcome {
                                    config_id,
                                    index,
                                    existed: old.is_some() || matches!(op, Op::Put { .. }),
                                };
                                let rec = DedupRecord {
                                    ts_ms: req.ts_ms,
                                    outcome,
                                };
                                self.records.insert((req.client, req.seq), rec);
                                self.by_age.insert((req.ts_ms, req.client, req.seq));
                                batch.put_cf(
                                    cf_dedup,
                                    dedup_key(req.client, req.seq),
                                    encode(&rec),
                                );
                                self.meta.clock_ms = self.meta.clock_ms.max(req.ts_ms);
                                Ok(outcome)
                            }
                        };
                        results.push(Applied::Write { req: *req, result });
                    }
                }
            }
            self.evict(&mut batch);
            self.meta.applied.index += 1;
        }
        batch.put_cf(self.db.cf(CF_META), META_SM, encode(&self.meta));
        // Not synced on its own: the entries are durable in the log, so a crash that loses
        // this batch only moves the applied position back (WAL order keeps a prefix), and the
        // entries are applied again. The next required sync covers it.
        crate::failpoint::hit("apply");
        self.db.write_lazy(batch)?;
        Ok(results)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn sm(dir: &std::path::Path, ttl_ms: u64, max_records: usize) -> StateMachine {
        let db = Db::open(dir).unwrap();
        let mut sm = StateMachine::load(
            db,
            DedupLimits {
                ttl_ms,
                max_records,
            },
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
        let r1 = sm
            .apply(
                1,
                &[LogCmd {
                    ops: vec![put(7, 1, 1000, "a", "1")],
                }],
            )
            .unwrap();
        let r2 = sm
            .apply(
                1,
                &[LogCmd {
                    ops: vec![put(9, 1, 1001, "a", "2"), put(7, 1, 1000, "a", "1")],
                }],
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

    #[test]
    fn eviction_is_bounded_and_old_retries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = sm(dir.path(), 10_000, 3);
        for seq in 1..=5 {
            sm.apply(
                1,
                &[LogCmd {
                    ops: vec![put(1, seq, 1000 + seq, "k", "v")],
                }],
            )
            .unwrap();
        }
        assert_eq!(sm.dedup_len(), 3);
        // seq 1 was evicted by the cap: its retry must be refused, not applied again.
        let r = sm
            .apply(
                1,
                &[LogCmd {
                    ops: vec![put(1, 1, 1001, "k", "x")],
                }],
            )
            .unwrap();
        assert!(matches!(
            &r[0],
            Applied::Write {
                result: Err(Refusal::TooOld),
                ..
            }
        ));
        assert_eq!(sm.get(b"k").unwrap().unwrap(), b"v");
        // Time moves on (by log content): a request older than TTL/2 is refused.
        sm.apply(
            1,
            &[LogCmd {
                ops: vec![put(2, 1, 100_000, "t", "1")],
            }],
        )
        .unwrap();
        let r = sm
            .apply(
                1,
                &[LogCmd {
                    ops: vec![put(3, 1, 90_000, "t", "2")],
                }],
            )
            .unwrap();
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

    #[test]
    fn state_survives_reload_and_hash_tracks_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm1 = sm(dir.path(), 60_000, 100);
        sm1.apply(
            1,
            &[LogCmd {
                ops: vec![put(1, 1, 5, "a", "1"), put(1, 2, 5, "b", "2")],
            }],
        )
        .unwrap();
        let h = sm1.meta().hash;
        sm1.apply(
            1,
            &[LogCmd {
                ops: vec![Op::Delete {
                    req: ReqId {
                        client: 1,
                        seq: 3,
                        ts_ms: 6,
                    },
                    key: b"b".to_vec(),
                }],
            }],
        )
        .unwrap();
        assert_ne!(sm1.meta().hash, h);
        assert_eq!(sm1.meta().hash, pair_hash(b"a", b"1"));
        sm1.reload().unwrap();
        assert_eq!(sm1.meta().keys, 1);
        assert_eq!(sm1.dedup_len(), 3);
    }
}
