//! Fuzz targets over omnikv's decoders of untrusted input. Each target takes arbitrary bytes,
//! must never panic, hang or allocate without bound, and checks properties on what it
//! accepts. They depend on `omnikv-wire` and `omnikv-common` only (no RocksDB).
//!
//! Three ways to run them:
//! - `cargo run -p omnikv-fuzz --release --bin fuzz -- all 60` (stable, no coverage: seeded
//!   mutation of the corpus; what `scripts/fuzz-ci.sh` runs when cargo-fuzz is missing);
//! - `cargo fuzz run --fuzz-dir fuzz/libfuzzer -s none TARGET fuzz/corpus/TARGET`
//!   (coverage-guided libFuzzer; `-s none` works on stable);
//! - `cargo test -p omnikv-fuzz`: replays `fuzz/corpus/*` and every saved crash in
//!   `fuzz/artifacts/*` as ordinary tests.

use omnikv_common::api::ReconfigureRequest;
use omnikv_common::keys::{decode_key, encode_key};
use omnikv_wire::frame::PeerFrame;
use omnikv_wire::request::{parse_u64_header, time_budget, write_id};
use std::time::Duration;

pub mod seeds;

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// The targets by name: the names of the corpus and artifact directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("peer_frame", peer_frame),
    ("key", key),
    ("headers", headers),
    ("reconfigure_body", reconfigure_body),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A peer frame body (what follows the length prefix) as kvd's transport decodes it.
/// Accepted frames re-encode to bytes that decode to the same encoding, never longer than
/// the input (the encoding is minimal; a longer one would mean the decoder invented data).
pub fn peer_frame(data: &[u8]) {
    let Ok(frame) = PeerFrame::decode(data) else {
        return;
    };
    let bytes = frame.encode();
    assert!(
        bytes.len() <= data.len(),
        "{} input bytes decoded into a frame whose encoding takes {}: {frame:?}",
        data.len(),
        bytes.len()
    );
    let again = PeerFrame::decode(&bytes).expect("a re-encoded frame decodes");
    assert_eq!(again.encode(), bytes, "re-encoding is not stable");
    let _ = frame.config_id();
}

/// RFC 3986 percent-decoding: `%` must be followed by exactly two hex digits.
pub fn reference_decode_key(path: &str) -> Option<Vec<u8>> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A key as it arrives in the URL path (`decode_key`), and raw key bytes through
/// `encode_key`: decoding agrees with RFC 3986 and encoding round-trips every byte string.
pub fn key(data: &[u8]) {
    let encoded = encode_key(data);
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "encode_key left a reserved byte in {encoded:?}"
    );
    assert_eq!(
        decode_key(&encoded).as_deref(),
        Some(data),
        "round trip of {data:?}"
    );
    if let Ok(path) = std::str::from_utf8(data) {
        let got = decode_key(path);
        assert_eq!(
            got,
            reference_decode_key(path),
            "decode_key({path:?}) disagrees with RFC 3986 percent-decoding"
        );
    }
}

/// Splits `data` at 0x00 bytes into the client-id, seq, timeout and Idempotency-Key header
/// values; a part starting with 0x01 stands for an absent header.
fn header_parts(data: &[u8]) -> [Option<&[u8]>; 4] {
    let mut parts = data.split(|&b| b == 0);
    let mut next = || match parts.next() {
        None => None,
        Some([1, ..]) => None,
        Some(p) => Some(p),
    };
    [next(), next(), next(), next()]
}

/// The API's header parsing: integers, the timeout budget, the write id.
pub fn headers(data: &[u8]) {
    let [client, seq, timeout, idem] = header_parts(data);
    let parsed: Vec<Result<Option<u64>, ()>> = [client, seq, timeout]
        .iter()
        .map(|v| parse_u64_header(*v))
        .collect();
    for (v, p) in [client, seq, timeout].iter().zip(&parsed) {
        if let (Some(raw), Ok(Some(n))) = (v, p) {
            let text = std::str::from_utf8(raw).expect("accepted header is text");
            let t = text.trim().trim_start_matches('+').trim_start_matches('0');
            let t = if t.is_empty() { "0" } else { t };
            assert_eq!(t, n.to_string(), "header {text:?} parsed as {n}");
        }
    }
    let default = Duration::from_secs(5);
    if let Ok(ms) = parsed[2] {
        let b = time_budget(ms, default);
        assert!(b >= Duration::from_millis(50) && b <= default * 12, "{b:?}");
        if let Some(ms) = ms {
            assert!(
                b <= Duration::from_millis(ms.max(50)),
                "budget {b:?} past the caller's {ms} ms"
            );
        }
    }
    if let (Ok(c), Ok(s)) = (parsed[0], parsed[1]) {
        if let Ok(Some((c2, s2))) = write_id(c, s, idem) {
            assert!(c2 != 0 && s2 != 0, "zero write id from {c:?} {s:?}");
        }
    }
}

/// A `POST /v1/reconfigure` body: whatever parses round-trips through JSON unchanged.
pub fn reconfigure_body(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<ReconfigureRequest>(data) else {
        return;
    };
    let text = serde_json::to_vec(&req).expect("serializes");
    let back: ReconfigureRequest = serde_json::from_slice(&text).expect("parses back");
    assert_eq!(back, req);
}
