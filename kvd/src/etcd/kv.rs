//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact, each one inbox request of the
//! HTTP API's (`api::kv::read`, `api::kv::submit_write`) with its limits.

use super::error::{self, invalid, unsupported, KEY_NOT_PROVIDED, REQUEST_TOO_LARGE};
use super::past::{self, NotReadable};
use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use super::{to_i64, EtcdState};
use crate::api::kv::{position, read};
use crate::api::{check_key_len, convert};
use crate::auth::Call;
use crate::command::{Compare, CompareOp, CompareTarget, KeyRange, ReadOpts, Txn, TxnOp};
use crate::inbox::WriteKind;
use crate::state_machine::{load_compacted, KeyValue, OpResult, RangeResult};
use axum::http::HeaderMap;
use omnikv_common::kv::{self, Bytes64, MAX_PAGE_KEYS};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;
use pb::response_op::Response as OpResponse;
use std::cmp::Ordering;
use std::time::Instant;
use tonic::{Request as Req, Response, Status};

/// Reads of the history, 10 ms apart, a read at a past revision waits for it to catch up
/// with the state it read.
const PAST_ATTEMPTS: usize = 50;

/// Levels of a transaction with nested ones (etcd sets no limit; each level has its own
/// operation limit and the whole request the message size limit).
pub const MAX_TXN_DEPTH: usize = 8;

/// Attempts of a put with `ignore_value`/`ignore_lease` (a compare-and-put on the key's
/// mod revision) before it gives up under contention.
const KEEP_ATTEMPTS: usize = 8;

pub struct KvService(pub EtcdState);

/// An etcd key/range_end pair as a range: empty range_end is the key alone, "\0" every key
/// from the key on, anything else the span `[key, range_end)`.
pub(super) fn range_of(key: &[u8], range_end: &[u8]) -> Result<KeyRange, Status> {
    if key.is_empty() && range_end.is_empty() {
        return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
    }
    check_key_len(key)?;
    check_key_len(range_end)?;
    Ok(match range_end {
        [] => KeyRange::Key(key.to_vec()),
        [0] => KeyRange::Span {
            start: key.to_vec(),
            end: None,
        },
        end => KeyRange::Span {
            start: key.to_vec(),
            end: Some(end.to_vec()),
        },
    })
}

/// A range read whole (rebuilt at a past revision), cut as the loop's read of `r` would cut
/// it: counted, values dropped for `keys_only`, and (when it is not shaped after) limited.
fn cut(mut kvs: Vec<KeyValue>, r: &pb::RangeRequest) -> RangeResult {
    let count = kvs.len() as u64;
    if r.count_only {
        return RangeResult {
            kvs: Vec::new(),
            count,
            more: false,
        };
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    let limit = usize::try_from(r.limit).unwrap_or(0);
    let more = !needs_shaping(r).unwrap_or(false) && limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    RangeResult { kvs, count, more }
}

/// The same pair in the HTTP API's vocabulary (for transactions, checked by `convert::txn`).
fn range_spec(key: &[u8], range_end: &[u8]) -> kv::RangeSpec {
    kv::RangeSpec {
        key: Bytes64(key.to_vec()),
        end: match range_end {
            [] => None,
            [0] => Some(Bytes64(Vec::new())),
            end => Some(Bytes64(end.to_vec())),
        },
        prefix: false,
    }
}

/// etcd's key-value; lease ids keep their 64 bits (etcd's int64 read as u64 and back).
fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        value: kv.value,
        lease: kv.lease as i64,
    }
}

fn non_negative(n: i64, what: &str) -> Result<u64, Status> {
    u64::try_from(n).map_err(|_| invalid(format!("{what} must not be negative")))
}

/// The sort a range asks for, `None` when key order (how ranges are read) is it. As in etcd,
/// a target other than the key without an order sorts ascending.
fn sort_of(r: &pb::RangeRequest) -> Result<Option<(SortOrder, SortTarget)>, Status> {
    let order = SortOrder::try_from(r.sort_order).map_err(|_| invalid("unknown sort order"))?;
    let target = SortTarget::try_from(r.sort_target).map_err(|_| invalid("unknown sort target"))?;
    Ok(match (order, target) {
        (SortOrder::None | SortOrder::Ascend, SortTarget::Key) => None,
        (SortOrder::None, t) => Some((SortOrder::Ascend, t)),
        (o, t) => Some((o, t)),
    })
}

/// Whether a range's answer is sorted or filtered after it is read (read whole for that).
fn needs_shaping(r: &pb::RangeRequest) -> Result<bool, Status> {
    Ok(!r.count_only && (sort_of(r)?.is_some() || has_filters(r)))
}

/// A range's keys, read whole (`more`: a page's worth, more follow), filtered, sorted and cut
/// to its limit as etcd does; and whether more keys follow. Unchanged when it needs no
/// shaping (its limit was applied by the read).
fn shape(mut kvs: Vec<KeyValue>, more: bool, r: &pb::RangeRequest) -> (Vec<KeyValue>, bool) {
    if !needs_shaping(r).unwrap_or(false) {
        return (kvs, more);
    }
    filter(&mut kvs, r);
    if let Ok(Some((order, target))) = sort_of(r) {
        sort(&mut kvs, order, target);
    }
    let limit = usize::try_from(r.limit).unwrap_or(0);
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        return (kvs, true);
    }
    (kvs, more)
}

fn has_filters(r: &pb::RangeRequest) -> bool {
    r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
}

/// Keeps the keys etcd's min/max create/mod revision filters keep (0: no bound).
fn filter(kvs: &mut Vec<KeyValue>, r: &pb::RangeRequest) {
    let above = |bound: i64, n: u64| bound != 0 && to_i64(n) > bound;
    let below = |bound: i64, n: u64| bound != 0 && to_i64(n) < bound;
    kvs.retain(|kv| {
        !(above(r.max_mod_revision, kv.mod_revision)
            || below(r.min_mod_revision, kv.mod_revision)
            || above(r.max_create_revision, kv.create_revision)
            || below(r.min_create_revision, kv.create_revision))
    });
}

fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

impl KvService {
    /// `range` at revision `at`, from its keys `now` at revision `now_revision` and the
    /// stored history. A history that has not stored the state's last batch yet is waited
    /// for (briefly: the loop writes it right after answering).
    async fn at_revision(
        &self,
        range: KeyRange,
        at: u64,
        now: Vec<KeyValue>,
        now_revision: u64,
    ) -> Result<Vec<KeyValue>, Status> {
        for _ in 0..PAST_ATTEMPTS {
            let (db, range, now) = (self.0.api.db.clone(), range.clone(), now.clone());
            let read = tokio::task::spawn_blocking(move || {
                past::read_at(&db, range, at, now, now_revision)
            })
            .await
            .map_err(|e| Status::internal(format!("etcdserver: reading the history: {e}")))?
            .map_err(|e| Status::internal(format!("etcdserver: reading the history: {e}")))?;
            match read {
                Ok(kvs) => return Ok(kvs),
                Err(NotReadable::Compacted) => return Err(Status::out_of_range(error::COMPACTED)),
                Err(NotReadable::Behind) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
            }
        }
        Err(Status::unavailable(
            "etcdserver: the change history lags the state; try again",
        ))
    }

    /// A put keeping the key's current value (`ignore_value`) or lease (`ignore_lease`): a
    /// compare-and-put on the mod revision read, retried while other writes get in between.
    async fn put_keeping(&self, r: pb::PutRequest) -> Result<Response<pb::PutResponse>, Status> {
        for _ in 0..KEEP_ATTEMPTS {
            let now = read(
                &self.0.api,
                &HeaderMap::new(),
                KeyRange::Key(r.key.clone()),
                ReadOpts::default(),
                true,
                Instant::now(),
            )
            .await?;
            let Some(old) = now.result.kvs.into_iter().next() else {
                return Err(invalid("key not found"));
            };
            let value = if r.ignore_value {
                old.value.clone()
            } else {
                r.value.clone()
            };
            let lease = if r.ignore_lease {
                old.lease
            } else {
                r.lease as u64
            };
            let key = r.key.clone();
            let put = match lease {
                0 => TxnOp::Put { key, value },
                lease => TxnOp::PutLeased { key, value, lease },
            };
            let txn = Txn {
                compares: vec![Compare {
                    key: r.key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(old.mod_revision),
                }],
                success: vec![put],
                failure: Vec::new(),
            };
            let answer = self.0.write(WriteKind::Txn(txn), "put").await?;
            if answer.outcome.succeeded {
                return Ok(Response::new(pb::PutResponse {
                    header: self.0.header(answer.outcome.revision),
                    prev_kv: r.prev_kv.then(|| key_value(old)),
                }));
            }
        }
        Err(Status::aborted(
            "etcdserver: the key kept changing; put with ignore_value/ignore_lease gave up",
        ))
    }
}

/// An etcd transaction as ours: each level in the HTTP API's vocabulary, whose conversion
/// checks its limits and shape (`convert::txn`), with its nested transactions (at most
/// `MAX_TXN_DEPTH` levels in all) put back in their places. As etcd, a key put by a nested
/// transaction must not be put or deleted by its level or by a nested one before it.
fn command_txn(r: &pb::TxnRequest, max_value_bytes: usize, depth: usize) -> Result<Txn, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(invalid(format!(
            "transactions nested more than {MAX_TXN_DEPTH} deep"
        )));
    }
    if [r.compare.len(), r.success.len(), r.failure.len()]
        .iter()
        .any(|&n| n > kv::MAX_TXN_OPS)
    {
        return Err(Status::invalid_argument(error::TOO_MANY_OPS));
    }
    let flat = |ops: &[pb::RequestOp]| {
        ops.iter()
            .filter(|op| !matches!(op.request, Some(Request::RequestTxn(_))))
            .map(txn_op)
            .collect::<Result<Vec<_>, _>>()
    };
    let mut compares = Vec::with_capacity(r.compare.len());
    for c in &r.compare {
        compares.extend(compare(c)?);
    }
    let request = kv::TxnRequest {
        compare: compares,
        success: flat(&r.success)?,
        failure: flat(&r.failure)?,
    };
    let mut txn = convert::txn(&request, max_value_bytes)?;
    nest(&mut txn.success, &r.success, max_value_bytes, depth)?;
    nest(&mut txn.failure, &r.failure, max_value_bytes, depth)?;
    Ok(txn)
}

/// Puts the nested transactions of `ops` into `out` (`ops` without them, converted) at
/// their places.
fn nest(
    out: &mut Vec<TxnOp>,
    ops: &[pb::RequestOp],
    max_value_bytes: usize,
    depth: usize,
) -> Result<(), Status> {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    writes(out, &mut puts, &mut deletes);
    for (i, op) in ops.iter().enumerate() {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let inner = command_txn(t, max_value_bytes, depth + 1)?;
            let (mut inner_puts, mut inner_deletes) = (Vec::new(), Vec::new());
            writes(&inner.success, &mut inner_puts, &mut inner_deletes);
            writes(&inner.failure, &mut inner_puts, &mut inner_deletes);
            let taken =
                |k: &Vec<u8>| puts.contains(k) || deletes.iter().any(|d: &KeyRange| d.contains(k));
            if inner_puts.iter().any(taken) {
                return Err(Status::invalid_argument(error::DUPLICATE_KEY));
            }
            puts.extend(inner_puts);
            deletes.extend(inner_deletes);
            out.insert(i, TxnOp::Txn(Box::new(inner)));
        }
    }
    Ok(())
}

/// The keys `ops` put and the ranges they delete, those of nested transactions included
/// (both branches).
fn writes(ops: &[TxnOp], puts: &mut Vec<Vec<u8>>, deletes: &mut Vec<KeyRange>) {
    for op in ops {
        match op {
            TxnOp::Put { key, .. } | TxnOp::PutLeased { key, .. } => puts.push(key.clone()),
            TxnOp::Delete { range } => deletes.push(range.clone()),
            TxnOp::Get { .. } => {}
            TxnOp::Txn(t) => {
                writes(&t.success, puts, deletes);
                writes(&t.failure, puts, deletes);
            }
        }
    }
}

/// A request op of a transaction in the HTTP API's vocabulary (whose conversion checks the
/// limits and the shape: no key written twice in a branch).
fn txn_op(op: &pb::RequestOp) -> Result<kv::TxnOp, Status> {
    Ok(match &op.request {
        None => return Err(invalid("empty request op in transaction")),
        // Converted level by level (`command_txn`).
        Some(Request::RequestTxn(_)) => return Err(invalid("a nested transaction out of place")),
        Some(Request::RequestPut(p)) => {
            if p.ignore_value || p.ignore_lease {
                return Err(unsupported(
                    "ignore_value/ignore_lease inside a transaction",
                ));
            }
            kv::TxnOp::Put(kv::PutOp {
                key: Bytes64(p.key.clone()),
                value: Bytes64(p.value.clone()),
                prev: p.prev_kv,
                lease: p.lease as u64,
            })
        }
        Some(Request::RequestDeleteRange(d)) => kv::TxnOp::Delete(kv::DeleteOp {
            range: range_spec(&d.key, &d.range_end),
            prev: d.prev_kv,
        }),
        Some(Request::RequestRange(g)) => {
            if g.revision != 0 {
                return Err(unsupported("a past revision in a transaction's range"));
            }
            let limit = non_negative(g.limit, "limit")?;
            // Sorted or filtered: read whole (a page), shaped once answered (`shape`).
            let whole = needs_shaping(g)? || limit == 0;
            kv::TxnOp::Get(kv::GetOp {
                range: range_spec(&g.key, &g.range_end),
                limit: (!whole).then_some(limit.min(MAX_PAGE_KEYS)),
                keys_only: g.keys_only,
                count_only: g.count_only,
            })
        }
    })
}

/// An etcd compare as ours: one compare, or two where etcd's rule needs it (a value compare
/// on a missing key fails in etcd whatever its op; ours holds `!=` for a missing key, so
/// `!=` also asks that the key exists).
fn compare(c: &pb::Compare) -> Result<Vec<kv::Compare>, Status> {
    use pb::compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    if !c.range_end.is_empty() {
        return Err(unsupported("a compare over a key range (range_end)"));
    }
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => kv::CompareOp::Equal,
        Ok(CompareResult::Greater) => kv::CompareOp::Greater,
        Ok(CompareResult::Less) => kv::CompareOp::Less,
        Ok(CompareResult::NotEqual) => kv::CompareOp::NotEqual,
        Err(_) => return Err(invalid("unknown compare result")),
    };
    let n = |v: &i64| non_negative(*v, "a compare's operand");
    let target = match (T::try_from(c.target), &c.target_union) {
        (Ok(T::Version), Some(U::Version(v))) => kv::CompareTarget::Version(n(v)?),
        (Ok(T::Version), None) => kv::CompareTarget::Version(0),
        (Ok(T::Create), Some(U::CreateRevision(v))) => kv::CompareTarget::CreateRevision(n(v)?),
        (Ok(T::Create), None) => kv::CompareTarget::CreateRevision(0),
        (Ok(T::Mod), Some(U::ModRevision(v))) => kv::CompareTarget::ModRevision(n(v)?),
        (Ok(T::Mod), None) => kv::CompareTarget::ModRevision(0),
        (Ok(T::Value), Some(U::Value(v))) => kv::CompareTarget::Value(Bytes64(v.clone())),
        (Ok(T::Value), None) => kv::CompareTarget::Value(Bytes64(Vec::new())),
        // A lease id is etcd's int64 read as our u64 (as a put's lease is).
        (Ok(T::Lease), Some(U::Lease(v))) => kv::CompareTarget::Lease(*v as u64),
        (Ok(T::Lease), None) => kv::CompareTarget::Lease(0),
        (Err(_), _) => return Err(invalid("unknown compare target")),
        _ => return Err(invalid("a compare's target and operand disagree")),
    };
    let exists = (op == kv::CompareOp::NotEqual && matches!(target, kv::CompareTarget::Value(_)))
        .then(|| kv::Compare {
            key: Bytes64(c.key.clone()),
            op: kv::CompareOp::Greater,
            target: kv::CompareTarget::Version(0),
        });
    Ok(std::iter::once(kv::Compare {
        key: Bytes64(c.key.clone()),
        op,
        target,
    })
    .chain(exists)
    .collect())
}

/// The responses of the branch that ran (`branch` is its request), each with `header`.
fn txn_responses(
    results: Vec<OpResult>,
    branch: &[pb::RequestOp],
    header: Option<pb::ResponseHeader>,
) -> Vec<pb::ResponseOp> {
    results
        .into_iter()
        .zip(branch)
        .map(|(result, op)| {
            let response = match (result, &op.request) {
                (OpResult::Put { prev }, Some(Request::RequestPut(p))) => {
                    OpResponse::ResponsePut(pb::PutResponse {
                        header,
                        prev_kv: prev.filter(|_| p.prev_kv).map(key_value),
                    })
                }
                (OpResult::Delete { prev }, req) => {
                    let want = matches!(req, Some(Request::RequestDeleteRange(d)) if d.prev_kv);
                    OpResponse::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header,
                        deleted: prev.len() as i64,
                        prev_kvs: if want {
                            prev.into_iter().map(key_value).collect()
                        } else {
                            Vec::new()
                        },
                    })
                }
                (OpResult::Get(r), req) => {
                    let (kvs, more) = match req {
                        Some(Request::RequestRange(g)) => shape(r.kvs, r.more, g),
                        _ => (r.kvs, r.more),
                    };
                    OpResponse::ResponseRange(pb::RangeResponse {
                        header,
                        more,
                        count: to_i64(r.count),
                        kvs: kvs.into_iter().map(key_value).collect(),
                    })
                }
                (OpResult::Txn { succeeded, results }, Some(Request::RequestTxn(t))) => {
                    let branch = if succeeded { &t.success } else { &t.failure };
                    OpResponse::ResponseTxn(pb::TxnResponse {
                        header,
                        succeeded,
                        responses: txn_responses(results, branch, header),
                    })
                }
                // A put's result always pairs with its put, a nested transaction's with it;
                // a failed lease is an error.
                (OpResult::Put { .. } | OpResult::Lease(_) | OpResult::Txn { .. }, _) => {
                    OpResponse::ResponsePut(pb::PutResponse {
                        header,
                        prev_kv: None,
                    })
                }
            };
            pb::ResponseOp {
                response: Some(response),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Req<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let started = Instant::now();
        let caller = self.0.caller(&request)?;
        let r = request.into_inner();
        let range = range_of(&r.key, &r.range_end)?;
        caller.may_touch(Call::Range, &range)?;
        let limit = non_negative(r.limit, "limit")?;
        let revision = non_negative(r.revision, "revision")?;
        // Sorting and filtering need every key of the range (at most a page of them), and so
        // does a read at a revision (rebuilt from the keys now, `past`).
        let post = needs_shaping(&r)?;
        let whole = post || revision != 0;
        let opts = ReadOpts {
            limit: if whole || limit == 0 {
                MAX_PAGE_KEYS
            } else {
                limit.min(MAX_PAGE_KEYS)
            },
            keys_only: r.keys_only && revision == 0,
            count_only: r.count_only && revision == 0,
        };
        let answer = read(
            &self.0.api,
            &HeaderMap::new(),
            range.clone(),
            opts,
            !r.serializable,
            started,
        )
        .await?;
        if revision > answer.revision {
            return Err(Status::out_of_range(error::FUTURE_REV));
        }
        let result = match revision {
            0 => answer.result,
            _ if answer.result.more => {
                return Err(invalid(format!(
                    "reading a range of more than {MAX_PAGE_KEYS} keys at a revision"
                )))
            }
            at => cut(
                self.at_revision(range, at, answer.result.kvs, answer.revision)
                    .await?,
                &r,
            ),
        };
        if post && result.more {
            return Err(invalid(format!(
                "sorting or filtering a range of more than {MAX_PAGE_KEYS} keys"
            )));
        }
        let (kvs, more) = shape(result.kvs, result.more, &r);
        Ok(Response::new(pb::RangeResponse {
            header: self.0.header(answer.revision),
            kvs: kvs.into_iter().map(key_value).collect(),
            more,
            count: to_i64(result.count),
        }))
    }

    async fn put(&self, request: Req<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
        }
        check_key_len(&r.key)?;
        caller.may_key(Call::Put, &r.key)?;
        if r.value.len() > self.0.api.max_value_bytes {
            return Err(Status::invalid_argument(REQUEST_TOO_LARGE));
        }
        if r.ignore_value && !r.value.is_empty() {
            return Err(invalid("value is provided"));
        }
        if r.ignore_lease && r.lease != 0 {
            return Err(invalid("lease is provided"));
        }
        if r.ignore_value || r.ignore_lease {
            return self.put_keeping(r).await;
        }
        let (key, value) = (r.key, r.value);
        let kind = match r.lease {
            0 => WriteKind::Put { key, value },
            lease => WriteKind::PutLeased {
                key,
                value,
                lease: lease as u64,
            },
        };
        let answer = self.0.write(kind, "put").await?;
        let prev = match answer.results {
            Some(mut results) => match results.pop() {
                Some(OpResult::Put { prev }) => prev,
                _ => None,
            },
            None => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: self.0.header(answer.outcome.revision),
            prev_kv: prev.filter(|_| r.prev_kv).map(key_value),
        }))
    }

    async fn delete_range(
        &self,
        request: Req<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let r = request.into_inner();
        let range = range_of(&r.key, &r.range_end)?;
        caller.may_touch(Call::DeleteRange, &range)?;
        let txn = Txn {
            compares: Vec::new(),
            success: vec![TxnOp::Delete { range }],
            failure: Vec::new(),
        };
        let answer = self.0.write(WriteKind::Txn(txn), "delete").await?;
        let deleted = match answer.results {
            Some(mut results) => match results.pop() {
                Some(OpResult::Delete { prev }) => prev,
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: self.0.header(answer.outcome.revision),
            deleted: deleted.len() as i64,
            prev_kvs: if r.prev_kv {
                deleted.into_iter().map(key_value).collect()
            } else {
                Vec::new()
            },
        }))
    }

    async fn txn(&self, request: Req<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let r = request.into_inner();
        let txn = command_txn(&r, self.0.api.max_value_bytes, 1)?;
        caller.may_txn(&txn)?;
        let answer = self.0.write(WriteKind::Txn(txn), "txn").await?;
        let o = answer.outcome;
        let header = self.0.header(o.revision);
        let branch = if o.succeeded { &r.success } else { &r.failure };
        Ok(Response::new(pb::TxnResponse {
            header,
            succeeded: o.succeeded,
            responses: answer
                .results
                .map(|results| txn_responses(results, branch, header))
                .unwrap_or_default(),
        }))
    }

    /// etcd's Compact: a replicated `Op::Compact`, after which no replica serves a past
    /// revision below it (`past`) nor watches from one (`compacted`). Refused like etcd's
    /// before proposing (a future revision; one at or below the compact revision), and after
    /// applying when a racing compact got there first. `physical` changes nothing: the
    /// answer comes once the compact is applied here, and its history is freed in the same
    /// write.
    async fn compact(
        &self,
        request: Req<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        self.0.caller(&request)?.may(Call::Compact)?;
        let revision = non_negative(request.into_inner().revision, "revision")?;
        let now = position(&self.0.api, &HeaderMap::new(), true).await?;
        if revision > now.revision {
            return Err(Status::out_of_range(error::FUTURE_REV));
        }
        let db = self.0.api.db.clone();
        let compacted = tokio::task::spawn_blocking(move || load_compacted(&db))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        if revision <= compacted {
            return Err(Status::out_of_range(error::COMPACTED));
        }
        let answer = self
            .0
            .write(WriteKind::Compact { revision }, "compact")
            .await?;
        let o = answer.outcome;
        if !o.succeeded {
            // Applied after a compact at or above it (or, from a proposer ahead of this
            // log, past the store's revision: never from this check).
            return Err(Status::out_of_range(if revision > o.revision {
                error::FUTURE_REV
            } else {
                error::COMPACTED
            }));
        }
        Ok(Response::new(pb::CompactionResponse {
            header: self.0.header(o.revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: u64, modr: u64, version: u64, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    #[test]
    fn ranges_read_etcds_key_and_range_end() {
        assert_eq!(range_of(b"a", b"").unwrap(), KeyRange::Key(b"a".to_vec()));
        assert_eq!(
            range_of(b"", b"\0").unwrap(),
            KeyRange::Span {
                start: vec![],
                end: None
            }
        );
        assert_eq!(
            range_of(b"a", b"b").unwrap(),
            KeyRange::Span {
                start: b"a".to_vec(),
                end: Some(b"b".to_vec())
            }
        );
        let e = range_of(b"", b"").unwrap_err();
        assert_eq!(e.message(), KEY_NOT_PROVIDED);
    }

    #[test]
    fn sorts_and_filters_as_etcd() {
        let mut kvs = vec![
            kv("a", 5, 9, 3, "z"),
            kv("b", 2, 4, 1, "y"),
            kv("c", 7, 7, 1, "x"),
        ];
        sort(&mut kvs, SortOrder::Descend, SortTarget::Mod);
        let keys: Vec<_> = kvs.iter().map(|k| k.key.clone()).collect();
        assert_eq!(keys, [b"a".to_vec(), b"c".to_vec(), b"b".to_vec()]);
        sort(&mut kvs, SortOrder::Ascend, SortTarget::Value);
        assert_eq!(kvs[0].key, b"c");
        let r = pb::RangeRequest {
            min_create_revision: 3,
            max_mod_revision: 8,
            ..Default::default()
        };
        filter(&mut kvs, &r);
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].key, b"c");
        let only_target = pb::RangeRequest {
            sort_target: SortTarget::Create as i32,
            ..Default::default()
        };
        assert_eq!(
            sort_of(&only_target).unwrap(),
            Some((SortOrder::Ascend, SortTarget::Create))
        );
        assert_eq!(sort_of(&pb::RangeRequest::default()).unwrap(), None);
    }

    #[test]
    fn lease_compares_keep_the_ids_64_bits() {
        use pb::compare::TargetUnion;
        let c = |lease: Option<i64>| pb::Compare {
            target: pb::compare::CompareTarget::Lease as i32,
            key: b"k".to_vec(),
            target_union: lease.map(TargetUnion::Lease),
            ..Default::default()
        };
        let target = |c: &pb::Compare| compare(c).unwrap()[0].target.clone();
        assert_eq!(target(&c(None)), kv::CompareTarget::Lease(0));
        assert_eq!(target(&c(Some(0x7a))), kv::CompareTarget::Lease(0x7a));
        assert_eq!(target(&c(Some(-1))), kv::CompareTarget::Lease(u64::MAX));
    }

    fn put_op(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn txn_op_of(success: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestTxn(pb::TxnRequest {
                success,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn nested_txns_keep_their_places_depth_and_etcds_duplicate_rule() {
        let r = pb::TxnRequest {
            success: vec![put_op("a"), txn_op_of(vec![put_op("b")]), put_op("c")],
            ..Default::default()
        };
        let txn = command_txn(&r, 1024, 1).unwrap();
        assert!(
            matches!(&txn.success[..], [TxnOp::Put { key: a, .. }, TxnOp::Txn(inner), TxnOp::Put { key: c, .. }]
            if a == b"a" && c == b"c" && matches!(&inner.success[..], [TxnOp::Put { key, .. }] if key == b"b"))
        );
        // A nested put of a key the level puts: etcd's duplicate key error.
        let dup = pb::TxnRequest {
            success: vec![put_op("a"), txn_op_of(vec![put_op("a")])],
            ..Default::default()
        };
        let e = command_txn(&dup, 1024, 1).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, error::DUPLICATE_KEY)
        );
        let mut deep = txn_op_of(vec![put_op("x")]);
        for _ in 0..MAX_TXN_DEPTH {
            deep = txn_op_of(vec![deep]);
        }
        let deep = pb::TxnRequest {
            success: vec![deep],
            ..Default::default()
        };
        assert_eq!(
            command_txn(&deep, 1024, 1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
