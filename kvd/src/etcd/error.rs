//! Our API errors as etcd's gRPC statuses: the code and, where etcd's clients compare the
//! message to tell errors apart (Go's `rpctypes.Error`), etcd's exact message.

use crate::api::Error;
use omnikv_common::api::{ApiError, ErrorCode};
use tonic::{Code, Status};

/// etcd's messages that clients branch on (go.etcd.io/etcd/api/v3/v3rpc/rpctypes).
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";

/// The gRPC status for an error of the HTTP API's vocabulary.
pub fn status(e: ApiError) -> Status {
    let msg = e.error.message;
    match e.error.code {
        ErrorCode::NotFound => Status::new(Code::NotFound, LEASE_NOT_FOUND),
        ErrorCode::TooLarge if msg.contains("in one transaction") => {
            Status::new(Code::InvalidArgument, TOO_MANY_OPS)
        }
        ErrorCode::TooLarge => Status::new(Code::InvalidArgument, REQUEST_TOO_LARGE),
        ErrorCode::Unavailable if msg.contains("overloaded") => {
            Status::new(Code::ResourceExhausted, TOO_MANY_REQUESTS)
        }
        ErrorCode::Unavailable if msg.contains("no leader") => {
            Status::new(Code::Unavailable, NO_LEADER)
        }
        ErrorCode::Unavailable => Status::new(Code::Unavailable, format!("etcdserver: {msg}")),
        ErrorCode::Indeterminate => Status::new(Code::Unavailable, TIMEOUT),
        ErrorCode::InvalidRequest | ErrorCode::TlsRequired => {
            Status::new(Code::InvalidArgument, format!("etcdserver: {msg}"))
        }
        ErrorCode::Rejected => Status::new(Code::FailedPrecondition, format!("etcdserver: {msg}")),
        ErrorCode::Internal => Status::new(Code::Internal, format!("etcdserver: {msg}")),
        ErrorCode::Unauthenticated => {
            Status::new(Code::Unauthenticated, format!("etcdserver: {msg}"))
        }
        ErrorCode::PermissionDenied => Status::new(Code::PermissionDenied, PERMISSION_DENIED),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        status(e.into_api())
    }
}

/// INVALID_ARGUMENT with etcd's prefix.
pub fn invalid(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("etcdserver: {msg}"))
}

/// A request this first landing of the etcd API does not serve (docs/api.md lists them).
pub fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("etcdserver: {what} is not supported by omnikv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_etcds_codes_and_messages() {
        let s = |code, msg: &str| status(ApiError::new(code, msg));
        let no_leader = s(
            ErrorCode::Unavailable,
            "no leader known (replica 1 reaches 0 of 2 peers)",
        );
        assert_eq!(
            (no_leader.code(), no_leader.message()),
            (Code::Unavailable, NO_LEADER)
        );
        let busy = s(
            ErrorCode::Unavailable,
            "replica overloaded: request queue full",
        );
        assert_eq!(
            (busy.code(), busy.message()),
            (Code::ResourceExhausted, TOO_MANY_REQUESTS)
        );
        let ops = s(
            ErrorCode::TooLarge,
            "200 success operations in one transaction (at most 128)",
        );
        assert_eq!(
            (ops.code(), ops.message()),
            (Code::InvalidArgument, TOO_MANY_OPS)
        );
        let big = s(ErrorCode::TooLarge, "value exceeds the 1048576-byte limit");
        assert_eq!(
            (big.code(), big.message()),
            (Code::InvalidArgument, REQUEST_TOO_LARGE)
        );
        let lease = s(ErrorCode::NotFound, "lease 7 not found");
        assert_eq!(
            (lease.code(), lease.message()),
            (Code::NotFound, LEASE_NOT_FOUND)
        );
        let late = s(ErrorCode::Indeterminate, "no answer in time");
        assert_eq!((late.code(), late.message()), (Code::Unavailable, TIMEOUT));
    }
}
