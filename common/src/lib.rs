//! omnikv's one wire vocabulary (HTTP paths, bodies, error codes, status) and the async
//! client that kvctl, the watcher and the tests all use. `docs/api.md` is the contract.

pub mod api;
pub mod client;
pub mod keys;
pub mod kv;
pub mod lease;
pub mod membership;
pub mod snapshot;

pub use api::{
    ApiError, ErrorCode, LogEntryView, LogView, MemberView, MembersView, Phase, ReconfigView,
    ReconfigureRequest, ReconfigureResult, Role, StatusView, TransferView, WriteResult,
};
pub use api::{MoveLeaderRequest, MoveLeaderResult};
pub use client::{Client, ClientError, Consistency, Credentials};
