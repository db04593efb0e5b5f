//! Streamed, checksummed, resumable checkpoints: the state-machine state (every column family
//! of `storage::STATE_CFS`, with the position and revision in `meta/sm`; not the change
//! history, which starts again after the checkpoint) sent to a replica that must catch up past
//! entries no peer still holds. `StateView` is the one reading of that state, from a RocksDB
//! snapshot or from a frozen on-disk copy, shared with backups (`backup.rs`).
//!
//! Sender: a RocksDB checkpoint (hard links, `checkpoints-out/<peer>-<id>` in the data dir)
//! frozen when the stream starts, read in chunks of at most `CHUNK_BYTES` into a `ChunkSink`
//! with at most `WINDOW` chunks beyond the receiver's last acknowledgement (kvd runs it on its
//! own thread, the simulator inline). It outlives a crash of either side, so a stream resumes
//! from the same state; it is removed once the receiver acknowledges the install, or when the
//! peer asks for a new checkpoint.
//! Receiver: each chunk becomes table files of its own (one per state family it holds, made
//! with RocksDB's `SstFileWriter` and synced) in `checkpoints-in/<id>` in the data dir, off
//! the consensus loop (`Installer`: a thread in kvd, inline in the simulator); the progress
//! record (`checkpoint_receiving` in `meta`: offsets, CRC, state hash so far) follows each
//! chunk, made durable by the loop's group commit, so a crash can only make a resumption
//! start earlier. The live state is not written meanwhile: the loop's WAL, memtables and
//! compactions carry none of the chunks.
//! The last step checks the chunk count, CRC, key count and state hash, then switches the
//! state behind a synced `checkpoint_switching` marker: the old state families are emptied
//! (one range deletion, flushed, its files dropped) and the staged files ingested (links, no
//! copy; into the bottom level, so no write stall), then one small batch writes the new
//! state-machine meta and removes both records. A crash during the switch is finished at
//! start-up (`resume_interrupted_install`). While either record exists the state is treated
//! as incomplete: `StateView::open` refuses it and the loop serves nothing from it.

use crate::codec::{decode, encode};
use crate::frame::{crc_items, CheckpointItem, PeerFrame};
use crate::state_machine::{pair_hash, DedupLimits, HistoryLimits, KvRecord, SmMeta, StateMachine};
use crate::storage::{Db, StoreError, CF_META, CF_STAGE, KEYS_END, STATE_CFS};
use rocksdb::{
    BottommostLevelCompaction, CompactOptions, Direction, IngestExternalFileOptions, IteratorMode,
    ReadOptions, SstFileWriter, WriteBatch, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tracing::{info, warn};

/// Largest chunk payload, in bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks a sender may have sent beyond the receiver's last acknowledged one: what a
/// transfer holds in memory on either side (queues, inbox, installer) is about this many
/// chunks.
pub const WINDOW: u64 = 4;
/// Marker of the earlier install scheme (staged, then switched in); only read at start-up to
/// finish a switch interrupted by a crash of an older kvd.
const META_INSTALLING: &[u8] = b"checkpoint_installing";
/// The receiving side's persisted progress (`Progress`): present from the first chunk until
/// the install completes.
pub const META_RECEIVING: &[u8] = b"checkpoint_receiving";
/// Marker of a switch under way (`Switch`): the staged state replacing the live one. Written
/// (synced) before the live state families are touched, removed with the progress record.
pub const META_SWITCHING: &[u8] = b"checkpoint_switching";
/// Where outgoing checkpoints are frozen, in the data dir.
const OUT_DIR: &str = "checkpoints-out";
/// Where incoming chunks are staged as table files, in the data dir (`checkpoints-in/<id>`).
const IN_DIR: &str = "checkpoints-in";

/// Why the state cannot be read as one consistent view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("a checkpoint is being installed: the state is incomplete until it is")]
    Installing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a view reads from: the live store at a snapshot, or a frozen copy.
enum Source<'a> {
    Live(&'a Db, rocksdb::Snapshot<'a>),
    Frozen(&'a DB),
}

/// The replicated state as of one point: every record of every state column family and the
/// state-machine meta that describes exactly them (one apply batch writes both). Never a
/// state half replaced by a checkpoint install: `open` refuses it.
pub struct StateView<'a> {
    src: Source<'a>,
    pub meta: SmMeta,
}

fn installing(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<bool, StoreError> {
    Ok(get(META_INSTALLING)?.is_some()
        || get(META_RECEIVING)?.is_some()
        || get(META_SWITCHING)?.is_some())
}

fn decode_meta(b: Option<Vec<u8>>) -> Result<SmMeta, StoreError> {
    match b {
        Some(b) => decode(&b).map_err(|e| StoreError::Corrupt {
            what: "state machine meta",
            detail: e.to_string(),
        }),
        None => Ok(SmMeta::default()),
    }
}

impl<'a> StateView<'a> {
    /// Takes the snapshot. Cheap: it pins the current state; writes go on meanwhile.
    pub fn open(db: &'a Db) -> Result<StateView<'a>, ViewError> {
        let snap = db.raw().snapshot();
        let get = |key: &[u8]| snap.get_cf(db.cf(CF_META), key).map_err(StoreError::from);
        if installing(get)? {
            return Err(ViewError::Installing);
        }
        let meta = decode_meta(get(b"sm")?)?;
        Ok(StateView {
            src: Source::Live(db, snap),
            meta,
        })
    }

    /// A view of a frozen copy (`Outgoing`).
    fn frozen(db: &'a DB) -> Result<StateView<'a>, ViewError> {
        let cf = db.cf_handle(CF_META).ok_or(StoreError::Corrupt {
            what: "checkpoint copy",
            detail: "no meta family".into(),
        })?;
        let get = |key: &[u8]| db.get_cf(cf, key).map_err(StoreError::from);
        if installing(get)? {
            return Err(ViewError::Installing);
        }
        let meta = decode_meta(get(b"sm")?)?;
        Ok(StateView {
            src: Source::Frozen(db),
            meta,
        })
    }

    /// A `meta` record as of the view.
    pub fn meta_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match &self.src {
            Source::Live(db, snap) => snap.get_cf(db.cf(CF_META), key)?,
            Source::Frozen(db) => match db.cf_handle(CF_META) {
                Some(cf) => db.get_cf(cf, key)?,
                None => None,
            },
        })
    }

    /// Every record of every state column family: `STATE_CFS` in order, each in key order;
    /// an item's `cf` is its family's index there.
    pub fn items(&self) -> impl Iterator<Item = Result<CheckpointItem, StoreError>> + '_ {
        self.items_after(None)
    }

    /// The records after `after` (a family index and a key; `None`: all), in the order of
    /// `items`.
    pub fn items_after(
        &self,
        after: Option<(u8, Vec<u8>)>,
    ) -> impl Iterator<Item = Result<CheckpointItem, StoreError>> + '_ {
        let start_cf = after.as_ref().map_or(0, |(cf, _)| usize::from(*cf));
        STATE_CFS
            .iter()
            .enumerate()
            .skip(start_cf)
            .flat_map(move |(i, name)| {
                let from = after
                    .as_ref()
                    .filter(|(cf, _)| usize::from(*cf) == i)
                    .map(|(_, k)| k.clone());
                let mode = match &from {
                    Some(k) => IteratorMode::From(k.as_slice(), Direction::Forward),
                    None => IteratorMode::Start,
                };
                let mut opts = ReadOptions::default();
                // A transfer reads everything once: keep the block cache for the hot set.
                opts.fill_cache(false);
                opts.set_readahead_size(2 * 1024 * 1024);
                type Kv = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;
                let iter: Box<dyn Iterator<Item = Kv> + '_> = match &self.src {
                    Source::Live(db, snap) => {
                        opts.set_snapshot(snap);
                        Box::new(db.raw().iterator_cf_opt(db.cf(name), opts, mode))
                    }
                    Source::Frozen(db) => match db.cf_handle(name) {
                        Some(cf) => Box::new(db.iterator_cf_opt(cf, opts, mode)),
                        None => Box::new(std::iter::empty()),
                    },
                };
                iter.filter(move |r| match (r, &from) {
                    (Ok((k, _)), Some(f)) => **k != **f,
                    _ => true,
                })
                .map(move |r| -> Result<CheckpointItem, StoreError> {
                    let (key, value) = r?;
                    Ok(CheckpointItem {
                        cf: i as u8,
                        key: key.into_vec(),
                        value: value.into_vec(),
                    })
                })
            })
    }

    /// About how many bytes of keys and values the state holds: the size of its table files
    /// (a frozen copy has flushed everything to them; versions not compacted away yet count
    /// too). RocksDB's `estimate-live-data-size` said a third of the real size here.
    fn estimated_bytes(&self) -> u64 {
        const PROP: &str = "rocksdb.total-sst-files-size";
        STATE_CFS
            .iter()
            .filter_map(|name| match &self.src {
                Source::Live(db, _) => db.raw().property_int_value_cf(db.cf(name), PROP).ok()?,
                Source::Frozen(db) => db.property_int_value_cf(db.cf_handle(name)?, PROP).ok()?,
            })
            .sum()
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

    /// Waits until chunk `seq` may leave: the receiver acknowledged chunk `seq - WINDOW` or
    /// a later one. False: give up (no acknowledgement for too long, or the stream is
    /// superseded). The stream's frozen copy stays, so the receiver can resume it.
    fn window_open(&self, seq: u64) -> bool {
        let _ = seq;
        true
    }
}

/// Where a stream picks up: the receiver holds the chunks before `next_seq`, whose items
/// have CRC `crc`, the last of them `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    pub next_seq: u64,
    pub crc: u32,
    pub after: Option<(u8, Vec<u8>)>,
}

/// The directory outgoing checkpoints for peer `to` are frozen in.
fn out_dir(db: &Db, to: u64, id: u64) -> PathBuf {
    db.raw()
        .path()
        .join(OUT_DIR)
        .join(format!("{to}-{id:016x}"))
}

/// Removes the frozen copies kept for peer `to` (every one when `to` is `None`), except the
/// one of stream `keep`.
pub fn remove_outgoing(db: &Db, to: Option<u64>, keep: Option<u64>) {
    let Ok(dir) = std::fs::read_dir(db.raw().path().join(OUT_DIR)) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((peer, id)) = name.split_once('-') else {
            continue;
        };
        let mine = to.is_none_or(|t| peer == t.to_string());
        let kept = keep.is_some_and(|k| id == format!("{k:016x}"));
        if mine && !kept {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!(error = %e, dir = %entry.path().display(), "cannot remove a checkpoint copy");
            }
        }
    }
}

/// A frozen copy no resumption asked for in this long is removed when another stream starts.
const KEEP_UNUSED: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the frozen copies (for any peer) last used longer than `KEEP_UNUSED` ago.
fn remove_stale(db: &Db) {
    let Ok(dir) = std::fs::read_dir(db.raw().path().join(OUT_DIR)) else {
        return;
    };
    for entry in dir.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP_UNUSED);
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Opens a frozen copy read-only (only the families a view reads).
fn open_frozen(dir: &Path) -> Result<DB, rocksdb::Error> {
    let mut names = vec![CF_META];
    names.extend(STATE_CFS);
    DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, names, false)
}

/// Freezes `db`'s state for stream `id` to `to` (a fresh stream), or finds the copy a resumed
/// one reads.
fn frozen_copy(db: &Db, to: u64, id: u64, resume: bool) -> Result<DB, String> {
    let dir = out_dir(db, to, id);
    if !resume {
        remove_outgoing(db, Some(to), None);
        remove_stale(db);
        // Refuse a state that is itself being installed.
        StateView::open(db).map_err(|e| e.to_string())?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        rocksdb::checkpoint::Checkpoint::new(db.raw())
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(|e| format!("freezing the state: {e}"))?;
    } else if !dir.exists() {
        return Err(format!("checkpoint {id:016x} is no longer kept"));
    }
    open_frozen(&dir).map_err(|e| format!("opening the frozen state: {e}"))
}

/// Streams `db`'s state to peer `to` through `sink` as checkpoint `id`, in chunks of about
/// `chunk_bytes` (at most `CHUNK_BYTES` for kvd's frames), from a frozen copy: a fresh one,
/// or (`resume`) the one an interrupted stream read, from where the receiver stopped.
pub fn stream(
    db: &Db,
    sink: &impl ChunkSink,
    to: u64,
    id: u64,
    chunk_bytes: usize,
    resume: Option<Resume>,
) {
    let frozen = match frozen_copy(db, to, id, resume.is_some()) {
        Ok(f) => f,
        Err(reason) => {
            warn!(peer = to, %reason, "checkpoint: cannot stream");
            sink.send_bulk(PeerFrame::CheckpointRefused { id, reason });
            return;
        }
    };
    let view = match StateView::frozen(&frozen) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, peer = to, "checkpoint: cannot read the frozen state");
            return;
        }
    };
    let meta = view.meta;
    let resume = resume.unwrap_or(Resume {
        next_seq: 0,
        crc: 0,
        after: None,
    });
    if !sink.send_bulk(PeerFrame::CheckpointStart {
        id,
        keys: meta.keys,
        bytes: view.estimated_bytes(),
    }) {
        return;
    }
    let mut crc = crc32fast::Hasher::new_with_initial(resume.crc);
    let mut seq = resume.next_seq;
    let first = seq;
    let mut items = Vec::new();
    let mut size = 0usize;
    let started = std::time::Instant::now();
    let mut flush = |items: &mut Vec<CheckpointItem>, size: &mut usize, seq: &mut u64| -> bool {
        if items.is_empty() {
            return true;
        }
        if !sink.wanted() || !sink.window_open(*seq) {
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
    for item in view.items_after(resume.after.clone()) {
        let Ok(item) = item else {
            warn!("checkpoint: read error; aborting stream");
            return;
        };
        size += item.key.len() + item.value.len() + 16;
        items.push(item);
        if size >= chunk_bytes && !flush(&mut items, &mut size, &mut seq) {
            warn!(
                peer = to,
                "checkpoint stream paused (link closed, receiver silent, or superseded); kept for a resume"
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
        from_chunk = first,
        keys = meta.keys,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "checkpoint sent"
    );
    // The frozen copy stays until the receiver acknowledges the install (the loop removes it
    // then), so that a receiver that crashes before it can resume.
}

// ---- receiving ----------------------------------------------------------------------------

/// A transfer being received, as persisted with every chunk (`checkpoint_receiving`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The sending replica and its stream id.
    pub from: u64,
    pub id: u64,
    /// The configuration whose state this is.
    pub config_id: u32,
    /// Chunks written (the next one expected).
    pub next_seq: u64,
    /// CRC-32 of the items written, and the last of them.
    pub crc: u32,
    pub after: Option<(u8, Vec<u8>)>,
    /// Key and value bytes and items written, KV keys among them and their state hash.
    pub bytes: u64,
    pub items: u64,
    pub keys: u64,
    pub hash: u64,
    /// What the sender said the whole state holds (`CheckpointStart`).
    pub keys_total: u64,
    pub bytes_total: u64,
}

impl Progress {
    /// The persisted progress of an interrupted transfer, if any.
    pub fn load(db: &Db) -> Result<Option<Progress>, StoreError> {
        db.get(CF_META, META_RECEIVING)?
            .map(|b| {
                decode(&b).map_err(|e| StoreError::Corrupt {
                    what: "checkpoint progress",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// Where the sender should resume.
    pub fn resume(&self) -> Resume {
        Resume {
            next_seq: self.next_seq,
            crc: self.crc,
            after: self.after.clone(),
        }
    }
}

/// Why a received checkpoint was thrown away.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checksum or chunk count mismatch")]
    Corrupt,
    #[error("state hash or key count mismatch")]
    WrongState,
    #[error("item of unknown column family #{0}")]
    UnknownFamily(u8),
    #[error("items out of order (each must follow the one before in family and key order)")]
    OutOfOrder,
    #[error("staging the received state: {0}")]
    Staging(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Work for the installer, in the order the loop receives it.
#[derive(Debug)]
pub enum Job {
    /// Receive stream `id` from `from` for configuration `config_id`, from its start (the
    /// first chunk replaces the state) or from the persisted progress (`resume`).
    Begin {
        from: u64,
        id: u64,
        config_id: u32,
        resume: bool,
    },
    Totals {
        id: u64,
        keys: u64,
        bytes: u64,
    },
    Chunk {
        id: u64,
        seq: u64,
        items: Vec<CheckpointItem>,
    },
    Done {
        id: u64,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    },
}

/// What the installer did.
#[derive(Debug)]
pub enum Outcome {
    /// Chunk `seq` of stream `id` is durable; the transfer stands at `progress`.
    Written {
        id: u64,
        seq: u64,
        progress: Box<Progress>,
    },
    /// The state of stream `id` is installed (durably): it is `meta`, loaded in `sm` (the
    /// dedup table and the leases read here, not on the loop).
    Installed { id: u64, meta: SmMeta, sm: Loaded },
    /// Stream `id` failed; the chunks written so far stay (a new stream starts over).
    Failed { id: u64, error: String },
}

/// A state machine loaded over an installed checkpoint.
pub struct Loaded(pub Box<StateMachine>);

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loaded({:?})", self.0.meta())
    }
}

/// The receiving side of one stream (the installer's state).
struct Receiving {
    db: Db,
    p: Option<Progress>,
    /// How the state machine loaded over an installed state is bounded.
    limits: (DedupLimits, HistoryLimits),
}

impl Receiving {
    fn handle(&mut self, job: Job) -> Option<Outcome> {
        match job {
            Job::Begin {
                from,
                id,
                config_id,
                resume,
            } => {
                let stored = if resume {
                    Progress::load(&self.db).ok().flatten()
                } else {
                    None
                };
                let p = match stored {
                    Some(p) if p.id == id && p.from == from => p,
                    _ => Progress {
                        from,
                        id,
                        config_id,
                        ..Progress::default()
                    },
                };
                // What is staged is exactly the chunks before `next_seq` of this stream.
                remove_incoming(&self.db, Some((id, p.next_seq)));
                self.p = Some(p);
                None
            }
            Job::Totals { id, keys, bytes } => {
                if let Some(p) = self.p.as_mut().filter(|p| p.id == id) {
                    p.keys_total = keys;
                    p.bytes_total = bytes;
                }
                None
            }
            Job::Chunk { id, seq, items } => {
                // A chunk written already (queued before a resumption asked for it again) or
                // past a dropped one: nothing to write; a stall resumes from what is written.
                self.p
                    .as_ref()
                    .filter(|p| p.id == id && p.next_seq == seq)?;
                Some(match self.chunk(seq, &items) {
                    Ok(()) => Outcome::Written {
                        id,
                        seq,
                        progress: Box::new(self.p.clone().unwrap_or_default()),
                    },
                    Err(e) => self.fail(id, e),
                })
            }
            Job::Done {
                id,
                chunks,
                crc,
                meta,
            } => {
                self.p.as_ref().filter(|p| p.id == id)?;
                Some(match self.finish(chunks, crc, meta) {
                    Ok(sm) => Outcome::Installed {
                        id,
                        meta,
                        sm: Loaded(Box::new(sm)),
                    },
                    Err(e) => self.fail(id, e),
                })
            }
        }
    }

    fn fail(&mut self, id: u64, e: CheckpointError) -> Outcome {
        self.p = None;
        Outcome::Failed {
            id,
            error: e.to_string(),
        }
    }

    /// Stages one chunk as table files (synced), then records the progress, which the loop's
    /// next group commit makes durable before it acknowledges the chunk (a record lost before
    /// that only makes a resumption start earlier). The installer never syncs the WAL here (a
    /// sync of its own would hold the loop's behind it), and no chunk goes through the live
    /// store's WAL or memtables.
    fn chunk(&mut self, seq: u64, items: &[CheckpointItem]) -> Result<(), CheckpointError> {
        let db = &self.db;
        let p = self.p.as_mut().expect("checked by the caller");
        debug_assert_eq!(seq, p.next_seq, "checked by the caller");
        if let Some(bad) = items.iter().find(|i| usize::from(i.cf) >= STATE_CFS.len()) {
            return Err(CheckpointError::UnknownFamily(bad.cf));
        }
        // Items come in (family, key) order, strictly ascending over the whole stream: each
        // staged file is sorted and the files of a family do not overlap.
        let mut last = p.after.as_ref().map(|(cf, key)| (*cf, key.as_slice()));
        for item in items {
            let here = (item.cf, item.key.as_slice());
            if last.is_some_and(|l| here <= l) {
                return Err(CheckpointError::OutOfOrder);
            }
            last = Some(here);
        }
        let mut crc = crc32fast::Hasher::new_with_initial(p.crc);
        crc_items(&mut crc, items);
        let mut progress = p.clone();
        for item in items {
            if item.cf == 0 {
                let rec = KvRecord::decode(&item.value)?;
                progress.hash ^= pair_hash(&item.key, &rec.value);
                progress.keys += 1;
            }
            progress.bytes += (item.key.len() + item.value.len()) as u64;
            progress.items += 1;
        }
        let dir = in_dir(db, p.id);
        std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::Staging(e.to_string()))?;
        let opts = rocksdb::Options::default();
        for family in items.chunk_by(|a, b| a.cf == b.cf) {
            let mut w = SstFileWriter::create(&opts);
            w.open(staged_file(&dir, seq, family[0].cf))
                .map_err(StoreError::from)?;
            for item in family {
                w.put(&item.key, &item.value).map_err(StoreError::from)?;
            }
            // Syncs the file: the progress below never claims a chunk that is not on disk.
            w.finish().map_err(StoreError::from)?;
        }
        progress.crc = crc.finalize();
        if let Some(last) = items.last() {
            progress.after = Some((last.cf, last.key.clone()));
        }
        progress.next_seq += 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf(CF_META), META_RECEIVING, encode(&progress));
        db.write(batch)?;
        *p = progress;
        Ok(())
    }

    /// Checks the whole stream and switches the staged state in (`switch`). Then loads the
    /// state machine over it (the loop swaps it in).
    fn finish(
        &mut self,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    ) -> Result<StateMachine, CheckpointError> {
        let db = &self.db;
        let p = self.p.as_ref().expect("checked by the caller");
        if chunks != p.next_seq || crc != p.crc {
            return Err(CheckpointError::Corrupt);
        }
        if p.keys != meta.keys || p.hash != meta.hash {
            return Err(CheckpointError::WrongState);
        }
        let started = std::time::Instant::now();
        let sw = Switch {
            id: p.id,
            chunks,
            config_id: p.config_id,
            meta,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf(CF_META), META_SWITCHING, encode(&sw));
        db.write_durable_off_loop(batch)?;
        switch(db, &sw)?;
        info!(
            config_id = meta.applied.config_id,
            index = meta.applied.index,
            keys = meta.keys,
            bytes = p.bytes,
            switch_ms = started.elapsed().as_millis() as u64,
            "checkpoint installed"
        );
        self.p = None;
        let (dedup, history) = self.limits;
        Ok(StateMachine::load(db.clone(), dedup, history)?)
    }
}

/// A switch under way (`META_SWITCHING`): stream `id`'s `chunks` staged chunks become the
/// state `meta` of configuration `config_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Switch {
    id: u64,
    chunks: u64,
    config_id: u32,
    meta: SmMeta,
}

/// The directory stream `id`'s chunks are staged in.
fn in_dir(db: &Db, id: u64) -> PathBuf {
    db.raw().path().join(IN_DIR).join(format!("{id:016x}"))
}

/// The table file of chunk `seq`'s records of family `cf`.
fn staged_file(dir: &Path, seq: u64, cf: u8) -> PathBuf {
    dir.join(format!("{seq:012}-{cf}.sst"))
}

/// The chunk and family a staged file's name gives.
fn parse_staged(name: &str) -> Option<(u64, u8)> {
    let (seq, cf) = name.strip_suffix(".sst")?.split_once('-')?;
    Some((seq.parse().ok()?, cf.parse().ok()?))
}

/// Removes what is staged, except (`keep`) stream `id`'s chunks before `next_seq`.
fn remove_incoming(db: &Db, keep: Option<(u64, u64)>) {
    let Ok(dir) = std::fs::read_dir(db.raw().path().join(IN_DIR)) else {
        return;
    };
    for entry in dir.flatten() {
        let kept =
            keep.filter(|(id, _)| entry.file_name().to_string_lossy() == format!("{id:016x}"));
        let result = match kept {
            None => std::fs::remove_dir_all(entry.path()),
            Some((_, next_seq)) => std::fs::read_dir(entry.path()).and_then(|files| {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if parse_staged(&name).is_none_or(|(seq, _)| seq >= next_seq) {
                        if f.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::remove_dir_all(f.path())?;
                        } else {
                            std::fs::remove_file(f.path())?;
                        }
                    }
                }
                Ok(())
            }),
        };
        if let Err(e) = result {
            warn!(error = %e, dir = %entry.path().display(), "cannot remove staged checkpoint files");
        }
    }
}

/// Stream `sw.id`'s staged files by family (`STATE_CFS` order), each family's in chunk
/// order. None: a chunk has no file (lost in a power cut), so the stream cannot be switched in.
fn staged_files(db: &Db, sw: &Switch) -> Option<Vec<Vec<PathBuf>>> {
    // An empty state comes in no chunk: nothing was staged, not even the directory.
    let listing = match std::fs::read_dir(in_dir(db, sw.id)) {
        Ok(listing) => Some(listing),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => return None,
    };
    let mut found: Vec<(u64, u8, PathBuf)> = listing
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|f| {
            let (seq, cf) = parse_staged(&f.file_name().to_string_lossy())?;
            (seq < sw.chunks && usize::from(cf) < STATE_CFS.len()).then(|| (seq, cf, f.path()))
        })
        .collect();
    found.sort();
    let mut seqs: Vec<u64> = found.iter().map(|(seq, _, _)| *seq).collect();
    seqs.dedup();
    if seqs.len() as u64 != sw.chunks {
        return None;
    }
    let mut by_family = vec![Vec::new(); STATE_CFS.len()];
    for (_, cf, path) in found {
        by_family[usize::from(cf)].push(path);
    }
    Some(by_family)
}

/// Whether family `name` holds nothing at all: no table file and empty memtables (a
/// joiner's). Ingesting into such a family needs no clearing and lands in the bottom level.
fn family_is_empty(db: &Db, name: &str) -> Result<bool, StoreError> {
    let cf = db.cf(name);
    for prop in [
        "rocksdb.num-entries-active-mem-table",
        "rocksdb.num-entries-imm-mem-tables",
        "rocksdb.live-sst-files-size",
    ] {
        if db.raw().property_int_value_cf(cf, prop)? != Some(0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Empties the live state families (those that hold anything) without reading their
/// records: one range deletion, flushed, then every table file under it dropped and what is
/// left compacted away, so that ingested files land in the bottom level (no write stall).
fn clear_state(db: &Db) -> Result<(), StoreError> {
    let raw = db.raw();
    let mut full = Vec::new();
    for name in STATE_CFS {
        if !family_is_empty(db, name)? {
            full.push(name);
        }
    }
    if full.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for name in &full {
        batch.delete_range_cf(db.cf(name), [].as_slice(), KEYS_END.as_slice());
    }
    db.write_lazy(batch)?;
    let mut compact = CompactOptions::default();
    compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    for name in full {
        let cf = db.cf(name);
        raw.flush_cf(cf)?;
        raw.delete_file_in_range_cf(cf, [].as_slice(), KEYS_END.as_slice())?;
        raw.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &compact);
    }
    Ok(())
}

/// Staged files ingested per call: each call stops the store's writes (the loop's too) while
/// it records the files (a manifest write and sync; table files opened), so a large state
/// goes in several short stops rather than one long one.
const INGEST_FILES: usize = 64;

/// Switches stream `sw`'s staged state in for the live one (behind `META_SWITCHING`, which
/// the caller wrote): idempotent, so a crash anywhere in it is finished by running it again.
/// A stream whose staged files are incomplete leaves the state empty and marked incomplete
/// (a new checkpoint is needed), and says so.
fn switch(db: &Db, sw: &Switch) -> Result<(), CheckpointError> {
    let staged = staged_files(db, sw);
    let started = std::time::Instant::now();
    clear_state(db)?;
    let cleared = started.elapsed();
    // The old state is gone and the new one not yet in: the crash tests stop here.
    crate::failpoint::hit("checkpoint-ingest");
    let mut batch = WriteBatch::default();
    let Some(staged) = staged else {
        let lost = Progress {
            config_id: sw.config_id,
            ..Progress::default()
        };
        batch.put_cf(db.cf(CF_META), META_RECEIVING, encode(&lost));
        batch.delete_cf(db.cf(CF_META), META_SWITCHING);
        db.write_durable_off_loop(batch)?;
        remove_incoming(db, None);
        return Err(CheckpointError::Staging("staged chunks are missing".into()));
    };
    // Ingested through links (RocksDB takes them over), so the staged files stay until the
    // switch is done and a second run finds them.
    let links = in_dir(db, sw.id).join("ingest");
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&links).map_err(|e| CheckpointError::Staging(e.to_string()))?;
    let mut opts = IngestExternalFileOptions::default();
    opts.set_move_files(true);
    let (mut calls, mut ingested, mut longest_call) = (0, 0, std::time::Duration::ZERO);
    for (family, files) in STATE_CFS.iter().zip(staged) {
        // In key order: each call's files overlap none ingested before them, so they too go
        // to the bottom level.
        for group in files.chunks(INGEST_FILES) {
            let mut linked = Vec::with_capacity(group.len());
            for f in group {
                let link = links.join(f.file_name().expect("a staged file's name"));
                std::fs::hard_link(f, &link)
                    .map_err(|e| CheckpointError::Staging(e.to_string()))?;
                linked.push(link);
            }
            let call = std::time::Instant::now();
            db.raw()
                .ingest_external_file_cf_opts(db.cf(family), &opts, linked)
                .map_err(StoreError::from)?;
            longest_call = longest_call.max(call.elapsed());
            (calls, ingested) = (calls + 1, ingested + group.len());
        }
    }
    info!(
        clear_ms = cleared.as_millis() as u64,
        ingest_ms = (started.elapsed() - cleared).as_millis() as u64,
        files = ingested,
        calls,
        longest_call_ms = longest_call.as_millis() as u64,
        "checkpoint: staged files ingested"
    );
    batch.put_cf(db.cf(CF_META), b"sm", encode(&sw.meta));
    // The history before the checkpoint's revision is not ours: it starts after it.
    crate::state_machine::history::reset(db, sw.meta.revision, &mut batch);
    batch.delete_cf(db.cf(CF_META), META_RECEIVING);
    batch.delete_cf(db.cf(CF_META), META_SWITCHING);
    db.write_durable_off_loop(batch)?;
    remove_incoming(db, None);
    Ok(())
}

/// Jobs queued for the installer thread: the sender's window bounds them; a full queue means
/// a peer ignoring it (the chunk is dropped and the transfer resumes).
const INSTALL_QUEUE: usize = 2 * WINDOW as usize + 4;

/// Runs the receiving side off the consensus loop: kvd on a thread of its own (`threaded`),
/// the simulator inline (`inline`: each job done when submitted). The loop submits what it
/// receives and polls what was done; either way the same code writes.
pub struct Installer(Mode);

enum Mode {
    Inline {
        rx: Receiving,
        done: VecDeque<Outcome>,
    },
    Thread {
        jobs: mpsc::SyncSender<Job>,
        done: mpsc::Receiver<Outcome>,
    },
}

impl Installer {
    /// `limits` bound the state machine loaded over an installed state.
    pub fn inline(db: Db, limits: (DedupLimits, HistoryLimits)) -> Installer {
        Installer(Mode::Inline {
            rx: Receiving {
                db,
                p: None,
                limits,
            },
            done: VecDeque::new(),
        })
    }

    pub fn threaded(db: Db, limits: (DedupLimits, HistoryLimits)) -> Installer {
        let (jobs, jobs_rx) = mpsc::sync_channel::<Job>(INSTALL_QUEUE);
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("checkpoint-install".into())
            .spawn(move || {
                let mut rx = Receiving {
                    db,
                    p: None,
                    limits,
                };
                for job in jobs_rx {
                    if let Some(o) = rx.handle(job) {
                        if done_tx.send(o).is_err() {
                            return;
                        }
                    }
                }
            })
            .expect("spawn checkpoint installer");
        Installer(Mode::Thread { jobs, done })
    }

    /// Queues a job. False: the queue is full (a peer beyond its window) and it was dropped.
    pub fn submit(&mut self, job: Job) -> bool {
        match &mut self.0 {
            Mode::Inline { rx, done } => {
                done.extend(rx.handle(job));
                true
            }
            Mode::Thread { jobs, .. } => jobs.try_send(job).is_ok(),
        }
    }

    /// The next thing the installer finished, if any.
    pub fn poll(&mut self) -> Option<Outcome> {
        match &mut self.0 {
            Mode::Inline { done, .. } => done.pop_front(),
            Mode::Thread { done, .. } => done.try_recv().ok(),
        }
    }
}

// ---- the earlier scheme: staged, then switched in ------------------------------------------

fn clear_stage(db: &Db) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(db.cf(CF_STAGE), [].as_slice(), KEYS_END.as_slice());
    db.write(batch)
}

/// Finishes a switch of the earlier scheme (a fully staged state copied into the live one)
/// that a crash of an older kvd interrupted. Idempotent.
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
    crate::state_machine::history::reset(db, meta.revision, &mut batch);
    batch.delete_cf(db.cf(CF_META), META_INSTALLING);
    db.write(batch)?;
    clear_stage(db)?;
    db.sync()?;
    info!(
        index = meta.applied.index,
        keys = meta.keys,
        "checkpoint installed (earlier scheme)"
    );
    Ok(())
}

/// At start-up: finishes a switch interrupted by a crash (this scheme's, or the earlier
/// one's). True: one was finished, and the state is the checkpoint's. (A transfer interrupted
/// before its switch is resumed by the loop: `Progress::load`.)
pub fn resume_interrupted_install(db: &Db) -> Result<bool, StoreError> {
    let mut finished = false;
    if let Some(b) = db.get(CF_META, META_SWITCHING)? {
        let sw: Switch = decode(&b).map_err(|e| StoreError::Corrupt {
            what: "checkpoint switch marker",
            detail: e.to_string(),
        })?;
        warn!(
            keys = sw.meta.keys,
            "finishing a checkpoint switch interrupted by a crash"
        );
        match switch(db, &sw) {
            Ok(()) => {
                info!(
                    index = sw.meta.applied.index,
                    keys = sw.meta.keys,
                    "interrupted checkpoint switch finished"
                );
                finished = true;
            }
            // The state stays marked incomplete: the loop takes a new checkpoint.
            Err(CheckpointError::Staging(e)) => {
                warn!(error = %e, "the interrupted checkpoint cannot be switched in; a new one is needed")
            }
            Err(CheckpointError::Store(e)) => return Err(e),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    what: "checkpoint switch",
                    detail: e.to_string(),
                })
            }
        }
    }
    if let Some(b) = db.get(CF_META, META_INSTALLING)? {
        let meta: SmMeta = decode(&b).map_err(|e| StoreError::Corrupt {
            what: "checkpoint marker",
            detail: e.to_string(),
        })?;
        warn!("finishing a checkpoint switch interrupted by a crash");
        switch_in(db, meta)?;
        finished = true;
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::Position;
    use std::cell::RefCell;

    /// Collects a stream's frames.
    #[derive(Default)]
    struct Frames(RefCell<Vec<PeerFrame>>);

    impl ChunkSink for Frames {
        fn send_bulk(&self, frame: PeerFrame) -> bool {
            self.0.borrow_mut().push(frame);
            true
        }
    }

    /// A store holding `n` keys (with the meta that describes them) and records of a second
    /// family.
    fn source(dir: &Path, n: u64) -> (Db, SmMeta) {
        let db = Db::open(dir).unwrap();
        let mut meta = SmMeta {
            applied: Position {
                config_id: 1,
                index: 77,
            },
            revision: n,
            ..SmMeta::default()
        };
        let mut batch = WriteBatch::default();
        for i in 0..n {
            let (key, value) = (format!("k{i:06}").into_bytes(), vec![i as u8; 100]);
            meta.hash ^= pair_hash(&key, &value);
            meta.keys += 1;
            let rec = KvRecord {
                create_revision: i + 1,
                mod_revision: i + 1,
                version: 1,
                value,
                lease: 0,
            };
            batch.put_cf(db.cf(STATE_CFS[0]), key, encode(&rec));
        }
        // Records of a second family (keys the dedup loader skips: not `client ++ seq`).
        for c in 0..500u64 {
            batch.put_cf(db.cf(STATE_CFS[1]), c.to_be_bytes(), [7u8; 64]);
        }
        batch.put_cf(db.cf(CF_META), b"sm", encode(&meta));
        db.write_synced(batch).unwrap();
        (db, meta)
    }

    fn limits() -> (DedupLimits, HistoryLimits) {
        let dedup = DedupLimits {
            ttl_ms: u64::MAX / 2,
            max_records: 1000,
        };
        let history = HistoryLimits {
            max_events: 1000,
            max_bytes: 1 << 20,
        };
        (dedup, history)
    }

    fn state(db: &Db) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let view = StateView::open(db).unwrap();
        view.items()
            .map(|i| i.map(|i| (i.cf, i.key, i.value)).unwrap())
            .collect()
    }

    /// Starts receiving stream `id` from replica 1 (`resume`: from the persisted progress).
    fn begin(installer: &mut Installer, id: u64, resume: bool) {
        installer.submit(Job::Begin {
            from: 1,
            id,
            config_id: 1,
            resume,
        });
    }

    /// The install completed with exactly `want` and `meta`.
    fn assert_installed(dst: &Db, want: &[(u8, Vec<u8>, Vec<u8>)], meta: SmMeta) {
        assert_eq!(Progress::load(dst).unwrap(), None);
        assert_eq!(state(dst), want);
        assert_eq!(StateView::open(dst).unwrap().meta, meta);
    }

    /// Hands `frames` to `installer` as the loop does, up to `stop_after` chunks.
    fn feed(installer: &mut Installer, frames: Vec<PeerFrame>, stop_after: Option<u64>) {
        for f in frames {
            let job = match f {
                PeerFrame::CheckpointStart { id, keys, bytes } => Job::Totals { id, keys, bytes },
                PeerFrame::CheckpointChunk { id, seq, items } => {
                    if stop_after.is_some_and(|s| seq >= s) {
                        return;
                    }
                    Job::Chunk { id, seq, items }
                }
                PeerFrame::CheckpointDone {
                    id,
                    chunks,
                    crc,
                    meta,
                } => Job::Done {
                    id,
                    chunks,
                    crc,
                    meta,
                },
                other => panic!("unexpected frame {other:?}"),
            };
            assert!(installer.submit(job));
        }
    }

    /// A receiver that crashes half-way through resumes from its persisted progress; the
    /// sender serves the rest from the copy it froze (after writes changed its live state),
    /// and the installed state is exactly the frozen one (its state hash checked).
    #[test]
    fn a_transfer_interrupted_half_way_resumes_from_the_frozen_state() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, meta) = source(a.path(), 3000);
        let want = state(&src);
        let dst = Db::open(b.path()).unwrap();
        // A replica's store, as kvd opens it (the store format written).
        let (dedup, history) = limits();
        StateMachine::load(dst.clone(), dedup, history).unwrap();
        let id = 0xfeed;
        let sink = Frames::default();
        stream(&src, &sink, 4, id, 16 * 1024, None);
        let frames = sink.0.take();
        let Some(PeerFrame::CheckpointStart {
            bytes: estimate, ..
        }) = frames.first()
        else {
            panic!("a stream starts with its totals");
        };
        let estimate = *estimate;
        let chunks = frames
            .iter()
            .filter(|f| matches!(f, PeerFrame::CheckpointChunk { .. }))
            .count() as u64;
        assert!(chunks >= 10, "{chunks} chunks");
        let mut rx = Installer::inline(dst.clone(), limits());
        begin(&mut rx, id, false);
        feed(&mut rx, frames, Some(chunks / 2));
        let written = std::iter::from_fn(|| rx.poll()).count() as u64;
        assert_eq!(written, chunks / 2);
        drop(rx); // the crash
                  // The sender's live state moves on; the resumption must not see it.
        let mut batch = WriteBatch::default();
        batch.put_cf(src.cf(STATE_CFS[0]), b"k000000", b"changed");
        src.write_synced(batch).unwrap();
        assert!(matches!(StateView::open(&dst), Err(ViewError::Installing)));

        let p = Progress::load(&dst).unwrap().expect("progress persisted");
        assert_eq!((p.id, p.next_seq), (id, chunks / 2));
        let mut rx = Installer::inline(dst.clone(), limits());
        begin(&mut rx, id, true);
        let sink = Frames::default();
        stream(&src, &sink, 4, id, 16 * 1024, Some(p.resume()));
        feed(&mut rx, sink.0.take(), None);
        let outcomes: Vec<Outcome> = std::iter::from_fn(|| rx.poll()).collect();
        assert!(
            matches!(outcomes.last(), Some(Outcome::Installed { meta: m, sm, .. })
                if *m == meta && sm.0.meta() == meta),
            "{outcomes:?}"
        );
        assert_eq!(outcomes.len() as u64, chunks - chunks / 2 + 1);
        let Some(Outcome::Written { progress, .. }) = outcomes.iter().rev().nth(1) else {
            panic!("{outcomes:?}");
        };
        // The estimate of the bytes is within a factor of two of what came.
        assert!(
            estimate / 2 < progress.bytes && progress.bytes < estimate * 2,
            "estimated {estimate}, received {}",
            progress.bytes
        );
        assert_installed(&dst, &want, meta);
    }

    /// A resumption the sender cannot serve (no frozen copy) is refused, and a corrupt
    /// stream fails its checks instead of installing.
    #[test]
    fn a_resumption_without_a_frozen_copy_is_refused_and_a_bad_hash_fails() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, _) = source(a.path(), 200);
        let sink = Frames::default();
        let resume = Resume {
            next_seq: 1,
            crc: 0,
            after: None,
        };
        stream(&src, &sink, 4, 9, 16 * 1024, Some(resume));
        assert!(matches!(
            sink.0.take().as_slice(),
            [PeerFrame::CheckpointRefused { id: 9, .. }]
        ));

        stream(&src, &sink, 4, 9, 16 * 1024, None);
        let mut frames = sink.0.take();
        for f in &mut frames {
            if let PeerFrame::CheckpointDone { meta, .. } = f {
                meta.hash ^= 1;
            }
        }
        let dst = Db::open(b.path()).unwrap();
        let mut rx = Installer::inline(dst.clone(), limits());
        begin(&mut rx, 9, false);
        feed(&mut rx, frames, None);
        let last = std::iter::from_fn(|| rx.poll()).last();
        assert!(matches!(last, Some(Outcome::Failed { .. })), "{last:?}");
        assert!(matches!(StateView::open(&dst), Err(ViewError::Installing)));
    }

    /// A switch interrupted by a crash (here: right after the old state was cleared) is
    /// finished at start-up from the staged files, and the old state's records are gone; a
    /// switch whose staged files were lost leaves the state marked incomplete instead.
    #[test]
    fn an_interrupted_switch_is_finished_at_start_up_and_replaces_the_old_state() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, meta) = source(a.path(), 2000);
        let want = state(&src);
        let id = 0xabc;
        let sink = Frames::default();
        stream(&src, &sink, 4, id, 16 * 1024, None);
        let frames = sink.0.take();
        let chunks = frames
            .iter()
            .filter(|f| matches!(f, PeerFrame::CheckpointChunk { .. }))
            .count() as u64;
        for lose_a_file in [false, true] {
            let dir = tempfile::tempdir_in(b.path()).unwrap();
            {
                // An old state: keys the checkpoint does not have, and one it overwrites.
                let dst = Db::open(dir.path()).unwrap();
                let mut batch = WriteBatch::default();
                for k in ["k000001", "old-1", "old-2", "zzz"] {
                    batch.put_cf(dst.cf(STATE_CFS[0]), k, b"old");
                }
                batch.put_cf(dst.cf(STATE_CFS[2]), b"old-lease", b"old");
                dst.write_synced(batch).unwrap();
                dst.raw().flush_cf(dst.cf(STATE_CFS[0])).unwrap();
                let mut rx = Installer::inline(dst.clone(), limits());
                begin(&mut rx, id, false);
                // Every chunk, not the end: the switch is run by hand, then interrupted.
                let body: Vec<PeerFrame> = frames
                    .iter()
                    .filter(|f| matches!(f, PeerFrame::CheckpointChunk { .. }))
                    .cloned()
                    .collect();
                feed(&mut rx, body, None);
                assert_eq!(std::iter::from_fn(|| rx.poll()).count() as u64, chunks);
                let sw = Switch {
                    id,
                    chunks,
                    config_id: 1,
                    meta,
                };
                let mut batch = WriteBatch::default();
                batch.put_cf(dst.cf(CF_META), META_SWITCHING, encode(&sw));
                dst.write_synced(batch).unwrap();
                clear_state(&dst).unwrap();
                if lose_a_file {
                    let staged = staged_files(&dst, &sw).unwrap();
                    std::fs::remove_file(&staged[0][1]).unwrap();
                }
            } // the crash
            let dst = Db::open(dir.path()).unwrap();
            assert_eq!(resume_interrupted_install(&dst).unwrap(), !lose_a_file);
            assert_eq!(dst.get(CF_META, META_SWITCHING).unwrap(), None);
            assert!(!in_dir(&dst, id).exists(), "staged files removed");
            if lose_a_file {
                assert!(matches!(StateView::open(&dst), Err(ViewError::Installing)));
                let p = Progress::load(&dst).unwrap().expect("marked incomplete");
                assert_eq!((p.next_seq, p.config_id), (0, 1));
            } else {
                assert_installed(&dst, &want, meta);
            }
        }
    }

    /// The state of an empty store comes in no chunk at all, and installs (replacing
    /// whatever the receiver held).
    #[test]
    fn an_empty_state_installs_from_no_chunk() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, meta) = source(a.path(), 0);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(src.cf(STATE_CFS[1]), [].as_slice(), KEYS_END.as_slice());
        src.write_synced(batch).unwrap();
        let sink = Frames::default();
        stream(&src, &sink, 4, 3, 16 * 1024, None);
        let frames = sink.0.take();
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, PeerFrame::CheckpointChunk { .. })),
            "{frames:?}"
        );
        let dst = Db::open(b.path()).unwrap();
        let (dedup, history) = limits();
        StateMachine::load(dst.clone(), dedup, history).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_cf(dst.cf(STATE_CFS[0]), b"old", b"old");
        dst.write_synced(batch).unwrap();
        let mut rx = Installer::inline(dst.clone(), limits());
        begin(&mut rx, 3, false);
        feed(&mut rx, frames, None);
        let last = std::iter::from_fn(|| rx.poll()).last();
        assert!(matches!(last, Some(Outcome::Installed { .. })), "{last:?}");
        assert_installed(&dst, &[], meta);
    }

    /// A chunk whose items go backwards (in one chunk, or behind the chunk before) fails the
    /// stream before anything is staged for it.
    #[test]
    fn items_out_of_order_fail_the_stream() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, _) = source(a.path(), 300);
        let sink = Frames::default();
        stream(&src, &sink, 4, 5, 4 * 1024, None);
        let frames = sink.0.take();
        let dst = Db::open(b.path()).unwrap();
        for (bad_seq, reverse) in [(0u64, true), (1, false)] {
            let mut rx = Installer::inline(dst.clone(), limits());
            begin(&mut rx, 5, false);
            let mut frames = frames.clone();
            for f in &mut frames {
                if let PeerFrame::CheckpointChunk { seq, items, .. } = f {
                    if *seq == bad_seq && reverse {
                        items.reverse();
                    } else if *seq == bad_seq {
                        // Its first item repeats the chunk before's last.
                        items[0].key = b"k000000".to_vec();
                    }
                }
            }
            feed(&mut rx, frames, Some(bad_seq + 1));
            let last = std::iter::from_fn(|| rx.poll()).last();
            assert!(
                matches!(&last, Some(Outcome::Failed { error, .. }) if error.contains("out of order")),
                "{last:?}"
            );
            assert!(!staged_file(&in_dir(&dst, 5), bad_seq, 0).exists());
        }
    }
}
