//! What the `kv` column family stores per key (the value with its revisions), and the one-time
//! upgrade of a store written before revisions existed.
//!
//! Store format 3 (this one): `meta/format` = 3; `kv` values are encoded `KvRecord`s with their
//! lease; `meta/sm` is the `SmMeta` with its revision; dedup records carry the outcome with its
//! revision; the `lease` column family holds the leases.
//! Format 2: `KvRecord`s had no lease. Upgraded when opened, in one synced batch: every record
//! gets lease 0 (none).
//! Format 1 (no `meta/format` key): `kv` values were the raw values, and `meta/sm` and the
//! dedup records had no revision. Such a store is upgraded when it is opened, in one synced
//! batch: every key becomes a record created and last modified at revision 1 with version 1
//! (as if one write at revision 1 had created them all; revision 0 if there were none), and
//! remembered outcomes get that revision.

use super::{DedupRecord, Outcome};
use crate::codec::{decode, encode};
use crate::storage::{Db, StoreError, CF_DEDUP, CF_KV, CF_META};
use omnikv_wire::state::{Position, SmMeta};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use tracing::info;

pub(super) const META_SM: &[u8] = b"sm";
const META_FORMAT: &[u8] = b"format";
const FORMAT: u32 = 3;
/// The revision a format-1 store's keys get when it is upgraded.
pub const UPGRADE_REVISION: u64 = 1;

/// A key's stored value and history counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Puts since the key was (last) created: 1 after the first.
    pub version: u64,
    /// Bytes, not a sequence of `u8`: the same bincode, one copy (wire/src/command.rs).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease the key is attached to (0: none); it is deleted when the lease ends.
    pub lease: u64,
}

/// Format 2's record (no lease).
#[derive(Deserialize)]
struct KvRecordV2 {
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    value: Vec<u8>,
}

impl KvRecord {
    pub fn decode(bytes: &[u8]) -> Result<KvRecord, StoreError> {
        decode(bytes).map_err(|e| StoreError::Corrupt {
            what: "kv record",
            detail: e.to_string(),
        })
    }

    pub fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A key with its value and counters, as reads and write results carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Empty when read with `keys_only`.
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// 0: none.
    pub lease: u64,
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// Format 1's state-machine metadata (no revision).
#[derive(Deserialize)]
struct SmMetaV1 {
    applied: Position,
    clock_ms: u64,
    horizon_ms: u64,
    keys: u64,
    hash: u64,
}

/// Format 1's dedup record.
#[derive(Deserialize)]
struct DedupRecordV1 {
    ts_ms: u64,
    config_id: u32,
    index: u64,
    existed: bool,
}

/// Reads the state-machine metadata, first writing format 2 on a fresh store and upgrading a
/// format-1 store (module docs).
pub(super) fn load_meta(db: &Db) -> Result<SmMeta, StoreError> {
    let format = db
        .get(CF_META, META_FORMAT)?
        .map(|b| decode::<u32>(&b).map_err(|e| corrupt("store format", e)))
        .transpose()?;
    let sm = db.get(CF_META, META_SM)?;
    match (format, sm) {
        (Some(FORMAT), Some(b)) => decode(&b).map_err(|e| corrupt("state machine meta", e)),
        (Some(FORMAT), None) => Ok(SmMeta::default()),
        (Some(2), Some(b)) => {
            let meta = decode(&b).map_err(|e| corrupt("state machine meta", e))?;
            upgrade_from_v2(db)?;
            Ok(meta)
        }
        (Some(2), None) => {
            upgrade_from_v2(db)?;
            Ok(SmMeta::default())
        }
        (Some(other), _) => Err(StoreError::Corrupt {
            what: "store format",
            detail: format!("format {other} is not one this kvd reads (it reads {FORMAT})"),
        }),
        (None, None) => {
            let mut batch = WriteBatch::default();
            batch.put_cf(db.cf(CF_META), META_FORMAT, encode(&FORMAT));
            db.write_synced(batch)?;
            Ok(SmMeta::default())
        }
        (None, Some(b)) => upgrade_from_v1(db, &b),
    }
}

fn upgrade_from_v2(db: &Db) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    let mut keys = 0u64;
    for item in db.raw().iterator_cf(db.cf(CF_KV), IteratorMode::Start) {
        let (k, v) = item?;
        let old: KvRecordV2 = decode(&v).map_err(|e| corrupt("format-2 kv record", e))?;
        let record = KvRecord {
            create_revision: old.create_revision,
            mod_revision: old.mod_revision,
            version: old.version,
            value: old.value,
            lease: 0,
        };
        batch.put_cf(db.cf(CF_KV), &k, encode(&record));
        keys += 1;
    }
    batch.put_cf(db.cf(CF_META), META_FORMAT, encode(&FORMAT));
    db.write_synced(batch)?;
    info!(
        keys,
        "upgraded a store written before leases (format 2) to format 3"
    );
    Ok(())
}

fn upgrade_from_v1(db: &Db, meta_bytes: &[u8]) -> Result<SmMeta, StoreError> {
    let old: SmMetaV1 = decode(meta_bytes).map_err(|e| corrupt("format-1 meta", e))?;
    let mut batch = WriteBatch::default();
    let mut keys = 0u64;
    for item in db.raw().iterator_cf(db.cf(CF_KV), IteratorMode::Start) {
        let (k, v) = item?;
        let record = KvRecord {
            create_revision: UPGRADE_REVISION,
            mod_revision: UPGRADE_REVISION,
            version: 1,
            value: v.to_vec(),
            lease: 0,
        };
        batch.put_cf(db.cf(CF_KV), &k, encode(&record));
        keys += 1;
    }
    let revision = if keys > 0 { UPGRADE_REVISION } else { 0 };
    for item in db.raw().iterator_cf(db.cf(CF_DEDUP), IteratorMode::Start) {
        let (k, v) = item?;
        let old_rec: DedupRecordV1 = decode(&v).map_err(|e| corrupt("format-1 dedup record", e))?;
        let rec = DedupRecord {
            ts_ms: old_rec.ts_ms,
            outcome: Outcome {
                config_id: old_rec.config_id,
                index: old_rec.index,
                revision,
                existed: old_rec.existed,
                succeeded: true,
            },
        };
        batch.put_cf(db.cf(CF_DEDUP), &k, encode(&rec));
    }
    let meta = SmMeta {
        applied: old.applied,
        clock_ms: old.clock_ms,
        horizon_ms: old.horizon_ms,
        keys: old.keys,
        hash: old.hash,
        revision,
    };
    batch.put_cf(db.cf(CF_META), META_SM, encode(&meta));
    batch.put_cf(db.cf(CF_META), META_FORMAT, encode(&FORMAT));
    db.write_synced(batch)?;
    info!(
        keys,
        revision, "upgraded a store written before revisions (format 1) to format 3"
    );
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct SmMetaV1Out {
        applied: Position,
        clock_ms: u64,
        horizon_ms: u64,
        keys: u64,
        hash: u64,
    }

    #[derive(Serialize)]
    struct DedupV1Out {
        ts_ms: u64,
        config_id: u32,
        index: u64,
        existed: bool,
    }

    /// A store as a kvd without revisions left it opens with every key at revision 1.
    #[test]
    fn a_format_1_store_is_upgraded_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put_cf(db.cf(CF_KV), b"a", b"1");
        b.put_cf(db.cf(CF_KV), b"b", b"22");
        let meta = SmMetaV1Out {
            applied: Position {
                config_id: 1,
                index: 7,
            },
            clock_ms: 5,
            horizon_ms: 0,
            keys: 2,
            hash: 99,
        };
        b.put_cf(db.cf(CF_META), META_SM, encode(&meta));
        let dedup = DedupV1Out {
            ts_ms: 5,
            config_id: 1,
            index: 6,
            existed: true,
        };
        b.put_cf(
            db.cf(CF_DEDUP),
            super::super::dedup_key(3, 1),
            encode(&dedup),
        );
        db.write_synced(b).unwrap();

        let m = load_meta(&db).unwrap();
        assert_eq!(m.revision, 1);
        assert_eq!((m.keys, m.hash, m.applied.index), (2, 99, 7));
        let rec = KvRecord::decode(&db.get(CF_KV, b"b").unwrap().unwrap()).unwrap();
        assert_eq!(
            rec,
            KvRecord {
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                value: b"22".to_vec(),
                lease: 0,
            }
        );
        let d: DedupRecord = decode(
            &db.get(CF_DEDUP, &super::super::dedup_key(3, 1))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(d.outcome.index, 6);
        assert_eq!(d.outcome.revision, 1);
        // Opened again: format 3, nothing rewritten.
        assert_eq!(load_meta(&db).unwrap(), m);
        let again = KvRecord::decode(&db.get(CF_KV, b"a").unwrap().unwrap()).unwrap();
        assert_eq!(again.value, b"1");
    }

    /// Records and history events encode exactly as before their byte fields became
    /// `serde_bytes` (plain `Vec<u8>` sequences), both ways: stores written before still open.
    #[test]
    fn records_and_events_encode_as_before_byte_strings() {
        use super::super::history::{Event, EventKind};
        #[derive(Serialize, Deserialize)]
        struct KvRecordPlain {
            create_revision: u64,
            mod_revision: u64,
            version: u64,
            value: Vec<u8>,
            lease: u64,
        }
        #[derive(Serialize, Deserialize)]
        struct EventPlain {
            kind: EventKind,
            key: Vec<u8>,
            value: Vec<u8>,
            revision: u64,
            create_revision: u64,
            version: u64,
            prev_value: Option<Vec<u8>>,
        }
        let value: Vec<u8> = (0..=255u8).collect();
        let rec = KvRecord {
            create_revision: 3,
            mod_revision: 300,
            version: 2,
            value: value.clone(),
            lease: 1 << 40,
        };
        let plain = KvRecordPlain {
            create_revision: 3,
            mod_revision: 300,
            version: 2,
            value: value.clone(),
            lease: 1 << 40,
        };
        assert_eq!(encode(&rec), encode(&plain));
        assert_eq!(KvRecord::decode(&encode(&plain)).unwrap(), rec);
        for prev_value in [None, Some(Vec::new()), Some(b"old".to_vec())] {
            let e = Event {
                kind: EventKind::Put,
                key: b"bench-1".to_vec(),
                value: value.clone(),
                revision: 9,
                create_revision: 2,
                version: 4,
                prev_value: prev_value.clone(),
            };
            let p = EventPlain {
                kind: EventKind::Put,
                key: b"bench-1".to_vec(),
                value: value.clone(),
                revision: 9,
                create_revision: 2,
                version: 4,
                prev_value,
            };
            assert_eq!(encode(&e), encode(&p));
            assert_eq!(decode::<Event>(&encode(&p)).unwrap(), e);
        }
    }

    /// A store written before leases opens with every key unleased, counters kept.
    #[test]
    fn a_format_2_store_is_upgraded_once() {
        #[derive(Serialize)]
        struct KvRecordV2Out {
            create_revision: u64,
            mod_revision: u64,
            version: u64,
            value: Vec<u8>,
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        let old = KvRecordV2Out {
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            value: b"v".to_vec(),
        };
        b.put_cf(db.cf(CF_KV), b"a", encode(&old));
        let meta = SmMeta {
            revision: 5,
            keys: 1,
            ..SmMeta::default()
        };
        b.put_cf(db.cf(CF_META), META_SM, encode(&meta));
        b.put_cf(db.cf(CF_META), META_FORMAT, encode(&2u32));
        db.write_synced(b).unwrap();
        assert_eq!(load_meta(&db).unwrap(), meta);
        let rec = KvRecord::decode(&db.get(CF_KV, b"a").unwrap().unwrap()).unwrap();
        assert_eq!(
            (
                rec.create_revision,
                rec.mod_revision,
                rec.version,
                rec.lease
            ),
            (3, 5, 2, 0)
        );
        assert_eq!(load_meta(&db).unwrap(), meta);
    }

    #[test]
    fn a_fresh_store_starts_at_revision_0_and_an_unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(load_meta(&db).unwrap().revision, 0);
        let mut b = WriteBatch::default();
        b.put_cf(db.cf(CF_META), META_FORMAT, encode(&4u32));
        db.write_synced(b).unwrap();
        let e = load_meta(&db).unwrap_err().to_string();
        assert!(e.contains("format 4"), "{e}");
    }
}
