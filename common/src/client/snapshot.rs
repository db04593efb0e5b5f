//! `GET /v1/snapshot`: opening a snapshot stream on the first endpoint that serves one. The
//! client's timeout bounds the opening (the linearizable read kvd does first, and the answer's
//! head), never the body, which takes as long as the state is big.

use super::{classify_error, request_failed, short, Attempt, Client, ClientError, Consistency};
use crate::api::HEADER_TIMEOUT_MS;
use crate::snapshot::{HEADER_SNAPSHOT_KEYS, HEADER_SNAPSHOT_REVISION};

/// An open snapshot body.
pub struct SnapshotStream {
    resp: reqwest::Response,
    /// The endpoint serving it.
    pub endpoint: String,
    /// The snapshot's revision and key count, from the answer's headers.
    pub revision: Option<u64>,
    pub keys: Option<u64>,
}

impl SnapshotStream {
    /// The next piece of the body; `None` at its end. An error is a broken stream.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        self.resp.chunk().await.map_err(|e| short(&e))
    }
}

impl Client {
    /// Opens a snapshot on the first endpoint that serves one: `Linearizable` holds every
    /// write acknowledged before the call; `Local` is the replica's state as it is.
    pub async fn snapshot(&self, consistency: Consistency) -> Result<SnapshotStream, ClientError> {
        self.each_endpoint(None, |endpoint, remaining| {
            let budget_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            let req = self
                .http
                .get(format!(
                    "{endpoint}/v1/snapshot?consistency={}",
                    consistency.as_str()
                ))
                .header(HEADER_TIMEOUT_MS, budget_ms);
            async move {
                let resp = match tokio::time::timeout(remaining, req.send()).await {
                    Err(_) => return Attempt::Unknown("timed out".into()),
                    Ok(Err(e)) => return request_failed(e),
                    Ok(Ok(resp)) => resp,
                };
                if !resp.status().is_success() {
                    return classify_error(resp).await;
                }
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                };
                let (revision, keys) = (
                    header(HEADER_SNAPSHOT_REVISION),
                    header(HEADER_SNAPSHOT_KEYS),
                );
                Attempt::Done(Ok(SnapshotStream {
                    resp,
                    endpoint,
                    revision,
                    keys,
                }))
            }
        })
        .await
    }
}
