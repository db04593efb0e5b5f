//! HTTP wire types shared by kvd and its clients. Field names and error codes are part of
//! the public contract in `docs/api.md`: extend them, never change them silently.

use serde::{Deserialize, Serialize};

/// Header carrying the caller's client id (a u64) for write deduplication.
pub const HEADER_CLIENT_ID: &str = "omnikv-client-id";
/// Header carrying the caller's per-client sequence number (a u64, starting at 1).
pub const HEADER_SEQ: &str = "omnikv-seq";
/// Alternative to client id + seq for HTTP callers: any string, hashed into a client id.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long (milliseconds) the caller will wait; kvd answers before that.
pub const HEADER_TIMEOUT_MS: &str = "omnikv-timeout-ms";
/// On GET: the applied log position the value was read at.
pub const HEADER_INDEX: &str = "omnikv-index";

/// Largest key kvd accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default largest value kvd accepts, in bytes (kvd `--max-value-bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024;

/// Stable, machine-readable error class. Serialized in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The key does not exist (HTTP 404).
    NotFound,
    /// Malformed request: bad key, bad header, bad parameter (HTTP 400).
    InvalidRequest,
    /// Key or value over its cap (HTTP 413).
    TooLarge,
    /// Definitely not applied: no leader known, replica removed or catching up, overloaded
    /// before the request was handed to consensus (HTTP 503).
    Unavailable,
    /// Handed to consensus but not confirmed in time: it may still be applied (HTTP 504).
    Indeterminate,
    /// A request refused on its merits (e.g. a stale retry, a refused change) (HTTP 409).
    Rejected,
    /// A bug on the server side (HTTP 500).
    Internal,
    /// No credentials, or credentials that name no user (HTTP 401).
    Unauthenticated,
    /// An authenticated user whose role or prefix does not allow the call (HTTP 403).
    PermissionDenied,
    /// Plaintext HTTP sent to an endpoint that serves HTTPS (HTTP 400).
    TlsRequired,
}

impl ErrorCode {
    /// The HTTP status kvd answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Indeterminate => 504,
            ErrorCode::Rejected => 409,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::TlsRequired => 400,
        }
    }
}

/// The JSON error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// Answer to a successful PUT or DELETE of one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResult {
    /// Configuration the write was decided in.
    pub config_id: u32,
    /// Log index (within that configuration) of the entry that carried the write.
    pub index: u64,
    /// Whether the key existed before the write.
    pub existed: bool,
    /// The store revision after the write (the write's own revision when it changed
    /// something: every put, a delete of a key that existed).
    #[serde(default)]
    pub revision: u64,
    /// The key before the write, when asked (`?prev=true`) and it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<crate::kv::KeyValue>,
    /// Answered from the remembered outcome of a retry (the first application's `existed`
    /// and `revision`; `prev` is not kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    pub pid: u64,
    pub role: Role,
    /// Leader of the current configuration as this replica believes, `null` when none known.
    pub leader: Option<u64>,
    pub config_id: u32,
    pub members: Vec<u64>,
    /// OmniPaxos decided index in the current configuration's log.
    pub decided_idx: u64,
    /// Entries of the current configuration applied to the state machine.
    pub applied_idx: u64,
    /// Entries compacted away (the snapshot marker covers `[0, compacted_idx)`).
    pub compacted_idx: u64,
    /// Keys in the state machine.
    pub keys: u64,
    /// Hex digest of the state machine (keys and values); equal on replicas at equal applied_idx.
    pub state_hash: String,
    /// The store revision this replica has applied; equal on replicas at equal applied_idx.
    #[serde(default)]
    pub revision: u64,
    /// Cluster identity (hex).
    pub cluster_id: String,
    /// Peers with a live outbound connection.
    pub connected_peers: Vec<u64>,
    /// A membership change in flight, as this replica sees it (`null` when none).
    #[serde(default)]
    pub reconfiguration: Option<ReconfigView>,
    /// A state transfer (checkpoint) this replica is receiving (`null` when none).
    #[serde(default)]
    pub transfer: Option<TransferView>,
}

/// A membership change in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReconfigView {
    /// The configuration being installed.
    pub config_id: u32,
    pub members: Vec<u64>,
    pub phase: Phase,
}

/// What a replica is doing, as `GET /v1/status` reports it (`"catching-up"` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Leads the current configuration.
    Leader,
    /// A member that knows the leader.
    Follower,
    /// A member that knows no leader (an election is under way).
    Candidate,
    /// The single-server mode: one member, no consensus.
    Standalone,
    /// A member fetching entries or a checkpoint; applies nothing from its own log meanwhile.
    CatchingUp,
    /// A new member without state: waiting to be added (`config_id` 0), or receiving a
    /// checkpoint.
    Joining,
    /// Removed by a decided change, handing over.
    Leaving,
    /// Retired: answers nothing but status.
    Removed,
    /// A role this client does not know (from a newer kvd): read as "not serving".
    #[serde(other)]
    Unknown,
}

impl Role {
    /// The wire name (`catching-up`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Standalone => "standalone",
            Role::CatchingUp => "catching-up",
            Role::Joining => "joining",
            Role::Leaving => "leaving",
            Role::Removed => "removed",
            Role::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a membership change has come, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The leader is getting the StopSign decided.
    Proposed,
    /// The old configuration is sealed; replicas are switching.
    Decided,
    /// This replica was removed and hands over.
    Leaving,
    /// A phase this client does not know (from a newer kvd).
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Proposed => "proposed",
            Phase::Decided => "decided",
            Phase::Leaving => "leaving",
            Phase::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of a checkpoint being received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferView {
    /// The replica streaming it.
    pub from: u64,
    /// Key and value bytes, and records, written so far (a resumed transfer counts what came
    /// before the interruption too).
    pub bytes: u64,
    pub items: u64,
    /// Time since this stream (or its resumption) started.
    pub elapsed_ms: u64,
    /// KV keys written so far, and in the whole state (0: not known yet).
    #[serde(default)]
    pub keys: u64,
    #[serde(default)]
    pub keys_total: u64,
    /// The sender's estimate of the whole state's bytes (0: not known yet).
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes per second since this stream (or its resumption) started.
    #[serde(default)]
    pub rate_bytes_per_sec: u64,
    /// Time left at that rate, by keys (None until keys come).
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// Bytes already held when this stream started: a resumption's head start.
    #[serde(default)]
    pub resumed_at_bytes: u64,
}

/// `POST /v1/reconfigure`: change the members, as a compare-and-set on the configuration id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReconfigureRequest {
    /// The complete new member list.
    pub nodes: Vec<u64>,
    /// The id the new configuration must get: current + 1 (the default when absent). Any
    /// other id is refused (`rejected`), except the current id with the current members,
    /// which answers success (a retry of a change that already happened).
    #[serde(default)]
    pub config_id: Option<u32>,
    /// Skip the "a majority of the new configuration is reachable" guard.
    #[serde(default)]
    pub force: bool,
    /// Peer addresses (`host:port`) of new members, by pid; members without one here use the
    /// addresses already known or the replicas' peer template.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<u64, String>,
}

/// Answer to a successful reconfigure: the configuration now in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReconfigureResult {
    pub config_id: u32,
    pub members: Vec<u64>,
}

/// `POST /v1/move-leader`: make member `to` the leader of the current configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveLeaderRequest {
    pub to: u64,
}

/// Answer to a successful move-leader: `leader` leads configuration `config_id` now;
/// `previous` led it when the request arrived (equal to `leader` when nothing had to move);
/// `elapsed_ms` from the request to the new leader's first accepted round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveLeaderResult {
    pub leader: u64,
    pub previous: u64,
    pub config_id: u32,
    pub elapsed_ms: u64,
}

/// `GET /v1/members`: the current configuration as this replica knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembersView {
    pub config_id: u32,
    /// Leader of the current configuration as this replica believes (`null` when none known
    /// or when this replica was removed).
    pub leader: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub pid: u64,
    /// Peer address (`host:port`), when known.
    pub peer_addr: Option<String>,
}

/// One entry of `GET /v1/log`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntryView {
    /// The compacted prefix `[0, upto)`, squashed into one snapshot marker.
    Snapshot { upto: u64 },
    /// A decided entry and the operations it carries (a batch may carry several).
    Entry { index: u64, ops: Vec<String> },
}

/// `GET /v1/log?limit=N`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogView {
    pub config_id: u32,
    pub decided_idx: u64,
    pub compacted_idx: u64,
    pub entries: Vec<LogEntryView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_is_stable() {
        let e = ApiError::new(ErrorCode::Indeterminate, "x");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"indeterminate","message":"x"}}"#
        );
    }

    #[test]
    fn security_codes_keep_their_names_and_statuses() {
        for (code, name, status) in [
            (ErrorCode::Unauthenticated, "unauthenticated", 401),
            (ErrorCode::PermissionDenied, "permission_denied", 403),
            (ErrorCode::TlsRequired, "tls_required", 400),
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&format!("\"{name}\"")).unwrap(),
                code
            );
            assert_eq!(code.http_status(), status);
        }
    }

    /// The JSON of roles and phases is the strings kvd sent before they were enums.
    #[test]
    fn roles_and_phases_keep_their_wire_names() {
        let roles = [
            (Role::Leader, "leader"),
            (Role::Follower, "follower"),
            (Role::Candidate, "candidate"),
            (Role::Standalone, "standalone"),
            (Role::CatchingUp, "catching-up"),
            (Role::Joining, "joining"),
            (Role::Leaving, "leaving"),
            (Role::Removed, "removed"),
        ];
        for (role, name) in roles {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Role>(&format!("\"{name}\"")).unwrap(),
                role
            );
            assert_eq!(role.to_string(), name);
        }
        let phases = [
            (Phase::Proposed, "proposed"),
            (Phase::Decided, "decided"),
            (Phase::Leaving, "leaving"),
        ];
        for (phase, name) in phases {
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(
                serde_json::from_str::<Phase>(&format!("\"{name}\"")).unwrap(),
                phase
            );
            assert_eq!(phase.to_string(), name);
        }
        // A role or phase from a newer kvd reads as unknown rather than failing the status.
        assert_eq!(
            serde_json::from_str::<Role>("\"catching_up\"").unwrap(),
            Role::Unknown
        );
        assert_eq!(
            serde_json::from_str::<Phase>("\"withdrawn\"").unwrap(),
            Phase::Unknown
        );
        let r = ReconfigView {
            config_id: 2,
            members: vec![1, 2, 3, 4],
            phase: Phase::Decided,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"config_id":2,"members":[1,2,3,4],"phase":"decided"}"#
        );
    }

    #[test]
    fn log_entry_tags() {
        let s = serde_json::to_string(&LogEntryView::Snapshot { upto: 5 }).unwrap();
        assert_eq!(s, r#"{"kind":"snapshot","upto":5}"#);
    }
}
