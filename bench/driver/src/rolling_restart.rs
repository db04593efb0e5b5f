//! The rolling-restart workload (bench/rolling_restart.py): writers that put unique keys
//! until stdin closes, each failing over to the next member on any error, recording when
//! every acknowledged write was acknowledged; and `verify`, which reads them all back.
//!
//! Both systems get the same client-side logic, so the gaps measured are the servers': one
//! connection per member per writer (omnikv: its HTTP API with the dedup headers, so a
//! retried write never applies twice; etcd: its native gRPC client on that one member), a
//! failed attempt moves the writer to the next member at once (after a full round of
//! failures it sleeps 5 ms), and the same key and value are retried until acknowledged.

use crate::conn::{url, Target};
use futures::StreamExt;
use omnikv_common::api::{HEADER_CLIENT_ID, HEADER_SEQ, HEADER_TIMEOUT_MS};
use omnikv_common::keys::encode_key;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `writes` flags.
#[derive(Debug, clap::Args)]
pub struct WritesArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Per-attempt timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub attempt_ms: u64,
    /// Where the acknowledged keys go: one `KEY MS` line each (ms since the start).
    #[arg(long)]
    pub acks: std::path::PathBuf,
    /// Key prefix (a run's keys must not collide with another run's).
    #[arg(long, default_value = "rr/")]
    pub prefix: String,
    /// Value size, in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
}

/// `verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The acks file `writes` wrote.
    #[arg(long)]
    pub acks: std::path::PathBuf,
    /// Reads in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// What `writes` prints.
#[derive(Debug, Serialize)]
pub struct WritesReport {
    pub target: &'static str,
    pub acked: usize,
    pub failed_attempts: u64,
    pub duration_ms: u64,
    /// The longest time without any acknowledged write, and when it began (ms since start).
    pub longest_gap_ms: f64,
    pub longest_gap_at_ms: f64,
    /// The ten longest gaps, longest first, as (start ms, length ms).
    pub top_gaps: Vec<(f64, f64)>,
    pub first_errors: Vec<String>,
}

/// What `verify` prints.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub target: &'static str,
    pub acked: usize,
    pub missing: usize,
    pub wrong_value: usize,
    pub read_errors: usize,
    pub first_missing: Vec<String>,
}

/// One writer's connection to one member (also the failover probe's, `first_write`).
pub(crate) enum Member {
    Omnikv {
        http: reqwest::Client,
        base: String,
    },
    Etcd {
        url: String,
        /// etcd's client is large (every service's stub): boxed.
        conn: tokio::sync::Mutex<Option<Box<etcd_client::Client>>>,
    },
}

impl Member {
    pub(crate) fn new(target: Target, endpoint: &str, timeout: Duration) -> Member {
        match target {
            Target::Omnikv => Member::Omnikv {
                http: reqwest::Client::builder()
                    .connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .build()
                    .expect("an HTTP client builds"),
                base: url(endpoint),
            },
            Target::Etcd => Member::Etcd {
                url: url(endpoint),
                conn: tokio::sync::Mutex::new(None),
            },
        }
    }

    /// One attempt to put `key`; `id` is the omnikv dedup id (client, seq).
    pub(crate) async fn put(
        &self,
        key: &str,
        value: &[u8],
        id: (u64, u64),
        timeout: Duration,
    ) -> Result<(), String> {
        match self {
            Member::Omnikv { http, base } => {
                let resp = http
                    .put(format!("{base}/v1/kv/{}", encode_key(key.as_bytes())))
                    .header(HEADER_CLIENT_ID, id.0)
                    .header(HEADER_SEQ, id.1)
                    .header(HEADER_TIMEOUT_MS, timeout.as_millis() as u64)
                    .timeout(timeout)
                    .body(value.to_vec())
                    .send()
                    .await
                    .map_err(|e| format!("{base}: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    Err(format!("{base}: {status} {body}"))
                }
            }
            Member::Etcd { url, conn } => {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    let options = etcd_client::ConnectOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(timeout);
                    let c = etcd_client::Client::connect([url.as_str()], Some(options))
                        .await
                        .map_err(|e| format!("{url}: connect: {e}"))?;
                    *guard = Some(Box::new(c));
                }
                let mut kv = guard.as_ref().expect("connected").kv_client();
                drop(guard);
                match kv.put(key, value, None).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        // Reconnect next time: the member may have restarted.
                        *conn.lock().await = None;
                        Err(format!("{url}: {e}"))
                    }
                }
            }
        }
    }

    /// Reads `key`: Some(value) or None when absent.
    async fn get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        match self {
            Member::Omnikv { http, base } => {
                let resp = http
                    .get(format!("{base}/v1/kv/{}", encode_key(key.as_bytes())))
                    .header(HEADER_TIMEOUT_MS, timeout.as_millis() as u64)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| format!("{base}: {e}"))?;
                match resp.status().as_u16() {
                    200 => Ok(Some(
                        resp.bytes().await.map_err(|e| e.to_string())?.to_vec(),
                    )),
                    404 => Ok(None),
                    s => Err(format!("{base}: {s}")),
                }
            }
            Member::Etcd { url, conn } => {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    let c = etcd_client::Client::connect([url.as_str()], None)
                        .await
                        .map_err(|e| format!("{url}: connect: {e}"))?;
                    *guard = Some(Box::new(c));
                }
                let mut kv = guard.as_ref().expect("connected").kv_client();
                drop(guard);
                let r = kv.get(key, None).await.map_err(|e| format!("{url}: {e}"))?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
        }
    }
}

fn value_of(key: &str, size: usize) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(size.max(key.len()), b'.');
    v
}

/// Runs the writers until stdin reaches its end, then writes the acks file.
pub async fn writes(
    target: Target,
    endpoints: &[String],
    args: &WritesArgs,
) -> Result<WritesReport, String> {
    let timeout = Duration::from_millis(args.attempt_ms);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let errors: Arc<Mutex<(u64, Vec<String>)>> = Arc::default();
    {
        let stop = stop.clone();
        // EOF on stdin (the orchestrator closed it) ends the run.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let client_base = std::process::id() as u64 * 1_000_003 + started.elapsed().as_nanos() as u64;
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let members: Vec<Member> = endpoints
            .iter()
            .map(|e| Member::new(target, e, timeout))
            .collect();
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        let prefix = args.prefix.clone();
        let size = args.value_size;
        // Distinct per writer (writers sharing an id would dedup each other's writes away).
        let client_id = ((client_base + w as u64) << 1) | 1;
        tasks.push(tokio::spawn(async move {
            let n = members.len();
            let mut cur = w % n;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("{prefix}{w}/{seq}");
                let value = value_of(&key, size);
                let mut failures_in_row = 0;
                loop {
                    match members[cur]
                        .put(&key, &value, (client_id, seq), timeout)
                        .await
                    {
                        Ok(()) => {
                            acked.lock().unwrap().push((key, started.elapsed()));
                            break;
                        }
                        Err(e) => {
                            {
                                let mut errs = errors.lock().unwrap();
                                errs.0 += 1;
                                if errs.1.len() < 20 {
                                    let at = started.elapsed().as_secs_f64();
                                    errs.1.push(format!("{at:.3}s {e}"));
                                }
                            }
                            cur = (cur + 1) % n;
                            failures_in_row += 1;
                            if failures_in_row % n == 0 {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            // An unacknowledged key is retried (same id) until it is acked,
                            // unless the run ends: then it counts as never acknowledged.
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("writer: {e}"))?;
    }
    let duration = started.elapsed();
    let mut acked = acked.lock().unwrap().clone();
    acked.sort_by_key(|a| a.1);
    let mut text = String::new();
    for (k, t) in &acked {
        text.push_str(&format!("{k} {:.3}\n", t.as_secs_f64() * 1000.0));
    }
    std::fs::write(&args.acks, text)
        .map_err(|e| format!("writing {}: {e}", args.acks.display()))?;
    // Gaps between consecutive acknowledgements, plus the run's edges.
    let mut times: Vec<Duration> = vec![Duration::ZERO];
    times.extend(acked.iter().map(|a| a.1));
    times.push(duration);
    let mut gaps: Vec<(f64, f64)> = times
        .windows(2)
        .map(|w| {
            (
                w[0].as_secs_f64() * 1000.0,
                (w[1] - w[0]).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    gaps.sort_by(|a, b| b.1.total_cmp(&a.1));
    gaps.truncate(10);
    let (failed_attempts, first_errors) = errors.lock().unwrap().clone();
    Ok(WritesReport {
        target: target.as_str(),
        acked: acked.len(),
        failed_attempts,
        duration_ms: duration.as_millis() as u64,
        longest_gap_ms: gaps.first().map_or(0.0, |g| g.1),
        longest_gap_at_ms: gaps.first().map_or(0.0, |g| g.0),
        top_gaps: gaps,
        first_errors,
    })
}

/// Reads every acknowledged key back (from the first endpoint that answers each read).
pub async fn verify(
    target: Target,
    endpoints: &[String],
    args: &VerifyArgs,
) -> Result<VerifyReport, String> {
    let text = std::fs::read_to_string(&args.acks)
        .map_err(|e| format!("reading {}: {e}", args.acks.display()))?;
    let keys: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').next().map(String::from))
        .collect();
    let timeout = Duration::from_secs(5);
    let members: Arc<Vec<Member>> = Arc::new(
        endpoints
            .iter()
            .map(|e| Member::new(target, e, timeout))
            .collect(),
    );
    let results = futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let members = members.clone();
            async move {
                let mut last = String::new();
                for m in members.iter() {
                    match m.get(&key, timeout).await {
                        Ok(v) => return (key, Ok(v)),
                        Err(e) => last = e,
                    }
                }
                (key, Err(last))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut report = VerifyReport {
        target: target.as_str(),
        acked: keys.len(),
        missing: 0,
        wrong_value: 0,
        read_errors: 0,
        first_missing: Vec::new(),
    };
    for (key, r) in results {
        match r {
            Ok(Some(v)) if v.starts_with(key.as_bytes()) => {}
            Ok(Some(_)) => report.wrong_value += 1,
            Ok(None) => {
                report.missing += 1;
                if report.first_missing.len() < 10 {
                    report.first_missing.push(key);
                }
            }
            Err(_) => report.read_errors += 1,
        }
    }
    Ok(report)
}
