//! The one binary encoding kvd uses on disk and on the peer wire (bincode, varint), with an
//! explicit size limit on decode so a hostile length can never make us allocate.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Encodes `v`. Encoding our own types cannot fail except on absurd sizes.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    options(u64::MAX)
        .serialize(v)
        .expect("bincode encoding of an in-memory value")
}

/// Decodes `bytes` into `T`, never allocating more than `bytes.len()` worth of structure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options(bytes.len() as u64 + 64).deserialize(bytes)
}
