//! etcd's v3 gRPC API (tonic), a second front door onto the same state machine as the HTTP
//! API: each call becomes the same inbox request (`api::kv::read`, `api::kv::submit_write`,
//! `ClientRequest::Status`, ...) with the same limits, and its answer is put into etcd's
//! messages. `kv` serves the KV service, `lease` the Lease service, `watch` the Watch
//! service, `lock` the Lock service (v3lockpb), `maintenance` Status and Alarm, `cluster`
//! MemberList, `auth` Authenticate and who calls (every service asks it before it acts), `past`
//! ranges at a past revision, `tls` its connections over TLS; `error` maps our errors onto
//! etcd's gRPC codes and messages. The `.proto` files
//! (kvd/proto, a subset of etcd 3.4's) are compiled by kvd/build.rs.

mod auth;
#[cfg(test)]
mod auth_tests;
mod cluster;
mod error;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod past;
mod tls;
mod watch;

/// The code generated from kvd/proto (etcd's packages and names).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
}

use crate::api::kv::{missing_lease, submit_write};
use crate::api::ApiState;
use crate::inbox::{WriteAnswer, WriteKind};
use axum::http::HeaderMap;
use omnikv_common::kv::MAX_TXN_BODY_BYTES;
use pb::etcdserverpb::ResponseHeader;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// Streams (calls in flight, watch and keepalive streams included) one HTTP/2 connection
/// may hold open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// What every etcd service shares: the HTTP API's state (inbox, limits, metrics) and this
/// replica's identity for the response headers.
#[derive(Clone)]
pub struct EtcdState {
    pub api: ApiState,
    pub cluster_id: u64,
    /// Our pid: etcd's member id.
    pub member_id: u64,
    /// The address this API is served on, as `http://host:port` (this member's client URL).
    pub client_url: String,
    /// The data dir, whose size is etcd's `dbSize`.
    pub data_dir: PathBuf,
    /// `https` when peers speak mutual TLS, else `http` (the scheme of peer URLs).
    pub peer_scheme: &'static str,
    /// The configuration id last seen in an answer: our `raft_term` (it grows with each
    /// membership change as etcd's term grows with each election).
    term: Arc<AtomicU64>,
}

impl EtcdState {
    pub fn new(
        api: ApiState,
        cluster_id: u64,
        member_id: u64,
        client_url: String,
        data_dir: PathBuf,
        peer_tls: bool,
        config_id: u32,
    ) -> EtcdState {
        EtcdState {
            api,
            cluster_id,
            member_id,
            client_url,
            data_dir,
            peer_scheme: if peer_tls { "https" } else { "http" },
            term: Arc::new(AtomicU64::new(u64::from(config_id))),
        }
    }

    /// Notes the configuration id an answer carried.
    fn saw_config(&self, config_id: u32) {
        self.term.fetch_max(u64::from(config_id), Ordering::Relaxed);
    }

    /// A write through the HTTP API's request path (`op` names it in its metrics and log),
    /// answered with etcd's lease-not-found error when it named a lease that does not exist.
    async fn write(&self, kind: WriteKind, op: &str) -> Result<WriteAnswer, tonic::Status> {
        let answer = submit_write(&self.api, &HeaderMap::new(), kind, op, Instant::now()).await?;
        if let Some(e) = missing_lease(&answer) {
            return Err(e.into());
        }
        self.saw_config(answer.outcome.config_id);
        Ok(answer)
    }

    /// etcd's response header at `revision`.
    fn header(&self, revision: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: to_i64(revision),
            raft_term: self.term.load(Ordering::Relaxed),
        })
    }
}

/// etcd's int64 fields from our u64 (revisions, versions, lease ids never reach 2^63).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Largest gRPC message accepted: the HTTP API's transaction body cap, or a value at the
/// value cap with room for its key, whichever is larger (a bigger message is refused with
/// RESOURCE_EXHAUSTED before it is decoded).
pub fn max_message_bytes(max_value_bytes: usize) -> usize {
    MAX_TXN_BODY_BYTES.max(max_value_bytes.saturating_add(64 * 1024))
}

/// Serves etcd's API on `listener` until `shutdown` resolves; over TLS with the server
/// configuration `tls` holds at each connection (the client API's), else in plaintext.
pub async fn serve(
    listener: TcpListener,
    state: EtcdState,
    tls: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    use pb::etcdserverpb::auth_server::AuthServer;
    use pb::etcdserverpb::cluster_server::ClusterServer;
    use pb::etcdserverpb::kv_server::KvServer;
    use pb::etcdserverpb::lease_server::LeaseServer;
    use pb::etcdserverpb::maintenance_server::MaintenanceServer;
    use pb::etcdserverpb::watch_server::WatchServer;
    use pb::v3lockpb::lock_server::LockServer;
    let max = max_message_bytes(state.api.max_value_bytes);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            KvServer::new(kv::KvService(state.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(WatchServer::new(watch::WatchService(state.clone())))
        .add_service(LeaseServer::new(lease::LeaseService(state.clone())))
        .add_service(LockServer::new(lock::LockService(state.clone())))
        .add_service(MaintenanceServer::new(maintenance::MaintenanceService(
            state.clone(),
        )))
        .add_service(ClusterServer::new(cluster::ClusterService(state.clone())))
        .add_service(AuthServer::new(auth::AuthService(state)));
    match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(config) => {
            let h2 = Some(vec![b"h2".to_vec()]);
            let listener = crate::tls::listener::TlsListener::with_alpn(listener, config, h2)
                .map_err(|e| {
                    tracing::error!(error = %e, "etcd API TLS listener");
                    e
                });
            match listener {
                Ok(listener) => {
                    let incoming = tls::incoming(listener);
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                }
                // Its local address is gone: nothing to serve on.
                Err(_) => Ok(()),
            }
        }
    }
}
