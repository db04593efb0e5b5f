//! TLS end to end: HTTPS on the client API (client certificates, refusals, plaintext on the
//! TLS port), peer mutual TLS (who may count as a replica) and certificate rotation under
//! load. Real processes, real TLS with a test PKI (`pki.rs`).

use crate::harness::*;
use crate::pki::{file_serial, lay_out, serial_of, Ca, Leaf, LeafOpts, PkiDir};
use kvd::frame::{Hello, PeerFrame, HELLO_ACK, MAGIC, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Debug lines of the TLS listener and the connection info (refusal reasons, cert users).
const TLS_DEBUG_LOG: &str = "info,kvd::tls=debug,kvd::client_conn=debug";

fn tls_opts(pki: &PkiDir) -> Opts {
    Opts {
        tls: Some(pki.clone()),
        extra_env: vec![("KVD_LOG".into(), TLS_DEBUG_LOG.into())],
        ..Opts::default()
    }
}

/// A running TLS cluster of `n` replicas with a fresh PKI (kept in the returned dir).
async fn tls_cluster(n: u64) -> (tempfile::TempDir, Ca, PkiDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("omnikv test CA");
    let pki = lay_out(&ca, dir.path(), 1..=n);
    let c = Cluster::start(n, tls_opts(&pki)).await;
    (dir, ca, pki, c)
}

/// An HTTPS client trusting `ca_pem`, presenting `identity` if given; a new connection per
/// request when `fresh_connections`.
fn https(ca_pem: &str, identity: Option<&Leaf>, fresh_connections: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    if fresh_connections {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

async fn put(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    value: &str,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let r = client
        .put(format!("{endpoint}/v1/kv/{key}"))
        .header("omnikv-timeout-ms", "3000")
        .body(value.to_string())
        .send()
        .await?;
    Ok(r.status())
}

async fn get(client: &reqwest::Client, endpoint: &str, key: &str) -> (u16, Vec<u8>) {
    let r = client
        .get(format!("{endpoint}/v1/kv/{key}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key} from {endpoint}: {e:?}"));
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// The full error chain of a failed request (reqwest hides the TLS cause in sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Waits until `pred` holds for replica `pid`'s log.
async fn wait_log(c: &Cluster, pid: u64, within: Duration, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    while !pred(&c.log_text(pid)) {
        assert!(
            Instant::now() < deadline,
            "replica {pid}'s log never showed what was expected\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_cluster_serves_and_refuses_what_it_must() {
    let (_dir, ca, _pki, c) = tls_cluster(3).await;
    assert!(c.endpoint(1).starts_with("https://"));

    // A put over HTTPS on one replica, read linearizably over HTTPS from every replica.
    let client = https(&ca.cert_pem, None, false);
    let status = put(&client, &c.endpoint(1), "secure", "yes").await.unwrap();
    assert_eq!(status, 200);
    for pid in 1..=3 {
        assert_eq!(
            get(&client, &c.endpoint(pid), "secure").await,
            (200, b"yes".to_vec()),
            "replica {pid}"
        );
    }

    // A client certificate from the cluster CA works, and its CN reaches the connection
    // info the API sees.
    let alice = ca.client("alice", LeafOpts::default());
    let as_alice = https(&ca.cert_pem, Some(&alice), false);
    assert_eq!(get(&as_alice, &c.endpoint(2), "secure").await.0, 200);
    wait_log(&c, 2, Duration::from_secs(5), |log| {
        log.lines()
            .any(|l| l.contains("TLS client certificate verified") && l.contains("alice"))
    })
    .await;

    // A client trusting another CA refuses the server's certificate.
    let other_ca = Ca::new("another CA");
    let e = https(&other_ca.cert_pem, None, false)
        .get(format!("{}/v1/status", c.endpoint(1)))
        .send()
        .await
        .expect_err("a server certificate from an unknown CA was accepted");
    let why = chain(&e);
    assert!(
        why.contains("UnknownIssuer") || why.contains("unknown issuer"),
        "{why}"
    );

    // An expired client certificate (from the right CA) is refused by kvd.
    let expired = ca.client("mallory", LeafOpts { expired: true });
    let e = https(&ca.cert_pem, Some(&expired), false)
        .get(format!("{}/v1/status", c.endpoint(3)))
        .send()
        .await
        .expect_err("an expired client certificate was accepted");
    wait_log(&c, 3, Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains("client TLS connection refused") && l.to_lowercase().contains("expired")
        })
    })
    .await;
    assert!(
        !c.log_text(3)
            .lines()
            .any(|l| l.contains("TLS client certificate verified") && l.contains("mallory")),
        "the expired certificate's user got through ({})",
        chain(&e)
    );
    // A client certificate from another CA is refused too.
    let stranger = other_ca.client("stranger", LeafOpts::default());
    https(&ca.cert_pem, Some(&stranger), false)
        .get(format!("{}/v1/status", c.endpoint(3)))
        .send()
        .await
        .expect_err("a client certificate from an unknown CA was accepted");

    // Plaintext HTTP on the TLS port: 400 tls_required, naming the https address.
    let plain = c.endpoint(1).replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tls_required", "{body}");
    let port = c.nodes[&1].client_port;
    assert_eq!(
        body["error"]["message"],
        format!("this endpoint serves HTTPS: use https://127.0.0.1:{port} (and --cacert)")
    );

    // The replicas still agree (the refusals disturbed nothing).
    c.wait_converged(Duration::from_secs(10)).await;
}

/// The TLS server certificate's serial number presented on `127.0.0.1:port` (a new
/// connection), verified against `ca_pem`.
async fn served_serial(port: u16, ca_pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

/// Replaces `path` atomically (write aside, rename over), as a Secret update does.
fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_no_request() {
    let (_dir, ca, pki, c) = tls_cluster(1).await;
    let port = c.nodes[&1].client_port;
    let old_serial = file_serial(&pki.replica_cert(1));
    assert_eq!(served_serial(port, &ca.cert_pem).await, old_serial);

    // 8 writers, each request on a new connection (so new handshakes all along).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (stop, ok, errors, first_error) = (
            stop.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
        );
        let client = https(&ca.cert_pem, None, true);
        let endpoint = c.endpoint(1);
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match put(&client, &endpoint, &format!("w{w}-{i}"), "v").await {
                    Ok(s) if s == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let e = format!("{other:?}");
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // A bad certificate file: logged, and the old certificate stays in use.
    replace_file(&pki.replica_cert(1), "not a certificate\n");
    wait_log(&c, 1, Duration::from_secs(5), |log| {
        log.contains("not usable")
    })
    .await;
    assert_eq!(served_serial(port, &ca.cert_pem).await, old_serial);

    // The new certificate and key (the key first: the new key with the bad file is no
    // usable pair either, so the old one stays until both are in).
    let new = ca.replica(1);
    let new_serial = new.serial();
    assert_ne!(new_serial, old_serial);
    replace_file(&pki.replica_key(1), &new.key_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace_file(&pki.replica_cert(1), &new.cert_pem);
    let swapped = Instant::now();
    loop {
        if served_serial(port, &ca.cert_pem).await == new_serial {
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "new connections still get the old certificate\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = swapped.elapsed();
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    assert_eq!(
        errors,
        0,
        "{errors} failed requests (of {}); first: {:?}",
        ok + errors,
        first_error.lock().unwrap()
    );
    assert!(ok > before, "no request served after the rotation");
    assert!(ok >= 50, "only {ok} requests");
    eprintln!("rotation: {ok} requests, 0 errors, new certificate served after {took:?}");
}

/// Writes node `pid`'s certificate files (the harness reads `replica-N.crt`/`.key`).
fn give_cert(pki: &PkiDir, pid: u64, leaf: &Leaf) {
    leaf.write(&pki.dir, &format!("replica-{pid}"));
}

/// A put through replica 1 that must fail: no quorum without replica 3.
async fn assert_no_quorum(c: &Cluster, client: &reqwest::Client, case: &str) {
    let r = put(client, &c.endpoint(1), "nq", case).await;
    assert!(
        !matches!(r, Ok(s) if s == 200),
        "{case}: a write succeeded with replica 2 down, so replica 3 counted: {r:?}\n{}",
        c.dump_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_wrong_certificates_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("omnikv test CA");
    let pki = lay_out(&ca, dir.path(), 1..=3);
    let good3 = Leaf {
        cert_pem: std::fs::read_to_string(pki.replica_cert(3)).unwrap(),
        key_pem: std::fs::read_to_string(pki.replica_key(3)).unwrap(),
    };
    let other_ca = Ca::new("another CA");
    let cases: [(&str, Leaf, &str); 3] = [
        (
            "replica 3 with replica 2's certificate",
            ca.replica(2),
            "certificate is for replica 2",
        ),
        (
            "replica 3 with a certificate from another CA",
            other_ca.replica(3),
            "UnknownIssuer",
        ),
        (
            "replica 3 with an expired certificate",
            ca.replica_with(3, LeafOpts { expired: true }),
            "xpired",
        ),
    ];
    let mut c = Cluster::new_stopped(3, tls_opts(&pki));
    let client = https(&ca.cert_pem, None, false);
    for pid in [1, 2] {
        c.spawn(pid);
    }
    for (i, (case, leaf, reason)) in cases.iter().enumerate() {
        give_cert(&pki, 3, leaf);
        let logged = c.log_text(1).matches(reason).count();
        c.spawn(3);
        if i == 0 {
            // Replicas 1 and 2 are a quorum on their own.
            c.wait_leader(Duration::from_secs(20)).await;
            assert_eq!(put(&client, &c.endpoint(1), "k", "v").await.unwrap(), 200);
            c.kill(2);
        }
        // Replica 1 says why it refuses replica 3 ...
        wait_log(&c, 1, Duration::from_secs(10), |log| {
            log.matches(reason).count() > logged
        })
        .await;
        // ... and does not count it: 1 and 3 are no quorum.
        assert_no_quorum(&c, &client, case).await;
        c.kill(3);
    }
    // The control: replica 3 with its own certificate makes the quorum.
    give_cert(&pki, 3, &good3);
    c.spawn(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match put(&client, &c.endpoint(1), "after", "quorum").await {
            Ok(s) if s == 200 => break,
            r => assert!(
                Instant::now() < deadline,
                "replica 3 with its own certificate did not make a quorum: {r:?}\n{}",
                c.dump_logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&client, &c.endpoint(3), "after").await,
        (200, b"quorum".to_vec())
    );
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_peer_on_a_tls_peer_port_is_refused() {
    let (_dir, ca, _pki, c) = tls_cluster(3).await;
    let before = c.status(1).await.unwrap();
    let cluster_id = u64::from_str_radix(&before.cluster_id, 16).unwrap();
    // A valid Hello as member 2 (the right cluster id), then a consensus frame, in plaintext.
    let hello = PeerFrame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id,
        pid: 2,
        storage_id: 77,
    });
    let mut s = std::net::TcpStream::connect(c.peer_addr(1)).unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(&frame(&hello.encode())).unwrap();
    let _ = s.write_all(&frame(&hello.encode()[..8]));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.first() != Some(&HELLO_ACK),
        "the plaintext Hello was acknowledged: {answer:?}"
    );
    // The connection was closed (read_to_end returned) with at most a TLS alert.
    assert!(answer.len() < 64, "{answer:?}");
    wait_log(&c, 1, Duration::from_secs(5), |log| {
        log.lines().any(|l| {
            l.contains(&local.to_string())
                && l.contains("peer connection closed")
                && l.contains("TLS handshake failed")
        })
    })
    .await;
    // The session never got past TLS (the log line above): nothing reached the consensus
    // loop, and the cluster goes on as before.
    c.wait_converged(Duration::from_secs(10)).await;
    let client = https(&ca.cert_pem, None, false);
    assert_eq!(put(&client, &c.endpoint(2), "k", "v").await.unwrap(), 200);
    assert_eq!(
        get(&client, &c.endpoint(1), "k").await,
        (200, b"v".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("omnikv test CA");
    let pki = lay_out(&ca, dir.path(), [1]);
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.key");
    let garbage = dir.path().join("garbage.crt");
    let cert = pki.replica_cert(1);
    let key = pki.replica_key(1);
    for (env, named) in [
        (
            vec![("KVD_CERT_FILE", &cert), ("KVD_KEY_FILE", &missing)],
            &missing,
        ),
        (
            vec![("KVD_CERT_FILE", &garbage), ("KVD_KEY_FILE", &key)],
            &garbage,
        ),
        (
            vec![
                ("KVD_PEER_CERT_FILE", &cert),
                ("KVD_PEER_KEY_FILE", &key),
                ("KVD_PEER_CA_FILE", &garbage),
            ],
            &garbage,
        ),
    ] {
        let mut cmd = std::process::Command::new(kvd_bin());
        cmd.env("PID", "1")
            .env("NODES", "1")
            .env("KVD_DATA_DIR", dir.path().join("data"))
            .env("KVD_CLIENT_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("KVD_PEER_ADDR", format!("127.0.0.1:{}", free_port()));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started");
        assert!(
            stderr.contains(&named.display().to_string()),
            "{env:?}: the error does not name {}: {stderr}",
            named.display()
        );
    }
}
