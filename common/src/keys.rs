//! Keys are bytes. On the wire they travel percent-encoded in the URL path, so any byte
//! (`/`, spaces, non-UTF-8) round-trips; only the empty key is refused.

/// Percent-encodes every byte outside the unreserved URL set (RFC 3986).
pub fn encode_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path segment back into bytes. Returns `None` on a malformed
/// escape (`%` not followed by two hex digits).
pub fn decode_key(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // Exactly two hex digits: `from_str_radix` alone would also take "+1".
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Renders bytes for humans: UTF-8 text as is, anything else as `0x` hex.
pub fn display_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => s.to_string(),
        _ => {
            let mut s = String::from("0x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        for key in [
            &b"a"[..],
            b"a/b c",
            b"\xff\x00\x01",
            "héllo".as_bytes(),
            b"%41",
        ] {
            let enc = encode_key(key);
            assert!(!enc.contains('/'));
            assert_eq!(decode_key(&enc).unwrap(), key);
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        assert!(decode_key("%").is_none());
        assert!(decode_key("%4").is_none());
        assert!(decode_key("%zz").is_none());
        assert_eq!(decode_key("plain").unwrap(), b"plain");
    }

    #[test]
    fn displays_binary_as_hex() {
        assert_eq!(display_bytes(b"abc"), "abc");
        assert_eq!(display_bytes(b"\xff\x01"), "0xff01");
    }
}
