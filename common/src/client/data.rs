//! The data model beyond one key's value: a read with the key's revisions, range pages,
//! range deletes and transactions, through the failover and dedup of [`Client`].

use super::{classify_error, send, Attempt, Body, Client, ClientError, Consistency};
use crate::api::HEADER_INDEX;
use crate::keys::encode_key;
use crate::kv::{
    DeleteRangeResult, RangeResult, TxnRequest, TxnResult, HEADER_CREATE_REVISION,
    HEADER_MOD_REVISION, HEADER_REVISION, HEADER_VERSION,
};

/// Which keys a range, a range delete or a watch names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySet {
    /// Exactly this key.
    Key(Vec<u8>),
    /// Every key starting with these bytes (empty: every key).
    Prefix(Vec<u8>),
    /// Keys in `[start, end)`; `end: None` runs to the end of the key space.
    Span {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeySet {
    /// The query parameters of a range request (`prefix=P` or `start=A[&end=B]`),
    /// percent-encoded. One key is the span `[key, key\0)`: ranges take no `key=`.
    pub fn range_query(&self) -> String {
        match self {
            KeySet::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                format!("start={}&end={}", encode_key(k), encode_key(&end))
            }
            other => other.watch_query(),
        }
    }

    /// The query parameters of a watch (`key=K`, `prefix=P` or `start=A[&end=B]`).
    pub fn watch_query(&self) -> String {
        match self {
            KeySet::Key(k) => format!("key={}", encode_key(k)),
            KeySet::Prefix(p) => format!("prefix={}", encode_key(p)),
            KeySet::Span { start, end: None } => format!("start={}", encode_key(start)),
            KeySet::Span {
                start,
                end: Some(end),
            } => format!("start={}&end={}", encode_key(start), encode_key(end)),
        }
    }
}

/// Options of one range page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOpts {
    /// At most this many keys in the page (kvd's default and maximum: 10000).
    pub limit: Option<u64>,
    /// Keys and counters without values.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
}

/// A single key's value with the revision headers of its read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRead {
    pub value: Vec<u8>,
    /// The applied log index the value was read at.
    pub index: u64,
    /// The store revision the value was read at.
    pub revision: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// A numeric header, 0 when absent or not a number (a kvd older than the header).
fn header_u64(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Client {
    /// Reads `key` with its revisions; a missing key is `Err(NotFound)`.
    pub async fn get_kv(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<ValueRead, ClientError> {
        let path = format!(
            "/v1/kv/{}?consistency={}",
            encode_key(key),
            consistency.as_str()
        );
        self.each_endpoint(None, |endpoint, remaining| {
            let req = self.http.get(format!("{endpoint}{path}"));
            async move {
                let resp = match send(req, remaining).await {
                    Ok(resp) if resp.status().is_success() => resp,
                    Ok(resp) => return classify_error(resp).await,
                    Err(a) => return a,
                };
                let [index, revision, create_revision, mod_revision, version] = [
                    HEADER_INDEX,
                    HEADER_REVISION,
                    HEADER_CREATE_REVISION,
                    HEADER_MOD_REVISION,
                    HEADER_VERSION,
                ]
                .map(|h| header_u64(&resp, h));
                match resp.bytes().await {
                    Ok(b) => Attempt::Done(Ok(ValueRead {
                        value: b.to_vec(),
                        index,
                        revision,
                        create_revision,
                        mod_revision,
                        version,
                    })),
                    Err(e) => Attempt::Unknown(format!("bad answer: {e}")),
                }
            }
        })
        .await
    }

    /// One page of the range `keys`; pass the previous page's `continue` as `after` to read
    /// the next. Each page is read at its own revision.
    pub async fn range_page(
        &self,
        keys: &KeySet,
        opts: &RangeOpts,
        after: Option<&str>,
        consistency: Consistency,
    ) -> Result<RangeResult, ClientError> {
        let mut path = format!(
            "/v1/kv?{}&consistency={}",
            keys.range_query(),
            consistency.as_str()
        );
        if let Some(limit) = opts.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if opts.keys_only {
            path.push_str("&keys_only=true");
        }
        if opts.count_only {
            path.push_str("&count_only=true");
        }
        if let Some(token) = after {
            path.push_str(&format!("&continue={}", encode_key(token.as_bytes())));
        }
        self.get_json(&path).await
    }

    /// Deletes every key of `keys` as one write (one revision); with `prev`, the answer
    /// carries the deleted keys.
    pub async fn delete_range(
        &self,
        keys: &KeySet,
        prev: bool,
    ) -> Result<DeleteRangeResult, ClientError> {
        let mut path = format!("/v1/kv?{}", keys.range_query());
        if prev {
            path.push_str("&prev=true");
        }
        self.send_write(reqwest::Method::DELETE, &path, None).await
    }

    /// Runs a transaction. Compares that failed are an answer (`succeeded: false`), not an
    /// error. A retry carries the same dedup identity, so the transaction applies once.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResult, ClientError> {
        let body = serde_json::to_vec(txn)
            .map_err(|e| ClientError::Usage(format!("cannot encode the transaction: {e}")))?;
        self.send_write(
            reqwest::Method::POST,
            "/v1/txn",
            Some(Body::Json(body.into())),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_as_query_parameters() {
        assert_eq!(
            KeySet::Key(b"a/b".to_vec()).range_query(),
            "start=a%2Fb&end=a%2Fb%00"
        );
        assert_eq!(KeySet::Key(b"a b".to_vec()).watch_query(), "key=a%20b");
        assert_eq!(KeySet::Prefix(Vec::new()).range_query(), "prefix=");
        assert_eq!(
            KeySet::Prefix(b"cfg/+".to_vec()).watch_query(),
            "prefix=cfg%2F%2B"
        );
        assert_eq!(
            KeySet::Span {
                start: b"a".to_vec(),
                end: None
            }
            .range_query(),
            "start=a"
        );
        assert_eq!(
            KeySet::Span {
                start: b"a".to_vec(),
                end: Some(b"\xff".to_vec())
            }
            .watch_query(),
            "start=a&end=%FF"
        );
    }
}
