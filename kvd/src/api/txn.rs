//! `POST /v1/txn`: etcd-shaped transactions. A failed compare is an answer, not an error:
//! 200 with `succeeded: false` and the `failure` branch's results.

use super::convert::{self, txn_results};
use super::gate::Caller;
use super::kv::submit_write;
use super::{err, ApiState, Error};
use crate::auth::Call;
use crate::inbox::WriteKind;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use omnikv_common::api::ErrorCode;
use omnikv_common::kv::{TxnRequest, TxnResult, MAX_TXN_BODY_BYTES};
use std::time::Instant;

pub(crate) async fn txn(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Error> {
    caller.may(Call::Txn)?;
    let started = Instant::now();
    let body: Bytes = axum::body::to_bytes(body, MAX_TXN_BODY_BYTES)
        .await
        .map_err(|_| {
            err(
                ErrorCode::TooLarge,
                format!("transaction body over {MAX_TXN_BODY_BYTES} bytes"),
            )
        })?;
    let request: TxnRequest = serde_json::from_slice(&body).map_err(|e| {
        err(
            ErrorCode::InvalidRequest,
            format!("bad transaction body: {e}"),
        )
    })?;
    let txn = convert::txn(&request, state.max_value_bytes)?;
    caller.may_txn(&txn)?;
    let answer = submit_write(&state, &headers, WriteKind::Txn(txn), "txn", started).await?;
    if let Some(e) = super::kv::missing_lease(&answer) {
        return Err(e);
    }
    let o = answer.outcome;
    let branch = if o.succeeded {
        &request.success
    } else {
        &request.failure
    };
    Ok(Json(TxnResult {
        succeeded: o.succeeded,
        config_id: o.config_id,
        index: o.index,
        revision: o.revision,
        replayed: answer.results.is_none(),
        responses: answer
            .results
            .map(|r| txn_results(r, branch))
            .unwrap_or_default(),
    })
    .into_response())
}
