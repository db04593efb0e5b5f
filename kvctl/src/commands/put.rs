//! `put KEY VALUE [--if-absent | --if-value OLD | --if-mod-revision N] [--lease ID]`: writes
//! a value (`-` as VALUE reads it from stdin); with a condition, as a transaction whose
//! failure branch reads the key, so a failed compare says what the key holds. With a lease the
//! key is attached to it (and deleted when it ends); a lease that does not exist is exit 1.

use crate::cli::{OutputFormat, PutCondition};
use crate::exit::Error;
use crate::output;
use omnikv_common::keys::display_bytes;
use omnikv_common::kv::{
    Compare, CompareOp, CompareTarget, GetOp, KeyValue, PutOp, RangeSpec, TxnOp, TxnOpResult,
    TxnRequest,
};
use omnikv_common::{Client, ClientError, WriteResult};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

/// Reads all of `r`, byte for byte (no trimming).
pub fn read_value(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

/// The value named by a command-line VALUE: its bytes, or all of `stdin` when it is `-`.
pub fn value_from_arg(arg: &OsStr, stdin: impl Read) -> Result<Vec<u8>, Error> {
    if arg == "-" {
        read_value(stdin).map_err(|source| Error::Io {
            context: "cannot read the value from stdin",
            source,
        })
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

/// Names the lease in a not-found answer to a put attached to `lease`.
fn lease_error(lease: Option<u64>) -> impl Fn(ClientError) -> Error {
    move |e| match (e, lease) {
        (ClientError::NotFound, Some(id)) => Error::LeaseNotFound(id),
        (e, _) => Error::Client(e),
    }
}

/// Writes `value` under `key` (attached to `lease`, if given) and prints the result.
pub async fn run(
    client: &Client,
    key: &[u8],
    value: Vec<u8>,
    lease: Option<u64>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    super::check_key(key)?;
    let w = match lease {
        Some(id) => client.put_leased(key, value, id).await,
        None => client.put(key, value).await,
    }
    .map_err(lease_error(lease))?;
    output::write_write_result(out, format, &w, false).map_err(Error::stdout)
}

/// What a conditional put requires of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent,
    /// The key holds exactly these bytes.
    Value(Vec<u8>),
    /// The key's mod_revision is this (0: the key does not exist).
    ModRevision(u64),
}

impl Condition {
    /// The condition the flags ask for, if any (clap allows at most one).
    pub fn from_flags(c: &PutCondition) -> Option<Condition> {
        if c.if_absent {
            Some(Condition::Absent)
        } else if let Some(v) = &c.if_value {
            Some(Condition::Value(v.as_bytes().to_vec()))
        } else {
            c.if_mod_revision.map(Condition::ModRevision)
        }
    }

    fn compare(&self, key: &[u8]) -> Compare {
        let target = match self {
            Condition::Absent => CompareTarget::Exists(false),
            Condition::Value(v) => CompareTarget::Value(v.as_slice().into()),
            Condition::ModRevision(n) => CompareTarget::ModRevision(*n),
        };
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target,
        }
    }

    /// Whether the key existed before a put this condition let through.
    fn existed(&self) -> bool {
        match self {
            Condition::Absent => false,
            Condition::Value(_) => true,
            Condition::ModRevision(n) => *n > 0,
        }
    }

    /// Why the compare failed, from what the key holds now (`None`: absent).
    pub fn failure(&self, key: &[u8], now: Option<&KeyValue>) -> String {
        let key = display_bytes(key);
        let Some(kv) = now else {
            return format!("key {key} does not exist");
        };
        let value = kv
            .value
            .as_ref()
            .map_or_else(String::new, |v| display_bytes(&v.0));
        let holds = format!(
            "holds {value} (mod_revision {}, version {})",
            kv.mod_revision, kv.version
        );
        match self {
            Condition::Absent => format!("key {key} exists: it {holds}"),
            Condition::Value(v) => format!("key {key} {holds}, not {}", display_bytes(v)),
            Condition::ModRevision(n) => format!("key {key} {holds}, not mod_revision {n}"),
        }
    }

    /// The transaction: if the compare holds put (attached to `lease`), else read the key.
    pub fn txn(&self, key: &[u8], value: Vec<u8>, lease: Option<u64>) -> TxnRequest {
        TxnRequest {
            compare: vec![self.compare(key)],
            success: vec![TxnOp::Put(PutOp {
                key: key.into(),
                value: omnikv_common::kv::Bytes64(value),
                prev: false,
                lease: lease.unwrap_or(0),
            })],
            failure: vec![TxnOp::Get(GetOp {
                range: RangeSpec {
                    key: key.into(),
                    end: None,
                    prefix: false,
                },
                limit: None,
                keys_only: false,
                count_only: false,
            })],
        }
    }
}

/// Writes `value` under `key` (attached to `lease`, if given) if `condition` holds; prints
/// `OK` (JSON: a put's result), or fails with exit 6 and what the key holds now.
pub async fn run_if(
    client: &Client,
    key: &[u8],
    value: Vec<u8>,
    lease: Option<u64>,
    condition: &Condition,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    super::check_key(key)?;
    let r = client
        .txn(&condition.txn(key, value, lease))
        .await
        .map_err(lease_error(lease))?;
    if !r.succeeded {
        let now = match r.responses.first() {
            Some(TxnOpResult::Get(g)) => g.kvs.first(),
            _ => None,
        };
        return Err(Error::CompareFailed(if r.replayed {
            "the condition did not hold (a retry answered from its first outcome)".into()
        } else {
            condition.failure(key, now)
        }));
    }
    let w = WriteResult {
        config_id: r.config_id,
        index: r.index,
        existed: condition.existed(),
        revision: r.revision,
        prev: None,
        replayed: r.replayed,
    };
    output::write_write_result(out, format, &w, false).map_err(Error::stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn conditions_compare_and_explain() {
        let now = KeyValue {
            key: "k".into(),
            value: Some("x".into()),
            create_revision: 3,
            mod_revision: 8,
            version: 2,
            lease: 0,
        };
        let t = Condition::Absent.txn(b"k", b"v".to_vec(), None);
        assert_eq!(t.compare[0].target, CompareTarget::Exists(false));
        assert!(matches!(&t.success[..], [TxnOp::Put(p)] if p.value.0 == b"v" && p.lease == 0));
        let t = Condition::Absent.txn(b"k", b"v".to_vec(), Some(7));
        assert!(matches!(&t.success[..], [TxnOp::Put(p)] if p.lease == 7));
        assert!(matches!(&t.failure[..], [TxnOp::Get(g)] if g.range.key.0 == b"k"));
        assert_eq!(
            Condition::Absent.failure(b"k", Some(&now)),
            "key k exists: it holds x (mod_revision 8, version 2)"
        );
        assert_eq!(
            Condition::Value(b"old".to_vec()).failure(b"k", Some(&now)),
            "key k holds x (mod_revision 8, version 2), not old"
        );
        assert_eq!(
            Condition::ModRevision(7).failure(b"k", None),
            "key k does not exist"
        );
        assert_eq!(
            Condition::ModRevision(7).compare(b"k").target,
            CompareTarget::ModRevision(7)
        );
        assert!(!Condition::ModRevision(0).existed());
    }

    #[test]
    fn reads_stdin_exactly() {
        let bytes = b"  line one\nline two\n\n\xff\x00 \r\n".to_vec();
        assert_eq!(read_value(Cursor::new(bytes.clone())).unwrap(), bytes);
        assert_eq!(read_value(Cursor::new(Vec::new())).unwrap(), b"");
    }

    #[test]
    fn dash_means_stdin() {
        let stdin = Cursor::new(b"from stdin\n".to_vec());
        assert_eq!(
            value_from_arg(OsStr::new("-"), stdin).unwrap(),
            b"from stdin\n"
        );
        let unused = Cursor::new(b"ignored".to_vec());
        assert_eq!(value_from_arg(OsStr::new("v 1"), unused).unwrap(), b"v 1");
    }

    #[test]
    fn non_utf8_args_are_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let arg = std::ffi::OsString::from_vec(b"\xff\xfe".to_vec());
        assert_eq!(value_from_arg(&arg, std::io::empty()).unwrap(), b"\xff\xfe");
    }
}
