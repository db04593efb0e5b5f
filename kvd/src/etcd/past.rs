//! A range as it stood at a past revision (etcd's `Range` with `revision`, `etcdctl get
//! --rev`), rebuilt from the range's keys now and the replica's stored change history: a key
//! no event changed after the revision is as it is now; a key changed after it is as its
//! last event up to the revision left it (absent after a delete), or absent when its first
//! event after the revision created it. Anything else (its last change before the revision
//! is older than the history) cannot be rebuilt, and the read is etcd's `compacted`, as is a
//! revision the history does not reach back to. Events carry no lease: a key changed after
//! the revision shows lease 0 at it.

use crate::command::KeyRange;
use crate::state_machine::history::{self, HistoryRead};
use crate::state_machine::{Event, EventKind, KeyValue};
use crate::storage::{Db, StoreError};
use std::collections::BTreeMap;

/// Events read from the history at a time.
const CHUNK: usize = 1000;

/// Why a range cannot be read at the revision asked.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReadable {
    /// The history does not hold what the range held then (etcd's `compacted`).
    Compacted,
    /// The history has not caught up with the state read (its batch is not stored yet).
    Behind,
}

/// What the history says of one key of the range.
#[derive(Default)]
struct Touched {
    /// Its last event at or before the revision.
    before: Option<Event>,
    /// Whether an event changed it after the revision, and the first such event.
    after: Option<Event>,
}

/// Folds history events into the range's keys at revision `at`.
pub struct PastRange {
    range: KeyRange,
    at: u64,
    keys: BTreeMap<Vec<u8>, Touched>,
}

impl PastRange {
    pub fn new(range: KeyRange, at: u64) -> PastRange {
        PastRange {
            range,
            at,
            keys: BTreeMap::new(),
        }
    }

    /// Takes `events` (in revision order) up to revision `upto`.
    pub fn add(&mut self, events: &[Event], upto: u64) {
        for e in events
            .iter()
            .filter(|e| e.revision <= upto && self.range.contains(&e.key))
        {
            let t = self.keys.entry(e.key.clone()).or_default();
            if e.revision <= self.at {
                t.before = Some(e.clone());
            } else if t.after.is_none() {
                t.after = Some(e.clone());
            }
        }
    }

    /// The range's keys at the revision, in key order, from `now` (every key of the range at
    /// the revision the events were taken up to, in key order).
    pub fn finish(self, now: Vec<KeyValue>) -> Result<Vec<KeyValue>, NotReadable> {
        let mut out: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        for kv in now {
            match self.keys.get(&kv.key) {
                Some(Touched { after: Some(_), .. }) => {}
                // Changed after the revision, yet no event says so.
                _ if kv.mod_revision > self.at => return Err(NotReadable::Behind),
                _ => {
                    out.insert(kv.key.clone(), kv);
                }
            }
        }
        for (key, t) in self.keys {
            let Some(after) = t.after else {
                continue;
            };
            match (t.before, after) {
                (Some(e), _) if e.kind == EventKind::Delete => {}
                (Some(e), _) => {
                    out.insert(
                        key,
                        KeyValue {
                            key: e.key,
                            value: e.value,
                            create_revision: e.create_revision,
                            mod_revision: e.revision,
                            version: e.version,
                            lease: 0,
                        },
                    );
                }
                (None, e) if e.kind == EventKind::Put && e.version == 1 => {}
                (None, _) => return Err(NotReadable::Compacted),
            }
        }
        Ok(out.into_values().collect())
    }
}

/// The range's keys at revision `at`, given `now`: every key of the range at revision
/// `now_revision` (>= `at`), in key order. Reads the whole stored history (bounded by
/// `--history-events`/`--history-bytes`), a chunk at a time.
pub fn read_at(
    db: &Db,
    range: KeyRange,
    at: u64,
    now: Vec<KeyValue>,
    now_revision: u64,
) -> Result<Result<Vec<KeyValue>, NotReadable>, StoreError> {
    if at >= now_revision {
        return Ok(Ok(now));
    }
    // The oldest revision kept (a read from 0 is always below it).
    let first = match history::read(db, 0, 0)? {
        HistoryRead::Compacted { first } => first,
        HistoryRead::Events { .. } => 0,
    };
    // Below the compact revision (etcd's `Compact`) nothing is served, though the history
    // (which keeps the compact revision's own events, for watches from it) could rebuild
    // the revision just below it.
    if at.saturating_add(1) < first || at < crate::state_machine::load_compacted(db)? {
        return Ok(Err(NotReadable::Compacted));
    }
    let mut past = PastRange::new(range, at);
    let mut from = first;
    loop {
        match history::read(db, from, CHUNK)? {
            // Trimmed while we read: what the range held may be gone with it.
            HistoryRead::Compacted { .. } => return Ok(Err(NotReadable::Compacted)),
            HistoryRead::Events { events, through } => {
                past.add(&events, now_revision);
                if through >= now_revision {
                    break;
                }
                match events.last() {
                    Some(last) if events.len() >= CHUNK => from = last.revision + 1,
                    _ => return Ok(Err(NotReadable::Behind)),
                }
            }
        }
    }
    Ok(past.finish(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: u64, key: &str, value: &str, create: u64, version: u64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            revision: rev,
            create_revision: create,
            version,
            prev_value: None,
        }
    }

    fn del(rev: u64, key: &str) -> Event {
        Event {
            kind: EventKind::Delete,
            key: key.into(),
            value: Vec::new(),
            revision: rev,
            create_revision: 0,
            version: 0,
            prev_value: None,
        }
    }

    fn kv(key: &str, value: &str, create: u64, modr: u64, version: u64, lease: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease,
        }
    }

    /// History: 1 put a, 2 put b, 3 put a, 4 del b, 5 put c, 6 put a, 7 put z (outside).
    fn history() -> Vec<Event> {
        vec![
            put(1, "a", "a1", 1, 1),
            put(2, "b", "b1", 2, 1),
            put(3, "a", "a2", 1, 2),
            del(4, "b"),
            put(5, "c", "c1", 5, 1),
            put(6, "a", "a3", 1, 3),
            put(7, "z", "z1", 7, 1),
        ]
    }

    fn now() -> Vec<KeyValue> {
        vec![kv("a", "a3", 1, 6, 3, 9), kv("c", "c1", 5, 5, 1, 0)]
    }

    fn at(rev: u64, events: &[Event]) -> Result<Vec<KeyValue>, NotReadable> {
        let mut past = PastRange::new(KeyRange::prefix(b""), rev);
        past.add(events, 7);
        let now = now()
            .into_iter()
            .chain([kv("z", "z1", 7, 7, 1, 0)])
            .collect();
        past.finish(now)
    }

    #[test]
    fn a_range_reads_as_it_stood_at_each_revision() {
        let h = history();
        assert_eq!(at(0, &h).unwrap(), vec![]);
        assert_eq!(
            at(2, &h).unwrap(),
            vec![kv("a", "a1", 1, 1, 1, 0), kv("b", "b1", 2, 2, 1, 0)]
        );
        assert_eq!(
            at(3, &h).unwrap(),
            vec![kv("a", "a2", 1, 3, 2, 0), kv("b", "b1", 2, 2, 1, 0)]
        );
        assert_eq!(at(4, &h).unwrap(), vec![kv("a", "a2", 1, 3, 2, 0)]);
        // c is unchanged since 5: as it is now.
        assert_eq!(
            at(5, &h).unwrap(),
            vec![kv("a", "a2", 1, 3, 2, 0), kv("c", "c1", 5, 5, 1, 0)]
        );
        // At the current revision everything is as now, the lease included.
        let mut all = now();
        all.push(kv("z", "z1", 7, 7, 1, 0));
        assert_eq!(at(7, &h).unwrap(), all);
    }

    #[test]
    fn what_the_history_cannot_rebuild_is_compacted_and_a_lagging_one_behind() {
        // The history starts at 4: a's value at 3 came from revision 3, not kept.
        let trimmed: Vec<Event> = history().into_iter().filter(|e| e.revision >= 4).collect();
        assert_eq!(at(3, &trimmed), Err(NotReadable::Compacted));
        // c was created after 4 by its first event: absent at 4, which reads without a.
        let mut past = PastRange::new(KeyRange::Key(b"c".to_vec()), 4);
        past.add(&trimmed, 7);
        assert_eq!(past.finish(vec![kv("c", "c1", 5, 5, 1, 0)]), Ok(vec![]));
        // A key changed after the revision whose event is not there yet.
        let mut past = PastRange::new(KeyRange::prefix(b""), 5);
        past.add(&history()[..5], 5);
        assert_eq!(past.finish(now()), Err(NotReadable::Behind));
    }
}
