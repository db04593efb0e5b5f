//! Crash failpoints for tests: `KVD_FAILPOINT=name:N` aborts the process the Nth time the
//! persistence step `name` is reached (before it writes), so a test can check that a crash at
//! that step loses no acknowledged write. Inert (one relaxed load) when the variable is unset.
//!
//! In process, `unwind_at` does the same for the deterministic simulator: the next hit of the
//! step on this thread unwinds with a `Crashed` payload, and the simulator cuts the power of
//! that replica there.
//!
//! Steps: `log-write` (a Paxos log/metadata batch: appends, promises, syncs), `decide` (a
//! batch that only moves the decided index), `apply` (a state-machine batch),
//! `before-sync` and `after-sync` (around the iteration's WAL sync, messages half sent),
//! `compact` (a local compaction), `switch` (persisting a new configuration),
//! `checkpoint-ingest` (switching a received checkpoint in: the old state emptied, the new
//! one not yet ingested; on the installer's thread in kvd).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

thread_local! {
    /// The step at which this thread unwinds next (`unwind_at`).
    static UNWIND_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The payload of an in-process crash at a step (`unwind_at`).
#[derive(Debug)]
pub struct Crashed(pub String);

/// Test-only: the next time this thread reaches step `name`, it unwinds (`panic_any` with
/// `Crashed`) instead of going on, so an in-process simulator can crash a replica in the
/// middle of an iteration. `None` disarms.
pub fn unwind_at(name: Option<&str>) {
    UNWIND_AT.with(|u| *u.borrow_mut() = name.map(str::to_string));
}

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
    let unwind = UNWIND_AT.with(|u| {
        let mut u = u.borrow_mut();
        let here = u.as_deref() == Some(name);
        if here {
            *u = None;
        }
        here
    });
    if unwind {
        std::panic::panic_any(Crashed(name.to_string()));
    }
    if let Some((armed_name, at)) = armed() {
        if armed_name == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            tracing::error!("failpoint {name}:{at} reached: aborting");
            std::process::abort();
        }
    }
}
