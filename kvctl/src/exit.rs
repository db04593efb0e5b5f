//! Exit codes, kvctl's error type, and the mapping from the client's error classes to both.

use omnikv_common::client::LeaseLost;
use omnikv_common::keys::display_bytes;
use omnikv_common::{ClientError, ErrorCode};

/// Success.
pub const OK: i32 = 0;
/// The key (or the lease) does not exist.
pub const NOT_FOUND: i32 = 1;
/// Bad flags or arguments (clap's own parse errors exit 2 too), or a local I/O error.
pub const USAGE: i32 = 2;
/// Definitely not applied: no leader or quorum, nothing reachable, replica removed.
pub const UNAVAILABLE: i32 = 3;
/// A write was sent but not confirmed in time: it may have been applied.
pub const INDETERMINATE: i32 = 4;
/// Refused on its merits: invalid request, too large, refused change; a watch whose
/// revision every replica has compacted.
pub const REJECTED: i32 = 5;
/// A conditional write or transaction whose compares did not hold: nothing was written.
pub const COMPARE_FAILED: i32 = 6;
/// Not authenticated or not permitted: 401, 403, plain HTTP to an HTTPS endpoint, or a TLS
/// handshake that failed on a certificate. Nothing was applied.
pub const NOT_PERMITTED: i32 = 7;

/// The exit-code table shown at the end of `kvctl --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  key not found (lease not found for lease commands, put --lease, lock and elect)
  2  usage: bad flags or arguments (or a local I/O error, e.g. unreadable stdin)
  3  unavailable: definitely not applied (no leader or quorum, nothing reachable, replica removed)
  4  indeterminate: a write was sent but not confirmed in time; it may have been applied
  5  rejected: invalid request, too large, refused change, a watch revision compacted everywhere,
     a snapshot file (or every stream of a save) that does not verify
  6  compare failed: a conditional put or transaction whose compares did not hold (nothing written)
  7  not permitted: not authenticated (no or unknown token or certificate), permission denied
     (role or prefix), plain http:// to an HTTPS endpoint, or a TLS certificate failure
     (unknown CA, expired, name mismatch, client certificate refused); nothing applied

Errors go to stderr: `error: <message>`, or with -o json
{\"error\":{\"code\":\"<code>\",\"message\":\"...\"}}.";

/// Everything a kvctl command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `get` of a missing key (carries the key for the message).
    #[error("key not found: {}", display_bytes(.0))]
    KeyNotFound(Vec<u8>),
    /// A lease command, or a put with `--lease`, named a lease that does not exist (expired
    /// or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(u64),
    /// A lease that `lock`, `elect` or `lease keepalive` held is gone, or may be: exit 1
    /// when kvd said it does not exist, 4 when no keepalive was confirmed for a whole TTL,
    /// 5 when a keepalive was refused.
    #[error("{0}")]
    LeaseLost(#[from] LeaseLost),
    /// What the client reported.
    #[error("{}", client_message(.0))]
    Client(#[from] ClientError),
    /// Bad arguments found after parsing (e.g. `--node` out of range, empty key).
    #[error("usage: {0}")]
    Usage(String),
    /// A conditional write's or a transaction's compares did not hold.
    #[error("compare failed: {0}")]
    CompareFailed(String),
    /// A watch needs a revision no replica that answered still holds.
    #[error("{0}")]
    Compacted(String),
    /// A snapshot file (or stream) failed verification: corrupt, truncated, unknown format.
    #[error("{0}")]
    BadSnapshot(String),
    /// Reading stdin or writing stdout failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// Writing the result to stdout failed.
    pub fn stdout(source: std::io::Error) -> Self {
        Error::Io {
            context: "cannot write to stdout",
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::KeyNotFound(_) | Error::LeaseNotFound(_) => NOT_FOUND,
            Error::LeaseLost(LeaseLost::NotFound(_)) => NOT_FOUND,
            Error::LeaseLost(LeaseLost::Unconfirmed { .. }) => INDETERMINATE,
            Error::LeaseLost(LeaseLost::Refused { .. }) => REJECTED,
            Error::Client(e) => client_exit_code(e),
            Error::Usage(_) | Error::Io { .. } => USAGE,
            Error::CompareFailed(_) => COMPARE_FAILED,
            Error::Compacted(_) | Error::BadSnapshot(_) => REJECTED,
        }
    }

    /// The machine-readable code of `-o json` errors: `usage` for usage (and local I/O)
    /// errors, `compare_failed`, `compacted`, otherwise the snake_case `ErrorCode` name (a rejection's own inner code).
    pub fn code(&self) -> String {
        match self {
            Error::KeyNotFound(_) | Error::LeaseNotFound(_) => error_code_name(ErrorCode::NotFound),
            Error::LeaseLost(_) => "lease_lost".into(),
            Error::Usage(_) | Error::Io { .. } => "usage".into(),
            Error::CompareFailed(_) => "compare_failed".into(),
            Error::Compacted(_) => "compacted".into(),
            Error::BadSnapshot(_) => "bad_snapshot".into(),
            Error::Client(e) => match e {
                ClientError::NotFound => error_code_name(ErrorCode::NotFound),
                ClientError::Unavailable(_) => error_code_name(ErrorCode::Unavailable),
                ClientError::Indeterminate(_) => error_code_name(ErrorCode::Indeterminate),
                ClientError::Rejected { code, .. } => error_code_name(*code),
                ClientError::Usage(_) => "usage".into(),
                ClientError::NotPermitted(_) => "not_permitted".into(),
            },
        }
    }
}

/// Maps a client error class to its exit code.
pub fn client_exit_code(e: &ClientError) -> i32 {
    match e {
        ClientError::NotFound => NOT_FOUND,
        ClientError::Usage(_) => USAGE,
        ClientError::Unavailable(_) => UNAVAILABLE,
        ClientError::Indeterminate(_) => INDETERMINATE,
        ClientError::Rejected { .. } => REJECTED,
        ClientError::NotPermitted(_) => NOT_PERMITTED,
    }
}

/// The wire (snake_case) name of an error code, e.g. `too_large`.
pub fn error_code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{code:?}"))
}

fn client_message(e: &ClientError) -> String {
    match e {
        ClientError::Rejected { code, message } => {
            format!("rejected ({}): {message}", error_code_name(*code))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: ErrorCode) -> Error {
        Error::Client(ClientError::Rejected {
            code,
            message: "m".into(),
        })
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Client(ClientError::NotFound).exit_code(), 1);
        assert_eq!(Error::KeyNotFound(b"k".to_vec()).exit_code(), 1);
        assert_eq!(Error::LeaseNotFound(0x1f).exit_code(), 1);
        assert_eq!(Error::LeaseLost(LeaseLost::NotFound(3)).exit_code(), 1);
        let unconfirmed = LeaseLost::Unconfirmed {
            id: 3,
            ttl_s: 2,
            last_error: "x".into(),
        };
        assert_eq!(Error::LeaseLost(unconfirmed).exit_code(), 4);
        assert_eq!(Error::Client(ClientError::Usage("u".into())).exit_code(), 2);
        assert_eq!(Error::usage("u").exit_code(), 2);
        assert_eq!(Error::BadSnapshot("b".into()).exit_code(), 5);
        assert_eq!(Error::BadSnapshot("b".into()).code(), "bad_snapshot");
        assert_eq!(
            Error::Client(ClientError::Unavailable("x".into())).exit_code(),
            3
        );
        assert_eq!(
            Error::Client(ClientError::Indeterminate("x".into())).exit_code(),
            4
        );
        assert_eq!(rejected(ErrorCode::TooLarge).exit_code(), 5);
        assert_eq!(Error::Compacted("c".into()).exit_code(), 5);
        assert_eq!(Error::CompareFailed("c".into()).exit_code(), 6);
        assert_eq!(
            Error::Client(ClientError::NotPermitted("x".into())).exit_code(),
            7
        );
        assert_eq!(
            Error::Client(ClientError::NotPermitted("x".into())).code(),
            "not_permitted"
        );
        // The help table lists every code.
        for code in [
            OK,
            NOT_FOUND,
            USAGE,
            UNAVAILABLE,
            INDETERMINATE,
            REJECTED,
            COMPARE_FAILED,
            NOT_PERMITTED,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {code}  ")), "{code}");
        }
    }

    #[test]
    fn codes_and_messages() {
        let e = Error::Client(ClientError::Unavailable("0 of 1 replicas reachable".into()));
        assert_eq!(e.code(), "unavailable");
        assert_eq!(e.to_string(), "unavailable: 0 of 1 replicas reachable");
        assert_eq!(rejected(ErrorCode::TooLarge).code(), "too_large");
        assert_eq!(
            rejected(ErrorCode::TooLarge).to_string(),
            "rejected (too_large): m"
        );
        assert_eq!(
            rejected(ErrorCode::InvalidRequest).code(),
            "invalid_request"
        );
        assert_eq!(Error::usage("x").code(), "usage");
        let cf = Error::CompareFailed("key a exists".into());
        assert_eq!(cf.code(), "compare_failed");
        assert_eq!(cf.to_string(), "compare failed: key a exists");
        assert_eq!(Error::Compacted("c".into()).code(), "compacted");
        let nf = Error::KeyNotFound(b"a/b".to_vec());
        assert_eq!(nf.code(), "not_found");
        assert_eq!(nf.to_string(), "key not found: a/b");
        let lnf = Error::LeaseNotFound(0x694d7a6f2bd1a504);
        assert_eq!(lnf.code(), "not_found");
        assert_eq!(
            lnf.to_string(),
            "lease 694d7a6f2bd1a504 not found (expired or revoked)"
        );
        assert_eq!(
            Error::Client(ClientError::Indeterminate("x".into())).code(),
            "indeterminate"
        );
    }
}
