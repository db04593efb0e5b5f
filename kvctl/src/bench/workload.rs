//! The closed loop each logical client of `kvctl bench` runs, the settings the loops share,
//! and the counts each loop records (merged once the run is over).

use crate::bench::driver::{Driver, Outcome};
use crate::bench::histogram::Histogram;
use crate::bench::plan::Plan;
use crate::bench::rng::Rng;
use crate::cli::KeyOrder;
use crate::exit::Error;
use omnikv_common::{ClientError, Consistency};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Error classes counted (and not fatal) during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Unavailable = 0,
    Indeterminate = 1,
    Rejected = 2,
}

/// Each class with its name in the report.
pub const CLASSES: [(ErrorClass, &str); 3] = [
    (ErrorClass::Unavailable, "unavailable"),
    (ErrorClass::Indeterminate, "indeterminate"),
    (ErrorClass::Rejected, "rejected"),
];

fn classify(e: &ClientError) -> ErrorClass {
    match e {
        ClientError::Unavailable(_) => ErrorClass::Unavailable,
        ClientError::Indeterminate(_) => ErrorClass::Indeterminate,
        // Not found only for a write, a client-side refusal, or refused credentials: all
        // "refused" (nothing applied).
        ClientError::Rejected { .. }
        | ClientError::NotFound
        | ClientError::Usage(_)
        | ClientError::NotPermitted(_) => ErrorClass::Rejected,
    }
}

/// One task's (or, merged, the run's) results.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Latencies of the successful operations.
    pub latency: Histogram,
    /// Successful operations (gets of a missing key included).
    pub ok: u64,
    /// Successes that found nothing (gets of a missing key, failed compares).
    pub misses: u64,
    /// Errors by [`ErrorClass`].
    pub errors: [u64; 3],
    /// The first error message of each class.
    pub first_errors: [Option<String>; 3],
}

impl Stats {
    fn error(&mut self, e: ClientError) {
        let c = classify(&e) as usize;
        self.errors[c] += 1;
        if self.first_errors[c].is_none() {
            self.first_errors[c] = Some(Error::Client(e).to_string());
        }
    }

    pub fn merge(&mut self, o: Stats) {
        self.latency.merge(&o.latency);
        self.ok += o.ok;
        self.misses += o.misses;
        for c in 0..3 {
            self.errors[c] += o.errors[c];
            if self.first_errors[c].is_none() {
                self.first_errors[c] = o.first_errors[c].clone();
            }
        }
    }
}

/// `read_ratio` as a threshold on 53-bit random numbers (1.0: always; 0.0: never).
fn read_threshold(ratio: f64) -> u64 {
    (ratio * (1u64 << 53) as f64) as u64
}

/// Settings and shared counters of a run, read by every task.
pub struct Shared {
    measure_start: Instant,
    deadline: Option<Instant>,
    ops_limit: Option<u64>,
    /// Measured operations started (only counted with `ops_limit`).
    started: AtomicU64,
    read_threshold: u64,
    keys: u64,
    value_size: usize,
    consistency: Consistency,
    key_order: KeyOrder,
    /// Next key of the sequential order.
    next_key: AtomicU64,
}

impl Shared {
    /// The settings of `plan`, measuring from `measure_start` until `deadline` (if any).
    pub fn new(
        plan: &Plan,
        consistency: Consistency,
        measure_start: Instant,
        deadline: Option<Instant>,
    ) -> Self {
        Shared {
            measure_start,
            deadline,
            ops_limit: plan.ops,
            started: AtomicU64::new(0),
            read_threshold: read_threshold(plan.read_ratio),
            keys: plan.keys,
            value_size: plan.value_size,
            consistency,
            key_order: plan.key_order,
            next_key: AtomicU64::new(0),
        }
    }
}

/// One logical client: a closed loop until the deadline or the operation budget.
pub async fn client_loop<D: Driver>(sh: Arc<Shared>, client: Arc<D>, seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed);
    let value: Vec<u8> = (0..sh.value_size)
        .map(|_| b'a' + rng.below(26) as u8)
        .collect();
    let mut key = Vec::with_capacity(32);
    loop {
        let start = Instant::now();
        let measured = start >= sh.measure_start;
        if measured {
            if sh.deadline.is_some_and(|d| start >= d) {
                break;
            }
            if let Some(limit) = sh.ops_limit {
                if sh.started.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
            }
        }
        key.clear();
        let k = match sh.key_order {
            KeyOrder::Random => rng.below(sh.keys),
            KeyOrder::Sequential => sh.next_key.fetch_add(1, Ordering::Relaxed) % sh.keys,
        };
        let _ = write!(key, "bench-{k}");
        let read = (rng.next_u64() >> 11) < sh.read_threshold;
        let op = async {
            if read {
                client.read(&key, sh.consistency).await
            } else {
                client.write(&key, &value).await
            }
        };
        let outcome = match sh.deadline {
            // At the deadline, an operation still in flight is abandoned, not counted.
            Some(d) => match tokio::time::timeout_at(d.into(), op).await {
                Ok(o) => o,
                Err(_) => break,
            },
            None => op.await,
        };
        if !measured {
            continue;
        }
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Ok => {
                stats.ok += 1;
                stats.latency.record(us);
            }
            Outcome::Miss => {
                stats.ok += 1;
                stats.misses += 1;
                stats.latency.record(us);
            }
            Outcome::Err(e) => stats.error(e),
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ratio_threshold() {
        let mut rng = Rng::new(1);
        for (ratio, lo, hi) in [(0.0, 0, 0), (1.0, 10_000, 10_000), (0.3, 2_700, 3_300)] {
            let t = read_threshold(ratio);
            let reads = (0..10_000).filter(|_| (rng.next_u64() >> 11) < t).count();
            assert!((lo..=hi).contains(&reads), "{ratio}: {reads}");
        }
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
