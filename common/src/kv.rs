//! The JSON vocabulary of the data API beyond single-key reads: key-values with their
//! revisions, range answers, range deletes and transactions. Keys and values in JSON are
//! base64 strings (standard alphabet, padded), as etcd's and Consul's JSON APIs carry them.
//! `docs/api.md` is the contract.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most keys one range answer returns (`limit` above it is refused); also the default limit.
pub const MAX_PAGE_KEYS: u64 = 10_000;
/// Most compares, and most operations per branch, in one transaction (etcd's default).
pub const MAX_TXN_OPS: usize = 128;
/// Largest transaction body, in bytes.
pub const MAX_TXN_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Header of a single-key read: the store revision the value was read at.
pub const HEADER_REVISION: &str = "omnikv-revision";
/// Headers of a single-key read: the key's counters.
pub const HEADER_CREATE_REVISION: &str = "omnikv-create-revision";
pub const HEADER_MOD_REVISION: &str = "omnikv-mod-revision";
pub const HEADER_VERSION: &str = "omnikv-version";

/// Bytes that travel in JSON as a base64 string.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes64(pub Vec<u8>);

impl Serialize for Bytes64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Bytes64)
            .map_err(|e| serde::de::Error::custom(format!("not base64 ({e}): {s:?}")))
    }
}

impl From<&[u8]> for Bytes64 {
    fn from(b: &[u8]) -> Self {
        Bytes64(b.to_vec())
    }
}

impl From<&str> for Bytes64 {
    fn from(s: &str) -> Self {
        Bytes64(s.as_bytes().to_vec())
    }
}

/// A key with its value and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Bytes64,
    /// Absent when read with `keys_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Bytes64>,
    /// Revision of the put that created the key.
    pub create_revision: u64,
    /// Revision of the key's last put.
    pub mod_revision: u64,
    /// Puts since the key was created (1 after the first).
    pub version: u64,
    /// The lease the key is attached to (absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /v1/kv?prefix=P` (or `?start=A&end=B`): a page of a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// The store revision the range was read at.
    pub revision: u64,
    /// The applied log index it was read at.
    pub index: u64,
    /// Keys in the whole range (not only this page).
    pub count: u64,
    /// Keys follow the last one returned: ask again with `continue`.
    pub more: bool,
    /// Pass back as `&continue=` to read the next page (present when `more`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#continue: Option<String>,
    pub kvs: Vec<KeyValue>,
}

/// `DELETE /v1/kv?prefix=P` (or `?start=A&end=B`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResult {
    pub config_id: u32,
    pub index: u64,
    /// The store revision after the delete (unchanged when nothing was deleted).
    pub revision: u64,
    pub deleted: u64,
    /// The deleted keys, when asked (`prev=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Vec<KeyValue>>,
    /// Answered from the remembered outcome of a retry: `deleted` and `prev` are unknown (0,
    /// absent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    #[default]
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// The compared property of the key, with its operand (one of these fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value(Bytes64),
    Version(u64),
    ModRevision(u64),
    CreateRevision(u64),
    /// Whether the key exists (`op` must be `equal`).
    Exists(bool),
    /// The id of the lease the key is attached to (0: none, or the key is absent).
    Lease(u64),
}

/// `{"key": "YQ==", "op": "equal", "value": "MQ=="}`; `op` defaults to `equal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes64,
    #[serde(default)]
    pub op: CompareOp,
    #[serde(flatten)]
    pub target: CompareTarget,
}

/// A key, a prefix (`prefix: true`) or `[key, end)` (`end: ""` is the end of the key space).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub key: Bytes64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Bytes64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    pub key: Bytes64,
    pub value: Bytes64,
    /// Answer with the key's previous value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev: bool,
    /// Attach the key to this lease (absent: none; the key leaves any lease it had).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    #[serde(flatten)]
    pub range: RangeSpec,
    /// Answer with the deleted keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetOp {
    #[serde(flatten)]
    pub range: RangeSpec,
    /// At most this many keys (default and maximum `MAX_PAGE_KEYS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count_only: bool,
}

/// One operation of a transaction branch: `{"put": {...}}`, `{"delete": {...}}` or
/// `{"get": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOp {
    Put(PutOp),
    Delete(DeleteOp),
    Get(GetOp),
}

/// `POST /v1/txn`: if every compare holds, `success` applies, else `failure`; atomically,
/// as one log entry, under one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// A get's answer inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResult {
    pub count: u64,
    pub more: bool,
    pub kvs: Vec<KeyValue>,
}

/// What one operation of the branch that ran did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpResult {
    Put {
        /// The previous key, when asked and it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev: Option<Vec<KeyValue>>,
    },
    Get(GetResult),
}

/// The answer to `POST /v1/txn` (also when the compares failed: `succeeded: false`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    pub config_id: u32,
    pub index: u64,
    /// The store revision after the transaction (its writes' revision if it wrote).
    pub revision: u64,
    /// One per operation of the branch that ran, in order (empty when `replayed`).
    pub responses: Vec<TxnOpResult>,
    /// Answered from the remembered outcome of a retry: `succeeded` and `revision` are the
    /// first application's, the responses are not kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// Most milliseconds between progress events of an idle watch (`progress_ms`).
pub const MAX_PROGRESS_MS: u64 = 3_600_000;
/// Default milliseconds between progress events of an idle watch.
pub const DEFAULT_PROGRESS_MS: u64 = 10_000;

/// One line of a watch stream (`GET /v1/watch`): a change, a progress note, or the reason
/// the stream ends (`compacted`, `lagged`), after which the server closes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    Put {
        key: Bytes64,
        value: Bytes64,
        /// The write's revision (the key's mod revision).
        revision: u64,
        create_revision: u64,
        version: u64,
        /// The value before, when asked (`prev_value=true`) and the key existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_value: Option<Bytes64>,
    },
    Delete {
        key: Bytes64,
        revision: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_value: Option<Bytes64>,
    },
    /// Every change up to `revision` has been sent: an idle watcher is current.
    Progress { revision: u64 },
    /// The stream cannot start or go on at the revision it needs: this replica's history
    /// begins at `oldest_revision` (resume elsewhere, or read the state and watch from now).
    Compacted {
        oldest_revision: u64,
        message: String,
    },
    /// The watcher fell too far behind: resume with `start_revision=resume_revision`.
    Lagged {
        resume_revision: u64,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_reads_as_etcd_shaped_json() {
        let c: Compare =
            serde_json::from_str(r#"{"key": "YQ==", "op": "greater", "mod_revision": 4}"#).unwrap();
        assert_eq!(c.key.0, b"a");
        assert_eq!(c.op, CompareOp::Greater);
        assert_eq!(c.target, CompareTarget::ModRevision(4));
        let c: Compare = serde_json::from_str(r#"{"key": "YQ==", "exists": false}"#).unwrap();
        assert_eq!(c.op, CompareOp::Equal);
        assert_eq!(c.target, CompareTarget::Exists(false));
        assert!(serde_json::from_str::<Compare>(r#"{"key": "!!", "version": 1}"#).is_err());
    }

    #[test]
    fn a_txn_round_trips() {
        let t = TxnRequest {
            compare: vec![Compare {
                key: "k".into(),
                op: CompareOp::Equal,
                target: CompareTarget::Value("old".into()),
            }],
            success: vec![TxnOp::Put(PutOp {
                key: "k".into(),
                value: "new".into(),
                prev: false,
                lease: 0,
            })],
            failure: vec![TxnOp::Get(GetOp {
                range: RangeSpec {
                    key: "k".into(),
                    end: None,
                    prefix: false,
                },
                limit: None,
                keys_only: false,
                count_only: false,
            })],
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(
            s,
            r#"{"compare":[{"key":"aw==","op":"equal","value":"b2xk"}],"success":[{"put":{"key":"aw==","value":"bmV3"}}],"failure":[{"get":{"key":"aw=="}}]}"#
        );
        assert_eq!(serde_json::from_str::<TxnRequest>(&s).unwrap(), t);
    }
}
