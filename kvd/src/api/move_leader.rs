//! `POST /v1/move-leader` with `{"to": N}`: the leader hands leadership to member N and
//! answers once N leads (replica/handoff.rs). Other replicas refuse with `unavailable`, as
//! for `/v1/reconfigure`, so a client that tries the endpoints in turn lands on the leader.

use super::gate::Caller;
use super::{ask, deadline, json_body, ApiState, Error};
use crate::auth::Call;
use crate::inbox::ClientRequest;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use omnikv_common::MoveLeaderRequest;

/// Largest move-leader body, in bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;

pub(super) async fn move_leader(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    caller.may(Call::MoveLeader)?;
    let request: MoveLeaderRequest =
        json_body(&body, MAX_BODY_BYTES, "move-leader", r#"{"to": 2}"#)?;
    let until = deadline(&state, &headers)?;
    let to = request.to;
    let ask_loop = |reply| ClientRequest::MoveLeader {
        to,
        deadline: until,
        reply,
    };
    let moved = ask(&state, ask_loop, until).await?.map_err(Error)?;
    Ok(Json(moved).into_response())
}
