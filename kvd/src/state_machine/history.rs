//! The change history behind watch: every applied put and delete as an event, stored in the
//! `history` column family under `revision (u64 BE) ++ n (u32 BE)`, written in the same batch
//! as the data it describes, and trimmed (whole revisions, oldest first) to this replica's
//! limits and, by etcd's `Compact`, below the compact revision (`raise_floor`). History is local, not replicated state: each replica keeps what it applied,
//! from `first` on. A replica that installed a checkpoint holds history from the
//! checkpoint's revision + 1 on.

use crate::codec::{decode, encode};
use crate::storage::{Db, StoreError, CF_HISTORY, CF_META};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

const META_HISTORY: &[u8] = b"history";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// Keys and values as bytes, not sequences of `u8`: the same bincode, one copy
    /// (wire/src/command.rs).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The new value (empty for a delete).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision of the write (the key's mod revision after a put).
    pub revision: u64,
    /// The key's create revision after a put (0 for a delete).
    pub create_revision: u64,
    /// The key's version after a put (0 for a delete).
    pub version: u64,
    /// The value before the change, if the key existed.
    #[serde(with = "serde_bytes")]
    pub prev_value: Option<Vec<u8>>,
}

/// How much history a replica keeps (kvd `--history-events`, `--history-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events: u64,
    pub max_bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What the history holds: revisions `[first, ...)`, and its size (events, and their stored
/// keys and values in bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMeta {
    /// The oldest revision whose events are all kept; a watch from below is `compacted`.
    pub first: u64,
    pub events: u64,
    pub bytes: u64,
}

fn event_key(revision: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&revision.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// The stored history meta, or a history starting after `revision` when there is none.
pub fn load_meta(db: &Db, revision: u64) -> Result<HistoryMeta, StoreError> {
    match db.get(CF_META, META_HISTORY)? {
        Some(b) => decode(&b).map_err(|e| corrupt("history meta", e)),
        None => Ok(HistoryMeta {
            first: revision + 1,
            ..HistoryMeta::default()
        }),
    }
}

/// Adds `events` (one applied batch, in order) to `batch`, then trims the stored history to
/// `limits` (never the events of this batch). Updates `meta` and writes it in `batch`; a batch
/// without events changes nothing.
pub fn append(
    db: &Db,
    meta: &mut HistoryMeta,
    limits: HistoryLimits,
    events: &[Event],
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let cf = db.cf(CF_HISTORY);
    let mut n = 0u32;
    let mut last = None;
    for e in events {
        if last != Some(e.revision) {
            n = 0;
            last = Some(e.revision);
        }
        let (key, value) = (event_key(e.revision, n), encode(e));
        n += 1;
        meta.events += 1;
        meta.bytes += (key.len() + value.len()) as u64;
        batch.put_cf(cf, key, value);
    }
    if meta.events > limits.max_events || meta.bytes > limits.max_bytes {
        trim(db, meta, limits, events, batch)?;
    }
    batch.put_cf(db.cf(CF_META), META_HISTORY, encode(meta));
    Ok(())
}

/// Drops the oldest stored revisions until the history is within 90% of its limits (so a
/// trim is not needed after every batch).
fn trim(
    db: &Db,
    meta: &mut HistoryMeta,
    limits: HistoryLimits,
    events: &[Event],
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    let target_events = limits.max_events / 10 * 9;
    let target_bytes = limits.max_bytes / 10 * 9;
    let protected = events.first().map_or(u64::MAX, |e| e.revision);
    let mut cut = meta.first;
    let mut pending: Option<(u64, u64, u64)> = None; // (revision, events, bytes) of one revision
    for item in db.raw().iterator_cf(db.cf(CF_HISTORY), IteratorMode::Start) {
        let (k, v) = item?;
        let revision = k
            .get(..8)
            .and_then(|r| r.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt("history key", format!("{} bytes", k.len())))?;
        let size = (k.len() + v.len()) as u64;
        if revision >= protected {
            break;
        }
        match &mut pending {
            Some((rev, n, b)) if *rev == revision => {
                *n += 1;
                *b += size;
            }
            _ => {
                if let Some((rev, n, b)) = pending.take() {
                    meta.events = meta.events.saturating_sub(n);
                    meta.bytes = meta.bytes.saturating_sub(b);
                    cut = rev + 1;
                    if meta.events <= target_events && meta.bytes <= target_bytes {
                        break;
                    }
                }
                pending = Some((revision, 1, size));
            }
        }
    }
    if let Some((rev, n, b)) = pending {
        if meta.events > target_events || meta.bytes > target_bytes {
            meta.events = meta.events.saturating_sub(n);
            meta.bytes = meta.bytes.saturating_sub(b);
            cut = rev + 1;
        }
    }
    if cut > meta.first {
        batch.delete_range_cf(db.cf(CF_HISTORY), event_key(0, 0), event_key(cut, 0));
        meta.first = cut;
    }
    Ok(())
}

/// Raises the history's floor to `floor` (the compact revision): drops the events of every
/// revision below it, stored or in `events` (this batch's, already added by `append`), and
/// writes the meta in `batch`. Nothing when the history already starts at or above it.
pub fn raise_floor(
    db: &Db,
    meta: &mut HistoryMeta,
    floor: u64,
    events: &[Event],
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    if floor <= meta.first {
        return Ok(());
    }
    let (mut gone_events, mut gone_bytes) = (0u64, 0u64);
    // Stored events: the history holds none below `meta.first` (trimmed in this batch or
    // before), so those from it up to the floor are the ones counted in `meta`.
    let start = event_key(meta.first, 0);
    let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
    for item in db.raw().iterator_cf(db.cf(CF_HISTORY), mode) {
        let (k, v) = item?;
        if k.as_ref() >= event_key(floor, 0).as_slice() {
            break;
        }
        gone_events += 1;
        gone_bytes += (k.len() + v.len()) as u64;
    }
    // This batch's events below the floor, sized as `append` sized them.
    for e in events.iter().filter(|e| e.revision < floor) {
        gone_events += 1;
        gone_bytes += (12 + encode(e).len()) as u64;
    }
    meta.events = meta.events.saturating_sub(gone_events);
    meta.bytes = meta.bytes.saturating_sub(gone_bytes);
    meta.first = floor;
    // After this batch's puts in the batch: it removes them too.
    batch.delete_range_cf(db.cf(CF_HISTORY), event_key(0, 0), event_key(floor, 0));
    batch.put_cf(db.cf(CF_META), META_HISTORY, encode(meta));
    Ok(())
}

/// Empties the history: it starts again after `revision` (a checkpoint was installed).
pub fn reset(db: &Db, revision: u64, batch: &mut WriteBatch) -> HistoryMeta {
    batch.delete_range_cf(
        db.cf(CF_HISTORY),
        event_key(0, 0),
        event_key(u64::MAX, u32::MAX),
    );
    let meta = HistoryMeta {
        first: revision + 1,
        ..HistoryMeta::default()
    };
    batch.put_cf(db.cf(CF_META), META_HISTORY, encode(&meta));
    meta
}

/// What a read of the history found.
pub enum HistoryRead {
    /// Events from the asked revision on (whole revisions, at least `max` events unless the
    /// history ended), and the last revision the read covered (the store's revision then).
    Events { events: Vec<Event>, through: u64 },
    /// The asked revision is older than the oldest kept: `first` is the oldest there is.
    Compacted { first: u64 },
}

/// Reads events of revisions `from..` from one consistent snapshot of the store.
pub fn read(db: &Db, from: u64, max: usize) -> Result<HistoryRead, StoreError> {
    let snap = db.raw().snapshot();
    let meta: HistoryMeta = match snap.get_cf(db.cf(CF_META), META_HISTORY)? {
        Some(b) => decode(&b).map_err(|e| corrupt("history meta", e))?,
        None => HistoryMeta {
            first: 1,
            ..HistoryMeta::default()
        },
    };
    let revision = match snap.get_cf(db.cf(CF_META), super::record::META_SM)? {
        Some(b) => {
            decode::<omnikv_wire::state::SmMeta>(&b)
                .map_err(|e| corrupt("state machine meta", e))?
                .revision
        }
        None => 0,
    };
    if from < meta.first {
        return Ok(HistoryRead::Compacted { first: meta.first });
    }
    let mut events: Vec<Event> = Vec::new();
    let start = event_key(from, 0);
    let it = snap.iterator_cf(
        db.cf(CF_HISTORY),
        IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    for item in it {
        let (_, v) = item?;
        let e: Event = decode(&v).map_err(|e| corrupt("history event", e))?;
        if events.len() >= max && events.last().is_some_and(|l| l.revision != e.revision) {
            // Stop at a revision boundary: the read covers every revision before this one.
            let through = events.last().map_or(revision, |l| l.revision);
            return Ok(HistoryRead::Events { events, through });
        }
        events.push(e);
    }
    Ok(HistoryRead::Events {
        events,
        through: revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: b"v".to_vec(),
            revision,
            create_revision: revision,
            version: 1,
            prev_value: None,
        }
    }

    fn commit(db: &Db, meta: &mut HistoryMeta, limits: HistoryLimits, events: &[Event]) {
        let mut batch = WriteBatch::default();
        append(db, meta, limits, events, &mut batch).unwrap();
        db.write(batch).unwrap();
    }

    fn revisions(read: HistoryRead) -> Vec<u64> {
        match read {
            HistoryRead::Events { events, .. } => events.iter().map(|e| e.revision).collect(),
            HistoryRead::Compacted { first } => panic!("compacted at {first}"),
        }
    }

    /// Trimming drops whole revisions, oldest first, to 90% of the limit, and a read below
    /// what is kept is `Compacted` with the oldest revision there is.
    #[test]
    fn trims_whole_revisions_and_reads_from_any_kept_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let limits = HistoryLimits {
            max_events: 10,
            max_bytes: u64::MAX,
        };
        let mut meta = load_meta(&db, 0).unwrap();
        assert_eq!(meta.first, 1);
        // Revisions 1..=8, each with one event, then revision 9 with three (a transaction).
        for r in 1..=8 {
            commit(&db, &mut meta, limits, &[put(r, "k")]);
        }
        commit(
            &db,
            &mut meta,
            limits,
            &[put(9, "a"), put(9, "b"), put(9, "c")],
        );
        // 11 events > 10: trimmed to at most 9, whole revisions: 1 and 2 go.
        assert_eq!((meta.first, meta.events), (3, 9));
        assert_eq!(
            revisions(read(&db, 3, 100).unwrap()),
            [3, 4, 5, 6, 7, 8, 9, 9, 9]
        );
        assert!(matches!(
            read(&db, 2, 100).unwrap(),
            HistoryRead::Compacted { first: 3 }
        ));
        // A chunk ends at a revision boundary: the three events of 9 stay together.
        match read(&db, 8, 2).unwrap() {
            HistoryRead::Events { events, through } => {
                assert_eq!(events.len(), 4);
                assert_eq!(
                    through, 0,
                    "no state-machine meta in this store: revision 0"
                );
            }
            HistoryRead::Compacted { .. } => panic!(),
        }
        match read(&db, 5, 1).unwrap() {
            HistoryRead::Events { events, through } => {
                assert_eq!((events.len(), through), (1, 5));
            }
            HistoryRead::Compacted { .. } => panic!(),
        }
        // The meta survives a reopen; a reset starts after the checkpoint's revision.
        assert_eq!(load_meta(&db, 0).unwrap(), meta);
        let mut batch = WriteBatch::default();
        let reset_meta = reset(&db, 40, &mut batch);
        db.write(batch).unwrap();
        assert_eq!(reset_meta.first, 41);
        assert!(matches!(
            read(&db, 9, 100).unwrap(),
            HistoryRead::Compacted { first: 41 }
        ));
        assert!(revisions(read(&db, 41, 100).unwrap()).is_empty());
    }
}
