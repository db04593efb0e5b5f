//! `GET /v1/snapshot[?consistency=local]`: this replica's replicated state as a snapshot file
//! (`omnikv_common::snapshot`), streamed as a chunked body from one RocksDB snapshot taken on
//! a `snapshot-send` thread; writes go on meanwhile. By default the snapshot is taken after a
//! linearizable read, so it holds every write acknowledged before the request; `local` takes
//! this replica's state as it is (no quorum needed: a backup of a minority).
//!
//! At most `MAX_STREAMS` snapshots stream at once per replica; a reader that goes away, or
//! takes nothing for `READER_STALL`, stops its stream and releases the RocksDB snapshot.

use super::gate::Caller;
use super::kv::position;
use super::query::QueryParams;
use super::{err, ApiState, Error};
use crate::auth::Call;
use crate::backup;
use crate::checkpoint::{StateView, ViewError};
use crate::membership::{ClusterMeta, Lifecycle};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use omnikv_common::api::ErrorCode;
use omnikv_common::snapshot::{Header, HEADER_SNAPSHOT_KEYS, HEADER_SNAPSHOT_REVISION};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Snapshot streams served at once by this process.
pub const MAX_STREAMS: usize = 2;
/// A reader that takes nothing for this long is dropped (its stream stops, its snapshot and
/// slot are released).
pub const READER_STALL: std::time::Duration = std::time::Duration::from_secs(60);
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Holds one of the `MAX_STREAMS` slots until dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) async fn snapshot(
    State(state): State<ApiState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.may(Call::Snapshot)?;
    let linearizable = QueryParams::parse(uri.query(), &["consistency"])?.linearizable()?;
    let slot = Slot::take().ok_or_else(|| {
        err(
            ErrorCode::Unavailable,
            format!("{MAX_STREAMS} snapshots are streaming from this replica already"),
        )
    })?;
    // Refused unless this replica serves the state (and, linearizable, only once it has
    // applied every write acknowledged before now).
    position(&state, &headers, linearizable).await?;
    let (head_tx, head_rx) = oneshot::channel::<Result<Header, Error>>();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let db = state.db.clone();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("snapshot-send".into())
        .spawn(move || {
            let _slot = slot;
            let opened = ClusterMeta::load(&db)
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))
                .and_then(|cluster| match cluster {
                    Some(c) if matches!(c.lifecycle, Lifecycle::Serving | Lifecycle::Leaving) => {
                        StateView::open(&db)
                            .map(|view| (backup::header(&view, c.cluster_id), view))
                            .map_err(|e| match e {
                                ViewError::Installing => err(ErrorCode::Unavailable, e.to_string()),
                                ViewError::Store(e) => err(ErrorCode::Internal, e.to_string()),
                            })
                    }
                    _ => Err(err(
                        ErrorCode::Unavailable,
                        "this replica holds no state to snapshot (joining or removed)",
                    )),
                });
            let (header, view) = match opened {
                Ok(v) => v,
                Err(e) => {
                    let _ = head_tx.send(Err(e));
                    return;
                }
            };
            if head_tx.send(Ok(header.clone())).is_err() {
                return;
            }
            let started = Instant::now();
            // The timer is made inside `block_on`, in the runtime's context.
            let send = |chunk| {
                rt.block_on(async { tokio::time::timeout(READER_STALL, tx.send(chunk)).await })
            };
            let result = backup::write(&view, &header, |chunk| {
                matches!(send(Ok(Bytes::from(chunk))), Ok(Ok(())))
            });
            match result {
                Ok(trailer) => tracing::info!(
                    revision = header.revision,
                    keys = header.keys,
                    items = trailer.counts.iter().sum::<u64>(),
                    sha256 = %trailer.sha256_hex(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot streamed"
                ),
                Err(backup::BackupError::Gone) => {
                    tracing::warn!("snapshot stream stopped: the reader went away")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot stream failed");
                    // Ends the body with an error: the client sees a broken stream, never a
                    // finished file.
                    let _ = send(Err(std::io::Error::other(e.to_string())));
                }
            }
        })
        .map_err(|e| {
            err(
                ErrorCode::Unavailable,
                format!("cannot start a stream: {e}"),
            )
        })?;
    let header = head_rx
        .await
        .map_err(|_| err(ErrorCode::Internal, "snapshot thread ended early"))??;
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_SNAPSHOT_REVISION, HeaderValue::from(header.revision));
    h.insert(HEADER_SNAPSHOT_KEYS, HeaderValue::from(header.keys));
    Ok(resp)
}
