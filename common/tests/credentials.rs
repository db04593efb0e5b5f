//! The client's credentials and its refusal class, against real servers on real TCP: a plain
//! HTTP server answering 401/403/400 `tls_required` bodies, and rustls servers with
//! certificates made here (trusted or not, expired, for another name, asking for a client
//! certificate). Every refusal is `ClientError::NotPermitted`, for writes too.

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Router;
use omnikv_common::client::{Credentials, KeySet, WatchError, WatchRequest};
use omnikv_common::{Client, ClientError, Consistency};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "okv_test-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const TIMEOUT: Duration = Duration::from_secs(3);

fn error_body(status: u16, code: &str, message: &str) -> axum::response::Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// Every path: 401 without our token, 403 with it (so a 403 proves the token was sent).
fn auth_router() -> Router {
    Router::new().fallback(|headers: HeaderMap| async move {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth == Some(&format!("Bearer {TOKEN}")) {
            error_body(403, "permission_denied", "user app (read) may not write")
        } else {
            error_body(401, "unauthenticated", "no credentials")
        }
    })
}

/// Every path answers `status` with `code`.
fn fixed_router(status: u16, code: &'static str, message: &'static str) -> Router {
    Router::new().fallback(move || async move { error_body(status, code, message) })
}

/// Every path answers `v` (a get's value) when the token came, else 401.
fn ok_router() -> Router {
    Router::new().fallback(|headers: HeaderMap| async move {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) {
            return error_body(401, "unauthenticated", "no credentials");
        }
        (axum::http::StatusCode::OK, "v").into_response()
    })
}

async fn serve_plain(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// A TLS listener for axum: connections whose handshake fails are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn serve_tls(router: Router, config: rustls::ServerConfig) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("https://{addr}")
}

/// A CA and the certificates it signs, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Writes NAME.crt and NAME.key; returns their paths.
    fn leaf(
        &self,
        name: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![eku];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, keyfile) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&keyfile, key.serialize_pem()).unwrap();
        (crt, keyfile)
    }

    fn server(&self, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let sans = if name == "localhost" {
            vec![SanType::IpAddress([127, 0, 0, 1].into())]
        } else {
            vec![SanType::DnsName(name.try_into().unwrap())]
        };
        self.leaf(name, sans, ExtendedKeyUsagePurpose::ServerAuth, expired)
    }

    fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        self.leaf(user, vec![], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config presenting `cert`; with `client_ca`, client certificates signed
/// by it are required.
fn server_config(cert: &(PathBuf, PathBuf), client_ca: Option<&Path>) -> rustls::ServerConfig {
    let chain = vec![CertificateDer::from_pem_file(&cert.0).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&cert.1).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(ca).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).unwrap()
}

fn client(endpoint: &str, credentials: Credentials) -> Client {
    Client::with_credentials(&[endpoint.to_string()], TIMEOUT, &credentials).unwrap()
}

fn not_permitted<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::NotPermitted(m)) => {
            assert!(!m.contains(TOKEN), "the token leaked: {m}");
            m
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
}

fn with_token() -> Credentials {
    Credentials {
        token: Some(TOKEN.into()),
        ..Credentials::default()
    }
}

#[tokio::test]
async fn refusals_by_the_server_are_not_permitted_and_the_token_goes_on_every_request() {
    let endpoint = serve_plain(auth_router()).await;
    let anonymous = client(&endpoint, Credentials::default());
    let m = not_permitted(anonymous.get(b"k", Consistency::Linearizable).await);
    assert!(
        m.contains("unauthenticated") && m.contains("--token"),
        "{m}"
    );
    // A refused write is definite, not indeterminate.
    let m = not_permitted(anonymous.put(b"k", b"v".to_vec()).await);
    assert!(m.contains("unauthenticated"), "{m}");

    // With the token every kind of request reaches the handler as that user (403).
    let c = client(&endpoint, with_token());
    let m = not_permitted(c.put(b"k", b"v".to_vec()).await);
    assert!(
        m.contains("permission denied") && m.contains("may not write"),
        "{m}"
    );
    not_permitted(c.get(b"k", Consistency::Local).await);
    not_permitted(c.delete(b"k").await);
    not_permitted(c.status().await);
    not_permitted(c.lease_keepalive(7).await);
    not_permitted(c.snapshot(Consistency::Linearizable).await.map(|_| ()));
    let mut watch = c.watch(WatchRequest {
        keys: KeySet::Prefix(b"a".to_vec()),
        start_revision: None,
        prev_value: false,
        progress_ms: 1000,
        consistency: Consistency::Linearizable,
    });
    match watch.next().await {
        Err(WatchError::Client(ClientError::NotPermitted(m))) => {
            assert!(m.contains("permission denied"), "{m}")
        }
        other => panic!("watch: {other:?}"),
    }
    // The token never shows in the credentials' Debug form.
    assert!(!format!("{:?}", with_token()).contains(TOKEN));
}

#[tokio::test]
async fn plain_http_to_an_https_port_says_use_https() {
    let endpoint = serve_plain(fixed_router(
        400,
        "tls_required",
        "plain HTTP on the HTTPS port",
    ))
    .await;
    let c = client(&endpoint, Credentials::default());
    let m = not_permitted(c.put(b"k", b"v".to_vec()).await);
    let https = endpoint.replace("http://", "https://");
    assert!(
        m.contains("serves HTTPS") && m.contains(&https),
        "{m} (wanted {https})"
    );

    // Any other 400 is still a rejection.
    let endpoint = serve_plain(fixed_router(400, "invalid_request", "bad key")).await;
    let c = client(&endpoint, Credentials::default());
    match c.get(b"k", Consistency::Linearizable).await {
        Err(ClientError::Rejected { message, .. }) => assert_eq!(message, "bad key"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_certificates_we_do_not_trust_are_not_permitted() {
    let pki = Pki::new();
    let good = serve_tls(
        ok_router(),
        server_config(&pki.server("localhost", false), None),
    )
    .await;

    // Trusted CA and token: it works.
    let creds = Credentials {
        cacert: Some(pki.ca()),
        ..with_token()
    };
    client(&good, creds.clone())
        .get(b"k", Consistency::Local)
        .await
        .unwrap();
    // A bare host:port with a CA given is https, as with etcdctl.
    let bare = good.strip_prefix("https://").unwrap();
    client(bare, creds.clone())
        .get(b"k", Consistency::Local)
        .await
        .unwrap();

    // No CA given (only the public roots), or another CA.
    let m = not_permitted(
        client(&good, with_token())
            .get(b"k", Consistency::Local)
            .await,
    );
    assert!(m.contains("UnknownIssuer") && m.contains("--cacert"), "{m}");
    let other = Pki::new();
    let other_ca = Credentials {
        cacert: Some(other.ca()),
        ..with_token()
    };
    let m = not_permitted(client(&good, other_ca).put(b"k", b"v".to_vec()).await);
    assert!(m.contains("--cacert"), "{m}");

    // Expired.
    let expired = serve_tls(
        ok_router(),
        server_config(&pki.server("localhost", true), None),
    )
    .await;
    let m = not_permitted(
        client(&expired, creds.clone())
            .get(b"k", Consistency::Local)
            .await,
    );
    assert!(m.contains("xpired"), "{m}");

    // Issued for another name.
    let wrong = serve_tls(
        ok_router(),
        server_config(&pki.server("other.example", false), None),
    )
    .await;
    let m = not_permitted(
        client(&wrong, creds.clone())
            .get(b"k", Consistency::Local)
            .await,
    );
    assert!(m.contains("does not name the host"), "{m}");

    // https:// to a plain HTTP server.
    let plain = serve_plain(ok_router()).await;
    let m = not_permitted(
        client(&plain.replace("http://", "https://"), creds)
            .get(b"k", Consistency::Local)
            .await,
    );
    assert!(
        m.contains("does not speak TLS") && m.contains("http://"),
        "{m}"
    );
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate() {
    let pki = Pki::new();
    let endpoint = serve_tls(
        ok_router(),
        server_config(&pki.server("localhost", false), Some(&pki.ca())),
    )
    .await;
    let base = Credentials {
        cacert: Some(pki.ca()),
        ..with_token()
    };

    // No certificate: refused, a write included (not indeterminate).
    let m = not_permitted(
        client(&endpoint, base.clone())
            .get(b"k", Consistency::Local)
            .await,
    );
    assert!(m.contains("--cert"), "{m}");
    not_permitted(
        client(&endpoint, base.clone())
            .put(b"k", b"v".to_vec())
            .await,
    );

    // A certificate of another CA: refused.
    let other = Pki::new();
    let (crt, key) = other.client("mallory");
    let m = not_permitted(
        client(
            &endpoint,
            Credentials {
                cert: Some(crt),
                key: Some(key),
                ..base.clone()
            },
        )
        .get(b"k", Consistency::Local)
        .await,
    );
    assert!(m.contains("refused our client certificate"), "{m}");

    // One of the cluster CA: accepted.
    let (crt, key) = pki.client("root");
    client(
        &endpoint,
        Credentials {
            cert: Some(crt),
            key: Some(key),
            ..base
        },
    )
    .get(b"k", Consistency::Local)
    .await
    .unwrap();
}

#[test]
fn bad_credential_files_are_usage_errors_naming_the_file() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
    let (crt, key) = pki.client("root");
    let eps = ["http://127.0.0.1:1".to_string()];
    let usage = |c: Credentials| match Client::with_credentials(&eps, TIMEOUT, &c) {
        Err(ClientError::Usage(m)) => m,
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("accepted {c:?}"),
    };
    let missing = dir.join("missing.crt");
    let m = usage(Credentials {
        cacert: Some(missing.clone()),
        ..Credentials::default()
    });
    assert!(m.contains(&missing.display().to_string()), "{m}");
    let garbage = dir.join("garbage.pem");
    for c in [
        Credentials {
            cacert: Some(garbage.clone()),
            ..Credentials::default()
        },
        Credentials {
            cert: Some(garbage.clone()),
            key: Some(key.clone()),
            ..Credentials::default()
        },
        Credentials {
            cert: Some(crt.clone()),
            key: Some(garbage.clone()),
            ..Credentials::default()
        },
    ] {
        let m = usage(c);
        assert!(m.contains(&garbage.display().to_string()), "{m}");
    }
    let m = usage(Credentials {
        cert: Some(crt),
        ..Credentials::default()
    });
    assert!(m.contains("--key"), "{m}");
    let m = usage(Credentials {
        token: Some("bad\ntoken".into()),
        ..Credentials::default()
    });
    assert!(!m.contains("bad\ntoken"), "{m}");
}

#[test]
fn a_token_file_gives_its_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("  {TOKEN} \nsecond line\n")).unwrap();
    assert_eq!(
        omnikv_common::client::read_token_file(&file).unwrap(),
        TOKEN
    );
    std::fs::write(&file, "\n").unwrap();
    match omnikv_common::client::read_token_file(&file) {
        Err(ClientError::Usage(m)) => assert!(m.contains("empty"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A server that reads a request and closes without answering: a write sent there may have
/// been applied.
async fn serve_black_hole() -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_refusal_after_an_unanswered_write_leaves_it_indeterminate() {
    let hole = serve_black_hole().await;
    let refusing = serve_plain(auth_router()).await;
    let c = Client::new(&[hole.clone(), refusing.clone()], TIMEOUT).unwrap();
    match c.put(b"k", b"v".to_vec()).await {
        Err(ClientError::Indeterminate(m)) => {
            assert!(m.contains(&hole) && m.contains("unauthenticated"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A read is not a write: the refusal stands.
    not_permitted(c.get(b"k", Consistency::Linearizable).await);
    // Refused first, then sent to the next endpoint (it may know our credentials) and
    // unanswered there: indeterminate too.
    let c = Client::new(&[refusing.clone(), hole], TIMEOUT).unwrap();
    match c.put(b"k", b"v".to_vec()).await {
        Err(ClientError::Indeterminate(m)) => assert!(m.contains("unauthenticated"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Every endpoint refused: definite, and at once (no retry rounds until the timeout).
    let other = serve_plain(auth_router()).await;
    let c = Client::new(&[refusing, other], TIMEOUT).unwrap();
    let started = std::time::Instant::now();
    not_permitted(c.put(b"k", b"v".to_vec()).await);
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());
}
