//! `omnikv-bench load`: writes a data set fast, for the runs that work over it: the keys
//! `bench-0` .. `bench-<N-1>` of the `kv` workload's key space, each once, in transactions
//! of up to --batch puts with --clients transactions in flight (one per connection,
//! connection j starting on endpoint j), then counts them. Both systems get the same
//! batches: omnikv a `POST /v1/txn` without compares, etcd a native `Txn` without compares.

use crate::conn::{Conn, Dial, Target};
use kvctl::bench::{process_cpu_time, Rng};
use omnikv_common::ClientError;
use serde::Serialize;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Operations per transaction both systems take by default (omnikv's `MAX_TXN_OPS`, etcd's
/// `--max-txn-ops`).
pub const MAX_BATCH: u32 = 128;

/// Key and value bytes per transaction at most: under etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB) and, base64-encoded in JSON, under omnikv's 2 MiB body.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// `omnikv-bench load` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Keys to write: bench-0 .. bench-<N-1> (`kv --keys N` draws from the same keys).
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Size of each value, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,
    /// Puts per transaction (fewer when keys and values would pass 1 MiB).
    #[arg(long, value_name = "N", default_value_t = MAX_BATCH,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH)))]
    pub batch: u32,
    /// Transactions in flight, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Attempts per transaction when it fails unavailable or indeterminate (a retry writes
    /// the same keys and values again); any other error ends the load at once.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// Worker threads of the async runtime [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// The result of a load (`-o json`: this object).
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub workload: &'static str,
    pub target: &'static str,
    pub keys: u64,
    pub value_size: usize,
    /// Puts per transaction used.
    pub batch: u64,
    pub clients: usize,
    pub transactions: u64,
    /// Transactions sent again after a failure.
    pub retries: u64,
    pub seconds: f64,
    pub keys_per_sec: f64,
    /// Keys under `bench-` once the load is done (a linearizable count).
    pub count: u64,
    pub client_cpu_cores: f64,
}

impl LoadReport {
    pub fn text(&self) -> String {
        format!(
            "loaded:      {} keys of {} bytes ({}) in {:.2} s, {:.0} keys/s\n\
             batches:     {} transactions of up to {} puts, {} in flight, {} retried\n\
             count:       {} keys under bench-\n\
             client CPU:  {:.2} cores\n",
            self.keys,
            self.value_size,
            self.target,
            self.seconds,
            self.keys_per_sec,
            self.transactions,
            self.batch,
            self.clients,
            self.retries,
            self.count,
            self.client_cpu_cores
        )
    }
}

/// Key `i` of the data set: the `kv` workload's name for it.
pub fn key(i: u64) -> Vec<u8> {
    format!("bench-{i}").into_bytes()
}

/// Puts per transaction: `requested`, fewer when that many of the data set's longest key and
/// a value would pass [`MAX_BATCH_BYTES`]; at least one.
pub fn batch_size(requested: u32, keys: u64, value_size: usize) -> u64 {
    let per_put = key(keys.saturating_sub(1)).len() + value_size;
    let fit = u64::try_from(MAX_BATCH_BYTES / per_put).unwrap_or(u64::MAX);
    u64::from(requested).min(fit).max(1)
}

/// The key numbers of batch `i` when `keys` keys go `batch` at a time: empty past the end.
pub fn batch_keys(i: u64, batch: u64, keys: u64) -> Range<u64> {
    let start = i.saturating_mul(batch).min(keys);
    start..start.saturating_add(batch).min(keys)
}

fn retryable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unavailable(_) | ClientError::Indeterminate(_)
    )
}

/// Loads the data set of `args` into `target` through `endpoints`.
pub async fn run(
    target: Target,
    endpoints: &[String],
    dial: &Dial,
    args: &LoadArgs,
) -> Result<LoadReport, ClientError> {
    let batch = batch_size(args.batch, args.keys, args.value_size);
    let transactions = args.keys.div_ceil(batch);
    let clients = usize::try_from(u64::from(args.clients).min(transactions)).unwrap_or(1);
    let mut conns = Vec::with_capacity(clients);
    for j in 0..clients {
        let mut eps = endpoints.to_vec();
        eps.rotate_left(j.checked_rem(endpoints.len()).unwrap_or(0));
        conns.push(Arc::new(Conn::connect(target, &eps, dial).await?));
    }
    let next = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<ClientError>>> = Arc::default();
    let (keys, value_size, attempts) = (args.keys, args.value_size, args.attempts);
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(j, conn)| {
            let (conn, next, retries) = (conn.clone(), next.clone(), retries.clone());
            let (stop, failure) = (stop.clone(), failure.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(0x5EED ^ (j as u64).wrapping_mul(0x9E37_79B9));
                let value: Vec<u8> = (0..value_size)
                    .map(|_| b'a' + rng.below(26) as u8)
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let range = batch_keys(next.fetch_add(1, Ordering::Relaxed), batch, keys);
                    if range.is_empty() {
                        return;
                    }
                    let batch_keys: Vec<Vec<u8>> = range.map(key).collect();
                    let mut attempt = 1;
                    loop {
                        match conn.put_many(&batch_keys, &value).await {
                            Ok(()) => break,
                            Err(e) if attempt < attempts && retryable(&e) => {
                                attempt += 1;
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                failure.lock().unwrap().get_or_insert(e);
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = process_cpu_time().saturating_sub(cpu_before).as_secs_f64();
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    let count = conns[0].count(b"bench-").await?;
    if count < keys {
        return Err(ClientError::Unavailable(format!(
            "every transaction succeeded but only {count} keys are under bench-, not {keys}"
        )));
    }
    Ok(LoadReport {
        workload: "load",
        target: target.as_str(),
        keys,
        value_size,
        batch,
        clients,
        transactions,
        retries: retries.load(Ordering::Relaxed),
        seconds,
        keys_per_sec: keys as f64 / seconds.max(1e-9),
        count,
        client_cpu_cores: cpu / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_key_once() {
        for (keys, batch) in [(1u64, 128u64), (128, 128), (129, 128), (1000, 7), (5, 1)] {
            let n = keys.div_ceil(batch);
            let mut seen = Vec::new();
            for i in 0..n {
                let r = batch_keys(i, batch, keys);
                assert!(
                    !r.is_empty() && r.end - r.start <= batch,
                    "{keys}/{batch}: {r:?}"
                );
                seen.extend(r);
            }
            assert_eq!(seen, (0..keys).collect::<Vec<_>>(), "{keys}/{batch}");
            assert!(batch_keys(n, batch, keys).is_empty());
            assert!(batch_keys(u64::MAX, batch, keys).is_empty());
        }
    }

    #[test]
    fn batch_size_keeps_requests_under_the_limit() {
        // Small values: the requested number.
        assert_eq!(batch_size(128, 1_000_000, 100), 128);
        assert_eq!(batch_size(10, 1_000_000, 100), 10);
        // 16 KiB values: as many puts as fit in 1 MiB with the longest key, "bench-999".
        let (b, per_put) = (batch_size(128, 1000, 16384), 16384 + 9);
        assert_eq!(b, 63);
        assert!(b as usize * per_put <= MAX_BATCH_BYTES);
        assert!((b as usize + 1) * per_put > MAX_BATCH_BYTES);
        // A value alone over the limit: one put per transaction (the server says if too big).
        assert_eq!(batch_size(128, 10, 2 << 20), 1);
    }

    #[test]
    fn keys_are_the_kv_workloads() {
        assert_eq!(key(0), b"bench-0");
        assert_eq!(key(999_999), b"bench-999999");
    }
}
