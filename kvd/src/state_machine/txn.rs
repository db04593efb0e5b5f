//! Executing one client write against the state: plain puts and deletes, and transactions
//! (compares, then one branch of puts, deletes and reads). Every write of one operation
//! shares one revision, `revision`, which the caller makes current only if something was
//! written (etcd's rule: a failed compare or a delete of nothing does not raise it).

use super::history::{Event, EventKind};
use super::lease::Leases;
use super::record::{KeyValue, KvRecord};
use super::view::{Overlay, RangeResult};
use crate::codec::encode;
use crate::command::{Compare, CompareOp, CompareTarget, KeyRange, ReadOpts, Txn, TxnOp};
use crate::storage::{Db, StoreError, CF_KV};
use omnikv_wire::state::{pair_hash, SmMeta};
use rocksdb::WriteBatch;
use std::cmp::Ordering;

/// What one operation of a write did, for the client that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The key before the put (`None`: it was created).
    Put {
        prev: Option<KeyValue>,
    },
    /// The keys removed, with their last values.
    Delete {
        prev: Vec<KeyValue>,
    },
    Get(RangeResult),
    /// A lease operation, or a put naming a lease that does not exist (nothing was written).
    Lease(LeaseResult),
    /// A nested transaction: whether its compares held, and the results of the branch that
    /// ran.
    Txn {
        succeeded: bool,
        results: Vec<OpResult>,
    },
}

/// The branch a transaction takes, and those of the transactions nested in that branch, in
/// their order. As in etcd, every compare on the way is decided against the state before any
/// write of the request: the path is found first, then run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub succeeded: bool,
    pub nested: Vec<Path>,
}

impl Path {
    /// The operations `txn` runs on this path.
    pub fn branch<'t>(&self, txn: &'t Txn) -> &'t [TxnOp] {
        if self.succeeded {
            &txn.success
        } else {
            &txn.failure
        }
    }
}

/// What a lease operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    Granted {
        id: u64,
        ttl_ms: u64,
    },
    /// The id is taken: nothing changed.
    Exists {
        id: u64,
    },
    Renewed {
        id: u64,
        ttl_ms: u64,
    },
    /// Revoked (or expired): its keys were deleted.
    Ended {
        id: u64,
        deleted: u64,
    },
    NotFound {
        id: u64,
    },
}

/// Applies writes of one client operation to `overlay` and `batch` under `revision`.
pub struct Executor<'a> {
    pub db: &'a Db,
    pub overlay: &'a mut Overlay,
    pub batch: &'a mut WriteBatch,
    pub meta: &'a mut SmMeta,
    /// The revision these writes get.
    pub revision: u64,
    /// Whether anything was written (the revision is then raised).
    pub wrote: bool,
    /// Someone waits for the results: reads are done (else they are skipped; writes always
    /// happen, and report what they replaced, which the hash needs anyway).
    pub answering: bool,
    /// The changes made, for the history.
    pub events: &'a mut Vec<Event>,
    pub leases: &'a mut Leases,
}

impl Executor<'_> {
    /// Puts `key` attached to `lease` (0: none), which the caller made sure exists; the key
    /// leaves the lease it had, if another. Returns the key as it was; when nobody waits for
    /// the results (`answering` false) only its counters, key and value left empty (they would
    /// be dropped unread).
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: u64,
    ) -> Result<Option<KeyValue>, StoreError> {
        let slot = self.overlay.slot(self.db, key)?;
        let old = slot.take();
        let record = match &old {
            Some(o) => {
                self.meta.hash ^= pair_hash(key, &o.value);
                KvRecord {
                    create_revision: o.create_revision,
                    mod_revision: self.revision,
                    version: o.version + 1,
                    value: value.to_vec(),
                    lease,
                }
            }
            None => {
                self.meta.keys += 1;
                KvRecord {
                    create_revision: self.revision,
                    mod_revision: self.revision,
                    version: 1,
                    value: value.to_vec(),
                    lease,
                }
            }
        };
        self.meta.hash ^= pair_hash(key, value);
        self.batch.put_cf(self.db.cf(CF_KV), key, encode(&record));
        let (create_revision, version) = (record.create_revision, record.version);
        *slot = Some(record);
        let old_lease = old.as_ref().map_or(0, |o| o.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.leases.detach(self.db, self.batch, old_lease, key);
            }
            if lease != 0 {
                self.leases.attach(self.db, self.batch, lease, key);
            }
        }
        let (prev_value, prev) = match old {
            Some(o) if self.answering => (Some(o.value.clone()), Some(o.into_kv(key.to_vec()))),
            Some(o) => {
                let counters = KeyValue {
                    key: Vec::new(),
                    value: Vec::new(),
                    create_revision: o.create_revision,
                    mod_revision: o.mod_revision,
                    version: o.version,
                    lease: o.lease,
                };
                (Some(o.value), Some(counters))
            }
            None => (None, None),
        };
        self.events.push(Event {
            kind: EventKind::Put,
            key: key.to_vec(),
            value: value.to_vec(),
            revision: self.revision,
            create_revision,
            version,
            prev_value,
        });
        self.wrote = true;
        Ok(prev)
    }

    /// Deletes every key of `range`; returns what they held.
    pub fn delete(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, StoreError> {
        let mut gone = Vec::new();
        self.overlay.scan(self.db, range, |k, r| {
            gone.push(r.clone().into_kv(k.to_vec()));
            true
        })?;
        for kv in &gone {
            self.meta.hash ^= pair_hash(&kv.key, &kv.value);
            self.meta.keys -= 1;
            self.batch.delete_cf(self.db.cf(CF_KV), &kv.key);
            if kv.lease != 0 {
                self.leases.detach(self.db, self.batch, kv.lease, &kv.key);
            }
            self.overlay.set(kv.key.clone(), None);
            self.events.push(Event {
                kind: EventKind::Delete,
                key: kv.key.clone(),
                value: Vec::new(),
                revision: self.revision,
                create_revision: 0,
                version: 0,
                prev_value: Some(kv.value.clone()),
            });
        }
        self.wrote |= !gone.is_empty();
        Ok(gone)
    }

    pub fn read(&self, range: &KeyRange, opts: &ReadOpts) -> Result<RangeResult, StoreError> {
        self.overlay.read(self.db, range, opts)
    }

    /// Whether every compare holds against the current state.
    pub fn compares_hold(&self, compares: &[Compare]) -> Result<bool, StoreError> {
        for c in compares {
            if !self.holds(c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn holds(&self, c: &Compare) -> Result<bool, StoreError> {
        let current = self.overlay.get(self.db, &c.key)?;
        let ordering = match (&c.target, &current) {
            // An absent key has no value: only "not equal" holds against one.
            (CompareTarget::Value(_), None) => return Ok(c.op == CompareOp::NotEqual),
            (CompareTarget::Value(v), Some(r)) => r.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(n), r) => r.as_ref().map_or(0, |r| r.version).cmp(n),
            (CompareTarget::ModRevision(n), r) => r.as_ref().map_or(0, |r| r.mod_revision).cmp(n),
            (CompareTarget::CreateRevision(n), r) => {
                r.as_ref().map_or(0, |r| r.create_revision).cmp(n)
            }
            (CompareTarget::Lease(n), r) => r.as_ref().map_or(0, |r| r.lease).cmp(n),
        };
        Ok(match c.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        })
    }

    /// The path `txn` takes against the current state.
    pub fn path(&self, txn: &Txn) -> Result<Path, StoreError> {
        let succeeded = self.compares_hold(&txn.compares)?;
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let nested = branch
            .iter()
            .filter_map(|op| match op {
                TxnOp::Txn(t) => Some(self.path(t)),
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(Path { succeeded, nested })
    }

    /// A lease that a put on `path` names but that does not exist (nothing must then run:
    /// etcd fails the whole request).
    pub fn missing_lease(&self, txn: &Txn, path: &Path) -> Option<u64> {
        let mut nested = path.nested.iter();
        path.branch(txn).iter().find_map(|op| match op {
            TxnOp::PutLeased { lease, .. } if self.leases.get(*lease).is_none() => Some(*lease),
            TxnOp::Txn(t) => nested.next().and_then(|p| self.missing_lease(t, p)),
            _ => None,
        })
    }

    /// Ends lease `id` (revoked or expired): deletes its keys under this revision.
    pub fn end_lease(&mut self, id: u64) -> Result<LeaseResult, StoreError> {
        let Some(keys) = self.leases.end(self.db, self.batch, id)? else {
            return Ok(LeaseResult::NotFound { id });
        };
        let mut deleted = 0;
        for key in keys {
            deleted += self.delete(&KeyRange::Key(key))?.len() as u64;
        }
        Ok(LeaseResult::Ended { id, deleted })
    }

    /// Runs the branch `path` says of `txn`, in order (a read sees the writes before it).
    pub fn run(&mut self, txn: &Txn, path: &Path) -> Result<Vec<OpResult>, StoreError> {
        let ops = path.branch(txn);
        let mut nested = path.nested.iter();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value } => OpResult::Put {
                    prev: self.put(key, value, 0)?,
                },
                TxnOp::PutLeased { key, value, lease } => OpResult::Put {
                    prev: self.put(key, value, *lease)?,
                },
                TxnOp::Delete { range } => OpResult::Delete {
                    prev: self.delete(range)?,
                },
                TxnOp::Get { range, opts } if self.answering => {
                    OpResult::Get(self.read(range, opts)?)
                }
                TxnOp::Get { .. } => OpResult::Get(RangeResult::default()),
                TxnOp::Txn(t) => {
                    // `path` found one path per nested transaction of the branch.
                    let found;
                    let p = match nested.next() {
                        Some(p) => p,
                        None => {
                            found = self.path(t)?;
                            &found
                        }
                    };
                    OpResult::Txn {
                        succeeded: p.succeeded,
                        results: self.run(t, p)?,
                    }
                }
            });
        }
        Ok(results)
    }
}
