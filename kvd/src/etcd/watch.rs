//! etcd's Watch service: one bidirectional stream carries many watchers. Each watcher is a
//! task that reads the replica's stored change history from its start revision, then the live
//! events the consensus loop publishes (the HTTP watch's rules: it subscribes before it reads,
//! so nothing falls between, and sends each revision once, in order). A watcher that falls
//! behind the live ring goes back to the history from where it was (nothing lost, nothing
//! repeated); one whose start revision left the history is canceled with `compact_revision`,
//! as etcd does. Answers share one bounded queue per stream: a client that does not read
//! stalls its own watchers only.

use super::auth::Credentials;
use super::error::{self, invalid};
use super::kv::range_of;
use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use super::{to_i64, EtcdState};
use crate::api::kv::position;
use crate::auth::Call;
use crate::command::KeyRange;
use crate::state_machine::history::{self, HistoryRead};
use crate::state_machine::{Event, EventKind};
use crate::watch::{Published, Subscription};
use axum::http::HeaderMap;
use futures::{Stream, StreamExt};
use omnikv_common::kv::DEFAULT_PROGRESS_MS;
use pb::watch_create_request::FilterType;
use pb::watch_request::RequestUnion;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

/// Watchers one stream may hold at once (each also takes one of the replica's
/// `--max-watchers` slots).
pub const MAX_WATCHERS_PER_STREAM: usize = 256;
/// Answers queued for a stream's client.
const OUT_QUEUE: usize = 64;
/// Events read from the history per answer (an answer ends at a revision boundary).
const HISTORY_CHUNK: usize = 1000;
/// etcd's watch id for answers that belong to no watcher (progress, refused creates).
const NO_WATCH: i64 = -1;
/// etcd's cancel reason for a create its caller may not make (its PERMISSION_DENIED status
/// as Go prints it).
const DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

pub struct WatchService(pub EtcdState);

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let control = Control {
            state: self.0.clone(),
            credentials: Credentials::of(&request),
            out: tx,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(control.run(request.into_inner()));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|answer| (answer, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A running watcher: its task, and the revision through which it has sent every change.
struct Running {
    task: JoinHandle<()>,
    seen: Arc<AtomicU64>,
}

/// One stream's requests: creates, cancels and progress requests, in order.
struct Control {
    state: EtcdState,
    /// Who opened the stream; each create is checked (etcd's way: the stream itself is
    /// anyone's, a create the caller may not make is answered canceled).
    credentials: Credentials,
    out: Out,
    watchers: HashMap<i64, Running>,
    next_id: i64,
}

impl Control {
    async fn run(mut self, mut requests: Streaming<pb::WatchRequest>) {
        while let Some(Ok(request)) = requests.next().await {
            self.watchers.retain(|_, w| !w.task.is_finished());
            let answer = match request.request_union {
                Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
                Some(RequestUnion::CancelRequest(c)) => match self.watchers.remove(&c.watch_id) {
                    Some(w) => {
                        w.task.abort();
                        Some(pb::WatchResponse {
                            header: self.state.header(w.seen.load(Ordering::Relaxed)),
                            watch_id: c.watch_id,
                            canceled: true,
                            ..Default::default()
                        })
                    }
                    None => None,
                },
                Some(RequestUnion::ProgressRequest(_)) => Some(self.progress().await),
                None => None,
            };
            if let Some(answer) = answer {
                if self.out.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        }
        for w in self.watchers.values() {
            w.task.abort();
        }
    }

    /// The revision every watcher of the stream has sent all changes through (the store's,
    /// read linearizably, when there is none).
    async fn progress(&self) -> pb::WatchResponse {
        let revision = match self
            .watchers
            .values()
            .map(|w| w.seen.load(Ordering::Relaxed))
            .min()
        {
            Some(r) => r,
            None => position(&self.state.api, &HeaderMap::new(), true)
                .await
                .map_or(0, |p| p.revision),
        };
        pb::WatchResponse {
            header: self.state.header(revision),
            watch_id: NO_WATCH,
            ..Default::default()
        }
    }

    /// Starts a watcher; the answer says it was created, or why not (etcd's `created` and
    /// `canceled` together).
    async fn create(&mut self, c: pb::WatchCreateRequest) -> Option<pb::WatchResponse> {
        let refused = |reason: String| {
            Some(pb::WatchResponse {
                header: self.state.header(0),
                watch_id: NO_WATCH,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            })
        };
        let filter = match range_of(&c.key, &c.range_end) {
            Ok(f) => f,
            Err(e) => return refused(e.message().to_string()),
        };
        let allowed = self.state.caller_of(&self.credentials);
        if allowed
            .and_then(|caller| caller.may_touch(Call::Watch, &filter))
            .is_err()
        {
            return Some(pb::WatchResponse {
                header: self.state.header(0),
                watch_id: c.watch_id,
                created: true,
                canceled: true,
                cancel_reason: DENIED.into(),
                ..Default::default()
            });
        }
        if c.start_revision < 0 {
            return refused(
                invalid("start_revision must not be negative")
                    .message()
                    .into(),
            );
        }
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return refused(format!(
                "etcdserver: too many watchers on this stream (at most {MAX_WATCHERS_PER_STREAM})"
            ));
        }
        let id = match c.watch_id {
            0 => {
                while self.watchers.contains_key(&self.next_id) {
                    self.next_id += 1;
                }
                self.next_id
            }
            id if self.watchers.contains_key(&id) || id < 0 => {
                return refused("etcdserver: duplicate watch ID provided on the WatchStream".into())
            }
            id => id,
        };
        // Subscribe before the start is read, so no applied batch falls between the two.
        let sub = match self.state.api.watch_hub.subscribe() {
            Ok(sub) => sub,
            Err(e) => {
                return refused(format!(
                    "etcdserver: too many watchers on this replica (at most {})",
                    e.0
                ))
            }
        };
        // Without a start revision: after every write acknowledged before the request.
        let now = match position(&self.state.api, &HeaderMap::new(), c.start_revision == 0).await {
            Ok(now) => now,
            Err(e) => return refused(error::status(e.into_api()).message().to_string()),
        };
        let next = match c.start_revision {
            0 => now.revision + 1,
            r => r as u64,
        };
        let seen = Arc::new(AtomicU64::new(next - 1));
        // The created answer goes out before the watcher's first events.
        let created = pb::WatchResponse {
            header: self.state.header(now.revision),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if self.out.send(Ok(created)).await.is_err() {
            return None;
        }
        let watcher = Watcher {
            state: self.state.clone(),
            out: self.out.clone(),
            id,
            sub,
            filter,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress: c
                .progress_notify
                .then(|| Duration::from_millis(DEFAULT_PROGRESS_MS)),
            next,
            seen: seen.clone(),
        };
        self.watchers.insert(
            id,
            Running {
                task: tokio::spawn(watcher.run()),
                seen,
            },
        );
        self.next_id = self.next_id.max(id + 1);
        None
    }
}

/// How a watcher's phase ended.
enum Next {
    Live,
    History,
    Stop,
}

struct Watcher {
    state: EtcdState,
    out: Out,
    id: i64,
    sub: Subscription,
    filter: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// How often to say where the watcher stands when it has nothing to send.
    progress: Option<Duration>,
    /// The next revision to send.
    next: u64,
    /// Every change through this revision has been sent.
    seen: Arc<AtomicU64>,
}

impl Watcher {
    async fn run(mut self) {
        let mut phase = Next::History;
        loop {
            phase = match phase {
                Next::History => self.history().await,
                Next::Live => self.live().await,
                Next::Stop => return,
            };
        }
    }

    async fn history(&mut self) -> Next {
        loop {
            let (db, from) = (self.state.api.db.clone(), self.next);
            let read =
                tokio::task::spawn_blocking(move || history::read(&db, from, HISTORY_CHUNK)).await;
            match read {
                Ok(Ok(HistoryRead::Compacted { first })) => return self.compacted(first).await,
                Ok(Ok(HistoryRead::Events { events, through })) => {
                    if !self.take(&events, through).await {
                        return Next::Stop;
                    }
                    if events.len() < HISTORY_CHUNK {
                        return Next::Live;
                    }
                }
                Ok(Err(e)) => {
                    return self
                        .cancel(format!("reading the change history: {e}"))
                        .await
                }
                Err(e) => {
                    return self
                        .cancel(format!("reading the change history: {e}"))
                        .await
                }
            }
        }
    }

    async fn live(&mut self) -> Next {
        loop {
            let tick = async {
                match self.progress {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                published = self.sub.rx.recv() => match published {
                    Ok(Published::Events { events, revision }) => {
                        if !self.take(&events, revision).await {
                            return Next::Stop;
                        }
                    }
                    Ok(Published::Reset { first }) if self.next < first => {
                        return self.compacted(first).await;
                    }
                    Ok(Published::Reset { .. }) => {}
                    // Fell behind the live ring: the history has what it missed.
                    Err(RecvError::Lagged(_)) => return Next::History,
                    Err(RecvError::Closed) => return Next::Stop,
                },
                _ = tick => {
                    let seen = self.seen.load(Ordering::Relaxed);
                    if !self.send(Vec::new(), seen).await {
                        return Next::Stop;
                    }
                }
            }
        }
    }

    /// Sends the wanted events of `events` (whole revisions, in order) not sent yet; then
    /// every change through `through` counts as sent. False once the client is gone.
    async fn take(&mut self, events: &[Event], through: u64) -> bool {
        let wanted: Vec<mvccpb::Event> = events
            .iter()
            .filter(|e| e.revision >= self.next && self.filter.contains(&e.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .map(|e| self.event(e))
            .collect();
        if through >= self.next {
            self.next = through + 1;
            self.seen.store(through, Ordering::Relaxed);
        }
        wanted.is_empty() || self.send(wanted, through).await
    }

    fn event(&self, e: &Event) -> mvccpb::Event {
        let prev_kv = e
            .prev_value
            .as_ref()
            .filter(|_| self.prev_kv)
            .map(|v| mvccpb::KeyValue {
                key: e.key.clone(),
                value: v.clone(),
                ..Default::default()
            });
        let (r#type, kv) = match e.kind {
            EventKind::Put => (
                mvccpb::event::EventType::Put,
                mvccpb::KeyValue {
                    key: e.key.clone(),
                    create_revision: to_i64(e.create_revision),
                    mod_revision: to_i64(e.revision),
                    version: to_i64(e.version),
                    value: e.value.clone(),
                    lease: 0,
                },
            ),
            EventKind::Delete => (
                mvccpb::event::EventType::Delete,
                mvccpb::KeyValue {
                    key: e.key.clone(),
                    mod_revision: to_i64(e.revision),
                    ..Default::default()
                },
            ),
        };
        mvccpb::Event {
            r#type: r#type as i32,
            kv: Some(kv),
            prev_kv,
        }
    }

    async fn send(&self, events: Vec<mvccpb::Event>, revision: u64) -> bool {
        let answer = pb::WatchResponse {
            header: self.state.header(revision),
            watch_id: self.id,
            events,
            ..Default::default()
        };
        self.out.send(Ok(answer)).await.is_ok()
    }

    /// etcd's answer to a watcher whose next revision left the history: canceled, with the
    /// oldest revision there is to watch from.
    async fn compacted(&self, first: u64) -> Next {
        let answer = pb::WatchResponse {
            header: self.state.header(self.seen.load(Ordering::Relaxed)),
            watch_id: self.id,
            canceled: true,
            compact_revision: to_i64(first),
            cancel_reason: error::COMPACTED.into(),
            ..Default::default()
        };
        let _ = self.out.send(Ok(answer)).await;
        Next::Stop
    }

    async fn cancel(&self, reason: String) -> Next {
        tracing::warn!(watch_id = self.id, %reason, "etcd watcher canceled");
        let answer = pb::WatchResponse {
            header: self.state.header(self.seen.load(Ordering::Relaxed)),
            watch_id: self.id,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let _ = self.out.send(Ok(answer)).await;
        Next::Stop
    }
}
