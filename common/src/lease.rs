//! The lease endpoints' JSON (`/v1/lease`): granting, renewing, revoking and listing leases.
//! Lease ids are in 1..2^63 (etcd's int64 > 0); kvctl shows them in hex, like etcdctl.

use crate::kv::Bytes64;
use serde::{Deserialize, Serialize};

/// The shortest TTL a lease gets, in seconds (a shorter one asked for is raised to it, as etcd
/// raises TTLs to its minimum): a new leader adds a few election rounds to every lease.
pub const MIN_TTL_SECS: u64 = 2;
/// The longest TTL accepted, in seconds (etcd's limit).
pub const MAX_TTL_SECS: u64 = 9_000_000_000;

/// `POST /v1/lease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    /// Seconds, 1..=`MAX_TTL_SECS` (raised to `MIN_TTL_SECS`).
    pub ttl: u64,
    /// The id to use; absent or 0: kvd picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// The answer to a grant or a keepalive: the lease lives `ttl` seconds from about now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGranted {
    pub id: u64,
    pub ttl: u64,
    /// Answered from the remembered outcome of a retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// The answer to `DELETE /v1/lease/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevoked {
    /// The store revision after the revoke (the revision of its deletes when it had keys).
    pub revision: u64,
    /// Keys deleted (absent on a replayed retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
}

/// One lease in `GET /v1/lease` and `GET /v1/lease/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub id: u64,
    /// The TTL it was granted with, in seconds.
    pub ttl: u64,
    /// Time left by the answering replica's lease clock (exact on the leader).
    pub remaining_ms: u64,
    /// Its keys, when asked for (`?keys=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<Bytes64>>,
}

/// `GET /v1/lease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseStatus>,
    pub revision: u64,
}
