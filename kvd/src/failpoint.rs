//! Crash failpoints for tests: `KVD_FAILPOINT=name:N` aborts the process the Nth time the
//! persistence step `name` is reached (before it writes), so a test can check that a crash at
//! that step loses no acknowledged write. Inert (one relaxed load) when the variable is unset.
//!
//! Steps: `log-write` (a Paxos log/metadata batch: appends, promises, syncs), `decide` (a
//! batch that only moves the decided index), `apply` (a state-machine batch),
//! `before-sync` and `after-sync` (around the iteration's WAL sync, messages half sent),
//! `compact` (a local compaction), `switch` (persisting a new configuration).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let v = std::env::var("KVD_FAILPOINT").ok()?;
        let (name, n) = v.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    })
}

/// Marks that step `name` is about to persist; aborts on the armed hit.
pub fn hit(name: &str) {
    if let Some((armed_name, at)) = armed() {
        if armed_name == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            tracing::error!("failpoint {name}:{at} reached: aborting");
            std::process::abort();
        }
    }
}
