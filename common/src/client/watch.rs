//! Watching: one NDJSON stream from one replica ([`EventStream`], lines bounded in size), and
//! a [`Watch`] that resumes by itself after a disconnect, a silent stream, a `lagged` end or
//! a `compacted` one, on the endpoints in turn, without a gap or a duplicate ([`Cursor`]).

use super::{
    classify_error, request_failed, short, Attempt, Client, ClientError, Consistency, KeySet,
};
use crate::kv::WatchEvent;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Longest line a watch stream may send (a put event carries its value, and its previous
/// value with `prev_value`, base64-encoded); a longer one ends the stream with an error.
pub const MAX_WATCH_LINE_BYTES: usize = 4 * 1024 * 1024;

/// What to watch and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub keys: KeySet,
    /// The first revision to send; `None`: changes after every write acknowledged before
    /// the watch began (read at `consistency`).
    pub start_revision: Option<u64>,
    /// Events carry the value before the change.
    pub prev_value: bool,
    /// How often an idle stream sends progress, in milliseconds (100..=3600000). Also the
    /// heartbeat: a stream silent for three periods (plus the client timeout) is taken as
    /// dead and resumed elsewhere.
    pub progress_ms: u64,
    pub consistency: Consistency,
}

/// Where a resuming watch stands. Every change up to `done` was delivered; of revision
/// `partial` (a transaction's changes share one revision), the events for the keys listed.
/// A stream resumed at [`Cursor::resume_revision`] repeats those keys' events: they are
/// dropped, since one revision changes a key at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    done: u64,
    partial: Option<(u64, HashSet<Vec<u8>>)>,
}

impl Cursor {
    /// A cursor before revision `start` (>= 1).
    pub fn new(start: u64) -> Cursor {
        Cursor {
            done: start.saturating_sub(1),
            partial: None,
        }
    }

    /// Whether a change of `key` at `revision` is new (to deliver); records it.
    pub fn accept(&mut self, revision: u64, key: &[u8]) -> bool {
        if revision <= self.done {
            return false;
        }
        match &mut self.partial {
            Some((r, keys)) if *r == revision => keys.insert(key.to_vec()),
            Some((r, _)) if *r > revision => false,
            _ => {
                // Streams send revisions in order: every earlier one is complete.
                self.done = revision - 1;
                self.partial = Some((revision, HashSet::from([key.to_vec()])));
                true
            }
        }
    }

    /// Every change up to `revision` was sent (a progress event, or a `lagged` end's
    /// `resume_revision - 1`).
    pub fn complete_through(&mut self, revision: u64) {
        if revision > self.done {
            self.done = revision;
        }
        if self.partial.as_ref().is_some_and(|(r, _)| *r <= revision) {
            self.partial = None;
        }
    }

    /// The revision a new stream must start at.
    pub fn resume_revision(&self) -> u64 {
        self.partial
            .as_ref()
            .map_or(self.done + 1, |(revision, _)| *revision)
    }
}

/// One watch stream from one replica, read line by line.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// The endpoint it comes from.
    pub endpoint: String,
}

impl EventStream {
    /// The next event; `Ok(None)` when the replica ended the stream cleanly; `Err` when the
    /// connection failed or nothing came for `idle` ([`StreamError::Broken`]: resume), or a
    /// line was too long or not an event ([`StreamError::Invalid`]: resuming would read it
    /// again).
    pub async fn next_event(&mut self, idle: Duration) -> Result<Option<WatchEvent>, StreamError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map(Some).map_err(|e| {
                    StreamError::Invalid(format!("a line that is not a watch event: {e}"))
                });
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_WATCH_LINE_BYTES {
                return Err(StreamError::Invalid(format!(
                    "a watch event over {MAX_WATCH_LINE_BYTES} bytes (the client's bound)"
                )));
            }
            match tokio::time::timeout(idle, self.resp.chunk()).await {
                Err(_) => {
                    return Err(StreamError::Broken(format!(
                        "nothing received for {idle:?}"
                    )))
                }
                Ok(Err(e)) => return Err(StreamError::Broken(short(&e))),
                Ok(Ok(None)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(None)) => {
                    return Err(StreamError::Broken("the stream ended inside a line".into()))
                }
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

/// Why [`EventStream::next_event`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The connection broke or fell silent: another stream can go on.
    #[error("{0}")]
    Broken(String),
    /// The replica sent what no resumption would read differently.
    #[error("{0}")]
    Invalid(String),
}

/// What [`Watch::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change (`put` or `delete`), each exactly once and in revision order.
    Event(WatchEvent),
    /// The watch went on from another stream (for diagnostics).
    Resumed {
        endpoint: String,
        revision: u64,
        /// Why the previous stream ended.
        reason: String,
    },
}

/// Why a watch stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The first stream could not be opened (nothing reachable, bad request...).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No endpoint holds the history from the revision the watch needs.
    #[error(
        "compacted: revision {revision} is older than the history of every replica that \
         answered ({detail}); read the current state and watch from now"
    )]
    Compacted { revision: u64, detail: String },
}

/// A watch that resumes by itself: after its stream breaks, falls silent or lags it opens a
/// new one from the revision it needs, trying the endpoints in turn (each attempt bounded by
/// the client timeout) until one serves it. Once a stream was open it retries for ever;
/// the first connection gives up at the timeout. A `compacted` end moves to the next
/// endpoint; when none reachable holds the revision, the watch fails.
pub struct Watch<'a> {
    client: &'a Client,
    req: WatchRequest,
    cursor: Option<Cursor>,
    stream: Option<EventStream>,
    /// Index of the endpoint to try next.
    next_endpoint: usize,
    /// Why the last stream ended (`None` before the first).
    ended: Option<String>,
    /// Endpoints that said `compacted` for the current resume revision, with their message.
    compacted: BTreeMap<usize, String>,
}

impl Client {
    /// A resuming watch (nothing is sent before the first [`Watch::next`]).
    pub fn watch(&self, req: WatchRequest) -> Watch<'_> {
        Watch {
            client: self,
            cursor: req.start_revision.map(Cursor::new),
            req,
            stream: None,
            next_endpoint: 0,
            ended: None,
            compacted: BTreeMap::new(),
        }
    }

    /// Opens one stream on `endpoint` from revision `start` (`None`: from now, read at the
    /// request's consistency); `Err` as the failover loop classifies it.
    async fn open_stream(
        &self,
        endpoint: &str,
        req: &WatchRequest,
        start: Option<u64>,
    ) -> Result<EventStream, Attempt<()>> {
        let from = match start {
            Some(r) => format!("&start_revision={r}"),
            None => format!("&consistency={}", req.consistency.as_str()),
        };
        let url = format!(
            "{endpoint}/v1/watch?{}{from}&progress_ms={}{}",
            req.keys.watch_query(),
            req.progress_ms,
            if req.prev_value {
                "&prev_value=true"
            } else {
                ""
            }
        );
        // Bounds the connection and the answer's head only: the body is the stream.
        let resp = match tokio::time::timeout(self.timeout, self.http.get(url).send()).await {
            Err(_) => return Err(Attempt::Unknown("timed out".into())),
            Ok(Err(e)) => return Err(request_failed(e)),
            Ok(Ok(resp)) => resp,
        };
        if !resp.status().is_success() {
            return Err(classify_error(resp).await);
        }
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            scanned: 0,
            endpoint: endpoint.to_string(),
        })
    }
}

/// The position of `endpoint` in the client's list.
fn endpoint_index(client: &Client, endpoint: &str) -> usize {
    let endpoints = client.endpoints();
    endpoints.iter().position(|e| e == endpoint).unwrap_or(0)
}

impl Watch<'_> {
    /// The next change, or a note that the watch resumed on a new stream.
    pub async fn next(&mut self) -> Result<WatchItem, WatchError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if let Some(item) = self.connect().await? {
                    return Ok(item);
                }
                continue;
            };
            let client = self.client;
            let idle =
                Duration::from_millis(self.req.progress_ms.saturating_mul(3)) + self.client.timeout;
            let ended = match stream.next_event(idle).await {
                // A stream opened from now: its first line says where it starts.
                Ok(Some(WatchEvent::Progress { revision })) if self.cursor.is_none() => {
                    self.cursor = Some(Cursor::new(revision + 1));
                    continue;
                }
                Ok(Some(_)) if self.cursor.is_none() => {
                    "the stream did not open with a progress line".to_string()
                }
                Ok(Some(event)) => match &event {
                    WatchEvent::Put { key, revision, .. }
                    | WatchEvent::Delete { key, revision, .. } => {
                        let cursor = self.cursor.as_mut().expect("set by the opening line");
                        if cursor.accept(*revision, &key.0) {
                            self.compacted.clear();
                            return Ok(WatchItem::Event(event));
                        }
                        continue;
                    }
                    WatchEvent::Progress { revision } => {
                        let cursor = self.cursor.as_mut().expect("set by the opening line");
                        cursor.complete_through(*revision);
                        continue;
                    }
                    WatchEvent::Lagged {
                        resume_revision,
                        message,
                    } => {
                        let cursor = self.cursor.as_mut().expect("set by the opening line");
                        cursor.complete_through(resume_revision.saturating_sub(1));
                        // Slow reading, not a bad replica: the same endpoint again.
                        self.next_endpoint = endpoint_index(client, &stream.endpoint);
                        format!("lagged: {message}")
                    }
                    WatchEvent::Compacted { message, .. } => {
                        let i = endpoint_index(client, &stream.endpoint);
                        self.compacted.insert(i, message.clone());
                        format!("compacted: {message}")
                    }
                },
                Ok(None) => "the replica ended the stream".to_string(),
                Err(StreamError::Broken(e)) => e,
                Err(StreamError::Invalid(e)) => {
                    return Err(WatchError::Client(ClientError::Rejected {
                        code: crate::api::ErrorCode::Internal,
                        message: format!("the watch stream from {}: {e}", stream.endpoint),
                    }))
                }
            };
            let endpoint = stream.endpoint.clone();
            self.stream = None;
            self.ended = Some(format!("{endpoint}: {ended}"));
        }
    }

    /// Opens a stream from the revision the cursor needs. `Some` when it resumed one (the
    /// note to hand out); errors when the first stream cannot open in time or every
    /// endpoint that answered has compacted the revision.
    async fn connect(&mut self) -> Result<Option<WatchItem>, WatchError> {
        let started = Instant::now();
        let endpoints = self.client.endpoints().to_vec();
        let n = endpoints.len();
        let mut round = 0u32;
        loop {
            // Without a cursor yet, the stream starts from now and its opening progress line
            // says after which revision.
            let start = self.cursor.as_ref().map(Cursor::resume_revision);
            let mut failures = Vec::new();
            for _ in 0..n {
                let i = self.next_endpoint % n;
                self.next_endpoint = (i + 1) % n;
                if self.compacted.contains_key(&i) {
                    continue;
                }
                match self
                    .client
                    .open_stream(&endpoints[i], &self.req, start)
                    .await
                {
                    Ok(stream) => {
                        // The next failure starts with the endpoint after this one.
                        self.stream = Some(stream);
                        return Ok(self.ended.take().map(|reason| WatchItem::Resumed {
                            endpoint: endpoints[i].clone(),
                            revision: start.unwrap_or_default(),
                            reason,
                        }));
                    }
                    Err(Attempt::Done(Err(e))) => return Err(e.into()),
                    Err(Attempt::Unreachable(m) | Attempt::Refused(m) | Attempt::Unknown(m)) => {
                        failures.push(format!("{}: {m}", endpoints[i]))
                    }
                    Err(Attempt::Done(Ok(()))) => unreachable!("open_stream never says done"),
                }
            }
            if !self.compacted.is_empty() {
                let detail = self
                    .compacted
                    .iter()
                    .map(|(i, m)| format!("{}: {m}", endpoints[*i]))
                    .chain(failures.iter().map(|f| format!("{f} (not reachable)")))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(WatchError::Compacted {
                    revision: start.unwrap_or_default(),
                    detail,
                });
            }
            if self.ended.is_none() && started.elapsed() >= self.client.timeout {
                return Err(ClientError::Unavailable(format!(
                    "cannot open a watch stream: 0 of {n} replicas accepted it; {}",
                    failures.last().map_or("", String::as_str)
                ))
                .into());
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round.min(10)))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_drops_what_a_resumed_stream_repeats() {
        let mut c = Cursor::new(5);
        assert_eq!(c.resume_revision(), 5);
        assert!(!c.accept(4, b"a"), "before the start");
        assert!(c.accept(5, b"a"));
        // A transaction at 6: a and b, then the stream breaks before c.
        assert!(c.accept(6, b"a"));
        assert!(c.accept(6, b"b"));
        assert_eq!(c.resume_revision(), 6, "6 may be incomplete");
        // The new stream repeats 6 from its start.
        assert!(!c.accept(5, b"a"));
        assert!(!c.accept(6, b"a"));
        assert!(!c.accept(6, b"b"));
        assert!(c.accept(6, b"c"));
        assert!(c.accept(8, b"a"));
        assert_eq!(c.resume_revision(), 8);
        // Progress completes a revision: resume after it.
        c.complete_through(9);
        assert_eq!(c.resume_revision(), 10);
        assert!(!c.accept(9, b"z"));
        c.complete_through(3);
        assert_eq!(c.resume_revision(), 10, "never goes back");
    }

    #[test]
    fn a_lagged_end_completes_the_revisions_before_its_resume_point() {
        let mut c = Cursor::new(1);
        assert!(c.accept(1, b"k"));
        assert!(c.accept(2, b"k"));
        c.complete_through(2);
        assert_eq!(c.resume_revision(), 3);
    }
}
