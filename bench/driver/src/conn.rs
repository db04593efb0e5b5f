//! One connection to the system under load, with the operations the workloads need, each as
//! that system's users send it: omnikv through its HTTP API (`omnikv_common::Client` for
//! single keys, the same HTTP stack for range, txn and watch), etcd through its native gRPC
//! API (the `etcd-client` crate).

use etcd_client::{
    Certificate, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use kvctl::bench::Outcome;
use omnikv_common::api::{HEADER_CLIENT_ID, HEADER_SEQ, HEADER_TIMEOUT_MS};
use omnikv_common::client::Credentials;
use omnikv_common::keys::encode_key;
use omnikv_common::kv::{self, RangeResult, TxnRequest, TxnResult, WatchEvent};
use omnikv_common::{Client, ClientError, Consistency, ErrorCode};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// kvd replicas (HTTP API, docs/api.md).
    Omnikv,
    /// etcd v3 members (native gRPC API; --endpoints are etcd client URLs).
    Etcd,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Omnikv => "omnikv",
            Target::Etcd => "etcd",
        }
    }
}

/// How connections reach the system under load: the time allowed per request and kvctl's
/// credentials (--cacert, --cert, --key, --token/--token-file; files read when a connection
/// is made). omnikv gets them as kvctl sends them; etcd gets the TLS files (etcdctl's flags
/// of the same names) and no token (etcd's own authentication is not driven).
#[derive(Debug, Clone)]
pub struct Dial {
    pub timeout: Duration,
    pub credentials: Credentials,
}

impl Dial {
    /// An etcd endpoint as a URL: its own scheme, else https:// with --cacert (as etcdctl)
    /// and http:// without.
    fn etcd_url(&self, endpoint: &str) -> String {
        if self.credentials.cacert.is_some() && !endpoint.contains("://") {
            url(&format!("https://{}", endpoint.trim()))
        } else {
            url(endpoint)
        }
    }

    /// etcd-client's TLS settings (rustls with ring): the CA and the client identity, or
    /// None without --cacert. An https:// endpoint without --cacert, and a token, are usage
    /// errors (the driver trusts no system roots; it does not log in to etcd).
    fn etcd_tls(&self, endpoint: &str) -> Result<Option<TlsOptions>, ClientError> {
        let c = &self.credentials;
        if c.token.is_some() {
            return Err(ClientError::Usage(
                "a token is for omnikv: the driver does not use etcd's authentication".into(),
            ));
        }
        let Some(ca) = &c.cacert else {
            if endpoint.starts_with("https://") {
                return Err(ClientError::Usage(format!(
                    "{endpoint}: an https endpoint needs --cacert"
                )));
            }
            return Ok(None);
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Usage(
                    "--cert and --key go together".to_string(),
                ))
            }
        }
        Ok(Some(tls))
    }
}

/// A PEM file's bytes, or a usage error naming it.
fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// A connection (pool) to one system, starting on `endpoints[0]`.
pub enum Conn {
    Omnikv(OmnikvConn),
    /// etcd's client is large (every service's stub): boxed.
    Etcd(Box<etcd_client::Client>),
}

/// omnikv: the common client (single keys, endpoints tried in order) and, for range, txn and
/// watch, the same kind of HTTP client on the first endpoint, with the dedup headers and
/// timeout budget that the common client sends on writes.
pub struct OmnikvConn {
    client: Client,
    http: reqwest::Client,
    endpoint: String,
    timeout: Duration,
    client_id: u64,
    seq: AtomicU64,
}

/// The outcome of a compare-and-swap: whether it swapped, and the key's mod revision now
/// (0: absent).
pub struct Swap {
    pub swapped: bool,
    pub mod_revision: u64,
}

/// An endpoint as a URL (`http://` unless it names a scheme).
pub fn url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

fn rejected(message: String) -> ClientError {
    ClientError::Rejected {
        code: ErrorCode::Rejected,
        message,
    }
}

/// etcd's errors in our classes: gRPC Unavailable is unavailable, a deadline or a transport
/// failure after sending is indeterminate, the rest rejected.
/// A get of every key under `prefix`, with `opts` (their prefix flag set here).
async fn etcd_prefix(
    c: &etcd_client::Client,
    prefix: &[u8],
    opts: GetOptions,
) -> Result<etcd_client::GetResponse, ClientError> {
    c.kv_client()
        .get(prefix, Some(opts.with_prefix()))
        .await
        .map_err(etcd_error)
}

fn etcd_error(e: etcd_client::Error) -> ClientError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => match s.code() {
            tonic_code::Unavailable => ClientError::Unavailable(format!("etcd: {s}")),
            tonic_code::DeadlineExceeded | tonic_code::Cancelled => {
                ClientError::Indeterminate(format!("etcd: {s}"))
            }
            _ => rejected(format!("etcd: {s}")),
        },
        E::TransportError(t) => ClientError::Indeterminate(format!("etcd transport: {t}")),
        other => rejected(format!("etcd: {other}")),
    }
}

/// The gRPC status codes etcd answers with.
mod tonic_code {
    pub use tonic::Code::*;
}

/// A fresh random client id (non-zero), as the common client picks one.
fn random_id() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

impl Conn {
    /// A connection of `target` to `endpoints` (the first is the one used; omnikv's client
    /// falls back to the others when it is unreachable).
    pub async fn connect(
        target: Target,
        endpoints: &[String],
        dial: &Dial,
    ) -> Result<Conn, ClientError> {
        let first = endpoints
            .first()
            .ok_or_else(|| ClientError::Usage("no endpoints given".into()))?;
        let timeout = dial.timeout;
        match target {
            Target::Omnikv => {
                let builder = reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(1000).min(timeout))
                    .pool_max_idle_per_host(1024)
                    .tcp_nodelay(true);
                let http =
                    dial.credentials.apply(builder)?.build().map_err(|e| {
                        ClientError::Usage(format!("cannot build HTTP client: {e}"))
                    })?;
                Ok(Conn::Omnikv(OmnikvConn {
                    client: Client::with_credentials(endpoints, timeout, &dial.credentials)?,
                    http,
                    endpoint: url(first),
                    timeout,
                    client_id: random_id(),
                    seq: AtomicU64::new(0),
                }))
            }
            Target::Etcd => {
                let first = dial.etcd_url(first);
                let mut options = ConnectOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_millis(1000).min(timeout));
                if let Some(tls) = dial.etcd_tls(&first)? {
                    options = options.with_tls(tls);
                }
                etcd_client::Client::connect([first.as_str()], Some(options))
                    .await
                    .map(|c| Conn::Etcd(Box::new(c)))
                    .map_err(|e| ClientError::Unavailable(format!("etcd connect {first}: {e}")))
            }
        }
    }

    /// A get of one key.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Outcome {
        match self {
            Conn::Omnikv(c) => kvctl::bench::Driver::read(&c.client, key, consistency).await,
            Conn::Etcd(c) => {
                let mut opts = GetOptions::new();
                if consistency == Consistency::Local {
                    opts = opts.with_serializable();
                }
                match c.kv_client().get(key, Some(opts)).await {
                    Ok(r) if r.kvs().is_empty() => Outcome::Miss,
                    Ok(_) => Outcome::Ok,
                    Err(e) => Outcome::Err(etcd_error(e)),
                }
            }
        }
    }

    /// A put of one key.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Outcome {
        match self {
            Conn::Omnikv(c) => kvctl::bench::Driver::write(&c.client, key, value).await,
            Conn::Etcd(c) => match c.kv_client().put(key, value, None).await {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Err(etcd_error(e)),
            },
        }
    }

    /// Puts of every key of `keys` to `value`, as one transaction (no compare).
    pub async fn put_many(&self, keys: &[Vec<u8>], value: &[u8]) -> Result<(), ClientError> {
        match self {
            Conn::Omnikv(c) => {
                let txn = TxnRequest {
                    compare: vec![],
                    success: keys
                        .iter()
                        .map(|k| {
                            kv::TxnOp::Put(kv::PutOp {
                                key: k.as_slice().into(),
                                value: value.into(),
                                prev: false,
                                lease: 0,
                            })
                        })
                        .collect(),
                    failure: vec![],
                };
                let r = c.txn(&txn).await?;
                if r.succeeded {
                    Ok(())
                } else {
                    Err(rejected("a transaction without compares failed".into()))
                }
            }
            Conn::Etcd(c) => {
                let puts: Vec<_> = keys
                    .iter()
                    .map(|k| TxnOp::put(k.clone(), value, None))
                    .collect();
                c.kv_client()
                    .txn(Txn::new().and_then(puts))
                    .await
                    .map(|_| ())
                    .map_err(etcd_error)
            }
        }
    }

    /// How many keys start with `prefix` (a linearizable count, no keys sent).
    pub async fn count(&self, prefix: &[u8]) -> Result<u64, ClientError> {
        match self {
            Conn::Omnikv(c) => {
                let url = format!(
                    "{}/v1/kv?prefix={}&count_only=true",
                    c.endpoint,
                    encode_key(prefix)
                );
                let r: RangeResult = c.call(c.http.get(url), false).await?;
                Ok(r.count)
            }
            Conn::Etcd(c) => {
                let r = etcd_prefix(c, prefix, GetOptions::new().with_count_only()).await?;
                Ok(u64::try_from(r.count()).unwrap_or(0))
            }
        }
    }

    /// Every key starting with `prefix`, values included, decoded: the number of keys.
    pub async fn range(
        &self,
        prefix: &[u8],
        consistency: Consistency,
    ) -> Result<usize, ClientError> {
        match self {
            Conn::Omnikv(c) => {
                let url = format!(
                    "{}/v1/kv?prefix={}&consistency={}",
                    c.endpoint,
                    encode_key(prefix),
                    consistency.as_str()
                );
                let r: RangeResult = c.call(c.http.get(url), false).await?;
                Ok(r.kvs.len())
            }
            Conn::Etcd(c) => {
                let mut opts = GetOptions::new();
                if consistency == Consistency::Local {
                    opts = opts.with_serializable();
                }
                Ok(etcd_prefix(c, prefix, opts).await?.kvs().len())
            }
        }
    }

    /// The mod revision of every key under `prefix` (keys only; omnikv page by page).
    pub async fn mod_revisions(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, ClientError> {
        let mut out = Vec::new();
        match self {
            Conn::Omnikv(c) => {
                let mut next: Option<String> = None;
                loop {
                    let mut url = format!(
                        "{}/v1/kv?prefix={}&keys_only=true",
                        c.endpoint,
                        encode_key(prefix)
                    );
                    if let Some(t) = &next {
                        url.push_str(&format!("&continue={t}"));
                    }
                    let r: RangeResult = c.call(c.http.get(url), false).await?;
                    out.extend(r.kvs.into_iter().map(|kv| (kv.key.0, kv.mod_revision)));
                    match r.r#continue {
                        Some(t) if r.more => next = Some(t),
                        _ => return Ok(out),
                    }
                }
            }
            Conn::Etcd(c) => {
                let r = etcd_prefix(c, prefix, GetOptions::new().with_keys_only()).await?;
                for kv in r.kvs() {
                    let rev = u64::try_from(kv.mod_revision()).unwrap_or(0);
                    out.push((kv.key().to_vec(), rev));
                }
                Ok(out)
            }
        }
    }

    /// A transaction: if `key`'s mod revision is `expect` (0: absent), put `value`, else get
    /// the key (to learn its mod revision).
    pub async fn cas(&self, key: &[u8], expect: u64, value: &[u8]) -> Result<Swap, ClientError> {
        match self {
            Conn::Omnikv(c) => {
                let spec = kv::RangeSpec {
                    key: key.into(),
                    end: None,
                    prefix: false,
                };
                let txn = TxnRequest {
                    compare: vec![kv::Compare {
                        key: key.into(),
                        op: kv::CompareOp::Equal,
                        target: kv::CompareTarget::ModRevision(expect),
                    }],
                    success: vec![kv::TxnOp::Put(kv::PutOp {
                        key: key.into(),
                        value: value.into(),
                        prev: false,
                        lease: 0,
                    })],
                    failure: vec![kv::TxnOp::Get(kv::GetOp {
                        range: spec,
                        limit: None,
                        keys_only: false,
                        count_only: false,
                    })],
                };
                let r = c.txn(&txn).await?;
                let mod_revision = if r.succeeded {
                    r.revision
                } else {
                    match r.responses.first() {
                        Some(kv::TxnOpResult::Get(g)) => {
                            g.kvs.first().map_or(0, |k| k.mod_revision)
                        }
                        _ => 0,
                    }
                };
                Ok(Swap {
                    swapped: r.succeeded,
                    mod_revision,
                })
            }
            Conn::Etcd(c) => {
                let expect = i64::try_from(expect).unwrap_or(i64::MAX);
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, expect)])
                    .and_then([TxnOp::put(key, value, None)])
                    .or_else([TxnOp::get(key, None)]);
                let r = c.kv_client().txn(txn).await.map_err(etcd_error)?;
                let mod_revision = if r.succeeded() {
                    r.header().map_or(0, |h| h.revision())
                } else {
                    match r.op_responses().first() {
                        Some(TxnOpResponse::Get(g)) => {
                            g.kvs().first().map_or(0, |k| k.mod_revision())
                        }
                        _ => 0,
                    }
                };
                Ok(Swap {
                    swapped: r.succeeded(),
                    mod_revision: u64::try_from(mod_revision).unwrap_or(0),
                })
            }
        }
    }

    /// A watch of every key under `prefix`, from now on.
    pub async fn watch(&self, prefix: &[u8]) -> Result<WatchStream, ClientError> {
        match self {
            Conn::Omnikv(c) => {
                let url = format!("{}/v1/watch?prefix={}", c.endpoint, encode_key(prefix));
                let resp = c
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| ClientError::Unavailable(format!("watch: {e}")))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(rejected(format!("watch: HTTP {status}: {text}")));
                }
                Ok(WatchStream::Omnikv {
                    resp,
                    buf: Vec::new(),
                })
            }
            Conn::Etcd(c) => {
                let opts = WatchOptions::new().with_prefix();
                let mut s = c
                    .watch_client()
                    .watch(prefix, Some(opts))
                    .await
                    .map_err(etcd_error)?;
                // The first answer says the watch is created: from here on nothing is missed.
                match s.message().await.map_err(etcd_error)? {
                    Some(m) if m.created() => Ok(WatchStream::Etcd(s)),
                    other => Err(rejected(format!("etcd watch not created: {other:?}"))),
                }
            }
        }
    }
}

impl OmnikvConn {
    /// A transaction (`POST /v1/txn`), with the dedup headers of a write.
    async fn txn(&self, txn: &TxnRequest) -> Result<TxnResult, ClientError> {
        let req = self
            .http
            .post(format!("{}/v1/txn", self.endpoint))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(txn).expect("a txn serializes"));
        self.call(req, true).await
    }

    /// One request to the first endpoint, with the dedup headers when it is a write; the
    /// JSON answer or the error's class.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        write: bool,
    ) -> Result<T, ClientError> {
        let req = if write {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            req.header(HEADER_CLIENT_ID, self.client_id)
                .header(HEADER_SEQ, seq)
        } else {
            req
        };
        let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let resp = req
            .timeout(self.timeout)
            .header(HEADER_TIMEOUT_MS, ms)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ClientError::Unavailable(format!("{}: {e}", self.endpoint))
                } else {
                    ClientError::Indeterminate(format!("{}: {e}", self.endpoint))
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<T>()
                .await
                .map_err(|e| ClientError::Indeterminate(format!("bad answer: {e}")));
        }
        let text = resp.text().await.unwrap_or_default();
        let message = format!("{}: HTTP {status}: {}", self.endpoint, text.trim());
        Err(match status.as_u16() {
            503 => ClientError::Unavailable(message),
            504 => ClientError::Indeterminate(message),
            _ => rejected(message),
        })
    }
}

/// The changes a watch delivers.
pub enum WatchStream {
    Omnikv {
        resp: reqwest::Response,
        buf: Vec<u8>,
    },
    Etcd(etcd_client::WatchStream),
}

impl WatchStream {
    /// The values of the next puts delivered (at least one), or `None` when the stream ended.
    pub async fn next_puts(&mut self, values: &mut Vec<Vec<u8>>) -> Result<bool, ClientError> {
        values.clear();
        match self {
            WatchStream::Omnikv { resp, buf } => loop {
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    match serde_json::from_slice::<WatchEvent>(&line) {
                        Ok(WatchEvent::Put { value, .. }) => values.push(value.0),
                        Ok(
                            WatchEvent::Compacted { message, .. }
                            | WatchEvent::Lagged { message, .. },
                        ) => {
                            return Err(rejected(format!("watch ended: {message}")));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(rejected(format!("bad watch line: {e}"))),
                    }
                }
                if !values.is_empty() {
                    return Ok(true);
                }
                match resp.chunk().await {
                    Ok(Some(c)) => buf.extend_from_slice(&c),
                    Ok(None) => return Ok(false),
                    Err(e) => return Err(ClientError::Unavailable(format!("watch: {e}"))),
                }
            },
            WatchStream::Etcd(s) => loop {
                match s.message().await.map_err(etcd_error)? {
                    None => return Ok(false),
                    Some(m) => {
                        if m.canceled() {
                            return Err(rejected(format!(
                                "etcd watch canceled: {}",
                                m.cancel_reason()
                            )));
                        }
                        for e in m.events() {
                            if e.event_type() == etcd_client::EventType::Put {
                                if let Some(kv) = e.kv() {
                                    values.push(kv.value().to_vec());
                                }
                            }
                        }
                        if !values.is_empty() {
                            return Ok(true);
                        }
                    }
                }
            },
        }
    }
}
