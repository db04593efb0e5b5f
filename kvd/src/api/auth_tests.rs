//! The router with an auth file, called request by request (`tower::ServiceExt::oneshot`)
//! over a real RocksDB, with a stand-in consensus loop that records what reaches it and
//! answers nothing: a refused request must reach it not at all.

use super::{router, ApiState};
use crate::auth::users::token_line_hash;
use crate::auth::{Auth, Call, Role, Users};
use crate::client_conn::ClientConn;
use crate::inbox::{ClientRequest, Input};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use omnikv_common::kv::{Bytes64, Compare, CompareOp, CompareTarget, PutOp, TxnOp, TxnRequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

/// What reached the stand-in loop: `"change"` for writes, reconfigure and move-leader,
/// `"read"` for the rest.
pub(crate) type Seen = Arc<Mutex<Vec<&'static str>>>;

struct Fixture {
    router: Router,
    seen: Seen,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

const USERS: &str = "root admin token=sha256:{root}\n\
                     app write prefix=app/ token=sha256:{app}\n\
                     writer write token=sha256:{writer}\n\
                     reader read token=sha256:{reader}\n\
                     peek read prefix=app/ token=sha256:{peek}\n\
                     dash read\n";

fn users() -> Users {
    let mut text = USERS.to_string();
    for name in ["root", "app", "writer", "reader", "peek"] {
        text = text.replace(&format!("{{{name}}}"), &token_line_hash(&token(name)));
    }
    Users::parse(text.as_bytes()).unwrap()
}

fn token(name: &str) -> String {
    format!("okv_token_of_{name}")
}

/// The API's state over a real RocksDB in a temporary directory, with `auth` and a stand-in
/// consensus loop that records what reaches it and drops it (its caller then answers an
/// error). Shared with etcd/auth_tests.rs.
pub(crate) fn stand_in(auth: Auth) -> (ApiState, Seen, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::Db::open_with(dir.path(), false).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Input>(1024);
    let seen: Seen = Arc::default();
    let record = seen.clone();
    // Ends with the state.
    std::thread::spawn(move || {
        for input in rx {
            if let Input::Client(request) = input {
                record.lock().unwrap().push(match request {
                    ClientRequest::Write { .. }
                    | ClientRequest::Reconfigure { .. }
                    | ClientRequest::MoveLeader { .. } => "change",
                    _ => "read",
                });
            }
        }
    });
    let state = ApiState {
        inbox: tx,
        metrics: Arc::new(Metrics::new()),
        db,
        watch_hub: crate::watch::Hub::new(16, 16, Default::default()),
        max_value_bytes: 1024,
        default_timeout: Duration::from_millis(200),
        auth,
    };
    (state, seen, dir)
}

fn fixture(auth: Auth) -> Fixture {
    let (state, seen, dir) = stand_in(auth);
    let metrics = state.metrics.clone();
    Fixture {
        router: router(state),
        seen,
        metrics,
        _dir: dir,
    }
}

/// A request: `(method, path and query, body)`.
type Req = (Method, String, Vec<u8>);

fn req(method: Method, uri: &str, body: &[u8]) -> Req {
    (method, uri.to_string(), body.to_vec())
}

fn txn_body(compare: &[&[u8]], puts: &[&[u8]]) -> Vec<u8> {
    let t = TxnRequest {
        compare: compare
            .iter()
            .map(|k| Compare {
                key: Bytes64(k.to_vec()),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            })
            .collect(),
        success: puts
            .iter()
            .map(|k| {
                TxnOp::Put(PutOp {
                    key: Bytes64(k.to_vec()),
                    value: Bytes64(b"v".to_vec()),
                    prev: false,
                    lease: 0,
                })
            })
            .collect(),
        failure: vec![],
    };
    serde_json::to_vec(&t).unwrap()
}

/// One request per call, on keys inside `app/`.
fn every_call() -> Vec<(Call, Req)> {
    vec![
        (Call::Get, req(Method::GET, "/v1/kv/app/k", b"")),
        (Call::Put, req(Method::PUT, "/v1/kv/app/k", b"v")),
        (Call::Delete, req(Method::DELETE, "/v1/kv/app/k", b"")),
        (Call::Range, req(Method::GET, "/v1/kv?prefix=app/", b"")),
        (
            Call::DeleteRange,
            req(Method::DELETE, "/v1/kv?prefix=app/", b""),
        ),
        (
            Call::Txn,
            req(Method::POST, "/v1/txn", &txn_body(&[b"app/c"], &[b"app/k"])),
        ),
        (Call::Watch, req(Method::GET, "/v1/watch?key=app/k", b"")),
        (Call::LeaseList, req(Method::GET, "/v1/lease", b"")),
        (Call::LeaseTimeToLive, req(Method::GET, "/v1/lease/5", b"")),
        (
            Call::LeaseGrant,
            req(Method::POST, "/v1/lease", br#"{"ttl": 10}"#),
        ),
        (
            Call::LeaseKeepAlive,
            req(Method::POST, "/v1/lease/5/keepalive", b""),
        ),
        (Call::LeaseRevoke, req(Method::DELETE, "/v1/lease/5", b"")),
        (Call::Status, req(Method::GET, "/v1/status", b"")),
        (Call::Log, req(Method::GET, "/v1/log", b"")),
        (Call::Members, req(Method::GET, "/v1/members", b"")),
        (
            Call::Reconfigure,
            req(Method::POST, "/v1/reconfigure", br#"{"nodes": [1, 2]}"#),
        ),
        (
            Call::MoveLeader,
            req(Method::POST, "/v1/move-leader", br#"{"to": 2}"#),
        ),
        (Call::Snapshot, req(Method::GET, "/v1/snapshot", b"")),
    ]
}

struct Answer {
    status: StatusCode,
    code: Option<String>,
    message: String,
    www_authenticate: Option<String>,
}

impl Fixture {
    /// Sends `r` with `Authorization: <authorization>` when given and, as the TLS listener
    /// would, the connection's verified client certificate name.
    async fn call(&self, r: &Req, authorization: Option<&str>, cert_user: Option<&str>) -> Answer {
        let mut b = Request::builder().method(r.0.clone()).uri(&r.1);
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        let mut request = b.body(Body::from(r.2.clone())).unwrap();
        request.extensions_mut().insert(ConnectInfo(ClientConn {
            remote: "127.0.0.1:1".parse().unwrap(),
            cert_user: cert_user.map(String::from),
        }));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let www_authenticate = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |f: &str| {
            json.as_ref()
                .and_then(|j| j["error"][f].as_str())
                .map(String::from)
        };
        Answer {
            status,
            code: field("code"),
            message: field("message").unwrap_or_default(),
            www_authenticate,
        }
    }

    async fn as_user(&self, r: &Req, name: &str) -> Answer {
        self.call(r, Some(&format!("Bearer {}", token(name))), None)
            .await
    }

    /// `a` was neither 401 nor 403, and its request reached the loop.
    fn assert_let_through(&self, a: &Answer, what: &str) {
        let refused = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
        assert!(
            !refused.contains(&a.status),
            "{what}: {} {}",
            a.status,
            a.message
        );
        assert!(!self.take_seen().is_empty(), "{what} reached nothing");
    }

    fn take_seen(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn denied_count(&self, reason: &str) -> u64 {
        self.metrics
            .auth_denied
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .get()
    }
}

/// Every call but etcd's Compact, which the HTTP API does not have.
#[test]
fn the_table_covers_every_call() {
    let calls: Vec<Call> = every_call().into_iter().map(|(c, _)| c).collect();
    let http: Vec<Call> = Call::ALL
        .into_iter()
        .filter(|c| *c != Call::Compact)
        .collect();
    assert_eq!(calls, http);
}

#[tokio::test]
async fn auth_off_lets_every_call_through() {
    let f = fixture(Auth::open());
    for (call, r) in every_call() {
        let a = f.call(&r, None, None).await;
        f.assert_let_through(&a, &format!("{call:?}"));
    }
}

#[tokio::test]
async fn auth_without_a_user_every_call_is_401_and_reaches_nothing() {
    let f = fixture(Auth::with_users(users(), false));
    let unknown = req(Method::GET, "/v1/nosuch", b"");
    let empty_key = req(Method::PUT, "/v1/kv/", b"v");
    let calls = every_call()
        .into_iter()
        .map(|(_, r)| r)
        .chain([unknown, empty_key]);
    let other_scheme = format!("Token {}", token("root"));
    let wrong: &[(Option<&str>, Option<&str>, &str)] = &[
        (None, None, "authentication required"),
        (Some("Bearer okv_nobody"), None, "names no user"),
        (Some("Bearer "), None, "names no user"),
        (Some("Basic cm9vdDpyb290"), None, "must be `Bearer <token>`"),
        (Some(&other_scheme), None, "must be `Bearer"),
        (None, Some("stranger"), "stranger is not in the auth file"),
        // A token that names nobody is refused even beside a good certificate.
        (Some("Bearer okv_nobody"), Some("dash"), "names no user"),
    ];
    let mut refused = 0;
    for r in calls {
        for (authorization, cert, why) in wrong {
            let a = f.call(&r, *authorization, *cert).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{r:?} {authorization:?}"
            );
            assert_eq!(a.code.as_deref(), Some("unauthenticated"));
            assert!(a.message.contains(why), "{r:?}: {}", a.message);
            assert_eq!(
                a.www_authenticate.as_deref(),
                Some(r#"Bearer realm="omnikv""#)
            );
            refused += 1;
        }
    }
    assert_eq!(f.take_seen(), Vec::<&str>::new());
    assert_eq!(f.denied_count("unauthenticated"), refused);
}

#[tokio::test]
async fn auth_health_and_metrics_are_open_unless_metrics_auth() {
    for metrics_auth in [false, true] {
        let f = fixture(Auth::with_users(users(), metrics_auth));
        for path in ["/healthz", "/readyz"] {
            let a = f.call(&req(Method::GET, path, b""), None, None).await;
            assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        }
        let metrics = req(Method::GET, "/metrics", b"");
        let a = f.call(&metrics, None, None).await;
        let want = if metrics_auth {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(a.status, want);
        // Any role will do.
        assert_eq!(f.as_user(&metrics, "peek").await.status, StatusCode::OK);
        assert_eq!(
            f.call(&metrics, None, Some("dash")).await.status,
            StatusCode::OK
        );
    }
}

/// Each role against each call: allowed calls reach the loop, refused ones are 403 naming
/// user, role and call, and reach nothing.
#[tokio::test]
async fn auth_each_role_against_each_call() {
    let f = fixture(Auth::with_users(users(), false));
    let mut refused = 0;
    for (name, role) in [
        ("reader", Role::Read),
        ("writer", Role::Write),
        ("root", Role::Admin),
    ] {
        for (call, r) in every_call() {
            let a = f.as_user(&r, name).await;
            if role >= call.needs() {
                f.assert_let_through(&a, &format!("{name} {call:?}"));
            } else {
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{name} {call:?}");
                assert_eq!(a.code.as_deref(), Some("permission_denied"));
                let want = format!("user {name} (role {role}) may not {}", call.what());
                assert!(a.message.contains(&want), "{}", a.message);
                assert!(a.message.contains(&format!("needs role {}", call.needs())));
                assert_eq!(f.take_seen(), Vec::<&str>::new(), "{name} {call:?}");
                refused += 1;
            }
        }
    }
    // A certificate user is named by its certificate.
    let status = req(Method::GET, "/v1/status", b"");
    assert_ne!(
        f.call(&status, None, Some("dash")).await.status,
        StatusCode::FORBIDDEN
    );
    let put = req(Method::PUT, "/v1/kv/k", b"v");
    let a = f.call(&put, None, Some("dash")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.message.contains("user dash (role read) may not put"),
        "{}",
        a.message
    );
    assert_eq!(f.denied_count("permission_denied"), refused + 1);
    let rendered = f.metrics.render();
    assert!(
        rendered.contains(&format!(
            "omnikv_auth_denied_total{{reason=\"permission_denied\"}} {}",
            refused + 1
        )),
        "{rendered}"
    );
}

/// A prefix-limited writer (`app/`): every key, range, transaction key and watch must lie
/// inside its prefix; outside, 403 and nothing reaches the loop.
#[tokio::test]
async fn auth_prefix_limits_keys_ranges_txns_and_watches() {
    let f = fixture(Auth::with_users(users(), false));
    let inside = [
        req(Method::GET, "/v1/kv/app/x", b""),
        req(Method::PUT, "/v1/kv/app%2Fx", b"v"),
        req(Method::PUT, "/v1/kv/app/x?lease=5", b"v"),
        req(Method::DELETE, "/v1/kv/app/x", b""),
        req(Method::GET, "/v1/kv?prefix=app/", b""),
        req(Method::GET, "/v1/kv?prefix=app/sub/&limit=10", b""),
        req(Method::GET, "/v1/kv?start=app/a&end=app0", b""),
        req(
            Method::GET,
            "/v1/kv?start=app/a&end=app/b&continue=6170702f61ff",
            b"",
        ),
        req(Method::DELETE, "/v1/kv?start=app/a&end=app/z", b""),
        req(
            Method::POST,
            "/v1/txn",
            &txn_body(&[b"app/c"], &[b"app/1", b"app/2"]),
        ),
        req(Method::GET, "/v1/watch?prefix=app/", b""),
        req(Method::GET, "/v1/watch?key=app/x", b""),
        req(Method::GET, "/v1/watch?start=app/a&end=app/b", b""),
    ];
    for r in &inside {
        let a = f.as_user(r, "app").await;
        f.assert_let_through(&a, &format!("{r:?}"));
    }
    let outside = [
        req(Method::GET, "/v1/kv/other", b""),
        req(Method::PUT, "/v1/kv/app", b"v"),
        req(Method::PUT, "/v1/kv/ap", b"v"),
        req(Method::PUT, "/v1/kv/other?lease=5", b"v"),
        req(Method::DELETE, "/v1/kv/apq/x", b""),
        req(Method::GET, "/v1/kv?prefix=app", b""),
        req(Method::GET, "/v1/kv?prefix=", b""),
        req(Method::GET, "/v1/kv?start=app/a", b""),
        // A range ending past the prefix, one starting before it.
        req(Method::GET, "/v1/kv?start=app/a&end=app0%00", b""),
        req(Method::GET, "/v1/kv?start=app&end=app/z", b""),
        req(Method::DELETE, "/v1/kv?prefix=a", b""),
        // A transaction with one key outside: a put, a compare.
        req(
            Method::POST,
            "/v1/txn",
            &txn_body(&[], &[b"app/1", b"other/1"]),
        ),
        req(
            Method::POST,
            "/v1/txn",
            &txn_body(&[b"other/c"], &[b"app/1"]),
        ),
        req(Method::GET, "/v1/watch?prefix=ap", b""),
        req(Method::GET, "/v1/watch?key=other", b""),
        req(Method::GET, "/v1/watch?start=app/&end=", b""),
        // The log shows every key: not for a prefix.
        req(Method::GET, "/v1/log", b""),
    ];
    for r in &outside {
        let a = f.as_user(r, "app").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{r:?}: {}", a.message);
        assert!(
            a.message
                .contains("user app (role write, prefix app/) may not"),
            "{}",
            a.message
        );
        assert_eq!(f.take_seen(), Vec::<&str>::new(), "{r:?}");
    }
    // A prefix-limited reader: the same boundaries, and no writes at all.
    assert_ne!(
        f.as_user(&inside[0], "peek").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.as_user(&outside[0], "peek").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        f.as_user(&inside[1], "peek").await.status,
        StatusCode::FORBIDDEN
    );
    f.take_seen();
    // A prefix-limited user's revoke first reads the lease's keys (a read, never a write,
    // until the keys are known to be inside).
    let revoke = req(Method::DELETE, "/v1/lease/5", b"");
    f.as_user(&revoke, "app").await;
    assert_eq!(f.take_seen(), vec!["read"]);
    f.as_user(&revoke, "writer").await;
    assert_eq!(f.take_seen(), vec!["change"]);
}
