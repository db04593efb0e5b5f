//! What each role may do: the call a request makes and every key it names, against the
//! user's role and prefix. Pure functions; the API calls them before it hands anything to
//! consensus, so a denied request changes nothing.

use super::users::{Role, User};
use crate::command::{prefix_end, KeyRange, Txn, TxnOp};
use omnikv_common::keys::display_bytes;

/// A call of the client API, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Put,
    Delete,
    Range,
    DeleteRange,
    Txn,
    Watch,
    LeaseList,
    LeaseTimeToLive,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Status,
    Log,
    Members,
    Reconfigure,
    MoveLeader,
    Snapshot,
    /// etcd's Compact (etcd's API only).
    Compact,
}

impl Call {
    /// Every call, for tables and tests.
    pub const ALL: [Call; 19] = [
        Call::Get,
        Call::Put,
        Call::Delete,
        Call::Range,
        Call::DeleteRange,
        Call::Txn,
        Call::Watch,
        Call::LeaseList,
        Call::LeaseTimeToLive,
        Call::LeaseGrant,
        Call::LeaseKeepAlive,
        Call::LeaseRevoke,
        Call::Status,
        Call::Log,
        Call::Members,
        Call::Reconfigure,
        Call::MoveLeader,
        Call::Snapshot,
        Call::Compact,
    ];

    /// The least role that may make this call.
    pub fn needs(self) -> Role {
        match self {
            Call::Get
            | Call::Range
            | Call::Watch
            | Call::LeaseList
            | Call::LeaseTimeToLive
            | Call::Status
            | Call::Log
            | Call::Members => Role::Read,
            Call::Put
            | Call::Delete
            | Call::DeleteRange
            | Call::Txn
            | Call::LeaseGrant
            | Call::LeaseKeepAlive
            | Call::LeaseRevoke
            | Call::Compact => Role::Write,
            Call::Reconfigure | Call::MoveLeader | Call::Snapshot => Role::Admin,
        }
    }

    /// The call in words, for messages ("may not ...").
    pub fn what(self) -> &'static str {
        match self {
            Call::Get => "get",
            Call::Put => "put",
            Call::Delete => "delete",
            Call::Range => "read a range",
            Call::DeleteRange => "delete a range",
            Call::Txn => "run a transaction",
            Call::Watch => "watch",
            Call::LeaseList => "list leases",
            Call::LeaseTimeToLive => "read a lease",
            Call::LeaseGrant => "grant a lease",
            Call::LeaseKeepAlive => "keep a lease alive",
            Call::LeaseRevoke => "revoke a lease",
            Call::Status => "read the status",
            Call::Log => "read the log",
            Call::Members => "read the members",
            Call::Reconfigure => "reconfigure",
            Call::MoveLeader => "move the leader",
            Call::Snapshot => "take a snapshot",
            Call::Compact => "compact the history",
        }
    }
}

/// A refused call; the message names the user, its role and what was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// The user as messages name it: `user app (role write, prefix app/)`.
fn who(user: &User) -> String {
    match &user.prefix {
        Some(p) => format!(
            "user {} (role {}, prefix {})",
            user.name,
            user.role,
            display_bytes(p)
        ),
        None => format!("user {} (role {})", user.name, user.role),
    }
}

/// Whether `user`'s role allows `call` at all (keys are checked separately).
pub fn may_call(user: &User, call: Call) -> Result<(), Denied> {
    if user.role < call.needs() {
        return Err(Denied(format!(
            "{} may not {}: that needs role {}",
            who(user),
            call.what(),
            call.needs()
        )));
    }
    if call == Call::Log && user.prefix.is_some() {
        return Err(Denied(format!(
            "{} may not {}: the log shows the keys and values of every write, so \
             prefix-limited users may not read it",
            who(user),
            call.what()
        )));
    }
    if call == Call::Compact && user.prefix.is_some() {
        return Err(Denied(format!(
            "{} may not {}: compacting ends the past revisions of every key, so \
             prefix-limited users may not",
            who(user),
            call.what()
        )));
    }
    Ok(())
}

/// Whether every key of `range` starts with `prefix`: a key with the prefix, or a span from a
/// key with the prefix to at most the end of the prefix's keys.
pub fn range_inside(prefix: &[u8], range: &KeyRange) -> bool {
    match range {
        KeyRange::Key(k) => k.starts_with(prefix),
        KeyRange::Span { start, end } => {
            start.starts_with(prefix)
                && match (end, prefix_end(prefix)) {
                    (_, None) => true,
                    (None, Some(_)) => false,
                    (Some(e), Some(limit)) => *e <= limit,
                }
        }
    }
}

fn describe(range: &KeyRange) -> String {
    match range {
        KeyRange::Key(k) => format!("key {}", display_bytes(k)),
        KeyRange::Span { start, end: None } => {
            format!("range [{}, end of keys)", display_bytes(start))
        }
        KeyRange::Span {
            start,
            end: Some(e),
        } => format!("range [{}, {})", display_bytes(start), display_bytes(e)),
    }
}

/// Whether `user` may make `call` on `range` (its role is checked by `may_call`).
pub fn may_touch(user: &User, call: Call, range: &KeyRange) -> Result<(), Denied> {
    match &user.prefix {
        Some(p) if !range_inside(p, range) => Err(Denied(format!(
            "{} may not {} on {}: it lies outside the user's prefix",
            who(user),
            call.what(),
            describe(range)
        ))),
        _ => Ok(()),
    }
}

/// Whether `user` may run `txn`: the call, every compare key, and every key and range of
/// both branches (and of the transactions nested in them).
pub fn may_txn(user: &User, txn: &Txn) -> Result<(), Denied> {
    may_call(user, Call::Txn)?;
    for c in &txn.compares {
        may_touch(user, Call::Txn, &KeyRange::Key(c.key.clone()))?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put { key, .. } | TxnOp::PutLeased { key, .. } => {
                may_touch(user, Call::Txn, &KeyRange::Key(key.clone()))?
            }
            TxnOp::Delete { range } | TxnOp::Get { range, .. } => {
                may_touch(user, Call::Txn, range)?
            }
            TxnOp::Txn(nested) => may_txn(user, nested)?,
        }
    }
    Ok(())
}

/// Whether `user` may revoke lease `id` (or read its keys, `call`), whose attached keys are
/// `keys`: an admin or an unprefixed user always; a prefixed one when every key is inside
/// its prefix (revoking deletes them all).
pub fn may_use_lease_keys(
    user: &User,
    call: Call,
    id: u64,
    keys: &[Vec<u8>],
) -> Result<(), Denied> {
    may_call(user, call)?;
    let Some(p) = &user.prefix else {
        return Ok(());
    };
    match keys.iter().find(|k| !k.starts_with(p)) {
        // The key is not named: it lies outside what the user may see.
        Some(_) => Err(Denied(format!(
            "{} may not {}: lease {id} holds keys outside the user's prefix",
            who(user),
            call.what(),
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Compare, CompareOp, CompareTarget, ReadOpts};

    fn user(role: Role, prefix: Option<&[u8]>) -> User {
        User {
            name: "u".into(),
            role,
            prefix: prefix.map(<[u8]>::to_vec),
        }
    }

    fn span(start: &[u8], end: Option<&[u8]>) -> KeyRange {
        KeyRange::Span {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        }
    }

    /// Each role against each call: read < write < admin, and the log closed to prefixes.
    #[test]
    fn each_role_may_make_exactly_its_calls() {
        let reads = [
            Call::Get,
            Call::Range,
            Call::Watch,
            Call::LeaseList,
            Call::LeaseTimeToLive,
            Call::Status,
            Call::Log,
            Call::Members,
        ];
        let writes = [
            Call::Put,
            Call::Delete,
            Call::DeleteRange,
            Call::Txn,
            Call::LeaseGrant,
            Call::LeaseKeepAlive,
            Call::LeaseRevoke,
            Call::Compact,
        ];
        let admins = [Call::Reconfigure, Call::MoveLeader, Call::Snapshot];
        assert_eq!(reads.len() + writes.len() + admins.len(), Call::ALL.len());
        for call in Call::ALL {
            let class = if reads.contains(&call) {
                Role::Read
            } else if writes.contains(&call) {
                Role::Write
            } else {
                assert!(admins.contains(&call), "{call:?}");
                Role::Admin
            };
            for role in [Role::Read, Role::Write, Role::Admin] {
                let got = may_call(&user(role, None), call);
                assert_eq!(got.is_ok(), role >= class, "{role} {call:?}: {got:?}");
                if let Err(Denied(m)) = got {
                    assert!(m.contains("user u (role"), "{m}");
                    assert!(m.contains(call.what()), "{m}");
                    assert!(m.contains(&format!("needs role {class}")), "{m}");
                }
                if role != Role::Admin {
                    let prefixed = may_call(&user(role, Some(b"p/")), call);
                    let want = role >= class && !matches!(call, Call::Log | Call::Compact);
                    assert_eq!(prefixed.is_ok(), want, "{role} p/ {call:?}: {prefixed:?}");
                }
            }
        }
    }

    #[test]
    fn prefix_boundaries() {
        let p = b"app/";
        let inside = [
            KeyRange::Key(b"app/".to_vec()),
            KeyRange::Key(b"app/x".to_vec()),
            KeyRange::prefix(b"app/"),
            KeyRange::prefix(b"app/sub/"),
            span(b"app/", Some(b"app0")), // app0 is prefix_end("app/")
            span(b"app/a", Some(b"app/b")),
            span(b"app/\xff", Some(b"app0")),
        ];
        let outside = [
            KeyRange::Key(b"app".to_vec()),
            KeyRange::Key(b"apq/x".to_vec()),
            KeyRange::Key(b"ap".to_vec()),
            KeyRange::prefix(b"app"),
            KeyRange::prefix(b""),
            span(b"app/", Some(b"app0\x00")), // ends past the prefix
            span(b"app/a", Some(b"b")),
            span(b"app/a", None),
            span(b"app", Some(b"app/z")), // starts before it
            span(b"", Some(b"app/z")),
            span(b"app0", Some(b"app0")), // at the end, empty, still outside
        ];
        for r in &inside {
            assert!(range_inside(p, r), "{r:?}");
            assert!(may_touch(&user(Role::Read, Some(p)), Call::Range, r).is_ok());
        }
        for r in &outside {
            assert!(!range_inside(p, r), "{r:?}");
            let e = may_touch(&user(Role::Write, Some(p)), Call::DeleteRange, r).unwrap_err();
            assert!(
                e.0.contains("user u (role write, prefix app/) may not delete a range on"),
                "{}",
                e.0
            );
            assert!(e.0.contains("outside the user's prefix"), "{}", e.0);
            // Without a prefix, any range.
            assert!(may_touch(&user(Role::Write, None), Call::DeleteRange, r).is_ok());
        }
        // A prefix of only 0xff bytes runs to the end of the key space.
        let ff = b"\xff\xff";
        assert!(range_inside(ff, &KeyRange::prefix(ff)));
        assert!(range_inside(ff, &span(b"\xff\xff\x01", None)));
        assert!(!range_inside(ff, &span(b"\xff", None)));
    }

    fn txn(compare_keys: &[&[u8]], success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Txn {
        Txn {
            compares: compare_keys
                .iter()
                .map(|k| Compare {
                    key: k.to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(0),
                })
                .collect(),
            success,
            failure,
        }
    }

    fn put(k: &[u8]) -> TxnOp {
        TxnOp::Put {
            key: k.to_vec(),
            value: b"v".to_vec(),
        }
    }

    #[test]
    fn a_transaction_with_one_key_outside_is_denied() {
        let u = user(Role::Write, Some(b"a/"));
        let get = |r: KeyRange| TxnOp::Get {
            range: r,
            opts: ReadOpts::default(),
        };
        let leased = TxnOp::PutLeased {
            key: b"a/l".to_vec(),
            value: vec![],
            lease: 7,
        };
        let ok = txn(
            &[b"a/c"],
            vec![put(b"a/1"), leased.clone(), get(KeyRange::prefix(b"a/"))],
            vec![TxnOp::Delete {
                range: KeyRange::prefix(b"a/x"),
            }],
        );
        assert_eq!(may_txn(&u, &ok), Ok(()));
        let bad = [
            txn(&[b"b/c"], vec![put(b"a/1")], vec![]),
            txn(&[b"a/c"], vec![put(b"a/1"), put(b"b/1")], vec![]),
            txn(&[], vec![], vec![put(b"b/1")]),
            txn(&[], vec![get(KeyRange::prefix(b"a"))], vec![]),
            txn(
                &[],
                vec![TxnOp::PutLeased {
                    key: b"x".to_vec(),
                    value: vec![],
                    lease: 7,
                }],
                vec![],
            ),
            txn(
                &[],
                vec![],
                vec![TxnOp::Delete {
                    range: span(b"a/", None),
                }],
            ),
        ];
        for t in &bad {
            let e = may_txn(&u, t).unwrap_err();
            assert!(e.0.contains("may not run a transaction on"), "{}", e.0);
        }
        // A reader may run no transaction at all; an unprefixed writer any.
        assert!(may_txn(&user(Role::Read, Some(b"a/")), &ok).is_err());
        for t in &bad {
            assert_eq!(may_txn(&user(Role::Write, None), t), Ok(()));
        }
    }

    #[test]
    fn revoking_needs_every_attached_key_inside_the_prefix() {
        let keys = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
        let w = user(Role::Write, Some(b"a/"));
        let call = Call::LeaseRevoke;
        assert!(may_use_lease_keys(&w, call, 1, &keys(&[])).is_ok());
        assert!(may_use_lease_keys(&w, call, 1, &keys(&[b"a/1", b"a/2"])).is_ok());
        let e = may_use_lease_keys(&w, call, 9, &keys(&[b"a/1", b"b/2"])).unwrap_err();
        assert!(
            e.0.contains("may not revoke a lease: lease 9 holds keys outside")
                && !e.0.contains("b/2"),
            "{}",
            e.0
        );
        assert!(may_use_lease_keys(&user(Role::Write, None), call, 1, &keys(&[b"b/2"])).is_ok());
        assert!(may_use_lease_keys(&user(Role::Admin, None), call, 1, &keys(&[b"b/2"])).is_ok());
        assert!(may_use_lease_keys(&user(Role::Read, None), call, 1, &keys(&[])).is_err());
    }
}
