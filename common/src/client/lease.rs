//! Leases from the client's side: grant, keepalive, revoke, list, time-to-live, a put
//! attached to a lease, and [`Client::keep_lease`], the loop that keeps one alive and says
//! when it is lost. Every call that changes state is a write: it carries the client's dedup
//! identity and fails over between replicas like every other write.

use super::{Body, Client, ClientError, Consistency};
use crate::api::WriteResult;
use crate::keys::encode_key;
use crate::lease::{GrantRequest, LeaseGranted, LeaseList, LeaseRevoked, LeaseStatus};
use std::time::{Duration, Instant};

/// Largest lease id (ids are etcd's positive int64: 1..2^63).
pub const MAX_LEASE_ID: u64 = i64::MAX as u64;
/// Why [`Client::keep_lease`] stopped: the lease is gone, or may be.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLost {
    /// kvd said the lease does not exist (it expired or was revoked).
    #[error("lease {0:x} expired or was revoked")]
    NotFound(u64),
    /// No keepalive succeeded for a whole TTL: the lease may have expired.
    #[error("lease {id:x}: no keepalive confirmed for {ttl_s}s (its TTL): it may have expired ({last_error})")]
    Unconfirmed {
        id: u64,
        ttl_s: u64,
        last_error: String,
    },
    /// kvd refused the keepalive on its merits.
    #[error("lease {id:x}: keepalive refused: {error}")]
    Refused { id: u64, error: ClientError },
}

/// Parses a lease id as kvctl prints it: lowercase (or uppercase) hex, with or without `0x`.
pub fn parse_lease_id(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    match u64::from_str_radix(digits, 16) {
        Ok(id) if (1..=MAX_LEASE_ID).contains(&id) && !digits.starts_with('+') => Ok(id),
        _ => Err(format!(
            "invalid lease id {s:?} (expected hex from 1 to 7fffffffffffffff, e.g. 694d7a6f2bd1a504)"
        )),
    }
}

/// How long to wait before the next keepalive: a third of the TTL, at least 100 ms.
pub fn renew_interval(ttl_s: u64) -> Duration {
    Duration::from_millis(ttl_s.saturating_mul(1000) / 3).max(Duration::from_millis(100))
}

impl Client {
    /// Grants a lease of `ttl` seconds (with `id`, that id).
    pub async fn lease_grant(
        &self,
        ttl: u64,
        id: Option<u64>,
    ) -> Result<LeaseGranted, ClientError> {
        let body = serde_json::to_vec(&GrantRequest { ttl, id })
            .map_err(|e| ClientError::Usage(format!("cannot encode the grant: {e}")))?;
        self.send_write(
            reqwest::Method::POST,
            "/v1/lease",
            Some(Body::Json(body.into())),
        )
        .await
    }

    /// Renews lease `id` for its whole TTL; `Err(NotFound)` when it is gone.
    pub async fn lease_keepalive(&self, id: u64) -> Result<LeaseGranted, ClientError> {
        self.send_write(
            reqwest::Method::POST,
            &format!("/v1/lease/{id}/keepalive"),
            None,
        )
        .await
    }

    /// Ends lease `id` now, deleting its keys; `Err(NotFound)` when it is gone already.
    pub async fn lease_revoke(&self, id: u64) -> Result<LeaseRevoked, ClientError> {
        self.send_write(reqwest::Method::DELETE, &format!("/v1/lease/{id}"), None)
            .await
    }

    /// Every lease, sorted by id. Linearizable, the default, sends no parameter (a kvd that
    /// reads its applied state takes none).
    pub async fn lease_list(&self, consistency: Consistency) -> Result<LeaseList, ClientError> {
        match consistency {
            Consistency::Linearizable => self.get_json("/v1/lease").await,
            Consistency::Local => self.get_json("/v1/lease?consistency=local").await,
        }
    }

    /// Lease `id` with its time left (and its keys with `keys`); `Err(NotFound)` when gone.
    pub async fn lease_time_to_live(
        &self,
        id: u64,
        keys: bool,
    ) -> Result<LeaseStatus, ClientError> {
        let query = if keys { "?keys=true" } else { "" };
        self.get_json(&format!("/v1/lease/{id}{query}")).await
    }

    /// Writes `value` under `key` attached to lease `lease`; `Err(NotFound)` (nothing
    /// written) when the lease does not exist.
    pub async fn put_leased(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: u64,
    ) -> Result<WriteResult, ClientError> {
        let path = format!("/v1/kv/{}?lease={lease}", encode_key(key));
        self.send_write(reqwest::Method::PUT, &path, Some(Body::Raw(value.into())))
            .await
    }

    /// Keeps lease `id` alive until it is lost, renewing it every third of its TTL (sooner
    /// after a failed attempt), and calling `renewed` after each renewal. `ttl_s` is the TTL
    /// it was last granted or renewed with, by a request sent at `sent`. Returns only when
    /// the lease is gone or may be: kvd says it does not exist, or no renewal was confirmed
    /// for a whole TTL counted from when the last confirmed one was sent (so this side gives
    /// up no later than kvd may expire it).
    pub async fn keep_lease(
        &self,
        id: u64,
        ttl_s: u64,
        sent: Instant,
        mut renewed: impl FnMut(&LeaseGranted),
    ) -> LeaseLost {
        let mut ttl = Duration::from_secs(ttl_s);
        // The lease lives at least until here: the last confirmed renewal's send time + TTL.
        let mut alive_until = sent + ttl;
        let mut wait = renew_interval(ttl_s);
        let mut last_error = String::from("no attempt yet");
        loop {
            let now = Instant::now();
            if now >= alive_until {
                return LeaseLost::Unconfirmed {
                    id,
                    ttl_s: ttl.as_secs(),
                    last_error,
                };
            }
            tokio::time::sleep(wait.min(alive_until - now)).await;
            let sent = Instant::now();
            if sent >= alive_until {
                continue;
            }
            match tokio::time::timeout(alive_until - sent, self.lease_keepalive(id)).await {
                Ok(Ok(grant)) => {
                    ttl = Duration::from_secs(grant.ttl);
                    alive_until = sent + ttl;
                    wait = renew_interval(grant.ttl);
                    renewed(&grant);
                }
                Ok(Err(ClientError::NotFound)) => return LeaseLost::NotFound(id),
                Ok(Err(error @ (ClientError::Rejected { .. } | ClientError::Usage(_)))) => {
                    return LeaseLost::Refused { id, error }
                }
                Ok(Err(e)) => {
                    last_error = e.to_string();
                    // Try again soon, several times within what is left.
                    wait = (renew_interval(ttl.as_secs()) / 4).max(Duration::from_millis(100));
                }
                Err(_) => {
                    last_error = "the keepalive was not answered in time".into();
                    wait = Duration::ZERO;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_parse_as_hex() {
        assert_eq!(parse_lease_id("694d7a6f2bd1a504"), Ok(0x694d7a6f2bd1a504));
        assert_eq!(parse_lease_id("0x1f"), Ok(0x1f));
        assert_eq!(parse_lease_id("0X1F"), Ok(0x1f));
        assert_eq!(parse_lease_id("7fffffffffffffff"), Ok(MAX_LEASE_ID));
        for bad in ["", "0", "0x", "8000000000000000", "xyz", "+1", "-1", "1 2"] {
            assert!(parse_lease_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewals_every_third_of_the_ttl() {
        assert_eq!(renew_interval(60), Duration::from_secs(20));
        assert_eq!(renew_interval(2), Duration::from_millis(666));
        assert_eq!(renew_interval(0), Duration::from_millis(100));
    }
}
