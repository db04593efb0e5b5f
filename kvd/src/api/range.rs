//! Ranges: `GET /v1/kv?prefix=P` or `?start=A&end=B` (paged, with a continuation token) and
//! `DELETE /v1/kv?prefix=P` (one transaction under one revision).

use super::convert::{key_range_from_query, key_value, page_limit};
use super::gate::Caller;
use super::kv::{read, submit_write};
use super::query::QueryParams;
use super::{err, ApiState, Error};
use crate::auth::Call;
use crate::command::{KeyRange, ReadOpts, Txn, TxnOp};
use crate::inbox::WriteKind;
use crate::state_machine::OpResult;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use omnikv_common::api::ErrorCode;
use omnikv_common::kv::{DeleteRangeResult, RangeResult};
use std::time::Instant;

/// The range a request names (`prefix`, or `start` with an optional `end`), once `caller`
/// may make `call` on it, moved on to where a page ended by `continue` (which only narrows
/// it).
fn range_from(q: &QueryParams, caller: &Caller, call: Call) -> Result<KeyRange, Error> {
    let range = key_range_from_query(q, false)?;
    caller.may_touch(call, &range)?;
    let Some(token) = q.text("continue")? else {
        return Ok(range);
    };
    let resume = decode_token(token).ok_or_else(|| {
        err(
            ErrorCode::InvalidRequest,
            "malformed continue token (pass back the one an answer gave)",
        )
    })?;
    Ok(match range {
        KeyRange::Span { start, end } => KeyRange::Span {
            start: start.max(resume),
            end,
        },
        key => key,
    })
}

/// The continuation token: the hex of the first key after the page.
fn encode_token(next: &[u8]) -> String {
    next.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Option<Vec<u8>> {
    if !token.len().is_multiple_of(2)
        || token.len() > 2 * (omnikv_common::api::MAX_KEY_BYTES + 1)
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(crate) async fn get_range(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::Range)?;
    let started = Instant::now();
    let q = QueryParams::parse(
        uri.query(),
        &[
            "prefix",
            "start",
            "end",
            "limit",
            "keys_only",
            "count_only",
            "consistency",
            "continue",
        ],
    )?;
    let range = range_from(&q, &caller, Call::Range)?;
    let opts = ReadOpts {
        limit: page_limit(q.u64("limit")?)?,
        keys_only: q.flag("keys_only")?,
        count_only: q.flag("count_only")?,
    };
    let r = read(&state, &headers, range, opts, q.linearizable()?, started).await?;
    let next = r.result.more.then(|| {
        let mut k = r
            .result
            .kvs
            .last()
            .map(|kv| kv.key.clone())
            .unwrap_or_default();
        k.push(0);
        encode_token(&k)
    });
    Ok(Json(RangeResult {
        revision: r.revision,
        index: r.index,
        count: r.result.count,
        more: r.result.more,
        r#continue: next,
        kvs: r
            .result
            .kvs
            .into_iter()
            .map(|kv| key_value(kv, opts.keys_only))
            .collect(),
    })
    .into_response())
}

pub(crate) async fn delete_range(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::DeleteRange)?;
    let started = Instant::now();
    let q = QueryParams::parse(uri.query(), &["prefix", "start", "end", "prev"])?;
    let range = range_from(&q, &caller, Call::DeleteRange)?;
    let prev = q.flag("prev")?;
    let txn = Txn {
        compares: Vec::new(),
        success: vec![TxnOp::Delete { range }],
        failure: Vec::new(),
    };
    let answer = submit_write(&state, &headers, WriteKind::Txn(txn), "delete", started).await?;
    let o = answer.outcome;
    let deleted = match answer.results.as_deref() {
        Some([OpResult::Delete { prev }]) => Some(prev.clone()),
        _ => None,
    };
    Ok(Json(DeleteRangeResult {
        config_id: o.config_id,
        index: o.index,
        revision: o.revision,
        deleted: deleted.as_ref().map_or(0, |d| d.len() as u64),
        prev: deleted
            .filter(|_| prev)
            .map(|d| d.into_iter().map(|kv| key_value(kv, false)).collect()),
        replayed: answer.results.is_none(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_junk() {
        let k = b"a/\xff\x00".to_vec();
        assert_eq!(decode_token(&encode_token(&k)).unwrap(), k);
        assert!(decode_token("abc").is_none());
        assert!(decode_token("zz").is_none());
        assert!(decode_token("+1").is_none());
    }
}
