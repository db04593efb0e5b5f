//! etcd's Lease service: Grant, Revoke, KeepAlive (a stream, one keepalive write per request
//! in order), TimeToLive (with keys) and Leases, as the HTTP API's lease writes and reads.
//! Like etcd, a keepalive or time-to-live of a lease that does not exist is an answer (TTL 0,
//! TTL -1), not an error.

use super::error::{invalid, LEASE_NOT_FOUND};
use super::pb::etcdserverpb as pb;
use super::{to_i64, EtcdState};
use crate::api::kv::submit_write;
use crate::api::lease::ask_leases;
use crate::auth::Call;
use crate::command::LeaseOp;
use crate::inbox::{WriteAnswer, WriteKind};
use crate::state_machine::{LeaseResult, OpResult};
use axum::http::HeaderMap;
use futures::{Stream, StreamExt};
use omnikv_common::api::ErrorCode;
use omnikv_common::lease::{MAX_TTL_SECS, MIN_TTL_SECS};
use std::pin::Pin;
use std::time::Instant;
use tonic::{Code, Request, Response, Status, Streaming};

/// Keepalive answers queued for a slow reader; the stream reads its next request only once
/// there is room (so one stream holds at most this many answers and one write in flight).
const KEEPALIVE_QUEUE: usize = 16;

pub struct LeaseService(pub EtcdState);

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

/// An etcd lease id (a positive int64) as ours.
pub(super) fn lease_id(id: i64) -> Result<u64, Status> {
    u64::try_from(id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| invalid(format!("lease id {id} is not positive")))
}

async fn lease_write(state: &EtcdState, op: LeaseOp) -> Result<WriteAnswer, Status> {
    let answer = submit_write(
        &state.api,
        &HeaderMap::new(),
        WriteKind::Lease(op),
        "lease",
        Instant::now(),
    )
    .await?;
    state.saw_config(answer.outcome.config_id);
    Ok(answer)
}

/// One keepalive: the lease's full TTL in seconds, 0 when it does not exist (etcd's answer).
async fn keep_alive(state: &EtcdState, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let answer = lease_write(state, LeaseOp::KeepAlive { id: lease_id(id)? }).await?;
    let ttl = match answer.results.as_deref() {
        Some([OpResult::Lease(LeaseResult::Renewed { ttl_ms, .. })]) => to_i64(ttl_ms / 1000),
        _ => 0,
    };
    Ok(pb::LeaseKeepAliveResponse {
        header: state.header(answer.outcome.revision),
        id,
        ttl,
    })
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.0.caller(&request)?.may(Call::LeaseGrant)?;
        let r = request.into_inner();
        let id = match r.id {
            0 => 0,
            id => lease_id(id)?,
        };
        let ttl = u64::try_from(r.ttl).unwrap_or(0).max(MIN_TTL_SECS);
        if ttl > MAX_TTL_SECS {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let answer = lease_write(
            &self.0,
            LeaseOp::Grant {
                id,
                ttl_ms: ttl * 1000,
            },
        )
        .await?;
        match answer.results.as_deref() {
            Some([OpResult::Lease(LeaseResult::Granted { id, ttl_ms })]) => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: self.0.header(answer.outcome.revision),
                    id: to_i64(*id),
                    ttl: to_i64(ttl_ms / 1000),
                    error: String::new(),
                }))
            }
            Some([OpResult::Lease(LeaseResult::Exists { .. })]) => Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            )),
            _ => Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: lease not granted",
            )),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let caller = self.0.caller(&request)?;
        caller.may(Call::LeaseRevoke)?;
        let id = lease_id(request.into_inner().id)?;
        if caller.prefixed() {
            // As the HTTP API: a prefix-limited user revokes a lease only when every key
            // attached to it (which revoking deletes) is inside the prefix.
            let mut asked =
                ask_leases(&self.0.api, &HeaderMap::new(), true, Some(id), true).await?;
            let keys = asked.leases.pop().and_then(|l| l.keys).unwrap_or_default();
            caller.may_use_lease_keys(Call::LeaseRevoke, id, &keys)?;
        }
        let answer = lease_write(&self.0, LeaseOp::Revoke { id }).await?;
        match answer.results.as_deref() {
            Some([OpResult::Lease(LeaseResult::Ended { .. })]) => {
                Ok(Response::new(pb::LeaseRevokeResponse {
                    header: self.0.header(answer.outcome.revision),
                }))
            }
            _ => Err(Status::not_found(LEASE_NOT_FOUND)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.0.caller(&request)?.may(Call::LeaseKeepAlive)?;
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_QUEUE);
        let state = self.0.clone();
        tokio::spawn(async move {
            loop {
                // Room for the answer first: a client that does not read stops being read.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let answer = match requests.next().await {
                    None => return,
                    Some(Err(_)) => return,
                    Some(Ok(r)) => keep_alive(&state, r.id).await,
                };
                let failed = answer.is_err();
                permit.send(answer);
                if failed {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|answer| (answer, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let caller = self.0.caller(&request)?;
        caller.may(Call::LeaseTimeToLive)?;
        let r = request.into_inner();
        let id = lease_id(r.id)?;
        let asked = ask_leases(&self.0.api, &HeaderMap::new(), true, Some(id), r.keys).await;
        let (found, revision) = match asked {
            Ok(mut answer) => (answer.leases.pop(), answer.revision),
            Err(e) => match e.into_api() {
                e if e.error.code == ErrorCode::NotFound => (None, 0),
                e => return Err(super::error::status(e)),
            },
        };
        if let Some(keys) = found.as_ref().and_then(|l| l.keys.as_ref()) {
            // A prefix-limited user sees the keys only when they are all inside its prefix.
            caller.may_use_lease_keys(Call::LeaseTimeToLive, id, keys)?;
        }
        let header = self.0.header(revision);
        Ok(Response::new(match found {
            Some(info) => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: to_i64(info.remaining_ms / 1000),
                granted_ttl: to_i64(info.ttl_ms / 1000),
                keys: info.keys.unwrap_or_default(),
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.0.caller(&request)?.may(Call::LeaseList)?;
        let answer = ask_leases(&self.0.api, &HeaderMap::new(), true, None, false).await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.0.header(answer.revision),
            leases: answer
                .leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: to_i64(l.id) })
                .collect(),
        }))
    }
}
