//! Between the JSON vocabulary (`omnikv_common::kv`, base64 bytes) and the log's and the
//! state machine's (`command`, `state_machine`), with the request limits checked on the way
//! in.

use super::query::QueryParams;
use super::{check_key_len, err, Error};
use crate::command::{self, KeyRange, ReadOpts};
use crate::state_machine::{self, OpResult, RangeResult};
use omnikv_common::api::ErrorCode;
use omnikv_common::kv::{
    self, Bytes64, CompareTarget, GetResult, RangeSpec, TxnOpResult, TxnRequest, MAX_PAGE_KEYS,
    MAX_TXN_OPS,
};

pub fn key_value(kv: state_machine::KeyValue, keys_only: bool) -> kv::KeyValue {
    kv::KeyValue {
        key: Bytes64(kv.key),
        value: (!keys_only).then_some(Bytes64(kv.value)),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    err(ErrorCode::InvalidRequest, msg)
}

/// A key, a prefix or a span, from its JSON form.
pub fn key_range(spec: &RangeSpec) -> Result<KeyRange, Error> {
    check_key_len(&spec.key.0)?;
    match (&spec.end, spec.prefix) {
        (Some(_), true) => Err(invalid("a range takes end or prefix, not both")),
        (None, true) => Ok(KeyRange::prefix(&spec.key.0)),
        (None, false) if spec.key.0.is_empty() => Err(invalid("empty key")),
        (None, false) => Ok(KeyRange::Key(spec.key.0.clone())),
        (Some(end), false) => {
            check_key_len(&end.0)?;
            Ok(KeyRange::Span {
                start: spec.key.0.clone(),
                end: (!end.0.is_empty()).then(|| end.0.clone()),
            })
        }
    }
}

/// The range named by query parameters: `prefix=P`, or `start=A` with an optional `end=B`
/// (exclusive; absent or empty: the end of the key space), or, where `allow_key`, `key=K`.
pub fn key_range_from_query(q: &QueryParams, allow_key: bool) -> Result<KeyRange, Error> {
    let key = if allow_key { q.bytes("key") } else { None };
    match (key, q.bytes("prefix"), q.bytes("start"), q.bytes("end")) {
        (Some(k), None, None, None) if !k.is_empty() => {
            check_key_len(k)?;
            Ok(KeyRange::Key(k.to_vec()))
        }
        (None, Some(p), None, None) => {
            check_key_len(p)?;
            Ok(KeyRange::prefix(p))
        }
        (None, None, Some(s), end) => {
            check_key_len(s)?;
            if let Some(e) = end {
                check_key_len(e)?;
            }
            Ok(KeyRange::Span {
                start: s.to_vec(),
                end: end.filter(|e| !e.is_empty()).map(<[u8]>::to_vec),
            })
        }
        _ => Err(invalid(if allow_key {
            "name what to watch: key=K (not empty), prefix=P, or start=A with an optional end=B"
        } else {
            "name a range: prefix=P, or start=A with an optional end=B"
        })),
    }
}

/// A read limit: absent is the maximum; 0 and above the maximum are refused.
pub fn page_limit(limit: Option<u64>) -> Result<u64, Error> {
    match limit {
        None => Ok(MAX_PAGE_KEYS),
        Some(n) if (1..=MAX_PAGE_KEYS).contains(&n) => Ok(n),
        Some(n) => Err(invalid(format!("limit {n} is outside 1..={MAX_PAGE_KEYS}"))),
    }
}

/// A transaction as the log carries it, after its limits and shape are checked.
pub fn txn(req: &TxnRequest, max_value_bytes: usize) -> Result<command::Txn, Error> {
    for (what, n) in [
        ("compares", req.compare.len()),
        ("success operations", req.success.len()),
        ("failure operations", req.failure.len()),
    ] {
        if n > MAX_TXN_OPS {
            return Err(err(
                ErrorCode::TooLarge,
                format!("{n} {what} in one transaction (at most {MAX_TXN_OPS})"),
            ));
        }
    }
    let compares = req
        .compare
        .iter()
        .map(|c| {
            if c.key.0.is_empty() {
                return Err(invalid("a compare names an empty key"));
            }
            check_key_len(&c.key.0)?;
            let (op, target) = match (&c.target, c.op) {
                (CompareTarget::Exists(_), op) if op != kv::CompareOp::Equal => {
                    return Err(invalid("an exists compare takes op equal"))
                }
                (CompareTarget::Exists(true), _) => (
                    command::CompareOp::Greater,
                    command::CompareTarget::Version(0),
                ),
                (CompareTarget::Exists(false), _) => (
                    command::CompareOp::Equal,
                    command::CompareTarget::Version(0),
                ),
                (CompareTarget::Value(v), op) => {
                    (compare_op(op), command::CompareTarget::Value(v.0.clone()))
                }
                (CompareTarget::Version(n), op) => {
                    (compare_op(op), command::CompareTarget::Version(*n))
                }
                (CompareTarget::ModRevision(n), op) => {
                    (compare_op(op), command::CompareTarget::ModRevision(*n))
                }
                (CompareTarget::CreateRevision(n), op) => {
                    (compare_op(op), command::CompareTarget::CreateRevision(*n))
                }
                (CompareTarget::Lease(n), op) => {
                    (compare_op(op), command::CompareTarget::Lease(*n))
                }
            };
            Ok(command::Compare {
                key: c.key.0.clone(),
                op,
                target,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(command::Txn {
        compares,
        success: branch(&req.success, max_value_bytes)?,
        failure: branch(&req.failure, max_value_bytes)?,
    })
}

fn compare_op(op: kv::CompareOp) -> command::CompareOp {
    match op {
        kv::CompareOp::Equal => command::CompareOp::Equal,
        kv::CompareOp::NotEqual => command::CompareOp::NotEqual,
        kv::CompareOp::Greater => command::CompareOp::Greater,
        kv::CompareOp::Less => command::CompareOp::Less,
    }
}

/// One branch; like etcd, a key is written at most once per branch (no two puts of one key,
/// no put inside a deleted range), so the order of writes never matters.
fn branch(ops: &[kv::TxnOp], max_value_bytes: usize) -> Result<Vec<command::TxnOp>, Error> {
    let mut out = Vec::with_capacity(ops.len());
    let mut put_keys = std::collections::HashSet::new();
    let mut deleted: Vec<KeyRange> = Vec::new();
    for op in ops {
        out.push(match op {
            kv::TxnOp::Put(p) => {
                if p.key.0.is_empty() {
                    return Err(invalid("a put names an empty key"));
                }
                check_key_len(&p.key.0)?;
                if p.value.0.len() > max_value_bytes {
                    return Err(err(
                        ErrorCode::TooLarge,
                        format!("value exceeds the {max_value_bytes}-byte limit"),
                    ));
                }
                if !put_keys.insert(p.key.0.clone()) {
                    return Err(invalid("a key is put twice in one transaction branch"));
                }
                let (key, value) = (p.key.0.clone(), p.value.0.clone());
                match p.lease {
                    0 => command::TxnOp::Put { key, value },
                    lease => command::TxnOp::PutLeased { key, value, lease },
                }
            }
            kv::TxnOp::Delete(d) => {
                let range = key_range(&d.range)?;
                deleted.push(range.clone());
                command::TxnOp::Delete { range }
            }
            kv::TxnOp::Get(g) => command::TxnOp::Get {
                range: key_range(&g.range)?,
                opts: ReadOpts {
                    limit: page_limit(g.limit)?,
                    keys_only: g.keys_only,
                    count_only: g.count_only,
                },
            },
        });
    }
    if put_keys
        .iter()
        .any(|k| deleted.iter().any(|r| r.contains(k)))
    {
        return Err(invalid(
            "a key is both put and deleted in one transaction branch",
        ));
    }
    Ok(out)
}

pub fn get_result(r: RangeResult, keys_only: bool) -> GetResult {
    GetResult {
        count: r.count,
        more: r.more,
        kvs: r
            .kvs
            .into_iter()
            .map(|kv| key_value(kv, keys_only))
            .collect(),
    }
}

/// The JSON answer of each operation of the branch that ran (`branch` is its request).
pub fn txn_results(results: Vec<OpResult>, branch: &[kv::TxnOp]) -> Vec<TxnOpResult> {
    results
        .into_iter()
        .zip(branch)
        .map(|(r, req)| match (r, req) {
            (OpResult::Put { prev }, kv::TxnOp::Put(p)) => TxnOpResult::Put {
                prev: prev.filter(|_| p.prev).map(|kv| key_value(kv, false)),
            },
            (OpResult::Delete { prev }, kv::TxnOp::Delete(d)) => TxnOpResult::Delete {
                deleted: prev.len() as u64,
                prev: d
                    .prev
                    .then(|| prev.into_iter().map(|kv| key_value(kv, false)).collect()),
            },
            (OpResult::Get(r), kv::TxnOp::Get(g)) => TxnOpResult::Get(get_result(r, g.keys_only)),
            // The branch ran exactly these operations in this order.
            (OpResult::Put { .. }, _) => TxnOpResult::Put { prev: None },
            (OpResult::Delete { prev }, _) => TxnOpResult::Delete {
                deleted: prev.len() as u64,
                prev: None,
            },
            (OpResult::Get(r), _) => TxnOpResult::Get(get_result(r, false)),
            // A failed branch (its lease is missing) is answered as an error, and a nested
            // transaction comes from etcd's API only: never here.
            (OpResult::Lease(_) | OpResult::Txn { .. }, _) => TxnOpResult::Put { prev: None },
        })
        .collect()
}
