//! The async omnikv client: endpoints tried in turn, writes deduplicated by (client id, seq)
//! so a retry on another endpoint can never apply twice, and honest failure classes:
//! `Unavailable` only when no attempt could have been handed to consensus.
//!
//! The calls of the data model beyond one key (ranges, transactions) are in `client/data.rs`,
//! the watch stream and its resumption in `client/watch.rs`, leases in `client/lease.rs`,
//! TLS material and tokens in `client/credentials.rs`, refusals of who we are in
//! `client/denied.rs`.

mod credentials;
mod data;
mod denied;
mod lease;
mod snapshot;
mod watch;

pub use credentials::{
    read_token_file, Credentials, ENV_CACERT, ENV_CERT, ENV_KEY, ENV_TOKEN, ENV_TOKEN_FILE,
};
pub use denied::{CODE_PERMISSION_DENIED, CODE_TLS_REQUIRED, CODE_UNAUTHENTICATED};

pub use data::{KeySet, RangeOpts, ValueRead};
pub use lease::{parse_lease_id, renew_interval, LeaseLost, MAX_LEASE_ID};
pub use snapshot::SnapshotStream;
pub use watch::{
    Cursor, EventStream, StreamError, Watch, WatchError, WatchItem, WatchRequest,
    MAX_WATCH_LINE_BYTES,
};

use crate::api::{
    ApiError, ErrorCode, LogView, MembersView, ReconfigureRequest, ReconfigureResult, StatusView,
    WriteResult, HEADER_CLIENT_ID, HEADER_SEQ, HEADER_TIMEOUT_MS,
};
use crate::api::{MoveLeaderRequest, MoveLeaderResult};
use crate::keys::encode_key;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirmed by a quorum round (no log write): sees every write acknowledged before the
    /// read began.
    #[default]
    Linearizable,
    /// From the asked replica's own state: may be stale, works in a minority partition.
    Local,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Local => "local",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linearizable" | "l" => Ok(Consistency::Linearizable),
            "local" => Ok(Consistency::Local),
            other => Err(format!(
                "unknown consistency {other:?} (expected linearizable or local)"
            )),
        }
    }
}

/// What went wrong, classified the way kvctl maps to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// Definitely not applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// May or may not have been applied.
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// Refused on its merits (invalid, too large, stale, refused change).
    #[error("rejected ({code:?}): {message}")]
    Rejected { code: ErrorCode, message: String },
    /// Bad client-side input (e.g. an endpoint that is not a URL, an unreadable certificate
    /// file).
    #[error("usage: {0}")]
    Usage(String),
    /// Who we are was refused: 401 (no or unknown credentials), 403 (not allowed), 400
    /// `tls_required` (plain HTTP to an HTTPS endpoint), or a TLS handshake that failed on a
    /// certificate (unknown CA, expired, wrong name, our client certificate refused). Nothing
    /// reached consensus. The message says what to do; it never holds the token.
    #[error("not permitted: {0}")]
    NotPermitted(String),
}

/// One attempt against one endpoint.
enum Attempt<T> {
    Done(Result<T, ClientError>),
    /// Never reached the replica (connection refused, DNS...).
    Unreachable(String),
    /// The replica answered 503: it did not hand the request to consensus.
    Refused(String),
    /// Sent, but no answer in time, or the replica said indeterminate.
    Unknown(String),
}

/// Client over a list of kvd client endpoints (`http://host:port`).
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    timeout: Duration,
    client_id: u64,
    seq: AtomicU64,
}

/// `endpoint` as a URL; a bare `host:port` gets `scheme`.
fn normalize(endpoint: &str, scheme: &str) -> Result<String, ClientError> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err(ClientError::Usage("empty endpoint".into()));
    }
    let url = if e.contains("://") {
        e.to_string()
    } else {
        format!("{scheme}://{e}")
    };
    reqwest::Url::parse(&url)
        .map_err(|err| ClientError::Usage(format!("bad endpoint {e:?}: {err}")))?;
    Ok(url)
}

fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl Client {
    /// A plaintext, anonymous client over `endpoints` (tried in order) with an overall
    /// per-call `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ClientError> {
        Client::with_credentials(endpoints, timeout, &Credentials::default())
    }

    /// Like [`Client::new`], proving and trusting what `credentials` hold (endpoints may be
    /// `https://`). A file that cannot be read or parsed is [`ClientError::Usage`] naming it.
    pub fn with_credentials(
        endpoints: &[String],
        timeout: Duration,
        credentials: &Credentials,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Usage("no endpoints given".into()));
        }
        // A CA or a client certificate means TLS: a bare `host:port` is then https (as
        // etcdctl does); a written-out `http://` stays plaintext.
        let tls = credentials.cacert.is_some() || credentials.cert.is_some();
        let scheme = if tls { "https" } else { "http" };
        let endpoints = endpoints
            .iter()
            .map(|e| normalize(e, scheme))
            .collect::<Result<Vec<_>, _>>()?;
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(1000).min(timeout))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true);
        let http = credentials
            .apply(builder)?
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build HTTP client: {e}")))?;
        Ok(Client {
            http,
            endpoints,
            timeout,
            client_id: random_u64(),
            seq: AtomicU64::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Writes `value` under `key`; answered once decided and applied.
    pub async fn put(&self, key: &[u8], value: Vec<u8>) -> Result<WriteResult, ClientError> {
        self.put_with(key, value, false).await
    }

    /// Like [`Client::put`]; with `prev`, the answer carries the key as it was before.
    pub async fn put_with(
        &self,
        key: &[u8],
        value: Vec<u8>,
        prev: bool,
    ) -> Result<WriteResult, ClientError> {
        let path = format!("/v1/kv/{}{}", encode_key(key), prev_query(prev));
        self.send_write(reqwest::Method::PUT, &path, Some(Body::Raw(value.into())))
            .await
    }

    /// Deletes `key`. Deleting a missing key succeeds with `existed: false`.
    pub async fn delete(&self, key: &[u8]) -> Result<WriteResult, ClientError> {
        self.delete_with(key, false).await
    }

    /// Like [`Client::delete`]; with `prev`, the answer carries the deleted key.
    pub async fn delete_with(&self, key: &[u8], prev: bool) -> Result<WriteResult, ClientError> {
        let path = format!("/v1/kv/{}{}", encode_key(key), prev_query(prev));
        self.send_write(reqwest::Method::DELETE, &path, None).await
    }

    /// Sends a request that changes state: one (client id, seq) for every attempt, on every
    /// endpoint, so kvd applies it at most once however many replicas see it.
    async fn send_write<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<T, ClientError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.each_endpoint(Some("write"), |endpoint, remaining| {
            let req = self
                .http
                .request(method.clone(), format!("{endpoint}{path}"))
                .header(HEADER_CLIENT_ID, self.client_id)
                .header(HEADER_SEQ, seq);
            let req = match &body {
                Some(Body::Raw(b)) => req.body(b.clone()),
                Some(Body::Json(b)) => req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone()),
                None => req,
            };
            async move {
                match send(req, remaining).await {
                    Ok(resp) => json_answer(resp).await,
                    Err(a) => a,
                }
            }
        })
        .await
    }

    /// Reads `key`; `Ok(None)` never happens: a missing key is `Err(NotFound)`.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Vec<u8>, ClientError> {
        Ok(self.get_kv(key, consistency).await?.value)
    }

    /// Status of the first endpoint that answers.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.get_json("/v1/status").await
    }

    /// The recent decided log of the first endpoint that answers.
    pub async fn log(&self, limit: usize) -> Result<LogView, ClientError> {
        self.get_json(&format!("/v1/log?limit={limit}")).await
    }

    /// The current configuration as the first endpoint that answers knows it.
    pub async fn members(&self) -> Result<MembersView, ClientError> {
        self.get_json("/v1/members").await
    }

    /// Changes the members. Replicas that are not the leader of the current configuration
    /// refuse (503), so this lands on the leader among the endpoints. A timeout after the
    /// change was handed over is `Indeterminate`: retry with the same explicit `config_id`,
    /// which succeeds if the change happened.
    pub async fn reconfigure(
        &self,
        request: &ReconfigureRequest,
    ) -> Result<ReconfigureResult, ClientError> {
        self.each_endpoint(Some("change"), |endpoint, remaining| {
            let req = self
                .http
                .post(format!("{endpoint}/v1/reconfigure"))
                .json(request);
            async move {
                match send(req, remaining).await {
                    Ok(resp) => json_answer(resp).await,
                    Err(a) => a,
                }
            }
        })
        .await
    }

    /// Asks the leader among the endpoints to hand leadership to member `to`; answers once
    /// `to` leads. Followers refuse (503), so this lands on the leader. Moving leadership
    /// twice is harmless, so an unanswered attempt counts as unavailable, not indeterminate.
    pub async fn move_leader(&self, to: u64) -> Result<MoveLeaderResult, ClientError> {
        let request = MoveLeaderRequest { to };
        self.each_endpoint(None, |endpoint, remaining| {
            let req = self
                .http
                .post(format!("{endpoint}/v1/move-leader"))
                .json(&request);
            async move {
                match send(req, remaining).await {
                    Ok(resp) => json_answer(resp).await,
                    Err(a) => a,
                }
            }
        })
        .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.each_endpoint(None, |endpoint, remaining| {
            let req = self.http.get(format!("{endpoint}{path}"));
            async move {
                match send(req, remaining).await {
                    Ok(resp) => json_answer(resp).await,
                    Err(a) => a,
                }
            }
        })
        .await
    }

    /// Runs `attempt` against each endpoint in turn until one gives a definite answer or the
    /// overall timeout passes. `changes`: what a request that changes state is called ("write",
    /// "change"); such a request sent but unanswered is indeterminate, not unavailable.
    async fn each_endpoint<T, F, Fut>(
        &self,
        changes: Option<&str>,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(String, Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        let n = self.endpoints.len();
        let mut unreachable = Vec::new();
        let mut refused = Vec::new();
        let mut unknown = Vec::new();
        // Refusals of our credentials (401, 403, tls_required, a certificate failure), first
        // message first.
        let mut denied = Vec::new();
        let mut round = 0u32;
        loop {
            let (mut denied_now, mut unknown_now) = (0, 0);
            for endpoint in &self.endpoints {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match attempt(endpoint.clone(), remaining).await {
                    // One replica refusing us says nothing of the others (a token or a CA
                    // its mounted files do not hold yet): go on to the next endpoint.
                    Attempt::Done(Err(ClientError::NotPermitted(m))) => {
                        denied_now += 1;
                        denied.push(m);
                    }
                    Attempt::Done(r) => return r,
                    Attempt::Unreachable(m) => unreachable.push(format!("{endpoint}: {m}")),
                    Attempt::Refused(m) => refused.push(format!("{endpoint}: {m}")),
                    Attempt::Unknown(m) => {
                        unknown_now += 1;
                        unknown.push(format!("{endpoint}: {m}"));
                    }
                }
            }
            // Every endpoint refused us or left us without an answer: another round would
            // only repeat that.
            if denied_now > 0 && denied_now + unknown_now == n {
                break;
            }
            round += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // Everything refused or unreachable this round: back off briefly (an election
            // may be under way) and try again while time remains.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(round.min(5))).min(remaining))
                .await;
        }
        dedup(&mut unreachable);
        dedup(&mut refused);
        dedup(&mut unknown);
        let reachable = n - distinct_endpoints(&unreachable, &self.endpoints);
        let mut summary = format!("{reachable} of {n} replicas reachable");
        for (label, list) in [
            ("refused", &refused),
            ("no answer", &unknown),
            ("unreachable", &unreachable),
        ] {
            if let Some(last) = list.last() {
                summary.push_str(&format!("; {label}: {last}"));
            }
        }
        if let (Some(what), false) = (changes, unknown.is_empty()) {
            // A write sent somewhere without an answer may have been applied: a refusal
            // elsewhere does not make that definite.
            let refusal = denied
                .first()
                .map(|m| format!("; refused: {m}"))
                .unwrap_or_default();
            Err(ClientError::Indeterminate(format!(
                "the {what} was sent but not confirmed within {:?}: it may have been applied ({summary}{refusal})",
                self.timeout
            )))
        } else if let Some(first) = denied.into_iter().next() {
            Err(ClientError::NotPermitted(first))
        } else {
            Err(ClientError::Unavailable(summary))
        }
    }
}

/// A request body: raw bytes (a value) or JSON (a transaction).
enum Body {
    Raw(bytes::Bytes),
    Json(bytes::Bytes),
}

/// `?prev=true` when asked, else nothing.
fn prev_query(prev: bool) -> &'static str {
    if prev {
        "?prev=true"
    } else {
        ""
    }
}

/// A success answer's JSON body, or the error it classifies as. A body that does not parse
/// is `Unknown`: the request may have done its work.
async fn json_answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Attempt<T> {
    if !resp.status().is_success() {
        return classify_error(resp).await;
    }
    match resp.json::<T>().await {
        Ok(v) => Attempt::Done(Ok(v)),
        Err(e) => Attempt::Unknown(format!("bad answer: {e}")),
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

fn distinct_endpoints(msgs: &[String], endpoints: &[String]) -> usize {
    endpoints
        .iter()
        .filter(|e| msgs.iter().any(|m| m.starts_with(&format!("{e}:"))))
        .count()
}

/// Sends one request with the caller's remaining budget, telling kvd how long it may take.
/// A request that never connected is `Unreachable`; one that was sent and got no answer is
/// `Unknown` (for a write: maybe applied).
async fn send<T>(
    req: reqwest::RequestBuilder,
    remaining: Duration,
) -> Result<reqwest::Response, Attempt<T>> {
    let budget_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    req.timeout(remaining)
        .header(HEADER_TIMEOUT_MS, budget_ms)
        .send()
        .await
        .map_err(request_failed)
}

/// A request that got no answer: a TLS refusal (definite: nothing was handled), never
/// connected (`Unreachable`), or sent and unanswered (`Unknown`).
fn request_failed<T>(e: reqwest::Error) -> Attempt<T> {
    if let Some(refused) = denied::tls_failure(&e) {
        Attempt::Done(Err(refused))
    } else if e.is_connect() || e.is_builder() {
        Attempt::Unreachable(short(&e))
    } else {
        Attempt::Unknown(short(&e))
    }
}

fn short(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection refused or unreachable".to_string()
    } else {
        e.to_string()
    };
    if let Some(src) = std::error::Error::source(e).and_then(std::error::Error::source) {
        if !e.is_timeout() {
            s = format!("{s} ({src})");
        }
    }
    s
}

async fn classify_error<T>(resp: reqwest::Response) -> Attempt<T> {
    let status = resp.status().as_u16();
    let endpoint = resp.url().origin().ascii_serialization();
    let body = resp.bytes().await.unwrap_or_default();
    // The refusals first, by status and by the code as a string (whatever `ErrorCode` holds).
    let error = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|v| v.get("error")?.get(name)?.as_str().map(str::to_string))
    };
    if let Some(refused) = denied::refused_answer(
        status,
        field("code").as_deref(),
        field("message").as_deref().unwrap_or(""),
        &endpoint,
    ) {
        return Attempt::Done(Err(refused));
    }
    let (code, message) = match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (
            match status {
                404 => ErrorCode::NotFound,
                400 => ErrorCode::InvalidRequest,
                413 => ErrorCode::TooLarge,
                503 => ErrorCode::Unavailable,
                504 => ErrorCode::Indeterminate,
                _ => ErrorCode::Internal,
            },
            format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
        ),
    };
    match code {
        ErrorCode::NotFound => Attempt::Done(Err(ClientError::NotFound)),
        ErrorCode::Unavailable => Attempt::Refused(message),
        ErrorCode::Indeterminate => Attempt::Unknown(message),
        code => Attempt::Done(Err(ClientError::Rejected { code, message })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_endpoint_takes_the_scheme_given() {
        let plain = Client::new(&["127.0.0.1:8001".into()], Duration::from_secs(1)).unwrap();
        assert_eq!(plain.endpoints(), ["http://127.0.0.1:8001"]);
        assert_eq!(normalize("h:1", "https").unwrap(), "https://h:1");
        assert_eq!(normalize("http://h:1/", "https").unwrap(), "http://h:1");
        assert_eq!(normalize(" h:1 ", "http").unwrap(), "http://h:1");
    }
}
