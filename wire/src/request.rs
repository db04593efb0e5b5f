//! Pure parsing of the client API's request headers (kvd/src/api.rs calls these): unsigned
//! integer headers, the caller's timeout budget, and the write id of a PUT/DELETE. Kept free
//! of HTTP types so the fuzz targets can drive them with arbitrary bytes.

use crate::state::pair_hash;
use std::time::Duration;

/// What a header may hold to be read as text: visible ASCII and tab (what
/// `http::HeaderValue::to_str` accepts).
fn is_visible_ascii(b: u8) -> bool {
    (32..127).contains(&b) || b == b'\t'
}

/// An unsigned integer header: absent is `Ok(None)`; present, it must be visible ASCII
/// holding a `u64` (surrounding whitespace ignored), else `Err(())`.
#[allow(clippy::result_unit_err)]
pub fn parse_u64_header(value: Option<&[u8]>) -> Result<Option<u64>, ()> {
    let Some(v) = value else { return Ok(None) };
    if !v.iter().all(|&b| is_visible_ascii(b)) {
        return Err(());
    }
    let s = std::str::from_utf8(v).map_err(|_| ())?;
    s.trim().parse().map(Some).map_err(|_| ())
}

/// How long kvd may take over a request whose caller said it waits `timeout_ms`: a little
/// less (so the caller hears the verdict), at least 50 ms, at most 12 x `default`;
/// `default` when the caller said nothing.
pub fn time_budget(timeout_ms: Option<u64>, default: Duration) -> Duration {
    match timeout_ms {
        Some(ms) => Duration::from_millis(ms.saturating_sub(ms / 10).max(50)).min(default * 12),
        None => default,
    }
}

/// Why a write id could not be formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteIdError {
    /// Client id and seq must come together and be non-zero.
    Incomplete,
}

/// The (client id, seq) deduplicating a write: from the client id and seq headers, or else
/// from an Idempotency-Key (hashed into a client id with seq 1); `None` without either.
/// Never returns a zero client id or seq.
pub fn write_id(
    client: Option<u64>,
    seq: Option<u64>,
    idempotency_key: Option<&[u8]>,
) -> Result<Option<(u64, u64)>, WriteIdError> {
    match (client, seq) {
        (Some(c), Some(s)) if c != 0 && s != 0 => return Ok(Some((c, s))),
        (None, None) => {}
        _ => return Err(WriteIdError::Incomplete),
    }
    if let Some(k) = idempotency_key {
        return Ok(Some((pair_hash(b"idempotency-key", k) | 1, 1)));
    }
    Ok(None)
}

/// The id of a lease granted without one, from the grant's write id: a retry of the grant (on
/// any replica) names the same lease. In 1..2^63, like etcd's ids.
pub fn lease_id_for(client: u64, seq: u64) -> u64 {
    let h = pair_hash(&client.to_be_bytes(), &seq.to_be_bytes());
    (h >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_like_the_api_always_did() {
        assert_eq!(parse_u64_header(None), Ok(None));
        assert_eq!(parse_u64_header(Some(b" 42\t")), Ok(Some(42)));
        assert_eq!(parse_u64_header(Some(b"-1")), Err(()));
        assert_eq!(parse_u64_header(Some(b"4\n2")), Err(()));
        assert_eq!(parse_u64_header(Some(b"\xff")), Err(()));
        assert_eq!(parse_u64_header(Some(b"18446744073709551616")), Err(()));
    }

    #[test]
    fn budgets_are_bounded() {
        let d = Duration::from_secs(5);
        assert_eq!(time_budget(None, d), d);
        assert_eq!(time_budget(Some(0), d), Duration::from_millis(50));
        assert_eq!(time_budget(Some(1000), d), Duration::from_millis(900));
        assert_eq!(time_budget(Some(u64::MAX), d), d * 12);
    }

    #[test]
    fn write_ids_are_never_zero() {
        assert_eq!(write_id(Some(3), Some(4), None), Ok(Some((3, 4))));
        assert_eq!(
            write_id(Some(0), Some(4), None),
            Err(WriteIdError::Incomplete)
        );
        assert_eq!(write_id(None, Some(1), None), Err(WriteIdError::Incomplete));
        assert_eq!(write_id(None, None, None), Ok(None));
        let (c, s) = write_id(None, None, Some(b"k")).unwrap().unwrap();
        assert!(c != 0 && s == 1);
    }
}
