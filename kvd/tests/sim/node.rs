//! One simulated replica: kvd's shipped `Replica` over a real RocksDB in its own directory,
//! bootstrapped by kvd's own code (`node::load_or_bootstrap` from a parsed `Config`), with
//! crashes (the process dies: what RocksDB wrote reaches the disk) and power cuts (only what
//! was synced survives: the store runs with a buffered WAL and the directory is copied as the
//! disk holds it, before the process "dies").

use crate::net::{SharedNet, SimPeers};
use clap::Parser;
use kvd::membership::Lifecycle;
use kvd::metrics::Metrics;
use kvd::replica::{Defect, Replica, Timers};
use kvd::storage::Db;
use kvd::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The simulation's time unit: one step is one tick of every replica.
pub const TICK: Duration = Duration::from_millis(10);

/// The loop's timers in the simulation: kvd's rules, on the scale of a few steps.
pub fn sim_timers() -> Timers {
    Timers {
        tick: TICK,
        retry: TICK * 30,
        catchup: TICK * 10,
        checkpoint_retry: TICK * 3,
        announce_every: TICK * 5,
        straggler_every: TICK * 10,
        straggle_grace: TICK * 20,
        quorum_wait: TICK * 30,
    }
}

/// Settings every replica of one world shares.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub initial_members: Vec<u64>,
    pub snapshot_interval: u64,
    pub snapshot_keep: u64,
    pub election_ticks: u64,
    pub resend_ticks: u64,
    pub dedup_ttl_secs: u64,
    pub dedup_max_records: usize,
    pub max_apply: usize,
    pub defect: Option<Defect>,
}

pub struct SimNode {
    pub pid: u64,
    base: PathBuf,
    dir: tempfile::TempDir,
    pub replica: Option<Replica<SimPeers>>,
    /// A handle on the replica's store for the checks (the same RocksDB instance).
    pub db: Option<Db>,
    pub metrics: Arc<Metrics>,
    /// Decided entries already shown to the checker: (config, next index).
    pub observed: (u32, u64),
    /// Steps this replica skips (a paused process), until this step.
    pub paused_until: u64,
    /// The leader it saw last (leader changes are counted).
    pub leader: Option<u64>,
    /// A crash due in its next iteration, at this persistence step (`kvd::failpoint`), and
    /// whether it is a power cut.
    pub crash_at: Option<(&'static str, bool)>,
    /// A crash at this persistence step whenever an iteration reaches it (then disarmed), and
    /// whether it is a power cut; iterations that do not reach it go on.
    pub crash_when_reached: Option<(&'static str, bool)>,
    /// Its lifecycle when last observed (joins and retirements are counted as it changes).
    pub lifecycle_seen: Option<Lifecycle>,
}

impl SimNode {
    /// A replica with an empty data dir: a member of the initial configuration, or (`joiner`)
    /// a new replica started with a later CONFIG_ID that waits to be added.
    pub fn new(pid: u64, base: &Path, s: &NodeSettings, joiner: bool) -> SimNode {
        let dir = tempfile::Builder::new()
            .prefix("omnikv-sim-")
            .tempdir_in(base)
            .expect("tempdir");
        let cfg = config(pid, dir.path(), s, joiner);
        let db = Db::open_simulated(dir.path()).expect("open rocksdb");
        kvd::node::load_or_bootstrap(&db, &cfg).expect("bootstrap");
        drop(db);
        SimNode {
            pid,
            base: base.to_path_buf(),
            dir,
            replica: None,
            db: None,
            metrics: Arc::new(Metrics::new()),
            observed: (0, 0),
            paused_until: 0,
            leader: None,
            crash_at: None,
            crash_when_reached: None,
            lifecycle_seen: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    pub fn replica(&self) -> &Replica<SimPeers> {
        self.replica.as_ref().expect("replica is up")
    }

    pub fn replica_mut(&mut self) -> &mut Replica<SimPeers> {
        self.replica.as_mut().expect("replica is up")
    }

    pub fn lifecycle(&self) -> Option<Lifecycle> {
        self.replica.as_ref().map(|r| r.meta().lifecycle)
    }

    /// Starts (or restarts) the replica from what its directory holds, as kvd does.
    /// `unix_ms` is the wall clock the process reads at start.
    pub fn start(
        &mut self,
        s: &NodeSettings,
        net: &SharedNet,
        now: Instant,
        unix_ms: u64,
        seed: u64,
    ) {
        let db = Db::open_simulated(self.dir.path()).expect("open rocksdb");
        let meta = kvd::membership::ClusterMeta::load(&db)
            .expect("load meta")
            .expect("bootstrapped");
        let cfg = config(self.pid, self.dir.path(), s, meta.config_id != 1);
        let mut lc = kvd::node::loop_config(&cfg, now, unix_ms, seed);
        lc.timers = sim_timers();
        lc.max_apply = s.max_apply;
        lc.defect = s.defect;
        // Checkpoints are written inline: a run stays a function of its seed.
        lc.install_on_thread = false;
        self.metrics = Arc::new(Metrics::new());
        let peers = SimPeers::new(self.pid, net.clone());
        let replica = Replica::new(lc, meta, db.clone(), peers, self.metrics.clone(), now)
            .expect("start replica");
        self.replica = Some(replica);
        self.db = Some(db);
        self.observed = (0, 0);
        self.leader = None;
    }

    /// The process dies: memory is lost; what RocksDB handed to the OS stays (closing the
    /// store writes its WAL buffer, as the kernel keeps a killed process's writes).
    pub fn crash(&mut self) {
        self.replica = None;
        self.db = None;
    }

    /// Power cut: only what was synced survives. The store keeps unsynced WAL writes in the
    /// process (buffered WAL), so the directory as the disk holds it now is the synced state:
    /// it is copied, then the process dies, and the copy becomes the data dir. (RocksDB hands
    /// its WAL buffer to the OS unsynced once it holds about 1 MiB; the simulator writes far
    /// less between two syncs, so here that never happens.)
    pub fn power_cut(&mut self) {
        if let Some(db) = &self.db {
            // No flush or compaction may change the files while they are copied.
            db.raw().cancel_all_background_work(true);
        }
        let copy = tempfile::Builder::new()
            .prefix("omnikv-sim-")
            .tempdir_in(&self.base)
            .expect("tempdir");
        copy_store(self.dir.path(), copy.path());
        self.crash();
        self.dir = copy;
    }
}

/// Copies a data dir's files, and its subdirectories (the checkpoint copies kept for peers,
/// `checkpoints-out`), as a power cut leaves them.
fn copy_store(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read data dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "LOCK" || name.to_string_lossy().starts_with("LOG") {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::create_dir_all(to.join(&name)).expect("create a store subdirectory");
            copy_store(&entry.path(), &to.join(&name));
            continue;
        }
        match std::fs::copy(entry.path(), to.join(&name)) {
            Ok(_) => {}
            // Deleted as obsolete between the listing and the copy.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copy a store file: {e}"),
        }
    }
}

/// kvd's configuration of replica `pid`, parsed from flags as kvd parses them.
fn config(pid: u64, dir: &Path, s: &NodeSettings, joiner: bool) -> Config {
    let nodes: Vec<String> = s.initial_members.iter().map(u64::to_string).collect();
    let args = [
        "kvd".to_string(),
        format!("--pid={pid}"),
        format!("--nodes={}", nodes.join(",")),
        format!("--config-id={}", if joiner { 2 } else { 1 }),
        format!("--data-dir={}", dir.display()),
        "--peer-template=sim-{pid}:7000".into(),
        "--cluster-token=sim".into(),
        format!("--snapshot-interval={}", s.snapshot_interval),
        format!("--snapshot-keep={}", s.snapshot_keep),
        format!("--election-ticks={}", s.election_ticks),
        format!("--resend-ticks={}", s.resend_ticks),
        format!("--dedup-ttl-secs={}", s.dedup_ttl_secs),
        format!("--dedup-max-records={}", s.dedup_max_records),
        "--min-free-bytes=0".into(),
    ];
    Config::try_parse_from(args).expect("valid kvd flags")
}
