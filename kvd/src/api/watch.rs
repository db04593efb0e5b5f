//! `GET /v1/watch?key=K | prefix=P | start=A[&end=B] [&start_revision=N]`: a stream of
//! change events in revision order (NDJSON, or server-sent events when the client accepts
//! `text/event-stream`), first from this replica's stored history, then live from the loop.
//!
//! No gap, no duplicate, no reordering: the stream subscribes to live events before it
//! reads the history (one RocksDB snapshot per chunk), and takes from the live side only
//! revisions past those it already sent. Whole revisions travel together (a transaction's
//! events share one revision and one applied batch).

use super::convert::key_range_from_query;
use super::gate::Caller;
use super::kv::position;
use super::query::QueryParams;
use super::{err, ApiState, Error};
use crate::auth::Call;
use crate::command::KeyRange;
use crate::state_machine::history::{self, HistoryRead};
use crate::state_machine::{Event, EventKind};
use crate::storage::Db;
use crate::watch::{Published, Subscription};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use omnikv_common::api::ErrorCode;
use omnikv_common::kv::{Bytes64, WatchEvent, DEFAULT_PROGRESS_MS, MAX_PROGRESS_MS};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Events read from the history per chunk (a chunk ends at a revision boundary).
const HISTORY_CHUNK: usize = 1000;

pub(crate) async fn watch(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::Watch)?;
    let q = QueryParams::parse(
        uri.query(),
        &[
            "key",
            "prefix",
            "start",
            "end",
            "start_revision",
            "prev_value",
            "progress_ms",
            "consistency",
        ],
    )?;
    let filter = key_range_from_query(&q, true)?;
    caller.may_touch(Call::Watch, &filter)?;
    let prev = q.flag("prev_value")?;
    let progress_ms = q.u64("progress_ms")?.unwrap_or(DEFAULT_PROGRESS_MS);
    if !(100..=MAX_PROGRESS_MS).contains(&progress_ms) {
        return Err(err(
            ErrorCode::InvalidRequest,
            format!("progress_ms must be in 100..={MAX_PROGRESS_MS}"),
        ));
    }
    let start_revision = q.u64("start_revision")?;
    if start_revision == Some(0) {
        return Err(err(
            ErrorCode::InvalidRequest,
            "start_revision must be at least 1 (leave it out to watch from now)",
        ));
    }
    // Subscribe before anything is read, so no applied batch falls between the two.
    let sub = state.watch_hub.subscribe().map_err(|e| {
        err(
            ErrorCode::Unavailable,
            format!("too many watchers on this replica (at most {})", e.0),
        )
    })?;
    // The replica must be serving; without a start revision, the stream starts after every
    // write acknowledged before this request (a linearizable read of the revision).
    let linearizable = start_revision.is_none() && q.linearizable()?;
    let now = position(&state, &headers, linearizable).await?;
    let next = start_revision.unwrap_or(now.revision + 1);
    let sse = headers
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let stream = WatchStream {
        db: state.db.clone(),
        sub,
        filter,
        prev,
        next,
        seen: next - 1,
        phase: Phase::History,
        opening: true,
        progress_every: Duration::from_millis(progress_ms),
        last_sent: tokio::time::Instant::now(),
        sse,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), s))
    }));
    let mut resp = Response::new(body);
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(resp)
}

enum Phase {
    History,
    Live,
    Done,
}

struct WatchStream {
    db: Db,
    sub: Subscription,
    filter: KeyRange,
    prev: bool,
    /// The next revision to send.
    next: u64,
    /// Every change up to this revision has been sent (what progress events say).
    seen: u64,
    phase: Phase,
    /// The first line is still to come: a progress event naming the revision the stream
    /// starts after.
    opening: bool,
    progress_every: Duration,
    last_sent: tokio::time::Instant,
    sse: bool,
}

impl WatchStream {
    /// The next piece of the body; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if std::mem::take(&mut self.opening) {
            return Some(Bytes::from(self.line(&WatchEvent::Progress {
                revision: self.seen,
            })));
        }
        loop {
            let lines = match self.phase {
                Phase::Done => return None,
                Phase::History => self.read_history().await,
                Phase::Live => self.read_live().await,
            };
            if !lines.is_empty() {
                self.last_sent = tokio::time::Instant::now();
                return Some(Bytes::from(lines));
            }
        }
    }

    async fn read_history(&mut self) -> Vec<u8> {
        let (db, from) = (self.db.clone(), self.next);
        let read =
            tokio::task::spawn_blocking(move || history::read(&db, from, HISTORY_CHUNK)).await;
        match read {
            Ok(Ok(HistoryRead::Compacted { first })) => self.end(WatchEvent::Compacted {
                oldest_revision: first,
                message: format!(
                    "revision {} is older than this replica's history, which starts at {first}",
                    self.next
                ),
            }),
            Ok(Ok(HistoryRead::Events { events, through })) => {
                if events.len() < HISTORY_CHUNK {
                    self.phase = Phase::Live;
                }
                self.take(&events, through)
            }
            Ok(Err(e)) => self.fail(format!("reading the change history: {e}")),
            Err(e) => self.fail(format!("reading the change history: {e}")),
        }
    }

    async fn read_live(&mut self) -> Vec<u8> {
        let wake = self.last_sent + self.progress_every;
        tokio::select! {
            published = self.sub.rx.recv() => match published {
                Ok(Published::Events { events, revision }) => self.take(&events, revision),
                Ok(Published::Reset { first, .. }) if self.next < first => {
                    self.end(WatchEvent::Compacted {
                        oldest_revision: first,
                        message: format!(
                            "this replica installed a checkpoint at revision {}: its history \
                             now starts at {first}, after revision {} this stream needs",
                            first - 1,
                            self.next
                        ),
                    })
                }
                Ok(Published::Reset { .. }) => Vec::new(),
                Err(RecvError::Lagged(_)) => self.end(WatchEvent::Lagged {
                    resume_revision: self.next,
                    message: "the watcher fell too far behind the changes; resume from \
                              resume_revision"
                        .into(),
                }),
                Err(RecvError::Closed) => {
                    self.phase = Phase::Done;
                    Vec::new()
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                self.line(&WatchEvent::Progress { revision: self.seen })
            }
        }
    }

    /// The lines for `events` (a whole number of revisions, in order) that this stream has
    /// not sent yet and wants; afterwards everything through `through` counts as sent.
    fn take(&mut self, events: &[Event], through: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            if e.revision < self.next || !self.filter.contains(&e.key) {
                continue;
            }
            out.extend(self.line(&self.event(e)));
        }
        if through >= self.next {
            self.next = through + 1;
            self.seen = through;
        }
        out
    }

    fn event(&self, e: &Event) -> WatchEvent {
        let prev_value = e
            .prev_value
            .as_ref()
            .filter(|_| self.prev)
            .map(|v| Bytes64(v.clone()));
        match e.kind {
            EventKind::Put => WatchEvent::Put {
                key: Bytes64(e.key.clone()),
                value: Bytes64(e.value.clone()),
                revision: e.revision,
                create_revision: e.create_revision,
                version: e.version,
                prev_value,
            },
            EventKind::Delete => WatchEvent::Delete {
                key: Bytes64(e.key.clone()),
                revision: e.revision,
                prev_value,
            },
        }
    }

    fn line(&self, event: &WatchEvent) -> Vec<u8> {
        let json = serde_json::to_vec(event).expect("events serialize");
        let mut out = Vec::with_capacity(json.len() + 8);
        if self.sse {
            out.extend_from_slice(b"data: ");
            out.extend(json);
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend(json);
            out.push(b'\n');
        }
        out
    }

    /// The last line of the stream.
    fn end(&mut self, event: WatchEvent) -> Vec<u8> {
        self.phase = Phase::Done;
        self.line(&event)
    }

    /// A storage failure ends the stream (the client resumes from the last revision it saw).
    fn fail(&mut self, message: String) -> Vec<u8> {
        tracing::warn!(%message, "watch stream ended");
        self.phase = Phase::Done;
        Vec::new()
    }
}
