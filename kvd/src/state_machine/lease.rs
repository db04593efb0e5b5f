//! Leases as replicated state: each lease's TTL, the remaining time the leader last
//! checkpointed, how often it was renewed, and which keys it holds. The `lease` column family
//! stores `l` + id (8 bytes, big-endian) -> `LeaseRecord` and `k` + id + key -> nothing (the
//! key is attached); the key's own record names its lease too (`KvRecord::lease`).
//!
//! Nothing here reads a clock: when a lease runs out is the loop's business
//! (`replica/leases.rs`); the state machine only applies what the log says (a grant, a
//! keepalive, a revoke, the leader's expiry or checkpoint).

use crate::codec::{decode, encode};
use crate::storage::{Db, StoreError, CF_LEASE};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const RECORD: u8 = b'l';
const ATTACHED: u8 = b'k';

/// One lease as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The TTL it was granted with: a keepalive gives it this much again.
    pub ttl_ms: u64,
    /// The time left when it was last granted, renewed (= `ttl_ms`) or checkpointed. A
    /// replica that loads it (a restart, a checkpoint) counts from this, never from the full
    /// TTL.
    pub remaining_ms: u64,
    /// Keepalives applied so far: an expiry names the count it saw (`Op::LeaseExpire`).
    pub renewals: u64,
}

/// What applying the log did to a lease, for the loop's lease clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted or renewed: it lives `ttl_ms` from now.
    Renewed { id: u64, ttl_ms: u64, renewals: u64 },
    /// The leader recorded `remaining_ms` left.
    Checkpointed { id: u64, remaining_ms: u64 },
    /// Revoked or expired.
    Gone { id: u64 },
}

fn record_key(id: u64) -> [u8; 9] {
    let mut k = [RECORD; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn attached_prefix(id: u64) -> [u8; 9] {
    let mut k = [ATTACHED; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn attached_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = attached_prefix(id).to_vec();
    k.extend_from_slice(key);
    k
}

/// The leases, in memory (every one of them: their number is bounded at admission,
/// `--max-leases`), plus the attachments changed by the apply call in progress, which the
/// batch holds but the database does not show yet.
#[derive(Default)]
pub struct Leases {
    table: BTreeMap<u64, LeaseRecord>,
    /// (lease, key) -> attached? for this apply call; cleared by `end_apply`.
    pending: BTreeMap<(u64, Vec<u8>), bool>,
    changes: Vec<LeaseChange>,
}

impl Leases {
    pub fn load(db: &Db) -> Result<Leases, StoreError> {
        let mut table = BTreeMap::new();
        let mode = IteratorMode::From(&[RECORD], Direction::Forward);
        for item in db.raw().iterator_cf(db.cf(CF_LEASE), mode) {
            let (k, v) = item?;
            if k.first() != Some(&RECORD) {
                break;
            }
            let id = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "lease key",
                    detail: format!("{} bytes", k.len()),
                })?;
            let rec: LeaseRecord = decode(&v).map_err(|e| StoreError::Corrupt {
                what: "lease record",
                detail: e.to_string(),
            })?;
            table.insert(id, rec);
        }
        Ok(Leases {
            table,
            ..Leases::default()
        })
    }

    pub fn get(&self, id: u64) -> Option<LeaseRecord> {
        self.table.get(&id).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, LeaseRecord)> + '_ {
        self.table.iter().map(|(id, r)| (*id, *r))
    }

    /// Creates lease `id`; false when it exists already (nothing changes).
    pub fn grant(&mut self, db: &Db, batch: &mut WriteBatch, id: u64, ttl_ms: u64) -> bool {
        if self.table.contains_key(&id) {
            return false;
        }
        let rec = LeaseRecord {
            ttl_ms,
            remaining_ms: ttl_ms,
            renewals: 0,
        };
        self.store(db, batch, id, rec);
        self.changes.push(LeaseChange::Renewed {
            id,
            ttl_ms,
            renewals: 0,
        });
        true
    }

    /// Renews lease `id` for its whole TTL; `None` when there is no such lease.
    pub fn renew(&mut self, db: &Db, batch: &mut WriteBatch, id: u64) -> Option<LeaseRecord> {
        let mut rec = self.get(id)?;
        rec.remaining_ms = rec.ttl_ms;
        rec.renewals += 1;
        self.store(db, batch, id, rec);
        self.changes.push(LeaseChange::Renewed {
            id,
            ttl_ms: rec.ttl_ms,
            renewals: rec.renewals,
        });
        Some(rec)
    }

    /// Records the leader's estimate of the time lease `id` has left, measured when the lease
    /// had been renewed `renewals` times (`None`: unknown, from a checkpoint logged before the
    /// count was recorded). Ignored for a lease that is gone or was renewed since.
    pub fn checkpoint(
        &mut self,
        db: &Db,
        batch: &mut WriteBatch,
        id: u64,
        remaining_ms: u64,
        renewals: Option<u64>,
    ) {
        let measured = |rec: &LeaseRecord| renewals.is_none_or(|n| rec.renewals == n);
        if let Some(mut rec) = self.get(id).filter(measured) {
            rec.remaining_ms = remaining_ms.min(rec.ttl_ms);
            self.store(db, batch, id, rec);
            self.changes.push(LeaseChange::Checkpointed {
                id,
                remaining_ms: rec.remaining_ms,
            });
        }
    }

    fn store(&mut self, db: &Db, batch: &mut WriteBatch, id: u64, rec: LeaseRecord) {
        batch.put_cf(db.cf(CF_LEASE), record_key(id), encode(&rec));
        self.table.insert(id, rec);
    }

    /// Ends lease `id` and returns the keys it held (the caller deletes them, and with them
    /// the attachments, through `detach`).
    pub fn end(
        &mut self,
        db: &Db,
        batch: &mut WriteBatch,
        id: u64,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        if self.table.remove(&id).is_none() {
            return Ok(None);
        }
        batch.delete_cf(db.cf(CF_LEASE), record_key(id));
        self.changes.push(LeaseChange::Gone { id });
        self.keys(db, id).map(Some)
    }

    /// The keys lease `id` holds, as this apply call leaves them.
    pub fn keys(&self, db: &Db, id: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = attached_prefix(id);
        let mut keys = BTreeMap::new();
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        for item in db.raw().iterator_cf(db.cf(CF_LEASE), mode) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            keys.insert(k[prefix.len()..].to_vec(), true);
        }
        for ((lease, key), attached) in self.pending.range((id, Vec::new())..) {
            if *lease != id {
                break;
            }
            keys.insert(key.clone(), *attached);
        }
        Ok(keys
            .into_iter()
            .filter_map(|(k, attached)| attached.then_some(k))
            .collect())
    }

    pub fn attach(&mut self, db: &Db, batch: &mut WriteBatch, id: u64, key: &[u8]) {
        batch.put_cf(db.cf(CF_LEASE), attached_key(id, key), []);
        self.pending.insert((id, key.to_vec()), true);
    }

    pub fn detach(&mut self, db: &Db, batch: &mut WriteBatch, id: u64, key: &[u8]) {
        batch.delete_cf(db.cf(CF_LEASE), attached_key(id, key));
        self.pending.insert((id, key.to_vec()), false);
    }

    /// The apply call's batch is written: the database shows its attachments now.
    pub fn end_apply(&mut self) {
        self.pending.clear();
    }

    /// What the last apply calls did to leases, in order.
    pub fn take_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_in_the_batch_count_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut leases = Leases::load(&db).unwrap();
        let mut batch = WriteBatch::default();
        assert!(leases.grant(&db, &mut batch, 7, 5000));
        assert!(!leases.grant(&db, &mut batch, 7, 9000));
        leases.attach(&db, &mut batch, 7, b"a");
        leases.attach(&db, &mut batch, 7, b"b");
        leases.attach(&db, &mut batch, 8, b"c");
        db.write_synced(batch).unwrap();
        leases.end_apply();

        let mut batch = WriteBatch::default();
        leases.detach(&db, &mut batch, 7, b"a");
        leases.attach(&db, &mut batch, 7, b"d");
        assert_eq!(
            leases.keys(&db, 7).unwrap(),
            vec![b"b".to_vec(), b"d".to_vec()]
        );
        assert_eq!(leases.renew(&db, &mut batch, 7).unwrap().renewals, 1);
        leases.checkpoint(&db, &mut batch, 7, 99_999, Some(1));
        db.write_synced(batch).unwrap();
        leases.end_apply();

        let loaded = Leases::load(&db).unwrap();
        let rec = loaded.get(7).unwrap();
        // A checkpoint never claims more than the TTL.
        assert_eq!(
            (rec.ttl_ms, rec.remaining_ms, rec.renewals),
            (5000, 5000, 1)
        );
        assert_eq!(loaded.len(), 1);
        let mut batch = WriteBatch::default();
        let mut leases = loaded;
        let keys = leases.end(&db, &mut batch, 7).unwrap().unwrap();
        assert_eq!(keys, vec![b"b".to_vec(), b"d".to_vec()]);
        assert!(leases.end(&db, &mut batch, 7).unwrap().is_none());
    }
}
