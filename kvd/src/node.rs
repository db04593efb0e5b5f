//! Wiring one replica together: open RocksDB, bootstrap or load the persisted identity and
//! configuration, start the peer transport, the consensus loop thread and the HTTP API.

use crate::api::{router, ApiState};
use crate::config::Config;
use crate::inbox::Input;
use crate::membership::{cluster_id, start_over, ClusterMeta, Lifecycle};
use crate::metrics::Metrics;
use crate::replica::{Drained, LoopConfig, Replica, Timers};
use crate::storage::{Db, StoreError};
use crate::tls::listener::TlsListener;
use crate::tls::peer::PeerTls;
use crate::transport::{self, Identity, TcpPeers, TransportCtx};
use crate::watch::Hub;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Inbox capacity of the consensus loop.
const INBOX: usize = 64 * 1024;
/// Most entries applied per iteration (and served per FetchEntries).
const MAX_APPLY: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate, key or CA file that cannot be used (the message names it).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Loads the persisted identity and configuration, or bootstraps them from `cfg`: as a
/// member of the initial configuration (CONFIG_ID 1), or as a joiner (an empty replica
/// started with a later CONFIG_ID never starts a configuration on its own). A removed
/// replica whose env names it in a later configuration starts over as a joiner, its old
/// data wiped (`ClusterMeta::starts_over`).
pub fn load_or_bootstrap(db: &Db, cfg: &Config) -> Result<ClusterMeta, NodeError> {
    if let Some(meta) = ClusterMeta::load(db)? {
        if meta.pid != cfg.pid {
            return Err(NodeError::Config(format!(
                "data dir {} belongs to pid {}, not {}",
                cfg.data_dir.display(),
                meta.pid,
                cfg.pid
            )));
        }
        if meta.starts_over(cfg.config_id, &cfg.nodes.0) {
            let fresh = meta.starting_over();
            start_over(db, &fresh)?;
            info!(
                removed_by = meta.config_id,
                env_config = cfg.config_id,
                env_members = ?cfg.nodes.0,
                "this replica was removed by configuration {}, and CONFIG_ID {} names it again: \
                 its old data is wiped; it starts over as a joiner, waiting for the members to \
                 announce the configuration that adds it",
                meta.config_id,
                cfg.config_id
            );
            return Ok(fresh);
        }
        if meta.members != cfg.nodes.0 || meta.config_id != cfg.config_id {
            info!(persisted_config = meta.config_id, persisted_members = ?meta.members,
                  lifecycle = ?meta.lifecycle, env_config = cfg.config_id, env_members = ?cfg.nodes.0,
                  "using the persisted configuration (env only bootstraps an empty data dir)");
        }
        return Ok(meta);
    }
    let storage_id = rand::random::<u64>() | 1;
    let meta = if cfg.config_id > 1 {
        info!(
            env_config = cfg.config_id,
            "empty data dir and CONFIG_ID > 1: starting as a joiner; waiting for the members \
             to announce the configuration"
        );
        ClusterMeta::joiner(cfg.pid, storage_id)
    } else {
        if !cfg.nodes.0.contains(&cfg.pid) {
            return Err(NodeError::Config(format!(
                "pid {} is not in NODES {:?}: an empty replica bootstraps only as a member of the \
                 initial configuration (start it with CONFIG_ID > 1 to join a running cluster)",
                cfg.pid, cfg.nodes.0
            )));
        }
        let mut addrs = std::collections::BTreeMap::new();
        for &pid in &cfg.nodes.0 {
            match cfg.peer_address(pid) {
                Some(a) => {
                    addrs.insert(pid, a);
                }
                None if pid == cfg.pid => {}
                None => {
                    return Err(NodeError::Config(format!(
                        "no address for peer {pid}: give --peers/KVD_PEERS or --peer-template/KVD_PEER_TEMPLATE"
                    )))
                }
            }
        }
        let m = ClusterMeta {
            cluster_id: cluster_id(&cfg.cluster_token, cfg.config_id, &cfg.nodes.0),
            storage_id,
            pid: cfg.pid,
            genesis_config_id: cfg.config_id,
            genesis_members: cfg.nodes.0.clone(),
            config_id: cfg.config_id,
            members: cfg.nodes.0.clone(),
            addrs,
            lifecycle: Lifecycle::Serving,
            last_transition: None,
        };
        info!(cluster_id = format!("{:016x}", m.cluster_id), members = ?m.members, config_id = m.config_id, "bootstrapped a new replica");
        m
    };
    meta.save_synced(db)?;
    Ok(meta)
}

/// Ends the process when the consensus loop has not come round for `stall_secs`: a loop
/// blocked in storage (a full or failing disk can stall RocksDB writes indefinitely) would
/// otherwise hold clients forever while looking alive. A restart recovers from the synced log.
fn spawn_watchdog(
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
    started: std::time::Instant,
    stall_secs: u64,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = started.elapsed().as_millis() as u64;
            let last = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) > stall_secs * 1000 {
                tracing::error!(
                    stalled_secs = (now - last) / 1000,
                    "consensus loop stalled (storage not answering: disk full or failing?); \
                     exiting so that a restart recovers"
                );
                std::process::abort();
            }
        })?;
    Ok(())
}

/// The consensus loop's settings from kvd's configuration. `started` and `started_unix_ms`
/// are the loop's clock and the wall clock at start; `seed` seeds its RNG.
pub fn loop_config(cfg: &Config, started: Instant, started_unix_ms: u64, seed: u64) -> LoopConfig {
    let (peers, template) = (cfg.peers.0.clone(), cfg.peer_template.clone());
    LoopConfig {
        pid: cfg.pid,
        cluster_token: cfg.cluster_token.clone(),
        // Env (explicit map, then template) names a member's address; else what was announced.
        peer_address: Arc::new(move |pid| {
            peers
                .get(&pid)
                .cloned()
                .or_else(|| crate::config::from_template(template.as_deref()?, pid))
        }),
        timers: Timers {
            tick: cfg.tick(),
            retry: Duration::from_millis(cfg.retry_ms),
            ..Timers::default()
        },
        election_ticks: cfg.election_ticks,
        resend_ticks: cfg.resend_ticks,
        snapshot_interval: cfg.snapshot_interval,
        snapshot_keep: cfg.snapshot_keep,
        max_inflight: cfg.max_inflight,
        max_apply: MAX_APPLY,
        data_dir: cfg.data_dir.clone(),
        min_free_bytes: cfg.min_free_bytes,
        started,
        started_unix_ms,
        seed,
        defect: test_defect(),
        max_leases: cfg.max_leases,
        legacy_lease_checkpoints: cfg.legacy_lease_checkpoints,
        install_on_thread: true,
        dedup: cfg.dedup_limits(),
        history: cfg.history_limits(),
        watch_hub: Hub::new(
            cfg.watch_buffer as usize,
            cfg.max_watchers,
            Default::default(),
        ),
    }
}

/// Asks the consensus loop to drain (`Input::Drain`) and waits for it, at most `timeout`
/// (plus a margin for a loop that died): a leader hands leadership to the most up-to-date
/// connected member, and new client requests are refused (`unavailable`) from now on, so
/// clients move to another replica instead of waiting out an election.
async fn drain(inbox: &std::sync::mpsc::SyncSender<Input>, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let started = Instant::now();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let input = Input::Drain {
        deadline: started + timeout,
        reply,
    };
    if inbox.try_send(input).is_err() {
        warn!("consensus loop busy or gone: stopping without a leader hand-off");
        return;
    }
    let waited = tokio::time::timeout(timeout + Duration::from_millis(500), answer).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match waited {
        Ok(Ok(Drained::NotLeading)) => info!("stopping: not the leader, nothing to hand over"),
        Ok(Ok(Drained::HandedTo { to, .. })) => {
            info!(to, elapsed_ms, "stopping: leadership handed over")
        }
        Ok(Ok(Drained::Failed(why))) => {
            warn!(elapsed_ms, reason = %why, "stopping without a leader hand-off")
        }
        Ok(Err(_)) | Err(_) => warn!(elapsed_ms, "no answer to the drain: stopping anyway"),
    }
}

/// Runs a replica on already-bound listeners until `shutdown` resolves; then it drains
/// (leader hand-off, bounded by `--handoff-timeout-ms`) and stops.
pub async fn serve(
    cfg: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    // Certificates first: an unusable file stops the start before anything else happens.
    let client_tls = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::watch_client_api(
            cert.clone(),
            key.clone(),
            cfg.client_ca_file.clone(),
        )?),
        _ => None,
    };
    let peer_tls = match (&cfg.peer_cert_file, &cfg.peer_key_file, &cfg.peer_ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(PeerTls::start(cert.clone(), key.clone(), ca.clone())?)
        }
        _ => None,
    };
    // Likewise the users: a bad auth file stops the start.
    let auth = crate::auth::Auth::start(&cfg).map_err(|e| NodeError::Config(e.to_string()))?;
    // etcd's API, served over TLS with the client API's certificate when there is one, and
    // authenticating against the same users (etcd::auth).
    let etcd_listener =
        match &cfg.etcd_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                NodeError::Config(format!("binding the etcd API address {addr}: {e}"))
            })?),
            None => None,
        };
    let client_addr = client_listener.local_addr()?;
    if client_tls.is_none() && !client_addr.ip().is_loopback() {
        warn!(
            "client API is plaintext on {client_addr}: anyone who can reach it can read and \
             write; see docs/security.md"
        );
    }
    if let Some(etcd_addr) = etcd_listener.as_ref().map(TcpListener::local_addr) {
        let etcd_addr = etcd_addr?;
        if client_tls.is_none() && !etcd_addr.ip().is_loopback() {
            warn!(
                "etcd API is plaintext on {etcd_addr}: anyone who can reach it can read and \
                 write, or see the tokens clients send; see docs/security.md"
            );
        }
    }
    let peer_addr = peer_listener.local_addr()?;
    if peer_tls.is_none() && !peer_addr.ip().is_loopback() {
        warn!(
            "peer transport is plaintext on {peer_addr}: anyone who can reach it can pose as a \
             replica; see docs/security.md"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = Db::open_with(&cfg.data_dir, cfg.buffered_wal)?;
    let meta = load_or_bootstrap(&db, &cfg)?;
    let metrics = Arc::new(Metrics::new());
    let (cluster_id, config_id) = (meta.cluster_id, meta.config_id);
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
        peer_tls.clone(),
        peer_listener.local_addr()?,
    );
    tokio::spawn(transport::serve_inbound(peer_listener, ctx.clone()));

    let heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    if cfg.loop_stall_secs > 0 {
        spawn_watchdog(heartbeat.clone(), started, cfg.loop_stall_secs)?;
    }
    let loop_cfg = loop_config(
        &cfg,
        started,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        rand::random(),
    );
    // The hub counts its streams in the exported gauge.
    let watch_hub = Hub::new(
        cfg.watch_buffer as usize,
        cfg.max_watchers,
        metrics.watchers.clone(),
    );
    let loop_cfg = LoopConfig {
        watch_hub: watch_hub.clone(),
        ..loop_cfg
    };
    let replica = Replica::new(
        loop_cfg,
        meta,
        db.clone(),
        TcpPeers::new(tokio::runtime::Handle::current(), ctx.clone()),
        metrics.clone(),
        started,
    )
    .map_err(NodeError::Config)?;
    let loop_thread = std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || crate::consensus_thread::run(replica, inbox_rx, heartbeat, started))?;

    let state = ApiState {
        inbox: inbox_tx.clone(),
        metrics,
        db: db.clone(),
        watch_hub,
        max_value_bytes: cfg.max_value_bytes,
        default_timeout: Duration::from_millis(cfg.request_timeout_ms),
        auth,
    };
    info!(pid = cfg.pid, client = %client_addr, peer = %peer_addr,
          client_tls = client_tls.is_some(), peer_tls = peer_tls.is_some(), "kvd serving");
    // Told once the drain is done: etcd's API stops with the HTTP API.
    let (etcd_stop_tx, etcd_stop_rx) = tokio::sync::watch::channel(false);
    let etcd = match etcd_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let scheme = if client_tls.is_some() {
                "https"
            } else {
                "http"
            };
            let etcd_state = crate::etcd::EtcdState::new(
                state.clone(),
                cluster_id,
                cfg.pid,
                format!("{scheme}://{addr}"),
                cfg.data_dir.clone(),
                peer_tls.is_some(),
                config_id,
            );
            info!(etcd = %addr, tls = client_tls.is_some(), "serving etcd's v3 API");
            let mut stop_rx = etcd_stop_rx;
            Some(tokio::spawn(crate::etcd::serve(
                listener,
                etcd_state,
                client_tls.clone(),
                async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    // On the stop signal: drain first (a leader hands leadership over, new requests are
    // refused), then stop taking connections and let in-flight requests finish.
    let drain_inbox = inbox_tx.clone();
    let handoff_timeout = Duration::from_millis(cfg.handoff_timeout_ms);
    let stop = async move {
        shutdown.await;
        drain(&drain_inbox, handoff_timeout).await;
        let _ = etcd_stop_tx.send(true);
    };
    let app = router(state).into_make_service_with_connect_info::<crate::client_conn::ClientConn>();
    match client_tls {
        None => {
            axum::serve(client_listener, app)
                .with_graceful_shutdown(stop)
                .await?
        }
        Some(config) => {
            axum::serve(TlsListener::new(client_listener, config)?, app)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    if let Some(etcd) = etcd {
        // Open streams (watches, keepalives) would hold a graceful stop open: calls in flight
        // get a moment to finish, then the streams are cut (etcd clients reconnect).
        let abort = etcd.abort_handle();
        match tokio::time::timeout(Duration::from_millis(500), etcd).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "etcd API server ended with an error"),
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
    }
    info!("client API stopped; stopping the consensus loop");
    if inbox_tx.send(Input::Shutdown).is_err() {
        warn!("consensus loop already gone");
    }
    let _ = tokio::task::spawn_blocking(move || loop_thread.join()).await;
    Ok(())
}

/// The deliberate defect `KVD_TEST_DEFECT` names, for omnikv's own tests (the chaos test shows
/// its checker catches a deposed leader serving reads); never set in a deployment.
fn test_defect() -> Option<crate::replica::Defect> {
    let name = std::env::var("KVD_TEST_DEFECT").ok()?;
    match crate::replica::Defect::parse(&name) {
        Some(d) => {
            tracing::warn!(defect = %name, "KVD_TEST_DEFECT is set: this replica runs with a deliberate defect and is NOT safe to use");
            Some(d)
        }
        None => {
            tracing::warn!(defect = %name, "KVD_TEST_DEFECT names no defect: ignored");
            None
        }
    }
}
