//! The client HTTP API (axum): `/v1/kv/{key}`, `/v1/kv?prefix=`, `/v1/txn`, `/v1/lease`,
//! `/v1/status`, `/v1/log`, `/v1/members`, `/v1/reconfigure`, `/v1/move-leader`, `/healthz`,
//! `/readyz`, `/metrics`. Handlers never touch consensus state: they send a request to the
//! loop's inbox and wait for its answer. Every route but /healthz, /readyz (and /metrics
//! unless --metrics-auth) passes the authentication layer (`gate`) when an auth file is set.
//! The contract is docs/api.md.

#[cfg(test)]
pub(crate) mod auth_tests;
pub(crate) mod convert;
pub(crate) mod gate;
pub(crate) mod kv;
pub(crate) mod lease;
mod move_leader;
mod query;
mod range;
mod snapshot;
mod txn;
mod watch;

use crate::auth::Call;
use crate::inbox::{ClientRequest, Input};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gate::Caller;
use omnikv_common::api::{
    ApiError, ErrorCode, ReconfigureRequest, Role, HEADER_CLIENT_ID, HEADER_IDEMPOTENCY_KEY,
    HEADER_SEQ, HEADER_TIMEOUT_MS, MAX_KEY_BYTES,
};
use omnikv_common::keys::decode_key;
use std::collections::HashMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Clone)]
pub struct ApiState {
    pub inbox: SyncSender<Input>,
    pub metrics: Arc<Metrics>,
    /// The store, for watch streams reading the change history (never written here).
    pub db: crate::storage::Db,
    pub watch_hub: crate::watch::Hub,
    pub max_value_bytes: usize,
    pub default_timeout: Duration,
    /// Who may call what (`Auth::open()`: everyone, everything).
    pub auth: crate::auth::Auth,
}

/// The router over `state`.
pub fn router(state: ApiState) -> Router {
    let gate = gate::Gate {
        auth: state.auth.clone(),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/v1/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route("/v1/kv", get(range::get_range).delete(range::delete_range))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/lease", get(lease::list).post(lease::grant))
        .route(
            "/v1/lease/{id}",
            get(lease::time_to_live).delete(lease::revoke),
        )
        .route("/v1/lease/{id}/keepalive", post(lease::keepalive))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/snapshot", get(snapshot::snapshot))
        .route("/v1/status", get(status))
        .route("/v1/log", get(log))
        .route("/v1/members", get(members))
        .route("/v1/reconfigure", post(reconfigure))
        .route("/v1/move-leader", post(move_leader::move_leader))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found_route)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            gate::authenticate,
        ))
        .with_state(state)
}

pub(crate) struct Error(ApiError);

impl Error {
    /// The error as the API's JSON vocabulary has it (the etcd API maps it onto gRPC codes).
    pub(crate) fn into_api(self) -> ApiError {
        self.0
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // A body over its cap is refused before it is all read, and the connection is then
        // closed: say so, or a keep-alive client sends its next request on it and loses it.
        let close = self.0.error.code == ErrorCode::TooLarge;
        let mut response = (status, Json(self.0)).into_response();
        if close {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        response
    }
}

pub(crate) fn err(code: ErrorCode, msg: impl Into<String>) -> Error {
    Error(ApiError::new(code, msg))
}

async fn not_found_route(uri: Uri) -> Error {
    err(
        ErrorCode::InvalidRequest,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn empty_key() -> Error {
    err(ErrorCode::InvalidRequest, "empty key")
}

/// The key is the raw (percent-encoded) path after `/v1/kv/`, decoded to bytes.
pub(crate) fn key_from(uri: &Uri) -> Result<Vec<u8>, Error> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key = decode_key(raw).ok_or_else(|| {
        err(
            ErrorCode::InvalidRequest,
            "malformed percent-encoding in key",
        )
    })?;
    if key.is_empty() {
        return Err(err(ErrorCode::InvalidRequest, "empty key"));
    }
    check_key_len(&key)?;
    Ok(key)
}

/// Refuses a key over `MAX_KEY_BYTES`.
pub(crate) fn check_key_len(key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(err(
            ErrorCode::TooLarge,
            format!(
                "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, Error> {
    omnikv_wire::request::parse_u64_header(headers.get(name).map(HeaderValue::as_bytes)).map_err(
        |()| {
            err(
                ErrorCode::InvalidRequest,
                format!("header {name} must be an unsigned integer"),
            )
        },
    )
}

pub(crate) fn deadline(state: &ApiState, headers: &HeaderMap) -> Result<Instant, Error> {
    // Answer a little before the caller gives up, so it hears the verdict.
    let budget = omnikv_wire::request::time_budget(
        header_u64(headers, HEADER_TIMEOUT_MS)?,
        state.default_timeout,
    );
    Ok(Instant::now() + budget)
}

/// (client id, seq) from the headers, or from an Idempotency-Key.
pub(crate) fn write_id(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Error> {
    let client = header_u64(headers, HEADER_CLIENT_ID)?;
    let seq = header_u64(headers, HEADER_SEQ)?;
    let key = headers
        .get(HEADER_IDEMPOTENCY_KEY)
        .map(HeaderValue::as_bytes);
    omnikv_wire::request::write_id(client, seq, key).map_err(|_| {
        err(
            ErrorCode::InvalidRequest,
            format!("{HEADER_CLIENT_ID} and {HEADER_SEQ} go together and must be non-zero"),
        )
    })
}

pub(crate) async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> ClientRequest,
    until: Instant,
) -> Result<T, Error> {
    let (tx, rx) = oneshot::channel();
    match state.inbox.try_send(Input::Client(make(tx))) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            state.metrics.requests_refused.inc();
            return Err(err(
                ErrorCode::Unavailable,
                "replica overloaded: request queue full",
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(err(ErrorCode::Unavailable, "replica is shutting down"))
        }
    }
    // The loop answers by the deadline; the margin only covers a loop that died.
    let wait = until.saturating_duration_since(Instant::now()) + Duration::from_secs(2);
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(err(
            ErrorCode::Internal,
            "consensus loop dropped the request",
        )),
        Err(_) => Err(err(
            ErrorCode::Indeterminate,
            "no answer from the consensus loop in time",
        )),
    }
}

async fn status(State(state): State<ApiState>, caller: Caller) -> Result<Response, Error> {
    caller.may(Call::Status)?;
    let until = Instant::now() + state.default_timeout;
    let s = ask(&state, |reply| ClientRequest::Status { reply }, until).await?;
    Ok(Json(s).into_response())
}

async fn log(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    caller.may(Call::Log)?;
    let limit = match q.get("limit") {
        None => 50,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| {
                err(
                    ErrorCode::InvalidRequest,
                    "limit must be an integer in 0..=10000",
                )
            })?,
    };
    let until = Instant::now() + state.default_timeout;
    let v = ask(&state, |reply| ClientRequest::Log { limit, reply }, until).await?;
    Ok(Json(v).into_response())
}

async fn members(State(state): State<ApiState>, caller: Caller) -> Result<Response, Error> {
    caller.may(Call::Members)?;
    let until = Instant::now() + state.default_timeout;
    let m = ask(&state, |reply| ClientRequest::Members { reply }, until).await?;
    Ok(Json(m).into_response())
}

/// Largest reconfigure body, in bytes.
const MAX_RECONFIGURE_BYTES: usize = 64 * 1024;

/// A JSON request body of at most `max` bytes; `what` names it, `want` shows its form.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    max: usize,
    what: &str,
    want: &str,
) -> Result<T, Error> {
    if body.len() > max {
        return Err(err(
            ErrorCode::TooLarge,
            format!("{what} body over {} KiB", max / 1024),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        err(
            ErrorCode::InvalidRequest,
            format!("bad {what} body (want {want}): {e}"),
        )
    })
}

async fn reconfigure(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    caller.may(Call::Reconfigure)?;
    let request: ReconfigureRequest = json_body(
        &body,
        MAX_RECONFIGURE_BYTES,
        "reconfigure",
        r#"{"nodes": [1, 2, 3, 4]}"#,
    )?;
    let until = deadline(&state, &headers)?;
    let r = ask(
        &state,
        |reply| ClientRequest::Reconfigure {
            request,
            deadline: until,
            reply,
        },
        until,
    )
    .await?
    .map_err(Error)?;
    Ok(Json(r).into_response())
}

/// Alive: the process serves HTTP and its consensus loop answers.
async fn healthz(State(state): State<ApiState>) -> Result<&'static str, Error> {
    let until = Instant::now() + Duration::from_secs(2);
    ask(&state, |reply| ClientRequest::Status { reply }, until).await?;
    Ok("ok")
}

/// Ready: serving clients: a member holding the state that knows a leader, not catching up,
/// joining, leaving or removed (a replica in a minority partition that still knows its
/// leader stays ready: its `local` reads answer).
async fn readyz(State(state): State<ApiState>) -> Response {
    let until = Instant::now() + Duration::from_secs(2);
    match ask(&state, |reply| ClientRequest::Status { reply }, until).await {
        Ok(s)
            if matches!(s.role, Role::Leader | Role::Follower | Role::Standalone)
                && s.leader.is_some() =>
        {
            (StatusCode::OK, "ready").into_response()
        }
        Ok(s) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: role {}, leader {:?}", s.role, s.leader),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut resp = Response::new(Body::from(state.metrics.render()));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
