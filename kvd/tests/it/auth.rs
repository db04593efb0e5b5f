//! Authentication and roles end to end: real kvd processes started with `KVD_AUTH_FILE`,
//! called with raw HTTP (reqwest) and bearer tokens: who is refused (401, 403), that a
//! refused request changes nothing, prefixes, admin-only calls, /metrics, and the auth file
//! re-read while kvd runs.

use crate::harness::{Cluster, Opts};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn token(name: &str) -> String {
    format!("okv_test_token_of_{name}")
}

/// An auth file line for `name` with its test token.
fn user(name: &str, role_and_prefix: &str) -> String {
    let hash: String = Sha256::digest(token(name).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{name} {role_and_prefix} token=sha256:{hash}\n")
}

fn base_users() -> String {
    [
        user("root", "admin"),
        user("writer", "write"),
        user("reader", "read"),
        user("app", "write prefix=app/"),
    ]
    .concat()
}

/// Bytes as the JSON API carries them (base64).
fn b64(b: &[u8]) -> Value {
    serde_json::to_value(omnikv_common::kv::Bytes64(b.to_vec())).unwrap()
}

/// Replicas `1..=n` with `users` as their auth file (and `env` on top), ready (/readyz is
/// open, so it needs no token).
async fn start(n: u64, users: &str, env: &[(&str, &str)]) -> (Cluster, PathBuf) {
    let mut c = Cluster::new_stopped(n, Opts::default());
    let path = c.dir.path().join("users");
    std::fs::write(&path, users).unwrap();
    c.opts
        .extra_env
        .push(("KVD_AUTH_FILE".into(), path.display().to_string()));
    for (k, v) in env {
        c.opts.extra_env.push((k.to_string(), v.to_string()));
    }
    for pid in 1..=n {
        c.spawn(pid);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for pid in 1..=n {
        loop {
            let url = format!("http://{}/readyz", c.endpoint(pid));
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "not ready\n{}", c.dump_logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (c, path)
}

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    www_authenticate: Option<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[derive(Clone, Copy)]
enum Who<'a> {
    Nobody,
    /// A user's test token.
    User(&'a str),
    /// Any bearer token.
    Token(&'a str),
}

use Who::{Nobody, User};

/// The client API of one replica, called with raw HTTP.
struct Api(String);

impl Api {
    async fn call(&self, who: Who<'_>, method: Method, path: &str, body: &[u8]) -> Answer {
        let mut r = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.0))
            .header("omnikv-timeout-ms", "20000")
            .timeout(Duration::from_secs(30))
            .body(body.to_vec());
        match who {
            Nobody => {}
            User(name) => r = r.bearer_auth(token(name)),
            Who::Token(t) => r = r.bearer_auth(t),
        }
        let resp = r.send().await.expect("kvd answers");
        let status = resp.status();
        let www_authenticate = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        Answer {
            status,
            body: resp.bytes().await.unwrap().to_vec(),
            www_authenticate,
        }
    }

    async fn get(&self, who: Who<'_>, path: &str) -> Answer {
        self.call(who, Method::GET, path, b"").await
    }

    async fn delete(&self, who: Who<'_>, path: &str) -> Answer {
        self.call(who, Method::DELETE, path, b"").await
    }

    async fn post(&self, who: Who<'_>, path: &str, body: &[u8]) -> Answer {
        self.call(who, Method::POST, path, body).await
    }

    /// `PUT /v1/kv/{key}` (`key` as it goes in the path, with any query).
    async fn put(&self, who: Who<'_>, key: &str, value: &str) -> Answer {
        let path = format!("/v1/kv/{key}");
        self.call(who, Method::PUT, &path, value.as_bytes()).await
    }

    /// The value of `key` as root reads it (`None`: not found).
    async fn value_of(&self, key: &str) -> Option<Vec<u8>> {
        let a = self.get(User("root"), &format!("/v1/kv/{key}")).await;
        match a.status {
            StatusCode::OK => Some(a.body),
            StatusCode::NOT_FOUND => None,
            s => panic!("root reading {key}: {s} {}", a.message()),
        }
    }

    /// Grants a lease as `who` and puts `key` (path form) with it; returns the lease id.
    async fn leased_key(&self, who: Who<'_>, key: &str) -> u64 {
        let a = self.post(who, "/v1/lease", br#"{"ttl": 60}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.message());
        let id = a.json()["id"].as_u64().unwrap();
        let a = self.put(who, &format!("{key}?lease={id}"), "l").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.message());
        id
    }
}

fn assert_ok(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.message());
}

fn assert_denied(a: &Answer, status: StatusCode, what: &str) {
    let body = String::from_utf8_lossy(&a.body);
    assert_eq!(a.status, status, "{what}: {body}");
    let code = if status == StatusCode::UNAUTHORIZED {
        let want = Some(r#"Bearer realm="omnikv""#);
        assert_eq!(a.www_authenticate.as_deref(), want, "{what}");
        "unauthenticated"
    } else {
        "permission_denied"
    };
    assert_eq!(a.code(), code, "{what}");
}

fn txn(compare: &[&str], puts: &[&str]) -> Vec<u8> {
    let compare: Vec<Value> = compare
        .iter()
        .map(|k| json!({"key": b64(k.as_bytes()), "version": 0}))
        .collect();
    let success: Vec<Value> = puts
        .iter()
        .map(|k| json!({"put": {"key": b64(k.as_bytes()), "value": b64(b"t")}}))
        .collect();
    serde_json::to_vec(&json!({"compare": compare, "success": success})).unwrap()
}

const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_roles_and_prefixes_on_a_running_replica() {
    let (c, _) = start(1, &base_users(), &[]).await;
    let api = Api(c.endpoint(1));

    // Open: health, readiness, metrics.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_ok(&api.get(Nobody, path).await, path);
    }

    // No token, an unknown token: 401, nothing written.
    assert_denied(&api.put(Nobody, "k", "x").await, UNAUTHORIZED, "no token");
    let unknown = api.put(Who::Token("okv_nobody"), "k", "x").await;
    assert_denied(&unknown, UNAUTHORIZED, "unknown token");
    let status = api.get(Nobody, "/v1/status").await;
    assert_denied(&status, UNAUTHORIZED, "status without a token");
    assert_eq!(api.value_of("k").await, None);

    // A reader reads but may not write: 403, the key unchanged.
    assert_ok(&api.put(User("root"), "k", "v1").await, "root put");
    let a = api.put(User("reader"), "k", "v2").await;
    assert_denied(&a, FORBIDDEN, "reader put");
    assert!(
        a.message().contains("user reader (role read) may not put"),
        "{}",
        a.message()
    );
    assert_denied(
        &api.delete(User("reader"), "/v1/kv/k").await,
        FORBIDDEN,
        "reader delete",
    );
    assert_eq!(api.value_of("k").await.as_deref(), Some(&b"v1"[..]));
    let got = api.get(User("reader"), "/v1/kv/k").await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (StatusCode::OK, &b"v1"[..])
    );

    // Snapshot: admin only.
    let snap = api.get(User("writer"), "/v1/snapshot").await;
    assert_denied(&snap, FORBIDDEN, "writer snapshot");
    assert_ok(
        &api.get(User("root"), "/v1/snapshot").await,
        "root snapshot",
    );

    // A prefix-limited writer: outside its prefix 403 (put, range, txn, watch), inside ok.
    let a = api.put(User("app"), "other/x", "1").await;
    assert_denied(&a, FORBIDDEN, "app put outside");
    assert!(
        a.message().contains("user app (role write, prefix app/)"),
        "{}",
        a.message()
    );
    assert_eq!(api.value_of("other%2Fx").await, None);
    assert_ok(&api.put(User("app"), "app/x", "1").await, "app put inside");
    assert_eq!(api.value_of("app%2Fx").await.as_deref(), Some(&b"1"[..]));
    for (path, want) in [
        ("/v1/kv?prefix=app/", StatusCode::OK),
        ("/v1/kv?start=app/a&end=app/z", StatusCode::OK),
        ("/v1/kv?prefix=ap", FORBIDDEN),
        ("/v1/kv?start=app/&end=app0%00", FORBIDDEN),
        ("/v1/kv?start=app/", FORBIDDEN),
        ("/v1/kv/k", FORBIDDEN),
    ] {
        let a = api.get(User("app"), path).await;
        assert_eq!(a.status, want, "{path}: {}", a.message());
    }
    let range = api.get(User("app"), "/v1/kv?prefix=app/").await;
    assert_eq!(range.json()["count"], 1);
    let outside_put = txn(&[], &["app/t1", "other/t1"]);
    let a = api.post(User("app"), "/v1/txn", &outside_put).await;
    assert_denied(&a, FORBIDDEN, "txn with a put outside");
    let outside_compare = txn(&["other/c"], &["app/t1"]);
    let a = api.post(User("app"), "/v1/txn", &outside_compare).await;
    assert_denied(&a, FORBIDDEN, "txn with a compare outside");
    assert_eq!(
        api.value_of("app%2Ft1").await,
        None,
        "a refused txn wrote nothing"
    );
    assert_eq!(api.value_of("other%2Ft1").await, None);
    let inside = txn(&["app/c"], &["app/t1"]);
    assert_ok(
        &api.post(User("app"), "/v1/txn", &inside).await,
        "txn inside",
    );
    assert_eq!(api.value_of("app%2Ft1").await.as_deref(), Some(&b"t"[..]));
    let a = api.get(User("app"), "/v1/watch?prefix=other/").await;
    assert_denied(&a, FORBIDDEN, "watch outside");
    // A watch inside streams: its first line is the opening progress event.
    let mut w = reqwest::Client::new()
        .get(format!("http://{}/v1/watch?prefix=app/", api.0))
        .bearer_auth(token("app"))
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), w.chunk());
    let first = first.await.unwrap().unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("progress"),
        "{first:?}"
    );
    drop(w);

    // Leases: a prefix-limited writer revokes a lease only when all its keys are inside.
    let root_lease = api.leased_key(User("root"), "other%2Fleased").await;
    let a = api
        .delete(User("app"), &format!("/v1/lease/{root_lease}"))
        .await;
    assert_denied(&a, FORBIDDEN, "app revoking a lease with a key outside");
    assert!(
        a.message().contains("holds key other/leased"),
        "{}",
        a.message()
    );
    assert_eq!(
        api.value_of("other%2Fleased").await.as_deref(),
        Some(&b"l"[..])
    );
    let ttl = api
        .get(User("app"), &format!("/v1/lease/{root_lease}?keys=true"))
        .await;
    assert_denied(
        &ttl,
        FORBIDDEN,
        "app reading the keys of a lease with a key outside",
    );
    let app_lease = api.leased_key(User("app"), "app/leased").await;
    let a = api
        .delete(User("app"), &format!("/v1/lease/{app_lease}"))
        .await;
    assert_ok(&a, "app revoking its own lease");
    assert_eq!(api.value_of("app%2Fleased").await, None);
    // An unprefixed writer revokes any lease.
    let a = api
        .delete(User("writer"), &format!("/v1/lease/{root_lease}"))
        .await;
    assert_ok(&a, "writer revoking root's lease");
    assert_eq!(api.value_of("other%2Fleased").await, None);

    // Every refusal was counted.
    let text = String::from_utf8_lossy(&api.get(Nobody, "/metrics").await.body).to_string();
    assert!(
        text.contains("omnikv_auth_denied_total{reason=\"unauthenticated\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("omnikv_auth_denied_total{reason=\"permission_denied\"} "),
        "{text}"
    );
    // Never a token or a hash in the log.
    let log = c.log_text(1);
    for name in ["root", "writer", "reader", "app"] {
        assert!(!log.contains(&token(name)), "the log shows {name}'s token");
        let line = user(name, "read");
        let hash = &line[line.len() - 65..line.len() - 1];
        assert!(!log.contains(hash), "the log shows {name}'s hash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reconfigure_is_for_admins_only() {
    let (c, _) = start(3, &base_users(), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let a = Api(c.endpoint(1)).get(User("reader"), "/v1/status").await;
        assert_ok(&a, "reader status");
        if let Some(l) = a.json()["leader"].as_u64() {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let api = Api(c.endpoint(leader));
    let other = (1..=3).find(|p| *p != leader).unwrap();
    let mut keep = vec![leader, other];
    keep.sort();
    let body = serde_json::to_vec(&json!({ "nodes": keep })).unwrap();
    let to = serde_json::to_vec(&json!({ "to": other })).unwrap();
    for who in ["writer", "app", "reader"] {
        let a = api.post(User(who), "/v1/reconfigure", &body).await;
        assert_denied(&a, FORBIDDEN, who);
        let want = format!("user {who} (role");
        assert!(a.message().contains(&want), "{}", a.message());
        assert!(
            a.message().contains("may not reconfigure"),
            "{}",
            a.message()
        );
        let a = api.post(User(who), "/v1/move-leader", &to).await;
        assert_denied(&a, FORBIDDEN, who);
    }
    let members = |a: Answer| -> Vec<u64> {
        let list = a.json()["members"].as_array().cloned().unwrap_or_default();
        list.iter().map(|m| m["pid"].as_u64().unwrap()).collect()
    };
    let now = members(api.get(User("reader"), "/v1/members").await);
    assert_eq!(now, vec![1, 2, 3], "a refused reconfigure changed nothing");
    let a = api.post(User("root"), "/v1/reconfigure", &body).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}\n{}",
        a.message(),
        c.dump_logs()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = members(api.get(User("reader"), "/v1/members").await);
        if now == keep {
            break;
        }
        assert!(Instant::now() < deadline, "members {now:?}, want {keep:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `name`'s status call answers `want`; returns how long that took.
async fn until_status(api: &Api, name: &str, want: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let a = api.get(User(name), "/v1/status").await;
        if a.status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{name}: still {} after {within:?}, want {want}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_reloads_and_metrics_auth() {
    let (c, path) = start(1, &base_users(), &[("KVD_METRICS_AUTH", "true")]).await;
    let api = Api(c.endpoint(1));

    // --metrics-auth: /metrics needs a user (any role); health stays open.
    assert_denied(
        &api.get(Nobody, "/metrics").await,
        UNAUTHORIZED,
        "metrics, no token",
    );
    assert_ok(
        &api.get(User("reader"), "/metrics").await,
        "metrics as reader",
    );
    assert_ok(&api.get(Nobody, "/healthz").await, "healthz");

    // A user added while kvd runs: its token works within a couple of seconds.
    until_status(&api, "late", UNAUTHORIZED, Duration::ZERO).await;
    std::fs::write(&path, base_users() + &user("late", "read")).unwrap();
    let took = until_status(&api, "late", StatusCode::OK, Duration::from_secs(3)).await;
    eprintln!("a user added was accepted after {took:?}");

    // A bad file is logged (with its line) and the users loaded before stay.
    let bad = base_users() + &user("late", "read") + "broken nosuchrole\n";
    std::fs::write(&path, &bad).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    until_status(&api, "late", StatusCode::OK, Duration::ZERO).await;
    until_status(&api, "root", StatusCode::OK, Duration::ZERO).await;
    let log = c.log_text(1);
    let warning = "auth file changed but is not valid";
    assert_eq!(log.matches(warning).count(), 1, "logged once: {log}");
    assert!(
        log.contains("line 6: user broken: the role must be"),
        "{log}"
    );

    // The user removed: its token stops working.
    std::fs::write(&path, base_users()).unwrap();
    let took = until_status(&api, "late", UNAUTHORIZED, Duration::from_secs(3)).await;
    eprintln!("a user removed was refused after {took:?}");
    until_status(&api, "root", StatusCode::OK, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_a_bad_file_at_start_stops_kvd() {
    let mut c = Cluster::new_stopped(1, Opts::default());
    let path = c.dir.path().join("users");
    std::fs::write(&path, base_users() + "app read\n").unwrap();
    let env = ("KVD_AUTH_FILE".into(), path.display().to_string());
    c.opts.extra_env.push(env);
    c.spawn(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.exited(1) {
        assert!(Instant::now() < deadline, "kvd runs with a bad auth file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = c.log_text(1);
    assert!(log.contains("line 5: user app is listed twice"), "{log}");
}
