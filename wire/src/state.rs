//! State-machine types that travel on the peer wire (in `CheckpointDone`) and the stable
//! pair hash behind state digests and idempotency keys.

use serde::{Deserialize, Serialize};

/// A position in the replicated history: `index` entries of configuration `config_id` applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub config_id: u32,
    pub index: u64,
}

/// State-machine metadata, stored under `meta/sm` in the same batch as the data it describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    /// Next entry to apply.
    pub applied: Position,
    /// The state machine's clock: the largest proposer timestamp applied (ms).
    pub clock_ms: u64,
    /// Largest timestamp of an evicted dedup record: older requests are refused.
    pub horizon_ms: u64,
    pub keys: u64,
    /// XOR of a 64-bit hash of every (key, value): equal states have equal hashes.
    pub hash: u64,
    /// The cluster-wide revision: raised by one for every applied write that changed
    /// something (a put, a delete that removed a key, a transaction with such writes). 0 for a
    /// store never written.
    pub revision: u64,
}

/// Stable 64-bit hash of a (key, value) pair (FNV-1a over length-prefixed fields).
pub fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&(key.len() as u64).to_be_bytes());
    feed(key);
    feed(&(value.len() as u64).to_be_bytes());
    feed(value);
    // Final avalanche so XOR-combining stays well mixed.
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}
