//! HTTP edge cases against a real kvd: huge headers, slowloris, thousands of idle
//! connections, non-UTF-8 and empty keys. The replica must answer them sanely and keep
//! serving everyone else.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A put and a get through a fresh client succeed within `within`.
async fn still_serves(c: &Cluster, key: &str, within: Duration) {
    let t = Instant::now();
    let client = c.client_of(1, within);
    client
        .put(key.as_bytes(), b"ok".to_vec())
        .await
        .unwrap_or_else(|e| panic!("put {key} after {:?}: {e}", t.elapsed()));
    assert_eq!(get_from(c, 1, key).await.unwrap(), b"ok");
}

fn raw(c: &Cluster, request: &[u8]) -> String {
    let mut s = TcpStream::connect(c.endpoint(1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_and_slowloris_do_not_stop_the_replica() {
    let c = Cluster::start(1, Opts::default()).await;
    // A 1 MiB header: refused (431) or the connection closed, never a crash.
    let big = format!(
        "GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = raw(&c, big.as_bytes());
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "answer to a 1 MiB header: {:?}",
        &answer[..answer.len().min(200)]
    );
    // Slowloris: 200 connections each sending half a request, then nothing.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(c.endpoint(1)).unwrap();
        s.write_all(format!("PUT /v1/kv/slow{i} HTTP/1.1\r\nHost: x\r\nContent-Le").as_bytes())
            .unwrap();
        slow.push(s);
    }
    still_serves(&c, "after-slowloris", Duration::from_secs(5)).await;
    drop(slow);
    still_serves(&c, "after-huge-header", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_leave_room_for_clients() {
    let c = Cluster::start(1, Opts::default()).await;
    let mut idle = Vec::new();
    for _ in 0..3000 {
        match TcpStream::connect(c.endpoint(1)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect #{}: {e}", idle.len()),
        }
    }
    still_serves(&c, "with-3000-idle", Duration::from_secs(10)).await;
    drop(idle);
    still_serves(&c, "after-idle", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_empty_keys() {
    let c = Cluster::start(1, Opts::default()).await;
    let client = c.client_of(1, Duration::from_secs(5));
    let key = b"\xff\xfe\x00/ \xc3\x28".to_vec();
    client.put(&key, b"bin".to_vec()).await.unwrap();
    assert_eq!(
        client
            .get(&key, omnikv_common::Consistency::Linearizable)
            .await
            .unwrap(),
        b"bin"
    );
    let http = reqwest::Client::new();
    let base = format!("http://{}", c.endpoint(1));
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method.clone(), format!("{base}/v1/kv/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} of the empty key");
    }
    // A raw non-UTF-8 byte in the path (not percent-encoded): refused or stored as that
    // byte, never a crash.
    let answer = raw(
        &c,
        b"PUT /v1/kv/r\xffw HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv",
    );
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
    still_serves(&c, "after-binary", Duration::from_secs(5)).await;
}

/// The API side of the `decode_key` bug the fuzzer found (fuzz/tests/regressions.rs): a
/// malformed escape `%+1` must be refused with 400 like `%zz`, not stored as byte 0x01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plus_sign_in_a_key_escape_is_refused() {
    let c = Cluster::start(1, Opts::default()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", c.endpoint(1));
    let r = http
        .put(format!("{base}/v1/kv/a%+1"))
        .body("v")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let stored = http.get(format!("{base}/v1/kv/a%01")).send().await.unwrap();
    assert_eq!(
        (status.as_u16(), stored.status().as_u16()),
        (400, 404),
        "PUT /v1/kv/a%+1 was accepted and stored under the key a\\x01"
    );
}
