//! Reading the key space: the stored `kv` column family seen through the writes of a batch
//! not yet written (`Overlay`), by key or by range. Apply reads through the overlay (a
//! transaction sees the writes before it in the same batch), after reading the keys its
//! entries write in one batched read (`read_ahead`); client reads use an empty one.

use super::record::{KeyValue, KvRecord};
use crate::command::{KeyRange, ReadOpts};
use crate::storage::{Db, StoreError, CF_KV};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Most bytes of keys and values one read answer carries: a page ends at the first key that
/// reaches it (`more` is then true), so an answer stays bounded whatever the limit.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Pending writes over the stored state: `None` is a delete (or, for a key read ahead, an
/// absent key). A key read ahead holds what the store holds, so it reads the same whether it
/// is looked up here or in the store.
#[derive(Default)]
pub struct Overlay {
    map: BTreeMap<Vec<u8>, Option<KvRecord>>,
}

/// The answer to a read of a range (or of one key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range (all of them, not only those returned).
    pub count: u64,
    /// More keys follow the last one returned (limit or page bytes reached).
    pub more: bool,
}

/// The record under `key` in the store.
fn stored(db: &Db, key: &[u8]) -> Result<Option<KvRecord>, StoreError> {
    db.raw()
        .get_pinned_cf(db.cf(CF_KV), key)?
        .map(|b| KvRecord::decode(&b))
        .transpose()
}

impl Overlay {
    pub fn set(&mut self, key: Vec<u8>, record: Option<KvRecord>) {
        self.map.insert(key, record);
    }

    /// Reads the stored records of `keys` not held yet in one batched RocksDB read (sorted,
    /// each key once), so that applying a batch of writes does not pay a point read per key.
    pub fn read_ahead(&mut self, db: &Db, mut keys: Vec<&[u8]>) -> Result<(), StoreError> {
        keys.retain(|k| !self.map.contains_key(*k));
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        let found = db.raw().batched_multi_get_cf(db.cf(CF_KV), &keys, true);
        for (key, stored) in keys.into_iter().zip(found) {
            let record = stored?.map(|b| KvRecord::decode(&b)).transpose()?;
            self.map.insert(key.to_vec(), record);
        }
        Ok(())
    }

    /// The record under `key`, pending writes first.
    pub fn get(&self, db: &Db, key: &[u8]) -> Result<Option<KvRecord>, StoreError> {
        match self.map.get(key) {
            Some(r) => Ok(r.clone()),
            None => stored(db, key),
        }
    }

    /// The slot of `key` for a write, filled from the store when it holds nothing yet: the
    /// caller takes the record it replaces out of it and puts the new one in (no clone).
    pub fn slot(&mut self, db: &Db, key: &[u8]) -> Result<&mut Option<KvRecord>, StoreError> {
        if !self.map.contains_key(key) {
            let record = stored(db, key)?;
            self.map.insert(key.to_vec(), record);
        }
        Ok(self.map.get_mut(key).expect("just inserted"))
    }

    /// Calls `visit` on every live key of `range` in key order until it returns false.
    pub fn scan(
        &self,
        db: &Db,
        range: &KeyRange,
        mut visit: impl FnMut(&[u8], &KvRecord) -> bool,
    ) -> Result<(), StoreError> {
        let (start, end) = match range {
            KeyRange::Key(k) => {
                if let Some(r) = self.get(db, k)? {
                    visit(k, &r);
                }
                return Ok(());
            }
            KeyRange::Span { start, end } => (start, end.as_ref()),
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut ro = rocksdb::ReadOptions::default();
        if let Some(e) = end {
            ro.set_iterate_upper_bound(e.clone());
        }
        let mut stored = db
            .raw()
            .iterator_cf_opt(
                db.cf(CF_KV),
                ro,
                rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
            )
            .peekable();
        let upper = match end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        let mut pending = self
            .map
            .range::<Vec<u8>, _>((Bound::Included(start.clone()), upper))
            .peekable();
        loop {
            // Take the smaller key of the two sources; on a tie the pending write wins.
            let next_stored = match stored.peek() {
                Some(Ok((k, _))) => Some(k.as_ref()),
                Some(Err(_)) => {
                    let Some(Err(e)) = stored.next() else {
                        unreachable!("peeked an error")
                    };
                    return Err(e.into());
                }
                None => None,
            };
            let next_pending = pending.peek().map(|(k, _)| k.as_slice());
            let take_pending = match (next_stored, next_pending) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(p)) => p <= s,
            };
            if take_pending {
                let (k, r) = pending.next().expect("peeked");
                if next_stored == Some(k.as_slice()) {
                    stored.next();
                }
                if let Some(r) = r {
                    if !visit(k, r) {
                        return Ok(());
                    }
                }
            } else {
                let Some(Ok((k, v))) = stored.next() else {
                    unreachable!("peeked a key")
                };
                let r = KvRecord::decode(&v)?;
                if !visit(&k, &r) {
                    return Ok(());
                }
            }
        }
    }

    /// Reads `range` as `opts` ask: the keys (and values unless `keys_only`) up to the limit
    /// and `PAGE_BYTES`, and the count of every key in the range.
    pub fn read(
        &self,
        db: &Db,
        range: &KeyRange,
        opts: &ReadOpts,
    ) -> Result<RangeResult, StoreError> {
        let mut out = RangeResult::default();
        let mut bytes = 0usize;
        let mut full = opts.count_only;
        self.scan(db, range, |k, r| {
            out.count += 1;
            if full {
                out.more = true;
                return true;
            }
            let value = if opts.keys_only {
                Vec::new()
            } else {
                r.value.clone()
            };
            bytes += k.len() + value.len();
            out.kvs.push(KeyValue {
                key: k.to_vec(),
                value,
                create_revision: r.create_revision,
                mod_revision: r.mod_revision,
                version: r.version,
                lease: r.lease,
            });
            full = (opts.limit > 0 && out.kvs.len() as u64 >= opts.limit) || bytes >= PAGE_BYTES;
            true
        })?;
        if opts.count_only {
            out.more = false;
        }
        Ok(out)
    }
}
