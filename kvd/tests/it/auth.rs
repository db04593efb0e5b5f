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

/// One request to `endpoint` as `who` (a user's test token, a raw `Bearer` value, or none).
async fn call(endpoint: &str, who: Who<'_>, method: Method, path: &str, body: Vec<u8>) -> Answer {
    let http = reqwest::Client::new();
    let mut r = http
        .request(method, format!("http://{endpoint}{path}"))
        .header("omnikv-timeout-ms", "20000")
        .timeout(Duration::from_secs(30))
        .body(body);
    match who {
        Who::Nobody => {}
        Who::User(name) => r = r.bearer_auth(token(name)),
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

#[derive(Clone, Copy)]
enum Who<'a> {
    Nobody,
    User(&'a str),
    Token(&'a str),
}

/// The value of `key` as root reads it (`None`: not found).
async fn value_of(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let a = call(
        endpoint,
        Who::User("root"),
        Method::GET,
        &format!("/v1/kv/{key}"),
        vec![],
    )
    .await;
    match a.status {
        StatusCode::OK => Some(a.body),
        StatusCode::NOT_FOUND => None,
        s => panic!("root reading {key}: {s} {}", a.message()),
    }
}

fn assert_denied(a: &Answer, status: StatusCode, what: &str) {
    assert_eq!(
        a.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&a.body)
    );
    let code = if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(r#"Bearer realm="omnikv""#),
            "{what}"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_roles_and_prefixes_on_a_running_replica() {
    let (c, _) = start(1, &base_users(), &[]).await;
    let ep = c.endpoint(1);
    let ep = ep.as_str();
    let put = |who, key: &str, v: &str| {
        let (who, path, body) = (who, format!("/v1/kv/{key}"), v.as_bytes().to_vec());
        async move { call(ep, who, Method::PUT, &path, body).await }
    };

    // Open: health, readiness, metrics.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(ep, Who::Nobody, Method::GET, path, vec![])
                .await
                .status,
            StatusCode::OK,
            "{path}"
        );
    }

    // No token, an unknown token: 401, nothing written.
    assert_denied(
        &put(Who::Nobody, "k", "x").await,
        StatusCode::UNAUTHORIZED,
        "no token",
    );
    assert_denied(
        &put(Who::Token("okv_nobody"), "k", "x").await,
        StatusCode::UNAUTHORIZED,
        "unknown token",
    );
    let status = call(ep, Who::Nobody, Method::GET, "/v1/status", vec![]).await;
    assert_denied(&status, StatusCode::UNAUTHORIZED, "status without a token");
    assert_eq!(value_of(ep, "k").await, None);

    // A reader reads but may not write: 403, the key unchanged.
    assert_eq!(
        put(Who::User("root"), "k", "v1").await.status,
        StatusCode::OK
    );
    let a = put(Who::User("reader"), "k", "v2").await;
    assert_denied(&a, StatusCode::FORBIDDEN, "reader put");
    assert!(
        a.message().contains("user reader (role read) may not put"),
        "{}",
        a.message()
    );
    assert_eq!(value_of(ep, "k").await.as_deref(), Some(&b"v1"[..]));
    let got = call(ep, Who::User("reader"), Method::GET, "/v1/kv/k", vec![]).await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (StatusCode::OK, &b"v1"[..])
    );
    let del = call(ep, Who::User("reader"), Method::DELETE, "/v1/kv/k", vec![]).await;
    assert_denied(&del, StatusCode::FORBIDDEN, "reader delete");
    assert_eq!(value_of(ep, "k").await.as_deref(), Some(&b"v1"[..]));

    // Snapshot: admin only.
    let snap = call(ep, Who::User("writer"), Method::GET, "/v1/snapshot", vec![]).await;
    assert_denied(&snap, StatusCode::FORBIDDEN, "writer snapshot");
    let snap = call(ep, Who::User("root"), Method::GET, "/v1/snapshot", vec![]).await;
    assert_eq!(snap.status, StatusCode::OK);

    // A prefix-limited writer: outside its prefix 403 (put, range, txn, watch), inside ok.
    let a = put(Who::User("app"), "other/x", "1").await;
    assert_denied(&a, StatusCode::FORBIDDEN, "app put outside");
    assert!(
        a.message().contains("user app (role write, prefix app/)"),
        "{}",
        a.message()
    );
    assert_eq!(value_of(ep, "other%2Fx").await, None);
    assert_eq!(
        put(Who::User("app"), "app/x", "1").await.status,
        StatusCode::OK
    );
    assert_eq!(value_of(ep, "app%2Fx").await.as_deref(), Some(&b"1"[..]));
    for (path, want) in [
        ("/v1/kv?prefix=app/", StatusCode::OK),
        ("/v1/kv?start=app/a&end=app/z", StatusCode::OK),
        ("/v1/kv?prefix=ap", StatusCode::FORBIDDEN),
        ("/v1/kv?start=app/&end=app0%00", StatusCode::FORBIDDEN),
        ("/v1/kv?start=app/", StatusCode::FORBIDDEN),
        ("/v1/kv/k", StatusCode::FORBIDDEN),
    ] {
        let a = call(ep, Who::User("app"), Method::GET, path, vec![]).await;
        assert_eq!(a.status, want, "{path}: {}", a.message());
    }
    let range = call(
        ep,
        Who::User("app"),
        Method::GET,
        "/v1/kv?prefix=app/",
        vec![],
    )
    .await;
    assert_eq!(range.json()["count"], 1);
    let a = call(
        ep,
        Who::User("app"),
        Method::POST,
        "/v1/txn",
        txn(&[], &["app/t1", "other/t1"]),
    )
    .await;
    assert_denied(&a, StatusCode::FORBIDDEN, "txn with a put outside");
    let a = call(
        ep,
        Who::User("app"),
        Method::POST,
        "/v1/txn",
        txn(&["other/c"], &["app/t1"]),
    )
    .await;
    assert_denied(&a, StatusCode::FORBIDDEN, "txn with a compare outside");
    assert_eq!(
        value_of(ep, "app%2Ft1").await,
        None,
        "a refused txn wrote nothing"
    );
    assert_eq!(value_of(ep, "other%2Ft1").await, None);
    let a = call(
        ep,
        Who::User("app"),
        Method::POST,
        "/v1/txn",
        txn(&["app/c"], &["app/t1"]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.message());
    assert_eq!(value_of(ep, "app%2Ft1").await.as_deref(), Some(&b"t"[..]));
    let a = call(
        ep,
        Who::User("app"),
        Method::GET,
        "/v1/watch?prefix=other/",
        vec![],
    )
    .await;
    assert_denied(&a, StatusCode::FORBIDDEN, "watch outside");
    // A watch inside streams: its first line is the opening progress event.
    let http = reqwest::Client::new();
    let mut w = http
        .get(format!("http://{ep}/v1/watch?prefix=app/"))
        .bearer_auth(token("app"))
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), w.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("progress"),
        "{first:?}"
    );
    drop(w);

    // Leases: a prefix-limited writer may revoke a lease only when all its keys are inside.
    let grant = |who| async move {
        let a = call(
            ep,
            who,
            Method::POST,
            "/v1/lease",
            br#"{"ttl": 60}"#.to_vec(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.message());
        a.json()["id"].as_u64().unwrap()
    };
    let root_lease = grant(Who::User("root")).await;
    assert_eq!(
        put(
            Who::User("root"),
            &format!("other%2Fleased?lease={root_lease}"),
            "l"
        )
        .await
        .status,
        StatusCode::OK
    );
    let a = call(
        ep,
        Who::User("app"),
        Method::DELETE,
        &format!("/v1/lease/{root_lease}"),
        vec![],
    )
    .await;
    assert_denied(
        &a,
        StatusCode::FORBIDDEN,
        "app revoking a lease with a key outside",
    );
    assert!(
        a.message().contains("holds key other/leased"),
        "{}",
        a.message()
    );
    assert_eq!(
        value_of(ep, "other%2Fleased").await.as_deref(),
        Some(&b"l"[..])
    );
    let ttl = call(
        ep,
        Who::User("app"),
        Method::GET,
        &format!("/v1/lease/{root_lease}?keys=true"),
        vec![],
    )
    .await;
    assert_denied(
        &ttl,
        StatusCode::FORBIDDEN,
        "app reading the keys of a lease with a key outside",
    );
    let app_lease = grant(Who::User("app")).await;
    assert_eq!(
        put(
            Who::User("app"),
            &format!("app/leased?lease={app_lease}"),
            "l"
        )
        .await
        .status,
        StatusCode::OK
    );
    let a = call(
        ep,
        Who::User("app"),
        Method::DELETE,
        &format!("/v1/lease/{app_lease}"),
        vec![],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.message());
    assert_eq!(value_of(ep, "app%2Fleased").await, None);
    // An unprefixed writer revokes any lease.
    let a = call(
        ep,
        Who::User("writer"),
        Method::DELETE,
        &format!("/v1/lease/{root_lease}"),
        vec![],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.message());
    assert_eq!(value_of(ep, "other%2Fleased").await, None);

    // Every refusal was counted.
    let metrics = call(ep, Who::Nobody, Method::GET, "/metrics", vec![]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
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
    }
    let root_line = user("root", "admin");
    assert!(
        !log.contains(&root_line[root_line.len() - 65..root_line.len() - 1]),
        "the log shows a hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reconfigure_is_for_admins_only() {
    let (c, _) = start(3, &base_users(), &[]).await;
    let leader = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = call(
                &c.endpoint(1),
                Who::User("reader"),
                Method::GET,
                "/v1/status",
                vec![],
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.message());
            if let Some(l) = a.json()["leader"].as_u64() {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ep = c.endpoint(leader);
    let other = (1..=3).find(|p| *p != leader).unwrap();
    let keep = vec![leader, other];
    let body = serde_json::to_vec(&json!({ "nodes": keep })).unwrap();
    for who in ["writer", "app", "reader"] {
        let a = call(
            &ep,
            Who::User(who),
            Method::POST,
            "/v1/reconfigure",
            body.clone(),
        )
        .await;
        assert_denied(&a, StatusCode::FORBIDDEN, who);
        assert!(
            a.message().contains(&format!("user {who}")),
            "{}",
            a.message()
        );
        assert!(
            a.message().contains("may not reconfigure"),
            "{}",
            a.message()
        );
        let to = json!({ "to": other });
        let a = call(
            &ep,
            Who::User(who),
            Method::POST,
            "/v1/move-leader",
            serde_json::to_vec(&to).unwrap(),
        )
        .await;
        assert_denied(&a, StatusCode::FORBIDDEN, who);
    }
    let members = call(&ep, Who::User("reader"), Method::GET, "/v1/members", vec![]).await;
    assert_eq!(
        members.json()["members"].as_array().unwrap().len(),
        3,
        "a refused reconfigure changed nothing"
    );
    let a = call(
        &ep,
        Who::User("root"),
        Method::POST,
        "/v1/reconfigure",
        body,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}\n{}",
        a.message(),
        c.dump_logs()
    );
    let mut want = keep.clone();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let members = call(&ep, Who::User("reader"), Method::GET, "/v1/members", vec![]).await;
        let now: Vec<u64> = members.json()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["pid"].as_u64().unwrap())
            .collect();
        if now == want {
            break;
        }
        assert!(Instant::now() < deadline, "members {now:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `token`'s status call answers `want`; returns how long that took.
async fn until_status(ep: &str, name: &str, want: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let a = call(ep, Who::User(name), Method::GET, "/v1/status", vec![]).await;
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
    let ep = c.endpoint(1);
    let ep = ep.as_str();

    // --metrics-auth: /metrics needs a user (any role); health stays open.
    let a = call(ep, Who::Nobody, Method::GET, "/metrics", vec![]).await;
    assert_denied(&a, StatusCode::UNAUTHORIZED, "metrics without a token");
    assert_eq!(
        call(ep, Who::User("reader"), Method::GET, "/metrics", vec![])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(ep, Who::Nobody, Method::GET, "/healthz", vec![])
            .await
            .status,
        StatusCode::OK
    );

    // A user added while kvd runs: its token works within a couple of seconds.
    until_status(ep, "late", StatusCode::UNAUTHORIZED, Duration::ZERO).await;
    std::fs::write(&path, base_users() + &user("late", "read")).unwrap();
    let took = until_status(ep, "late", StatusCode::OK, Duration::from_secs(3)).await;
    eprintln!("a user added was accepted after {took:?}");

    // A bad file is logged (with its line) and the users loaded before stay.
    let bad = base_users() + &user("late", "read") + "broken nosuchrole\n";
    std::fs::write(&path, &bad).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    until_status(ep, "late", StatusCode::OK, Duration::ZERO).await;
    until_status(ep, "root", StatusCode::OK, Duration::ZERO).await;
    let log = c.log_text(1);
    assert!(log.contains("auth file changed but is not valid"), "{log}");
    assert!(
        log.contains("line 6: user broken: the role must be"),
        "{log}"
    );
    assert_eq!(
        log.matches("auth file changed but is not valid").count(),
        1,
        "logged once"
    );

    // The user removed: its token stops working.
    std::fs::write(&path, base_users()).unwrap();
    let took = until_status(ep, "late", StatusCode::UNAUTHORIZED, Duration::from_secs(3)).await;
    eprintln!("a user removed was refused after {took:?}");
    until_status(ep, "root", StatusCode::OK, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_a_bad_file_at_start_stops_kvd() {
    let mut c = Cluster::new_stopped(1, Opts::default());
    let path = c.dir.path().join("users");
    std::fs::write(&path, base_users() + "app read\n").unwrap();
    c.opts
        .extra_env
        .push(("KVD_AUTH_FILE".into(), path.display().to_string()));
    c.spawn(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.exited(1) {
        assert!(Instant::now() < deadline, "kvd runs with a bad auth file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = c.log_text(1);
    assert!(log.contains("line 5: user app is listed twice"), "{log}");
}
