//! `kvd restore`: seeds the data dir of one member of a NEW cluster with a replicated state,
//! taken from a snapshot file or, on the disaster path (`--force-new-cluster`), from a
//! surviving replica's data dir. Every member of the new cluster is seeded the same way (one
//! run per member, same source and flags but `--pid`/`--data-dir`); started, they hold the
//! same state at the same position (configuration `CONFIG_ID`, index 0), the same keys,
//! revisions, dedup table and leases, under a new cluster id.
//!
//! Invariants: a data dir is never half seeded as far as kvd can see: everything is written
//! into `DIR.restoring` and renamed to `DIR` only once the source verified (the file's
//! trailer, the key count and the state hash against the meta); `DIR` must be absent or
//! empty, so nothing is ever overwritten. The source is only read (a survivor's data dir is
//! opened as kvd would open it, which finishes a checkpoint install a crash interrupted).

use crate::checkpoint::{resume_interrupted_install, StateView, ViewError};
use crate::codec::{decode, encode};
use crate::config::Config;
use crate::membership::{cluster_id, ClusterMeta, Lifecycle};
use crate::state_machine::{history, pair_hash, KvRecord, Position, SmMeta, StateMachine};
use crate::storage::{read_log_meta, read_log_range, Db, StoreError, CF_META, STATE_CFS};
use omnikv_common::snapshot::{FormatError, Reader};
use rocksdb::WriteBatch;
use std::path::{Path, PathBuf};

/// Where the state comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A snapshot file (`kvctl snapshot save`).
    File(PathBuf),
    /// A surviving replica's data dir (kvd stopped), for `--force-new-cluster`.
    DataDir(PathBuf),
}

/// Why a restore failed; `exit_code` classifies it.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Bad flags or a target that is not free: nothing was read.
    #[error("{0}")]
    Usage(String),
    /// The snapshot file is not a good one: refused.
    #[error("snapshot refused: {0}")]
    Snapshot(#[from] FormatError),
    /// The source verified but does not describe itself (keys or hash differ from its meta).
    #[error("snapshot refused: {0}")]
    Inconsistent(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl RestoreError {
    /// kvctl's table: 2 usage or a local I/O error, 5 a refused snapshot, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreError::Usage(_) | RestoreError::Io(_) => 2,
            RestoreError::Snapshot(FormatError::Io(_)) => 2,
            RestoreError::Snapshot(_) | RestoreError::Inconsistent(_) => 5,
            RestoreError::Store(_) => 1,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub pid: u64,
    /// The source's cluster, and the new cluster's id.
    pub source_cluster_id: u64,
    pub cluster_id: u64,
    /// The state's revision, key count and hash once seeded (equal to the source's, plus the
    /// survivor's decided tail on the disaster path).
    pub revision: u64,
    pub keys: u64,
    pub state_hash: u64,
    /// Items per state column family.
    pub counts: Vec<(String, u64)>,
    /// Disaster path: entries of the survivor's log past its applied position, applied here:
    /// those it knew decided, and those it had accepted without seeing them decided.
    pub tail_applied: u64,
    pub undecided_applied: u64,
}

/// Seeds `cfg.data_dir` (absent or empty) as member `cfg.pid` of a new cluster of
/// `cfg.nodes` (configuration `cfg.config_id`, which must be the initial one, 1) from
/// `source`.
pub fn restore(source: &Source, cfg: &Config) -> Result<Restored, RestoreError> {
    if cfg.config_id != 1 {
        return Err(RestoreError::Usage(
            "a restored cluster starts in configuration 1 (CONFIG_ID=1)".into(),
        ));
    }
    check_target_free(&cfg.data_dir)?;
    let staging = staging_dir(&cfg.data_dir);
    if staging.exists() {
        // Left by an interrupted restore: it never held a finished data dir (see the module).
        std::fs::remove_dir_all(&staging)?;
    }
    let result = seed(source, cfg, &staging);
    match result {
        Ok(mut restored) => {
            if cfg.data_dir.exists() {
                std::fs::remove_dir(&cfg.data_dir)?;
            }
            std::fs::rename(&staging, &cfg.data_dir)?;
            sync_parent(&cfg.data_dir)?;
            restored.data_dir = cfg.data_dir.clone();
            Ok(restored)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn staging_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".restoring");
    PathBuf::from(s)
}

fn check_target_free(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Usage(format!(
            "data dir {}: {e}",
            dir.display()
        ))),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::Usage(format!(
                "data dir {} is not empty: restore seeds a new member and never overwrites one \
             (move it away or pick another --data-dir)",
                dir.display()
            ))),
        },
    }
}

fn sync_parent(dir: &Path) -> std::io::Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Writes state items into the staging store in bounded batches, counting what it wrote and
/// recomputing the key count and state hash of the `kv` family.
struct Seeder<'a> {
    db: &'a Db,
    batch: WriteBatch,
    batch_bytes: usize,
    counts: Vec<u64>,
    keys: u64,
    hash: u64,
}

impl<'a> Seeder<'a> {
    fn new(db: &'a Db) -> Seeder<'a> {
        Seeder {
            db,
            batch: WriteBatch::default(),
            batch_bytes: 0,
            counts: vec![0; STATE_CFS.len()],
            keys: 0,
            hash: 0,
        }
    }

    /// One record of state family `cf` (an index into `STATE_CFS`).
    fn item(&mut self, cf: usize, key: &[u8], value: &[u8]) -> Result<(), RestoreError> {
        let name = STATE_CFS[cf];
        if name == crate::storage::CF_KV {
            let record = KvRecord::decode(value)
                .map_err(|e| RestoreError::Inconsistent(format!("a key's record: {e}")))?;
            self.keys += 1;
            self.hash ^= pair_hash(key, &record.value);
        }
        self.counts[cf] += 1;
        self.batch.put_cf(self.db.cf(name), key, value);
        self.batch_bytes += key.len() + value.len();
        if self.batch_bytes >= 4 * crate::checkpoint::CHUNK_BYTES {
            self.db.write_lazy(std::mem::take(&mut self.batch))?;
            self.batch_bytes = 0;
        }
        Ok(())
    }

    /// Writes what is batched; checks the recomputed key count and hash against `meta`.
    fn finish(mut self, meta: &SmMeta) -> Result<Vec<u64>, RestoreError> {
        self.db.write_lazy(std::mem::take(&mut self.batch))?;
        if (self.keys, self.hash) != (meta.keys, meta.hash) {
            return Err(RestoreError::Inconsistent(format!(
                "the state holds {} keys with hash {:016x}, its meta says {} keys with hash {:016x}",
                self.keys, self.hash, meta.keys, meta.hash
            )));
        }
        Ok(self.counts)
    }
}

/// Opens the staging store with kvd's own bootstrap: identity, configuration and member
/// addresses exactly as a fresh member of `cfg.nodes` would write them.
fn open_staging(cfg: &Config, staging: &Path) -> Result<(Db, ClusterMeta), RestoreError> {
    std::fs::create_dir_all(staging)?;
    let db = Db::open(staging)?;
    let staged_cfg = Config {
        data_dir: staging.to_path_buf(),
        ..cfg.clone()
    };
    let meta = crate::node::load_or_bootstrap(&db, &staged_cfg).map_err(|e| match e {
        crate::node::NodeError::Store(e) => RestoreError::Store(e),
        other => RestoreError::Usage(other.to_string()),
    })?;
    // Writes the store format (a fresh store's first load does).
    StateMachine::load(db.clone(), cfg.dedup_limits(), cfg.history_limits())?;
    Ok((db, meta))
}

fn seed(source: &Source, cfg: &Config, staging: &Path) -> Result<Restored, RestoreError> {
    let (db, mut cluster) = open_staging(cfg, staging)?;
    let (source_cluster_id, mut meta, counts, salt, tail_applied, undecided_applied) = match source
    {
        Source::File(path) => seed_from_file(&db, path)?,
        Source::DataDir(dir) => seed_from_data_dir(&db, cfg, dir)?,
    };
    // The new cluster starts its first configuration's log at 0 over this state; its
    // watch history starts after the state's revision.
    meta.applied = Position {
        config_id: cfg.config_id,
        index: 0,
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(CF_META), b"sm", encode(&meta));
    history::reset(&db, meta.revision, &mut batch);
    // A new identity: members seeded from the same source with the same flags agree on it,
    // and it differs from the source's (whose members must never talk to these).
    cluster.cluster_id = pair_hash(
        &cluster_id(&cfg.cluster_token, cfg.config_id, &cfg.nodes.0).to_be_bytes(),
        &salt,
    ) | 1;
    cluster.put(&db, &mut batch);
    db.write(batch)?;
    db.sync()?;
    for name in STATE_CFS.iter().chain([&CF_META]) {
        db.raw().flush_cf(db.cf(name)).map_err(StoreError::from)?;
    }
    drop(db);
    Ok(Restored {
        data_dir: staging.to_path_buf(),
        pid: cfg.pid,
        source_cluster_id,
        cluster_id: cluster.cluster_id,
        revision: meta.revision,
        keys: meta.keys,
        state_hash: meta.hash,
        counts: STATE_CFS
            .iter()
            .map(|s| s.to_string())
            .zip(counts)
            .collect(),
        tail_applied,
        undecided_applied,
    })
}

type Seeded = (u64, SmMeta, Vec<u64>, Vec<u8>, u64, u64);

fn seed_from_file(db: &Db, path: &Path) -> Result<Seeded, RestoreError> {
    let file = std::fs::File::open(path).map_err(|e| {
        RestoreError::Usage(format!("cannot open snapshot {}: {e}", path.display()))
    })?;
    let mut reader = Reader::open(std::io::BufReader::with_capacity(1 << 20, file))?;
    let h = reader.header().clone();
    // The file's families, as indices into ours: one we do not know is refused.
    let map = h
        .cfs
        .iter()
        .map(|name| {
            STATE_CFS.iter().position(|s| s == name).ok_or_else(|| {
                RestoreError::Inconsistent(format!(
                    "it carries column family {name:?}, which this kvd does not know"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta: SmMeta = decode(&h.sm_meta)
        .map_err(|e| RestoreError::Inconsistent(format!("state-machine meta: {e}")))?;
    let described = (
        meta.revision,
        meta.keys,
        meta.hash,
        meta.applied.config_id,
        meta.applied.index,
    );
    if described
        != (
            h.revision,
            h.keys,
            h.state_hash,
            h.applied_config_id,
            h.applied_index,
        )
    {
        return Err(RestoreError::Inconsistent(
            "the header and the state-machine meta disagree".into(),
        ));
    }
    let mut seeder = Seeder::new(db);
    while let Some(item) = reader.next_item()? {
        seeder.item(map[usize::from(item.cf)], &item.key, &item.value)?;
    }
    let trailer = reader.trailer().expect("set at the end").clone();
    let counts = seeder.finish(&meta)?;
    Ok((h.cluster_id, meta, counts, trailer.sha256.to_vec(), 0, 0))
}

/// The disaster path: the survivor's applied state, plus every entry its own log holds past
/// it, decided or only accepted (etcd's `--force-new-cluster` commits its whole log too).
/// An acknowledged write was accepted by a majority, so the survivor holds it unless it was
/// not among that majority: then it is lost. An accepted entry the lost majority never chose
/// is applied anyway: its writes were answered `indeterminate` at most (kvd answers
/// `unavailable` only for writes never handed to consensus), and retried copies of one
/// write apply once (dedup).
fn seed_from_data_dir(db: &Db, cfg: &Config, dir: &Path) -> Result<Seeded, RestoreError> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(dir, &cfg.data_dir) || !dir.join("CURRENT").exists() {
        return Err(RestoreError::Usage(format!(
            "--from-data-dir {} must be an existing kvd data dir other than --data-dir",
            dir.display()
        )));
    }
    let src = Db::open(dir).map_err(|e| {
        RestoreError::Usage(format!(
            "cannot open the survivor's data dir {} (is a kvd still running on it?): {e}",
            dir.display()
        ))
    })?;
    let Some(src_cluster) = ClusterMeta::load(&src)? else {
        return Err(RestoreError::Usage(format!(
            "{} holds no replica identity: not a kvd data dir",
            dir.display()
        )));
    };
    if src_cluster.lifecycle == Lifecycle::Joining {
        return Err(RestoreError::Usage(format!(
            "the replica in {} was still joining: it holds no state to rebuild from",
            dir.display()
        )));
    }
    resume_interrupted_install(&src)?;
    let view = StateView::open(&src).map_err(|e| match e {
        ViewError::Store(e) => RestoreError::Store(e),
        other => RestoreError::Usage(other.to_string()),
    })?;
    let meta = view.meta;
    let mut seeder = Seeder::new(db);
    for item in view.items() {
        let item = item?;
        seeder.item(usize::from(item.cf), &item.key, &item.value)?;
    }
    let counts = seeder.finish(&meta)?;
    drop(view);
    // The entries past the applied position, from the survivor's own log (a StopSign is
    // stored apart from the entries: never applied).
    let c = meta.applied.config_id;
    let log = read_log_meta(&src, c)?;
    let end = log.log_end as u64;
    // The state machine over the copied state, positioned where the survivor was.
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(CF_META), b"sm", encode(&meta));
    db.write(batch)?;
    let mut sm = StateMachine::load(db.clone(), cfg.dedup_limits(), cfg.history_limits())?;
    let mut at = meta.applied.index;
    while at < end {
        let to = (at + 2048).min(end);
        let Some(entries) = read_log_range(&src, c, at as usize, to as usize)? else {
            break;
        };
        sm.apply(c, &entries, &|_| false)?;
        at = to;
    }
    let decided = (log.decided as u64).clamp(meta.applied.index, at);
    let tail_applied = decided - meta.applied.index;
    let undecided_applied = at - decided;
    let meta = sm.meta();
    let mut counts = counts;
    if tail_applied > 0 {
        // Applying changed the families' contents: count them as they now are.
        counts = STATE_CFS
            .iter()
            .map(|name| {
                db.raw()
                    .iterator_cf(db.cf(name), rocksdb::IteratorMode::Start)
                    .count() as u64
            })
            .collect();
    }
    let mut salt = b"force-new-cluster".to_vec();
    for v in [src_cluster.cluster_id, meta.revision, meta.hash] {
        salt.extend_from_slice(&v.to_be_bytes());
    }
    Ok((
        src_cluster.cluster_id,
        meta,
        counts,
        salt,
        tail_applied,
        undecided_applied,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{LogCmd, Op, ReqId};
    use crate::state_machine::{DedupLimits, HistoryLimits};

    fn config(pid: u64, nodes: &str, dir: &Path) -> Config {
        use clap::Parser;
        let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
        Config::parse_from([
            "kvd",
            "--pid",
            &pid.to_string(),
            "--nodes",
            nodes,
            "--peers",
            peers,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
    }

    /// A store with `n` puts applied (two of them overwrite), as a replica would hold it.
    fn source(dir: &Path, n: u64) -> SmMeta {
        let cfg = config(1, "1", dir);
        let db = Db::open(dir).unwrap();
        let mut sm = StateMachine::load(db, cfg.dedup_limits(), cfg.history_limits()).unwrap();
        let start = Position {
            config_id: 1,
            index: 0,
        };
        sm.set_applied(start).unwrap();
        let ops = (0..n)
            .map(|i| Op::Put {
                req: ReqId {
                    client: 7,
                    seq: i + 1,
                    ts_ms: 1000 + i,
                },
                key: format!("k{}", i % (n - 2)).into_bytes(),
                value: format!("v{i}").into_bytes(),
            })
            .collect();
        sm.apply(1, &[LogCmd { ops }], &|_| false).unwrap();
        sm.meta()
    }

    fn restored_meta(dir: &Path) -> (SmMeta, ClusterMeta) {
        let db = Db::open(dir).unwrap();
        let sm = StateMachine::load(
            db.clone(),
            DedupLimits {
                ttl_ms: 1,
                max_records: 1,
            },
            HistoryLimits::default(),
        )
        .unwrap();
        (sm.meta(), ClusterMeta::load(&db).unwrap().unwrap())
    }

    #[test]
    fn a_file_restores_the_same_state_at_position_zero_under_a_new_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let meta = source(&src, 50);
        let file = tmp.path().join("s.snap");
        {
            let db = Db::open(&src).unwrap();
            super::super::write_file(&db, 0xabcd, &file).unwrap();
        }
        let mut ids = Vec::new();
        for pid in [1, 2] {
            let dir = tmp.path().join(format!("data-{pid}"));
            let r = restore(&Source::File(file.clone()), &config(pid, "1,2,3", &dir)).unwrap();
            assert_eq!(
                (r.revision, r.keys, r.state_hash),
                (meta.revision, meta.keys, meta.hash)
            );
            assert_eq!(r.source_cluster_id, 0xabcd);
            assert!(!staging_dir(&dir).exists());
            let (m, cluster) = restored_meta(&dir);
            assert_eq!((m.revision, m.keys, m.hash), (meta.revision, 48, meta.hash));
            assert_eq!(
                m.applied,
                Position {
                    config_id: 1,
                    index: 0
                }
            );
            assert_eq!((cluster.pid, cluster.members.clone()), (pid, vec![1, 2, 3]));
            assert_eq!(cluster.lifecycle, Lifecycle::Serving);
            ids.push(cluster.cluster_id);
        }
        assert_eq!(
            ids[0], ids[1],
            "members restored from one file agree on the cluster id"
        );
        assert_ne!(ids[0], cluster_id("omnikv", 1, &[1, 2, 3]));
        // The target must be free.
        let used = tmp.path().join("data-1");
        let e = restore(&Source::File(file), &config(1, "1,2,3", &used)).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn a_survivor_restores_its_applied_state_and_its_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let meta = source(&src, 20);
        {
            // A replica identity, and two entries in its log past the applied position, the
            // first known decided.
            let db = Db::open(&src).unwrap();
            let cfg = config(1, "1,2,3", &src);
            crate::node::load_or_bootstrap(&db, &cfg).unwrap();
            let mut log = crate::storage::LogStore::open(db.clone(), 1).unwrap();
            use omnipaxos::storage::Storage;
            let put = |seq: u64, k: &str| LogCmd {
                ops: vec![Op::Put {
                    req: ReqId {
                        client: 9,
                        seq,
                        ts_ms: 5000,
                    },
                    key: k.into(),
                    value: b"tail".to_vec(),
                }],
            };
            // Entry 0 is the batch `source` applied (any content: it is not applied again).
            let applied = LogCmd {
                ops: vec![Op::Barrier { origin: 1, id: 1 }],
            };
            log.append_entries(vec![applied, put(1, "t1"), put(2, "t2")])
                .unwrap();
            log.set_decided_idx(2).unwrap();
            db.sync().unwrap();
        }
        let dir = tmp.path().join("new");
        let r = restore(&Source::DataDir(src.clone()), &config(1, "1", &dir)).unwrap();
        assert_eq!((r.tail_applied, r.undecided_applied), (1, 1));
        assert_eq!(r.revision, meta.revision + 2);
        let (m, cluster) = restored_meta(&dir);
        assert_eq!(m.keys, meta.keys + 2);
        assert_eq!(cluster.members, vec![1]);
        // The survivor itself is left as it was.
        let db = Db::open(&src).unwrap();
        let sm = StateMachine::load(
            db,
            DedupLimits {
                ttl_ms: 1,
                max_records: 1,
            },
            HistoryLimits::default(),
        )
        .unwrap();
        assert_eq!(sm.meta().revision, meta.revision);
    }
}
