//! Every unary call of etcd's API with an auth file, called in process over a real RocksDB
//! with a stand-in consensus loop that records what reaches it and answers nothing (as
//! api/auth_tests.rs does for the HTTP API): who is refused with which of etcd's statuses,
//! and that a refused call reaches nothing.

use super::auth::{AuthService, INVALID_TOKEN, USER_EMPTY};
use super::error::PERMISSION_DENIED;
use super::pb::etcdserverpb as pb;
use super::pb::v3lockpb;
use super::EtcdState;
use crate::api::auth_tests::{stand_in, Seen};
use crate::auth::users::token_line_hash;
use crate::auth::{Auth, Role, Users};
use std::future::Future;
use std::pin::Pin;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

/// The users: (name, role, prefix).
const USERS: [(&str, Role, Option<&str>); 5] = [
    ("root", Role::Admin, None),
    ("writer", Role::Write, None),
    ("reader", Role::Read, None),
    ("app", Role::Write, Some("app/")),
    ("elsewhere", Role::Write, Some("zz/")),
];

fn token(name: &str) -> String {
    format!("okv_etcd_token_of_{name}")
}

fn users() -> Users {
    let text: String = USERS
        .iter()
        .map(|(name, role, prefix)| {
            let prefix = prefix.map(|p| format!(" prefix={p}")).unwrap_or_default();
            format!(
                "{name} {role}{prefix} token=sha256:{}\n",
                token_line_hash(&token(name))
            )
        })
        .collect();
    Users::parse(text.as_bytes()).unwrap()
}

fn state(auth: Auth) -> (EtcdState, Seen, tempfile::TempDir) {
    let (api, seen, dir) = stand_in(auth);
    let data_dir = dir.path().to_path_buf();
    let state = EtcdState::new(api, 7, 1, "http://x".into(), data_dir, false, 1);
    (state, seen, dir)
}

type Answer = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Which prefixed users may make a call: any, those whose prefix holds its keys (all inside
/// `app/`), or none.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Anyone,
    Keys,
    Unprefixed,
}
use Scope::{Anyone, Keys, Unprefixed};

/// One call: its name, the least role it needs, its scope, and the call with the given
/// metadata.
struct Case {
    name: &'static str,
    needs: Role,
    scope: Scope,
    call: fn(EtcdState, Option<String>) -> Answer,
}

fn case(
    name: &'static str,
    needs: Role,
    scope: Scope,
    call: fn(EtcdState, Option<String>) -> Answer,
) -> Case {
    Case {
        name,
        needs,
        scope,
        call,
    }
}

/// A request carrying `token` in etcd's `token` metadata, when given.
fn with<T>(message: T, token: Option<String>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("token", MetadataValue::try_from(t).unwrap());
    }
    r
}

macro_rules! call {
    ($service:path, $trait:path, $method:ident, $message:expr) => {
        |s: EtcdState, t: Option<String>| -> Answer {
            Box::pin(async move {
                use $trait as _;
                $service(s).$method(with($message, t)).await.map(|_| ())
            })
        }
    };
}

fn cases() -> Vec<Case> {
    use super::cluster::ClusterService;
    use super::kv::KvService;
    use super::lease::LeaseService;
    use super::lock::LockService;
    use super::maintenance::MaintenanceService;
    use pb::cluster_server::Cluster;
    use pb::kv_server::Kv;
    use pb::lease_server::Lease;
    use pb::maintenance_server::Maintenance;
    use v3lockpb::lock_server::Lock;
    vec![
        case(
            "Range",
            Role::Read,
            Keys,
            call!(
                KvService,
                Kv,
                range,
                pb::RangeRequest {
                    key: b"app/".to_vec(),
                    range_end: b"app0".to_vec(),
                    ..Default::default()
                }
            ),
        ),
        case(
            "Put",
            Role::Write,
            Keys,
            call!(
                KvService,
                Kv,
                put,
                pb::PutRequest {
                    key: b"app/x".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                }
            ),
        ),
        case(
            "DeleteRange",
            Role::Write,
            Keys,
            call!(
                KvService,
                Kv,
                delete_range,
                pb::DeleteRangeRequest {
                    key: b"app/x".to_vec(),
                    ..Default::default()
                }
            ),
        ),
        case(
            "Txn",
            Role::Write,
            Keys,
            call!(
                KvService,
                Kv,
                txn,
                pb::TxnRequest {
                    compare: vec![pb::Compare {
                        key: b"app/c".to_vec(),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: b"app/t".to_vec(),
                            value: b"v".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                }
            ),
        ),
        case(
            "Compact",
            Role::Write,
            Unprefixed,
            call!(KvService, Kv, compact, pb::CompactionRequest::default()),
        ),
        case(
            "LeaseGrant",
            Role::Write,
            Anyone,
            call!(
                LeaseService,
                Lease,
                lease_grant,
                pb::LeaseGrantRequest {
                    ttl: 10,
                    ..Default::default()
                }
            ),
        ),
        case(
            "LeaseRevoke",
            Role::Write,
            Anyone,
            call!(
                LeaseService,
                Lease,
                lease_revoke,
                pb::LeaseRevokeRequest { id: 5 }
            ),
        ),
        case(
            "LeaseTimeToLive",
            Role::Read,
            Anyone,
            call!(
                LeaseService,
                Lease,
                lease_time_to_live,
                pb::LeaseTimeToLiveRequest { id: 5, keys: true }
            ),
        ),
        case(
            "LeaseLeases",
            Role::Read,
            Anyone,
            call!(LeaseService, Lease, lease_leases, pb::LeaseLeasesRequest {}),
        ),
        case(
            "Lock",
            Role::Write,
            Keys,
            call!(
                LockService,
                Lock,
                lock,
                v3lockpb::LockRequest {
                    name: b"app/l".to_vec(),
                    lease: 5,
                }
            ),
        ),
        case(
            "Unlock",
            Role::Write,
            Keys,
            call!(
                LockService,
                Lock,
                unlock,
                v3lockpb::UnlockRequest {
                    key: b"app/l/5".to_vec(),
                }
            ),
        ),
        case(
            "Status",
            Role::Read,
            Anyone,
            call!(
                MaintenanceService,
                Maintenance,
                status,
                pb::StatusRequest {}
            ),
        ),
        case(
            "Alarm",
            Role::Read,
            Anyone,
            call!(
                MaintenanceService,
                Maintenance,
                alarm,
                pb::AlarmRequest::default()
            ),
        ),
        case(
            "MemberList",
            Role::Read,
            Anyone,
            call!(
                ClusterService,
                Cluster,
                member_list,
                pb::MemberListRequest {}
            ),
        ),
    ]
}

fn refused(r: &Result<(), Status>) -> Option<(Code, String)> {
    match r {
        Err(s)
            if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)
                || s.message() == USER_EMPTY =>
        {
            Some((s.code(), s.message().to_string()))
        }
        _ => None,
    }
}

/// `r` is refused with `want` (`None`: not refused).
fn expect(r: &Result<(), Status>, want: Option<(Code, &str)>, what: &str) {
    let want = want.map(|(code, message)| (code, message.to_string()));
    assert_eq!(refused(r), want, "{what}: {r:?}");
}

#[tokio::test]
async fn each_user_is_allowed_exactly_its_calls_and_a_refusal_reaches_nothing() {
    let (s, seen, _dir) = state(Auth::with_users(users(), false));
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    for case in cases() {
        // No token, and a token that names nobody: etcd's answers, nothing reached.
        let r = (case.call)(s.clone(), None).await;
        let without = format!("{} without a token", case.name);
        expect(&r, Some((Code::InvalidArgument, USER_EMPTY)), &without);
        let r = (case.call)(s.clone(), Some("nobody's".into())).await;
        let bad = format!("{} with a bad token", case.name);
        expect(&r, Some((Code::Unauthenticated, INVALID_TOKEN)), &bad);
        assert!(
            take().is_empty(),
            "{}: an unauthenticated call reached the loop",
            case.name
        );
        for (name, role, prefix) in USERS {
            let inside = match prefix {
                None => true,
                Some(p) => case.scope == Anyone || (case.scope == Keys && p == "app/"),
            };
            let allowed = role >= case.needs && inside;
            let r = (case.call)(s.clone(), Some(token(name))).await;
            let reached = take();
            let what = format!("{} as {name}", case.name);
            if allowed {
                expect(&r, None, &what);
                assert!(!reached.is_empty(), "{what} reached nothing");
            } else {
                expect(&r, Some((Code::PermissionDenied, PERMISSION_DENIED)), &what);
                assert!(
                    !reached.contains(&"change"),
                    "{} as {name}: a refused call wrote",
                    case.name
                );
            }
        }
    }
    let denied = |reason: &str| {
        s.api
            .metrics
            .auth_denied
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .get()
    };
    assert!(denied("unauthenticated") >= 2 * cases().len() as u64);
    assert!(denied("permission_denied") > 0);
}

#[tokio::test]
async fn without_an_auth_file_tokens_are_ignored_and_authenticate_says_so() {
    use pb::auth_server::Auth as _;
    let (s, seen, _dir) = state(Auth::open());
    for case in cases() {
        for t in [None, Some("anything".to_string())] {
            let r = (case.call)(s.clone(), t).await;
            expect(&r, None, case.name);
        }
    }
    assert!(!seen.lock().unwrap().is_empty());
    let e = AuthService(s.clone())
        .authenticate(Request::new(pb::AuthenticateRequest {
            name: "root".into(),
            password: token("root"),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, super::auth::AUTH_NOT_ENABLED)
    );
}

#[tokio::test]
async fn authenticate_answers_the_users_token_and_refuses_anything_else() {
    use pb::auth_server::Auth as _;
    let (s, _seen, _dir) = state(Auth::with_users(users(), false));
    let auth = AuthService(s);
    let ask = |name: &str, password: String| {
        Request::new(pb::AuthenticateRequest {
            name: name.into(),
            password,
        })
    };
    let ok = auth.authenticate(ask("app", token("app"))).await.unwrap();
    assert_eq!(ok.into_inner().token, token("app"));
    for (name, password) in [
        ("app", token("root")),
        ("root", token("app")),
        ("app", "wrong".into()),
        ("", token("app")),
        ("nobody", String::new()),
        ("app", "x".repeat(1 << 20)),
    ] {
        let e = auth.authenticate(ask(name, password)).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, super::auth::AUTH_FAILED),
            "{name}"
        );
    }
    let e = auth
        .user_add(Request::new(pb::AuthUserAddRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("--auth-file"), "{}", e.message());
}
