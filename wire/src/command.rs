//! The replicated log's entry type. One entry carries a batch of operations (group commit:
//! everything proposed in one loop iteration), and the snapshot type is an empty marker:
//! no state ever comes from OmniPaxos snapshots (docs/architecture.md, "Design decisions").
//!
//! Keys and values are serialized as byte strings (`serde_bytes`): in bincode that is the
//! same length-prefixed bytes as a sequence of `u8`, so every stored entry still decodes, but
//! encoded and decoded with one copy instead of one call per byte.

use omnipaxos::storage::{Entry, Snapshot};
use serde::{Deserialize, Serialize};

/// Identifies a client write for deduplication. `ts_ms` is the proposer's wall clock when it
/// first received the request; retries reuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReqId {
    pub client: u64,
    pub seq: u64,
    pub ts_ms: u64,
}

/// One operation inside a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        req: ReqId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        req: ReqId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A read barrier: reads queued on `origin` before it was proposed are answered once it
    /// is applied.
    Barrier { origin: u64, id: u64 },
    /// A transaction: compares, then one branch of puts, deletes and reads, applied
    /// atomically under one revision. Conditional writes and range deletes are transactions.
    Txn { req: ReqId, txn: Txn },
    // Variants below were added after entries of the ones above were logged: new variants go
    // at the end, so every logged entry still decodes.
    /// A put that attaches the key to lease `lease` (which must exist, else nothing is
    /// written). A plain `Put` detaches the key from any lease.
    PutLeased {
        req: ReqId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
    },
    /// A client's lease operation.
    Lease { req: ReqId, op: LeaseOp },
    /// The leader's decision that lease `id` ran out: it applies only if the lease was not
    /// renewed since the renewal count the leader saw (`renewals`), so a stale leader's late
    /// expiry cannot undo a keepalive decided before it. Deletes the lease's keys.
    LeaseExpire { id: u64, renewals: u64 },
    /// The leader's record of leases' remaining time (`(id, remaining_ms)`), as kvd logged it
    /// before `LeaseCheckpointAt`: applied when a log holds one, and proposed only under
    /// `--legacy-lease-checkpoints` (for older replicas during a rolling upgrade).
    LeaseCheckpoint { leases: Vec<(u64, u64)> },
    /// etcd's `Compact`: from now on nothing below `revision` is read at a past revision nor
    /// watched from. Raises the compact revision only (the larger of the two wins); one at or
    /// below the current compact revision, or above the store's revision, does nothing and
    /// does not succeed.
    Compact { req: ReqId, revision: u64 },
    /// The leader's record of leases' remaining time, so that a replica that restarts or
    /// becomes leader does not give them their full TTL again: `(id, remaining_ms, renewals)`,
    /// each applied only to a lease still at the renewal count the leader measured it at, so
    /// that a record taken before a keepalive and decided after it cannot cut the renewed
    /// lease short.
    LeaseCheckpointAt { leases: Vec<(u64, u64, u64)> },
}

/// What a client asks of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// Creates lease `id` living `ttl_ms` from when it is applied.
    Grant { id: u64, ttl_ms: u64 },
    /// Renews lease `id` for its whole TTL.
    KeepAlive { id: u64 },
    /// Ends lease `id` now, deleting its keys.
    Revoke { id: u64 },
}

/// A range of keys: one key, `[start, end)`, or `[start, ∞)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `end: None` is the end of the key space.
    Span {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    /// Every key that starts with `prefix` (all keys for the empty prefix).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange::Span {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Span { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }

    fn size(&self) -> usize {
        match self {
            KeyRange::Key(k) => k.len(),
            KeyRange::Span { start, end } => start.len() + end.as_ref().map_or(0, Vec::len),
        }
    }

    fn describe(&self) -> String {
        use omnikv_common::keys::display_bytes;
        match self {
            KeyRange::Key(k) => display_bytes(k),
            KeyRange::Span { start, end: None } => format!("[{}, end)", display_bytes(start)),
            KeyRange::Span {
                start,
                end: Some(e),
            } => format!("[{}, {})", display_bytes(start), display_bytes(e)),
        }
    }
}

/// The smallest key above every key that starts with `prefix`; `None` when there is none
/// (the empty prefix, or one of only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// What a compare looks at, and the operand it compares with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value; an absent key compares unequal to every value (and neither greater nor less).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Puts since the key was created (0: absent).
    Version(u64),
    /// Revision of the key's last put (0: absent).
    ModRevision(u64),
    /// Revision that created the key (0: absent).
    CreateRevision(u64),
    /// The lease the key is attached to (0: none, or absent). Appended after the others:
    /// logged entries decode.
    Lease(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// Options of a read, in a transaction or on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOpts {
    /// At most this many keys (0: no limit).
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
}

/// One operation of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        range: KeyRange,
    },
    Get {
        range: KeyRange,
        opts: ReadOpts,
    },
    /// A put attached to lease `lease` (appended after the others: logged entries decode).
    PutLeased {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: u64,
    },
    /// A transaction inside a branch (etcd's `RequestOp.request_txn`): its compares are
    /// decided with the outer ones, against the state before any write of the request.
    /// Appended after the others: logged entries decode.
    Txn(Box<Txn>),
}

/// etcd's transaction: if every compare holds, `success` applies, else `failure`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    fn size(&self) -> usize {
        let op_size = |op: &TxnOp| match op {
            TxnOp::Put { key, value } | TxnOp::PutLeased { key, value, .. } => {
                24 + key.len() + value.len()
            }
            TxnOp::Delete { range } | TxnOp::Get { range, .. } => 16 + range.size(),
            TxnOp::Txn(txn) => 16 + txn.size(),
        };
        let cmp_size = |c: &Compare| {
            16 + c.key.len()
                + match &c.target {
                    CompareTarget::Value(v) => v.len(),
                    _ => 8,
                }
        };
        self.compares.iter().map(cmp_size).sum::<usize>()
            + self.success.iter().map(op_size).sum::<usize>()
            + self.failure.iter().map(op_size).sum::<usize>()
    }

    /// For logs: `txn if N compares then {...} else {...}`.
    pub fn describe(&self) -> String {
        use omnikv_common::keys::display_bytes;
        let branch = |ops: &[TxnOp]| -> String {
            let parts: Vec<String> = ops
                .iter()
                .map(|op| match op {
                    TxnOp::Put { key, value } => {
                        format!("put {} {}", display_bytes(key), display_bytes(value))
                    }
                    TxnOp::PutLeased { key, value, lease } => format!(
                        "put {} {} lease {lease:x}",
                        display_bytes(key),
                        display_bytes(value)
                    ),
                    TxnOp::Delete { range } => format!("delete {}", range.describe()),
                    TxnOp::Get { range, .. } => format!("get {}", range.describe()),
                    TxnOp::Txn(txn) => txn.describe(),
                })
                .collect();
            parts.join("; ")
        };
        format!(
            "txn if {} compares then {{{}}} else {{{}}}",
            self.compares.len(),
            branch(&self.success),
            branch(&self.failure)
        )
    }
}

impl Op {
    /// Approximate encoded size, used to bound batches.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => 32 + key.len() + value.len(),
            Op::Delete { key, .. } => 32 + key.len(),
            Op::Barrier { .. } => 16,
            Op::Txn { txn, .. } => 32 + txn.size(),
            Op::PutLeased { key, value, .. } => 40 + key.len() + value.len(),
            Op::Lease { .. } | Op::LeaseExpire { .. } => 48,
            Op::LeaseCheckpoint { leases } => 16 + 16 * leases.len(),
            Op::LeaseCheckpointAt { leases } => 16 + 24 * leases.len(),
            Op::Compact { .. } => 40,
        }
    }

    /// One-line rendering for `kvctl log` and the decided-entry log line.
    pub fn describe(&self) -> String {
        use omnikv_common::keys::display_bytes;
        match self {
            Op::Put { key, value, .. } => {
                format!("put {} {}", display_bytes(key), display_bytes(value))
            }
            Op::Delete { key, .. } => format!("delete {}", display_bytes(key)),
            Op::Barrier { .. } => "read-barrier".to_string(),
            Op::Txn { txn, .. } => txn.describe(),
            Op::PutLeased {
                key, value, lease, ..
            } => format!(
                "put {} {} lease {lease:x}",
                display_bytes(key),
                display_bytes(value)
            ),
            Op::Lease { op, .. } => match op {
                LeaseOp::Grant { id, ttl_ms } => format!("lease grant {id:x} ttl {ttl_ms} ms"),
                LeaseOp::KeepAlive { id } => format!("lease keepalive {id:x}"),
                LeaseOp::Revoke { id } => format!("lease revoke {id:x}"),
            },
            Op::LeaseExpire { id, .. } => format!("lease expire {id:x}"),
            Op::LeaseCheckpoint { leases } => format!("lease checkpoint of {}", leases.len()),
            Op::LeaseCheckpointAt { leases } => {
                format!("lease checkpoint of {} (with renewal counts)", leases.len())
            }
            Op::Compact { revision, .. } => format!("compact at revision {revision}"),
        }
    }

    /// The write identity of a client write (`None` for a barrier and the leader's lease
    /// upkeep).
    pub fn req(&self) -> Option<&ReqId> {
        match self {
            Op::Put { req, .. }
            | Op::Delete { req, .. }
            | Op::Txn { req, .. }
            | Op::PutLeased { req, .. }
            | Op::Lease { req, .. }
            | Op::Compact { req, .. } => Some(req),
            Op::Barrier { .. }
            | Op::LeaseExpire { .. }
            | Op::LeaseCheckpoint { .. }
            | Op::LeaseCheckpointAt { .. } => None,
        }
    }
}

/// A log entry: the operations batched by one proposer in one loop iteration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCmd {
    pub ops: Vec<Op>,
}

impl Entry for LogCmd {
    type Snapshot = Marker;
}

/// The empty snapshot marker: `create` returns it, `merge` does nothing. The compacted
/// prefix's effects live in the state machine, never in this value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker;

impl Snapshot<LogCmd> for Marker {
    fn create(_entries: &[LogCmd]) -> Self {
        Marker
    }
    fn merge(&mut self, _delta: Self) {}
    fn use_snapshots() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    /// The entry types as they were before their byte fields became `serde_bytes`: plain
    /// `Vec<u8>` sequences, the first variants in the same order.
    mod plain {
        use super::ReqId;
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Serialize, Deserialize)]
        pub enum Op {
            Put {
                req: ReqId,
                key: Vec<u8>,
                value: Vec<u8>,
            },
            Delete {
                req: ReqId,
                key: Vec<u8>,
            },
            Barrier {
                origin: u64,
                id: u64,
            },
            Txn {
                req: ReqId,
                txn: Txn,
            },
        }

        #[derive(Debug, Serialize, Deserialize)]
        pub enum KeyRange {
            Key(Vec<u8>),
            Span {
                start: Vec<u8>,
                end: Option<Vec<u8>>,
            },
        }

        #[derive(Debug, Serialize, Deserialize)]
        pub enum CompareTarget {
            Value(Vec<u8>),
        }

        #[derive(Debug, Serialize, Deserialize)]
        pub struct Compare {
            pub key: Vec<u8>,
            pub op: super::CompareOp,
            pub target: CompareTarget,
        }

        #[derive(Debug, Serialize, Deserialize)]
        pub enum TxnOp {
            Put { key: Vec<u8>, value: Vec<u8> },
            Delete { range: KeyRange },
        }

        #[derive(Debug, Serialize, Deserialize)]
        pub struct Txn {
            pub compares: Vec<Compare>,
            pub success: Vec<TxnOp>,
            pub failure: Vec<TxnOp>,
        }
    }

    /// `Compact` is the last variant: every variant logged before it keeps its index (bincode
    /// writes the index first, a varint: one byte below 251), and it round-trips.
    #[test]
    fn compact_is_appended_after_every_logged_variant() {
        let req = ReqId {
            client: 1,
            seq: 2,
            ts_ms: 3,
        };
        let checkpoint = encode(&Op::LeaseCheckpoint { leases: Vec::new() });
        assert_eq!(checkpoint[0], 7);
        let op = Op::Compact { req, revision: 42 };
        let bytes = encode(&op);
        assert_eq!(bytes[0], 8);
        assert_eq!(decode::<Op>(&bytes).unwrap(), op);
        assert_eq!(op.req(), Some(&req));
    }

    /// `LeaseCheckpointAt` comes after `Compact`, and the checkpoint it replaces still decodes.
    #[test]
    fn lease_checkpoint_at_is_appended_after_compact() {
        let op = Op::LeaseCheckpointAt {
            leases: vec![(9, 1_500, 3)],
        };
        let bytes = encode(&op);
        assert_eq!(bytes[0], 9);
        assert_eq!(decode::<Op>(&bytes).unwrap(), op);
        let old = Op::LeaseCheckpoint {
            leases: vec![(9, 1_500)],
        };
        assert_eq!(decode::<Op>(&encode(&old)).unwrap(), old);
    }

    /// Byte strings encode exactly as the `u8` sequences logged before them, both ways: every
    /// stored entry and every peer's frame still decodes.
    #[test]
    fn byte_fields_encode_as_the_sequences_logged_before() {
        let req = ReqId {
            client: 7,
            seq: 300,
            ts_ms: 1_700_000_000_000,
        };
        let value: Vec<u8> = (0..=255u8).chain(0..44).collect();
        let cases: Vec<(Op, plain::Op)> = vec![
            (
                Op::Put {
                    req,
                    key: b"bench-42".to_vec(),
                    value: value.clone(),
                },
                plain::Op::Put {
                    req,
                    key: b"bench-42".to_vec(),
                    value: value.clone(),
                },
            ),
            (
                Op::Delete {
                    req,
                    key: Vec::new(),
                },
                plain::Op::Delete {
                    req,
                    key: Vec::new(),
                },
            ),
            (
                Op::Txn {
                    req,
                    txn: Txn {
                        compares: vec![Compare {
                            key: b"lock".to_vec(),
                            op: CompareOp::Equal,
                            target: CompareTarget::Value(value.clone()),
                        }],
                        success: vec![
                            TxnOp::Put {
                                key: b"lock".to_vec(),
                                value: b"me".to_vec(),
                            },
                            TxnOp::Delete {
                                range: KeyRange::Span {
                                    start: b"a".to_vec(),
                                    end: Some(b"b".to_vec()),
                                },
                            },
                        ],
                        failure: vec![
                            TxnOp::Delete {
                                range: KeyRange::Span {
                                    start: b"z".to_vec(),
                                    end: None,
                                },
                            },
                            TxnOp::Delete {
                                range: KeyRange::Key(b"k".to_vec()),
                            },
                        ],
                    },
                },
                plain::Op::Txn {
                    req,
                    txn: plain::Txn {
                        compares: vec![plain::Compare {
                            key: b"lock".to_vec(),
                            op: CompareOp::Equal,
                            target: plain::CompareTarget::Value(value.clone()),
                        }],
                        success: vec![
                            plain::TxnOp::Put {
                                key: b"lock".to_vec(),
                                value: b"me".to_vec(),
                            },
                            plain::TxnOp::Delete {
                                range: plain::KeyRange::Span {
                                    start: b"a".to_vec(),
                                    end: Some(b"b".to_vec()),
                                },
                            },
                        ],
                        failure: vec![
                            plain::TxnOp::Delete {
                                range: plain::KeyRange::Span {
                                    start: b"z".to_vec(),
                                    end: None,
                                },
                            },
                            plain::TxnOp::Delete {
                                range: plain::KeyRange::Key(b"k".to_vec()),
                            },
                        ],
                    },
                },
            ),
        ];
        for (op, old) in cases {
            let old_bytes = encode(&old);
            assert_eq!(encode(&op), old_bytes, "{op:?}");
            assert_eq!(decode::<Op>(&old_bytes).unwrap(), op);
            let entry = LogCmd {
                ops: vec![op.clone(), op],
            };
            assert_eq!(decode::<LogCmd>(&encode(&entry)).unwrap(), entry);
        }
    }
}
