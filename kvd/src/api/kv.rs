//! One key: `PUT`, `GET` and `DELETE /v1/kv/{key}`, and the write path every write shares.

use super::convert::key_value;
use super::gate::Caller;
use super::query::QueryParams;
use super::{ask, deadline, err, key_from, write_id, ApiState, Error};
use crate::auth::Call;
use crate::command::{KeyRange, ReadOpts};
use crate::inbox::{ClientRequest, ReadAnswer, WriteAnswer, WriteKind};
use crate::state_machine::{LeaseResult, OpResult};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use omnikv_common::api::{ErrorCode, WriteResult, HEADER_INDEX};
use omnikv_common::kv::{
    HEADER_CREATE_REVISION, HEADER_MOD_REVISION, HEADER_REVISION, HEADER_VERSION,
};
use std::time::Instant;

/// Hands a write to the loop and waits for how it was applied (every write comes here).
pub(crate) async fn submit_write(
    state: &ApiState,
    headers: &HeaderMap,
    kind: WriteKind,
    op: &str,
    started: Instant,
) -> Result<WriteAnswer, Error> {
    let id = write_id(headers)?;
    let until = deadline(state, headers)?;
    let r = ask(
        state,
        |reply| ClientRequest::Write {
            kind,
            id,
            deadline: until,
            reply,
        },
        until,
    )
    .await?;
    state.metrics.observe(op, started.elapsed().as_secs_f64());
    r.map_err(Error)
}

/// A write naming lease `id`, which does not exist: nothing was written.
pub(crate) fn lease_not_found(id: u64) -> Error {
    err(ErrorCode::NotFound, format!("lease {id:x} not found"))
}

/// The error for a write that named a missing lease (nothing was written), from its results.
/// A retry answered from its remembered outcome has none (`put_key` reads its outcome).
pub(crate) fn missing_lease(answer: &WriteAnswer) -> Option<Error> {
    match answer.results.as_deref() {
        Some([OpResult::Lease(LeaseResult::NotFound { id })]) => Some(lease_not_found(*id)),
        _ => None,
    }
}

/// The answer to a single-key put or delete; the previous key when `prev` was asked.
fn write_result(answer: WriteAnswer, prev: bool) -> WriteResult {
    let o = answer.outcome;
    let prev_kv = match answer.results.as_deref() {
        Some([OpResult::Put { prev: Some(kv) }]) => Some(kv.clone()),
        Some([OpResult::Delete { prev: kvs }]) => kvs.first().cloned(),
        _ => None,
    };
    WriteResult {
        config_id: o.config_id,
        index: o.index,
        existed: o.existed,
        revision: o.revision,
        prev: prev_kv.filter(|_| prev).map(|kv| key_value(kv, false)),
        replayed: answer.results.is_none(),
    }
}

pub(crate) async fn put_key(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    caller.may(Call::Put)?;
    let started = Instant::now();
    let key = key_from(&uri)?;
    caller.may_key(Call::Put, &key)?;
    let params = QueryParams::parse(uri.query(), &["prev", "lease"])?;
    let prev = params.flag("prev")?;
    let lease = params.u64("lease")?.unwrap_or(0);
    let value = axum::body::to_bytes(body, state.max_value_bytes)
        .await
        .map_err(|_| {
            err(
                ErrorCode::TooLarge,
                format!("value exceeds the {}-byte limit", state.max_value_bytes),
            )
        })?;
    let value = value.to_vec();
    let kind = match lease {
        0 => WriteKind::Put { key, value },
        lease => WriteKind::PutLeased { key, value, lease },
    };
    let answer = submit_write(&state, &headers, kind, "put", started).await?;
    if let Some(e) = missing_lease(&answer) {
        return Err(e);
    }
    if answer.results.is_none() && !answer.outcome.succeeded {
        // A retry answered from its remembered outcome: a put fails only for its lease.
        return Err(err(ErrorCode::NotFound, "lease not found (retried write)"));
    }
    Ok(Json(write_result(answer, prev)).into_response())
}

pub(crate) async fn delete_key(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::Delete)?;
    let started = Instant::now();
    let key = key_from(&uri)?;
    caller.may_key(Call::Delete, &key)?;
    let prev = QueryParams::parse(uri.query(), &["prev"])?.flag("prev")?;
    let answer = submit_write(
        &state,
        &headers,
        WriteKind::Delete { key },
        "delete",
        started,
    )
    .await?;
    Ok(Json(write_result(answer, prev)).into_response())
}

/// Reads `range` through the loop (linearizable or local) and times it.
pub(crate) async fn read(
    state: &ApiState,
    headers: &HeaderMap,
    range: KeyRange,
    opts: ReadOpts,
    linearizable: bool,
    started: Instant,
) -> Result<ReadAnswer, Error> {
    let until = deadline(state, headers)?;
    let r = ask(
        state,
        |reply| ClientRequest::Read {
            range,
            opts,
            linearizable,
            deadline: until,
            reply,
        },
        until,
    )
    .await?
    .map_err(Error)?;
    state.metrics.observe(
        if linearizable {
            "get_linearizable"
        } else {
            "get_local"
        },
        started.elapsed().as_secs_f64(),
    );
    Ok(r)
}

/// Where this replica's state stands, through the loop: refused unless it serves the state;
/// `linearizable`, answered only once it applied every write acknowledged before the call.
pub(crate) async fn position(
    state: &ApiState,
    headers: &HeaderMap,
    linearizable: bool,
) -> Result<ReadAnswer, Error> {
    let empty = KeyRange::Span {
        start: Vec::new(),
        end: Some(Vec::new()),
    };
    let opts = ReadOpts::default();
    read(state, headers, empty, opts, linearizable, Instant::now()).await
}

pub(crate) async fn get_key(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::Get)?;
    let started = Instant::now();
    let key = key_from(&uri)?;
    caller.may_key(Call::Get, &key)?;
    let linearizable = QueryParams::parse(uri.query(), &["consistency"])?.linearizable()?;
    let r = read(
        &state,
        &headers,
        KeyRange::Key(key),
        ReadOpts::default(),
        linearizable,
        started,
    )
    .await?;
    let Some(kv) = r.result.kvs.into_iter().next() else {
        return Err(err(ErrorCode::NotFound, "key not found"));
    };
    let mut resp = Response::new(Body::from(kv.value));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_INDEX, HeaderValue::from(r.index));
    h.insert(HEADER_REVISION, HeaderValue::from(r.revision));
    h.insert(
        HEADER_CREATE_REVISION,
        HeaderValue::from(kv.create_revision),
    );
    h.insert(HEADER_MOD_REVISION, HeaderValue::from(kv.mod_revision));
    h.insert(HEADER_VERSION, HeaderValue::from(kv.version));
    Ok(resp)
}
