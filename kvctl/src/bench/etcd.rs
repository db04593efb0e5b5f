//! `kvctl bench --target etcd`: a minimal etcd v3 client over the JSON gRPC-gateway on the
//! client port (`POST /v3/kv/put`, `/v3/kv/range`, base64 keys and values), so that etcd is
//! driven by the same pools, loop and histogram as omnikv (see bench/ and BENCHMARKS.md).

use omnikv_common::{ClientError, Consistency, ErrorCode};
use std::time::{Duration, Instant};

/// Standard base64 (RFC 4648, padded), as etcd's JSON gateway expects for bytes fields.
pub fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal etcd v3 client over the JSON gRPC-gateway: one HTTP/1.1 connection pool (like
/// omnikv's `Client`), endpoints tried in order when one is unreachable. etcd members
/// forward writes to their leader themselves, as kvd followers do.
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    timeout: Duration,
}

impl EtcdClient {
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Usage("no endpoints given".into()));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim().trim_end_matches('/');
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        // The same pool settings as omnikv_common::Client.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(1000).min(timeout))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build HTTP client: {e}")))?;
        Ok(EtcdClient {
            http,
            endpoints,
            timeout,
        })
    }

    /// `Put`; answered by etcd once committed and applied.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value));
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// `Range` of one key: linearizable (etcd's ReadIndex) or serializable (the member's own
    /// state). Returns whether the key exists.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<bool, ClientError> {
        let serializable = matches!(consistency, Consistency::Local);
        let body = format!(
            r#"{{"key":"{}","serializable":{serializable}}}"#,
            base64(key)
        );
        let answer = self.call("/v3/kv/range", body).await?;
        // `"kvs"` cannot occur inside a base64 string: it is present iff the key exists.
        Ok(answer.windows(5).any(|w| w == b"\"kvs\""))
    }

    async fn call(&self, path: &str, body: String) -> Result<bytes::Bytes, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no attempt in time");
        for endpoint in &self.endpoints {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let sent = self
                .http
                .post(format!("{endpoint}{path}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(remaining)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .bytes()
                        .await
                        .map_err(|e| ClientError::Indeterminate(format!("{endpoint}: {e}")));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(etcd_error(status, &text));
                }
                Err(e) if e.is_connect() => {
                    last = format!("{endpoint}: {e}");
                }
                Err(e) => return Err(ClientError::Indeterminate(format!("{endpoint}: {e}"))),
            }
        }
        Err(ClientError::Unavailable(format!(
            "no etcd endpoint reachable ({last})"
        )))
    }
}

/// Maps an etcd gateway error answer to our classes: "no leader" and other gRPC Unavailable
/// (HTTP 503) answers are unavailable, timeouts indeterminate, the rest rejected.
fn etcd_error(status: u16, body: &str) -> ClientError {
    let message = format!("etcd HTTP {status}: {}", body.trim());
    if body.contains("timed out") || status == 504 {
        ClientError::Indeterminate(message)
    } else if status == 503 {
        ClientError::Unavailable(message)
    } else {
        ClientError::Rejected {
            code: ErrorCode::Rejected,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        // RFC 4648 section 10 test vectors, plus every byte value.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert!(base64(&all).ends_with("+/w=="));
    }

    #[test]
    fn etcd_errors_are_classified() {
        let no_leader = r#"{"error":"etcdserver: no leader","code":14}"#;
        assert!(matches!(
            etcd_error(503, no_leader),
            ClientError::Unavailable(_)
        ));
        let timeout = r#"{"error":"etcdserver: request timed out","code":14}"#;
        assert!(matches!(
            etcd_error(503, timeout),
            ClientError::Indeterminate(_)
        ));
        assert!(matches!(
            etcd_error(400, "{}"),
            ClientError::Rejected { .. }
        ));
    }
}
