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
//! Receiver: each chunk goes straight into the live state families in one batch with the
//! persisted progress record (`checkpoint_receiving` in `meta`: offsets, CRC, state hash so
//! far), off the consensus loop (`Installer`: a thread in kvd, inline in the simulator). The
//! first chunk wipes the old state in the same batch. The last step checks the chunk count,
//! CRC, key count and state hash and writes the new state-machine meta: one small batch. While
//! the record exists the state is incomplete: `StateView::open` refuses it and the loop serves
//! nothing from it.

use crate::codec::{decode, encode};
use crate::frame::{crc_items, CheckpointItem, PeerFrame};
use crate::state_machine::{pair_hash, DedupLimits, HistoryLimits, KvRecord, SmMeta, StateMachine};
use crate::storage::{Db, StoreError, CF_META, CF_STAGE, KEYS_END, STATE_CFS};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
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
/// Where outgoing checkpoints are frozen, in the data dir.
const OUT_DIR: &str = "checkpoints-out";

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
    Ok(get(META_INSTALLING)?.is_some() || get(META_RECEIVING)?.is_some())
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
                self.p = Some(match stored {
                    Some(p) if p.id == id && p.from == from => p,
                    _ => Progress {
                        from,
                        id,
                        config_id,
                        ..Progress::default()
                    },
                });
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

    /// Writes one chunk into the live state with the progress, durably (off the loop: its
    /// WAL sync is its own, the loop's group commit is left alone).
    fn chunk(&mut self, seq: u64, items: &[CheckpointItem]) -> Result<(), CheckpointError> {
        let db = &self.db;
        let p = self.p.as_mut().expect("checked by the caller");
        debug_assert_eq!(seq, p.next_seq, "checked by the caller");
        if let Some(bad) = items.iter().find(|i| usize::from(i.cf) >= STATE_CFS.len()) {
            return Err(CheckpointError::UnknownFamily(bad.cf));
        }
        let mut batch = WriteBatch::default();
        if seq == 0 {
            // The first chunk replaces the state: the old one goes in the same batch.
            for name in STATE_CFS {
                batch.delete_range_cf(db.cf(name), [].as_slice(), KEYS_END.as_slice());
            }
        }
        let mut crc = crc32fast::Hasher::new_with_initial(p.crc);
        crc_items(&mut crc, items);
        for item in items {
            if item.cf == 0 {
                let rec = KvRecord::decode(&item.value)?;
                p.hash ^= pair_hash(&item.key, &rec.value);
                p.keys += 1;
            }
            p.bytes += (item.key.len() + item.value.len()) as u64;
            p.items += 1;
            batch.put_cf(
                db.cf(STATE_CFS[usize::from(item.cf)]),
                &item.key,
                &item.value,
            );
        }
        p.crc = crc.finalize();
        if let Some(last) = items.last() {
            p.after = Some((last.cf, last.key.clone()));
        }
        p.next_seq += 1;
        batch.put_cf(db.cf(CF_META), META_RECEIVING, encode(&*p));
        db.write_durable_off_loop(batch)?;
        Ok(())
    }

    /// Checks the whole stream and makes the state the state machine's: one small batch. Then
    /// loads the state machine over it (the loop swaps it in).
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
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf(CF_META), b"sm", encode(&meta));
        // The history before the checkpoint's revision is not ours: it starts after it.
        crate::state_machine::history::reset(db, meta.revision, &mut batch);
        batch.delete_cf(db.cf(CF_META), META_RECEIVING);
        db.write_durable_off_loop(batch)?;
        info!(
            config_id = meta.applied.config_id,
            index = meta.applied.index,
            keys = meta.keys,
            bytes = p.bytes,
            "checkpoint installed"
        );
        self.p = None;
        let (dedup, history) = self.limits;
        Ok(StateMachine::load(db.clone(), dedup, history)?)
    }
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

/// At start-up: finishes a switch of the earlier scheme interrupted by a crash. (A transfer
/// of the current scheme interrupted by a crash is resumed by the loop: `Progress::load`.)
pub fn resume_interrupted_install(db: &Db) -> Result<(), StoreError> {
    if let Some(b) = db.get(CF_META, META_INSTALLING)? {
        let meta: SmMeta = decode(&b).map_err(|e| StoreError::Corrupt {
            what: "checkpoint marker",
            detail: e.to_string(),
        })?;
        warn!("finishing a checkpoint switch interrupted by a crash");
        switch_in(db, meta)?;
    }
    Ok(())
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
        rx.submit(Job::Begin {
            from: 1,
            id,
            config_id: 1,
            resume: false,
        });
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
        rx.submit(Job::Begin {
            from: 1,
            id,
            config_id: 1,
            resume: true,
        });
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
        assert_eq!(Progress::load(&dst).unwrap(), None);
        assert_eq!(state(&dst), want);
        assert_eq!(StateView::open(&dst).unwrap().meta, meta);
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
        rx.submit(Job::Begin {
            from: 1,
            id: 9,
            config_id: 1,
            resume: false,
        });
        feed(&mut rx, frames, None);
        let last = std::iter::from_fn(|| rx.poll()).last();
        assert!(matches!(last, Some(Outcome::Failed { .. })), "{last:?}");
        assert!(matches!(StateView::open(&dst), Err(ViewError::Installing)));
    }
}
