//! Leases: `POST /v1/lease` (grant), `POST /v1/lease/{id}/keepalive`, `DELETE /v1/lease/{id}`
//! (revoke), `GET /v1/lease` and `GET /v1/lease/{id}`. Grants, keepalives and revokes are
//! writes (one log entry each, deduplicated like every write). Listing reads the answering
//! replica's applied state, after a linearizable read unless `consistency=local`: once that
//! read is answered here, that state holds every write acknowledged before the request.

use super::gate::Caller;
use super::kv::{lease_not_found as not_found, submit_write};
use super::query::QueryParams;
use super::{ask, err, write_id, ApiState, Error};
use crate::auth::Call;
use crate::command::{KeyRange, LeaseOp, ReadOpts};
use crate::inbox::{ClientRequest, LeaseInfo, WriteAnswer, WriteKind};
use crate::state_machine::{LeaseResult, OpResult};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use omnikv_common::api::ErrorCode;
use omnikv_common::kv::Bytes64;
use omnikv_common::lease::{
    GrantRequest, LeaseGranted, LeaseList, LeaseRevoked, LeaseStatus, MAX_TTL_SECS, MIN_TTL_SECS,
};
use std::time::Instant;

/// Largest grant body accepted.
const MAX_GRANT_BODY: usize = 4096;
/// Largest id: etcd's ids are positive int64s.
const MAX_ID: u64 = i64::MAX as u64;

fn parse_id(raw: &str) -> Result<u64, Error> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| (1..=MAX_ID).contains(id))
        .ok_or_else(|| {
            err(
                ErrorCode::InvalidRequest,
                format!("{raw:?} is not a lease id (a decimal number in 1..2^63)"),
            )
        })
}

/// Submits lease operation `op` as a write, timed from `started`.
async fn lease_write(
    state: &ApiState,
    headers: &HeaderMap,
    op: LeaseOp,
    started: Instant,
) -> Result<WriteAnswer, Error> {
    submit_write(state, headers, WriteKind::Lease(op), "lease", started).await
}

pub(crate) async fn grant(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Error> {
    caller.may(Call::LeaseGrant)?;
    let started = Instant::now();
    let body: Bytes = axum::body::to_bytes(body, MAX_GRANT_BODY)
        .await
        .map_err(|_| err(ErrorCode::TooLarge, "grant body too large"))?;
    let request: GrantRequest = serde_json::from_slice(&body)
        .map_err(|e| err(ErrorCode::InvalidRequest, format!("bad grant body: {e}")))?;
    if !(1..=MAX_TTL_SECS).contains(&request.ttl) {
        return Err(err(
            ErrorCode::InvalidRequest,
            format!("ttl {} is outside 1..={MAX_TTL_SECS} seconds", request.ttl),
        ));
    }
    let mut id = request.id.unwrap_or(0);
    if id > MAX_ID {
        return Err(err(
            ErrorCode::InvalidRequest,
            "a lease id is in 1..2^63 (0 or absent: kvd picks one)",
        ));
    }
    if id == 0 {
        // Derived from the write id when the caller sent one, so its retries name the same
        // lease; else the loop derives it from the id it picks.
        if let Some((client, seq)) = write_id(&headers)? {
            id = omnikv_wire::request::lease_id_for(client, seq);
        }
    }
    let ttl = request.ttl.max(MIN_TTL_SECS);
    let op = LeaseOp::Grant {
        id,
        ttl_ms: ttl * 1000,
    };
    let answer = lease_write(&state, &headers, op, started).await?;
    match answer.results.as_deref() {
        Some([OpResult::Lease(LeaseResult::Granted { id, ttl_ms })]) => Ok(Json(LeaseGranted {
            id: *id,
            ttl: ttl_ms / 1000,
            replayed: false,
        })
        .into_response()),
        Some([OpResult::Lease(LeaseResult::Exists { id })]) => Err(err(
            ErrorCode::Rejected,
            format!("lease {id:x} exists already"),
        )),
        None if answer.outcome.succeeded && id != 0 => Ok(Json(LeaseGranted {
            id,
            ttl,
            replayed: true,
        })
        .into_response()),
        _ => Err(err(
            ErrorCode::Rejected,
            "lease not granted (its id exists)",
        )),
    }
}

pub(crate) async fn keepalive(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::LeaseKeepAlive)?;
    let started = Instant::now();
    let id = parse_id(&raw)?;
    let answer = lease_write(&state, &headers, LeaseOp::KeepAlive { id }, started).await?;
    match answer.results.as_deref() {
        Some([OpResult::Lease(LeaseResult::Renewed { id, ttl_ms })]) => Ok(Json(LeaseGranted {
            id: *id,
            ttl: ttl_ms / 1000,
            replayed: false,
        })
        .into_response()),
        None if answer.outcome.succeeded => {
            // A retry of a keepalive that was applied: the lease's TTL as it stands now.
            let info = one(&state, &headers, id).await?;
            Ok(Json(LeaseGranted {
                id,
                ttl: info.ttl_ms / 1000,
                replayed: true,
            })
            .into_response())
        }
        _ => Err(not_found(id)),
    }
}

pub(crate) async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::LeaseRevoke)?;
    let started = Instant::now();
    let id = parse_id(&raw)?;
    if caller.prefixed() {
        // Revoking deletes the lease's keys: a prefix-limited user may revoke a lease only
        // when every key attached to it is inside the prefix, as a linearizable read of the
        // lease (the time-to-live path) shows it now. A key attached between this read and
        // the revoke's application is deleted with the rest: the check cannot see it.
        let keys = lease_keys(&state, &headers, true, id).await?;
        caller.may_use_lease_keys(Call::LeaseRevoke, id, &keys)?;
    }
    let answer = lease_write(&state, &headers, LeaseOp::Revoke { id }, started).await?;
    let revision = answer.outcome.revision;
    match answer.results.as_deref() {
        Some([OpResult::Lease(LeaseResult::Ended { deleted, .. })]) => Ok(Json(LeaseRevoked {
            revision,
            deleted: Some(*deleted),
        })
        .into_response()),
        None if answer.outcome.succeeded => Ok(Json(LeaseRevoked {
            revision,
            deleted: None,
        })
        .into_response()),
        _ => Err(not_found(id)),
    }
}

/// Leases as this replica applied them (all, or `id`), after a linearizable read when asked.
pub(crate) async fn ask_leases(
    state: &ApiState,
    headers: &HeaderMap,
    linearizable: bool,
    id: Option<u64>,
    keys: bool,
) -> Result<crate::inbox::LeasesAnswer, Error> {
    if linearizable {
        // A linearizable read of nothing; the lease view is read after it.
        let nothing = KeyRange::Key(vec![0]);
        let opts = ReadOpts {
            count_only: true,
            ..ReadOpts::default()
        };
        super::kv::read(state, headers, nothing, opts, true, Instant::now()).await?;
    }
    let until = Instant::now() + state.default_timeout;
    ask(
        state,
        |reply| ClientRequest::Leases { id, keys, reply },
        until,
    )
    .await?
    .map_err(Error)
}

/// The keys attached to lease `id`, read as `GET /v1/lease/{id}?keys=true` reads them.
async fn lease_keys(
    state: &ApiState,
    headers: &HeaderMap,
    linearizable: bool,
    id: u64,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut answer = ask_leases(state, headers, linearizable, Some(id), true).await?;
    let info = answer.leases.pop().ok_or_else(|| not_found(id))?;
    Ok(info.keys.unwrap_or_default())
}

/// Lease `id` as this replica has applied it.
async fn one(state: &ApiState, headers: &HeaderMap, id: u64) -> Result<LeaseInfo, Error> {
    let mut answer = ask_leases(state, headers, false, Some(id), false).await?;
    answer.leases.pop().ok_or_else(|| not_found(id))
}

fn status(info: LeaseInfo) -> LeaseStatus {
    LeaseStatus {
        id: info.id,
        ttl: info.ttl_ms / 1000,
        remaining_ms: info.remaining_ms,
        keys: info
            .keys
            .map(|keys| keys.into_iter().map(Bytes64).collect()),
    }
}

pub(crate) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::LeaseList)?;
    let linearizable = QueryParams::parse(uri.query(), &["consistency"])?.linearizable()?;
    let answer = ask_leases(&state, &headers, linearizable, None, false).await?;
    Ok(Json(LeaseList {
        leases: answer.leases.into_iter().map(status).collect(),
        revision: answer.revision,
    })
    .into_response())
}

pub(crate) async fn time_to_live(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::LeaseTimeToLive)?;
    let id = parse_id(&raw)?;
    let query = QueryParams::parse(uri.query(), &["keys", "consistency"])?;
    let keys = query.flag("keys")?;
    let mut answer = ask_leases(&state, &headers, query.linearizable()?, Some(id), keys).await?;
    let info = answer.leases.pop().ok_or_else(|| not_found(id))?;
    if let Some(keys) = &info.keys {
        // A prefix-limited user sees the keys only when they are all inside its prefix.
        caller.may_use_lease_keys(Call::LeaseTimeToLive, id, keys)?;
    }
    Ok(Json(status(info)).into_response())
}
