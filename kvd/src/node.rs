//! Wiring one replica together: open RocksDB, bootstrap or load the persisted identity and
//! configuration, start the peer transport, the consensus loop thread and the HTTP API.

use crate::api::{router, ApiState};
use crate::codec::{decode, encode};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replica::{Input, LoopConfig, Replica};
use crate::state_machine::{pair_hash, DedupLimits};
use crate::storage::{Db, StoreError, CF_META};
use crate::transport::{self, Identity, TransportCtx};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

const META_CLUSTER: &[u8] = b"cluster";
/// Inbox capacity of the consensus loop.
const INBOX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What a replica persists about itself on first start; env only bootstraps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterMeta {
    pub cluster_id: u64,
    pub storage_id: u64,
    pub pid: u64,
    pub config_id: u32,
    pub members: Vec<u64>,
}

/// The cluster identity: from the token and the initial members, as etcd derives its
/// cluster id from --initial-cluster-token and --initial-cluster.
pub fn cluster_id(token: &str, config_id: u32, members: &[u64]) -> u64 {
    let members: Vec<String> = members.iter().map(u64::to_string).collect();
    pair_hash(
        token.as_bytes(),
        format!("{config_id}:{}", members.join(",")).as_bytes(),
    )
}

/// Loads the persisted identity and configuration, or bootstraps them from `cfg`.
pub fn load_or_bootstrap(db: &Db, cfg: &Config) -> Result<ClusterMeta, NodeError> {
    if let Some(b) = db.get(CF_META, META_CLUSTER)? {
        let meta: ClusterMeta =
            decode(&b).map_err(|e| NodeError::Config(format!("corrupt cluster meta: {e}")))?;
        if meta.pid != cfg.pid {
            return Err(NodeError::Config(format!(
                "data dir {} belongs to pid {}, not {}",
                cfg.data_dir.display(),
                meta.pid,
                cfg.pid
            )));
        }
        if meta.members != cfg.nodes.0 || meta.config_id != cfg.config_id {
            info!(persisted_config = meta.config_id, persisted_members = ?meta.members,
                  env_config = cfg.config_id, env_members = ?cfg.nodes.0,
                  "using the persisted configuration (env only bootstraps an empty data dir)");
        }
        return Ok(meta);
    }
    if !cfg.nodes.0.contains(&cfg.pid) {
        return Err(NodeError::Config(format!(
            "pid {} is not in NODES {:?}: an empty replica bootstraps only as a member of the initial configuration",
            cfg.pid, cfg.nodes.0
        )));
    }
    let meta = ClusterMeta {
        cluster_id: cluster_id(&cfg.cluster_token, cfg.config_id, &cfg.nodes.0),
        storage_id: rand::random::<u64>() | 1,
        pid: cfg.pid,
        config_id: cfg.config_id,
        members: cfg.nodes.0.clone(),
    };
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(db.cf(CF_META), META_CLUSTER, encode(&meta));
    db.write_synced(batch)?;
    info!(cluster_id = format!("{:016x}", meta.cluster_id), members = ?meta.members, config_id = meta.config_id, "bootstrapped a new replica");
    Ok(meta)
}

/// Runs a replica on already-bound listeners until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = Db::open(&cfg.data_dir)?;
    let meta = load_or_bootstrap(&db, &cfg)?;
    let metrics = Arc::new(Metrics::new());
    let (inbox_tx, inbox_rx) = std::sync::mpsc::sync_channel::<Input>(INBOX);

    let ctx = TransportCtx::new(
        Identity {
            pid: cfg.pid,
            cluster_id: meta.cluster_id,
            storage_id: meta.storage_id,
        },
        cfg.max_peer_frame_bytes,
        inbox_tx.clone(),
        metrics.clone(),
        db.clone(),
    );
    let rt = tokio::runtime::Handle::current();
    let mut peers = HashMap::new();
    for &pid in meta.members.iter().filter(|&&p| p != cfg.pid) {
        let Some(addr) = cfg.peer_address(pid) else {
            return Err(NodeError::Config(format!(
                "no address for peer {pid}: give --peers/KVD_PEERS or --peer-template/KVD_PEER_TEMPLATE"
            )));
        };
        peers.insert(pid, transport::spawn_outbound(&rt, ctx.clone(), pid, addr));
    }
    let peer_addr = peer_listener.local_addr()?;
    tokio::spawn(transport::serve_inbound(peer_listener, ctx.clone()));

    let loop_cfg = LoopConfig {
        pid: cfg.pid,
        cluster_id: meta.cluster_id,
        tick: cfg.tick(),
        election_ticks: cfg.election_ticks,
        resend_ticks: cfg.resend_ticks,
        snapshot_interval: cfg.snapshot_interval,
        snapshot_keep: cfg.snapshot_keep,
        max_inflight: cfg.max_inflight,
        retry: Duration::from_millis(cfg.retry_ms),
        dedup: DedupLimits {
            ttl_ms: cfg.dedup_ttl_secs * 1000,
            max_records: cfg.dedup_max_records,
        },
    };
    let replica = Replica::new(
        loop_cfg,
        meta.config_id,
        meta.members.clone(),
        db.clone(),
        peers,
        metrics.clone(),
    )
    .map_err(NodeError::Config)?;
    let loop_thread = std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || replica.run(inbox_rx))?;

    let state = ApiState {
        inbox: inbox_tx.clone(),
        metrics,
        max_value_bytes: cfg.max_value_bytes,
        default_timeout: Duration::from_millis(cfg.request_timeout_ms),
    };
    info!(pid = cfg.pid, client = %client_listener.local_addr()?, peer = %peer_addr, "kvd serving");
    axum::serve(client_listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    info!("client API stopped; stopping the consensus loop");
    if inbox_tx.send(Input::Shutdown).is_err() {
        warn!("consensus loop already gone");
    }
    let _ = tokio::task::spawn_blocking(move || loop_thread.join()).await;
    Ok(())
}
