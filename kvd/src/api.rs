//! The client HTTP API (axum): `/v1/kv/{key}`, `/v1/status`, `/v1/log`, `/v1/members`,
//! `/v1/reconfigure`, `/healthz`, `/readyz`, `/metrics`. Handlers never touch consensus state: they send a request to the
//! loop's inbox and wait for its answer. The contract is docs/api.md.

use crate::inbox::{ClientRequest, Input, ReadValue, WriteKind};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use omnikv_common::api::{
    ApiError, ErrorCode, ReconfigureRequest, Role, HEADER_CLIENT_ID, HEADER_IDEMPOTENCY_KEY,
    HEADER_INDEX, HEADER_SEQ, HEADER_TIMEOUT_MS, MAX_KEY_BYTES,
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
    pub max_value_bytes: usize,
    pub default_timeout: Duration,
}

/// The router over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route("/v1/status", get(status))
        .route("/v1/log", get(log))
        .route("/v1/members", get(members))
        .route("/v1/reconfigure", post(reconfigure))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found_route)
        .with_state(state)
}

struct Error(ApiError);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Error {
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
fn key_from(uri: &Uri) -> Result<Vec<u8>, Error> {
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
    if key.len() > MAX_KEY_BYTES {
        return Err(err(
            ErrorCode::TooLarge,
            format!(
                "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ),
        ));
    }
    Ok(key)
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

fn deadline(state: &ApiState, headers: &HeaderMap) -> Result<Instant, Error> {
    // Answer a little before the caller gives up, so it hears the verdict.
    let budget = omnikv_wire::request::time_budget(
        header_u64(headers, HEADER_TIMEOUT_MS)?,
        state.default_timeout,
    );
    Ok(Instant::now() + budget)
}

/// (client id, seq) from the headers, or from an Idempotency-Key.
fn write_id(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Error> {
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

async fn ask<T>(
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

async fn put_key(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let started = Instant::now();
    let key = key_from(&uri)?;
    let value = axum::body::to_bytes(body, state.max_value_bytes)
        .await
        .map_err(|_| {
            err(
                ErrorCode::TooLarge,
                format!("value exceeds the {}-byte limit", state.max_value_bytes),
            )
        })?;
    let kind = WriteKind::Put {
        key,
        value: value.to_vec(),
    };
    write(&state, &headers, kind, "put", started).await
}

/// Hands a write to the loop and answers with its outcome (shared by PUT and DELETE).
async fn write(
    state: &ApiState,
    headers: &HeaderMap,
    kind: WriteKind,
    op: &str,
    started: Instant,
) -> Result<Response, Error> {
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
    Ok(Json(r.map_err(Error)?).into_response())
}

async fn delete_key(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let started = Instant::now();
    let key = key_from(&uri)?;
    write(
        &state,
        &headers,
        WriteKind::Delete { key },
        "delete",
        started,
    )
    .await
}

async fn get_key(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    let started = Instant::now();
    let key = key_from(&uri)?;
    let linearizable = match q.get("consistency").map(String::as_str) {
        None | Some("linearizable") => true,
        Some("local") => false,
        Some(other) => {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("unknown consistency {other:?} (linearizable or local)"),
            ))
        }
    };
    let until = deadline(&state, &headers)?;
    let r: ReadValue = ask(
        &state,
        |reply| ClientRequest::Read {
            key,
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
    match r.value {
        Some(v) => {
            let mut resp = Response::new(Body::from(v));
            resp.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(HEADER_INDEX, HeaderValue::from(r.index));
            Ok(resp)
        }
        None => Err(err(ErrorCode::NotFound, "key not found")),
    }
}

async fn status(State(state): State<ApiState>) -> Result<Response, Error> {
    let until = Instant::now() + state.default_timeout;
    let s = ask(&state, |reply| ClientRequest::Status { reply }, until).await?;
    Ok(Json(s).into_response())
}

async fn log(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
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

async fn members(State(state): State<ApiState>) -> Result<Response, Error> {
    let until = Instant::now() + state.default_timeout;
    let m = ask(&state, |reply| ClientRequest::Members { reply }, until).await?;
    Ok(Json(m).into_response())
}

/// Largest reconfigure body, in bytes.
const MAX_RECONFIGURE_BYTES: usize = 64 * 1024;

async fn reconfigure(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    if body.len() > MAX_RECONFIGURE_BYTES {
        return Err(err(ErrorCode::TooLarge, "reconfigure body over 64 KiB"));
    }
    let request: ReconfigureRequest = serde_json::from_slice(&body).map_err(|e| {
        err(
            ErrorCode::InvalidRequest,
            format!("bad reconfigure body (want {{\"nodes\": [1, 2, 3, 4]}}): {e}"),
        )
    })?;
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
