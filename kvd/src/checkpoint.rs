//! Streamed, checksummed checkpoints: the state-machine state (every column family of
//! `storage::STATE_CFS`, with the position and revision in `meta/sm`; not the change history,
//! which starts again after the checkpoint) sent to a replica that must catch up past entries
//! no peer still holds. `StateView` is the one reading of that state from a RocksDB snapshot,
//! shared with backups (`backup.rs`).
//!
//! Sender: a RocksDB snapshot read in chunks of at most `CHUNK_BYTES` into a `ChunkSink`
//! (kvd runs it on its own thread, the simulator inline).
//! Receiver: chunks are staged in the `stage` column family (bounded memory); once the
//! CRC and chunk count check out, a persisted `installing` marker is written and the staged
//! state replaces the live one in bounded batches. A crash mid-switch resumes from the marker
//! at start-up, so the switch is all-or-nothing as seen from outside.

use crate::codec::{decode, encode};
use crate::frame::{crc_items, CheckpointItem, PeerFrame};
use crate::state_machine::SmMeta;
use crate::storage::{Db, StoreError, CF_META, CF_STAGE, KEYS_END, STATE_CFS};
use rocksdb::{IteratorMode, WriteBatch};
use tracing::{info, warn};

/// Largest chunk payload, in bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;
const META_INSTALLING: &[u8] = b"checkpoint_installing";

/// Why the state cannot be read as one consistent view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("a checkpoint is being switched in: the state is incomplete until it is")]
    Installing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The replicated state as of one RocksDB snapshot: every record of every state column
/// family and the state-machine meta that describes exactly them (one apply batch writes
/// both). Never a state half switched in by a checkpoint install: `open` refuses it.
pub struct StateView<'a> {
    db: &'a Db,
    snap: rocksdb::Snapshot<'a>,
    pub meta: SmMeta,
}

impl<'a> StateView<'a> {
    /// Takes the snapshot. Cheap: it pins the current state; writes go on meanwhile.
    pub fn open(db: &'a Db) -> Result<StateView<'a>, ViewError> {
        let snap = db.raw().snapshot();
        let get = |key: &[u8]| snap.get_cf(db.cf(CF_META), key).map_err(StoreError::from);
        if get(META_INSTALLING)?.is_some() {
            return Err(ViewError::Installing);
        }
        let meta = match get(b"sm")? {
            Some(b) => decode(&b).map_err(|e| StoreError::Corrupt {
                what: "state machine meta",
                detail: e.to_string(),
            })?,
            None => SmMeta::default(),
        };
        Ok(StateView { db, snap, meta })
    }

    /// A `meta` record as of the snapshot.
    pub fn meta_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(self.db.cf(CF_META), key)?)
    }

    /// Every record of every state column family: `STATE_CFS` in order, each in key order;
    /// an item's `cf` is its family's index there.
    pub fn items(&self) -> impl Iterator<Item = Result<CheckpointItem, StoreError>> + '_ {
        STATE_CFS.iter().enumerate().flat_map(move |(i, name)| {
            self.snap
                .iterator_cf(self.db.cf(name), IteratorMode::Start)
                .map(move |r| {
                    let (key, value) = r?;
                    Ok(CheckpointItem {
                        cf: i as u8,
                        key: key.into_vec(),
                        value: value.into_vec(),
                    })
                })
        })
    }
}

/// Where a checkpoint stream's frames go: a peer session (kvd) or the simulated network.
pub trait ChunkSink {
    /// Queues a frame, waiting for room if need be (bounded memory). False: the peer is
    /// gone; the stream stops.
    fn send_bulk(&self, frame: PeerFrame) -> bool;

    /// False once the stream is no longer wanted (the peer asked for a newer one).
    fn wanted(&self) -> bool {
        true
    }
}

/// Streams `db`'s state to peer `to` through `sink` as checkpoint `id`, in chunks of about
/// `chunk_bytes` (at most `CHUNK_BYTES` for kvd's frames), from one RocksDB snapshot.
pub fn stream(db: &Db, sink: &impl ChunkSink, to: u64, id: u64, chunk_bytes: usize) {
    let view = match StateView::open(db) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, peer = to, "checkpoint: cannot read the state");
            return;
        }
    };
    let meta = view.meta;
    let mut crc = crc32fast::Hasher::new();
    let mut seq = 0u64;
    let mut items = Vec::new();
    let mut size = 0usize;
    let started = std::time::Instant::now();
    let mut flush = |items: &mut Vec<CheckpointItem>, size: &mut usize, seq: &mut u64| -> bool {
        if items.is_empty() {
            return true;
        }
        if !sink.wanted() {
            return false;
        }
        crc_items(&mut crc, items);
        let chunk = PeerFrame::CheckpointChunk {
            id,
            seq: *seq,
            items: std::mem::take(items),
        };
        *seq += 1;
        *size = 0;
        sink.send_bulk(chunk)
    };
    for item in view.items() {
        let Ok(item) = item else {
            warn!("checkpoint: read error; aborting stream");
            return;
        };
        size += item.key.len() + item.value.len() + 16;
        items.push(item);
        if size >= chunk_bytes && !flush(&mut items, &mut size, &mut seq) {
            warn!(
                peer = to,
                "checkpoint stream stopped (link closed or superseded)"
            );
            return;
        }
    }
    if !flush(&mut items, &mut size, &mut seq) {
        return;
    }
    let crc = crc.finalize();
    sink.send_bulk(PeerFrame::CheckpointDone {
        id,
        chunks: seq,
        crc,
        meta,
    });
    info!(
        peer = to,
        chunks = seq,
        keys = meta.keys,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint sent"
    );
}

fn stage_key(kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(kind);
    k.extend_from_slice(key);
    k
}

/// Receiving side of one checkpoint.
pub struct Receiver {
    pub from: u64,
    pub id: u64,
    next_seq: u64,
    crc: crc32fast::Hasher,
    pub bytes: u64,
    pub items: u64,
}

/// Why a received checkpoint was thrown away.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("chunk {got} out of order (expected {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("checksum or chunk count mismatch")]
    Corrupt,
    #[error("item of unknown column family #{0}")]
    UnknownFamily(u8),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Receiver {
    /// Starts receiving checkpoint `id` from `from`, clearing any earlier staged state.
    pub fn start(db: &Db, from: u64, id: u64) -> Result<Receiver, StoreError> {
        clear_stage(db)?;
        Ok(Receiver {
            from,
            id,
            next_seq: 0,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            items: 0,
        })
    }

    /// Stages one chunk (unsynced: the stage is only trusted once complete and synced).
    pub fn chunk(
        &mut self,
        db: &Db,
        seq: u64,
        items: &[CheckpointItem],
    ) -> Result<(), CheckpointError> {
        if seq != self.next_seq {
            return Err(CheckpointError::OutOfOrder {
                expected: self.next_seq,
                got: seq,
            });
        }
        if let Some(bad) = items.iter().find(|i| usize::from(i.cf) >= STATE_CFS.len()) {
            return Err(CheckpointError::UnknownFamily(bad.cf));
        }
        crc_items(&mut self.crc, items);
        let mut batch = WriteBatch::default();
        let cf = db.cf(CF_STAGE);
        for item in items {
            // Staged under its family's index: one byte before the key.
            let k = stage_key(item.cf, &item.key);
            self.bytes += (k.len() + item.value.len()) as u64;
            self.items += 1;
            batch.put_cf(cf, k, &item.value);
        }
        db.write(batch)?;
        self.next_seq += 1;
        Ok(())
    }

    /// Verifies the stream and switches the staged state in. Returns the installed meta.
    pub fn finish(
        self,
        db: &Db,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    ) -> Result<SmMeta, CheckpointError> {
        if chunks != self.next_seq || crc != self.crc.finalize() {
            clear_stage(db)?;
            return Err(CheckpointError::Corrupt);
        }
        // Stage complete and verified: make it durable, then record that we are switching.
        db.sync()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf(CF_META), META_INSTALLING, encode(&meta));
        db.write_synced(batch)?;
        switch_in(db, meta)?;
        Ok(meta)
    }
}

fn clear_stage(db: &Db) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(db.cf(CF_STAGE), [].as_slice(), KEYS_END.as_slice());
    db.write(batch)
}

/// Replaces the live state (every state column family) with the staged one, in bounded
/// batches, and writes the new state-machine meta last. Idempotent: safe to re-run after a
/// crash.
fn switch_in(db: &Db, meta: SmMeta) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    for name in STATE_CFS {
        batch.delete_range_cf(db.cf(name), [].as_slice(), KEYS_END.as_slice());
    }
    db.write(batch)?;
    let mut batch = WriteBatch::default();
    let mut size = 0usize;
    for item in db.raw().iterator_cf(db.cf(CF_STAGE), IteratorMode::Start) {
        let (k, v) = item?;
        // Only known families were staged (`chunk` checks).
        let Some((name, key)) = k
            .split_first()
            .and_then(|(&i, key)| Some((STATE_CFS.get(usize::from(i))?, key)))
        else {
            continue;
        };
        batch.put_cf(db.cf(name), key, &v);
        size += k.len() + v.len();
        if size >= CHUNK_BYTES * 4 {
            db.write(std::mem::take(&mut batch))?;
            size = 0;
        }
    }
    db.write(batch)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(CF_META), b"sm", encode(&meta));
    // The history before the checkpoint's revision is not ours: it starts after it.
    crate::state_machine::history::reset(db, meta.revision, &mut batch);
    batch.delete_cf(db.cf(CF_META), META_INSTALLING);
    db.write(batch)?;
    clear_stage(db)?;
    db.sync()?;
    info!(
        config_id = meta.applied.config_id,
        index = meta.applied.index,
        keys = meta.keys,
        "checkpoint installed"
    );
    Ok(())
}

/// At start-up: finishes a switch interrupted by a crash.
pub fn resume_interrupted_install(db: &Db) -> Result<(), StoreError> {
    if let Some(b) = db.get(CF_META, META_INSTALLING)? {
        let meta: SmMeta = decode(&b).map_err(|e| StoreError::Corrupt {
            what: "checkpoint marker",
            detail: e.to_string(),
        })?;
        warn!("resuming a checkpoint install interrupted by a crash");
        switch_in(db, meta)?;
    }
    Ok(())
}
