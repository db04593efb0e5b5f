//! `bench`: a load generator. `--clients` logical clients (tokio tasks) each run one operation
//! at a time, in a closed loop, over `--connections` shared [`Client`]s. Each task records its
//! own counts and latency histogram (no locks, no allocation on the hot path beyond what the
//! client does); they are merged at the end.
//!
//! `--target etcd` drives etcd v3 instead, through the JSON gRPC-gateway on its client port
//! (`POST /v3/kv/put`, `/v3/kv/range`, base64 keys and values), with the same pools, loop and
//! histogram, so the two systems are measured by the same code (see bench/ and BENCHMARKS.md).

use crate::cli::{parse_duration_or_zero, parse_timeout};
use crate::exit::Error;
use crate::{output, Context};
use clap::{Args, ValueEnum};
use omnikv_common::{Client, ClientError, Consistency, ErrorCode};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The measured duration when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// `kvctl bench` flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent logical clients, each with one operation in flight at a time.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub clients: u32,

    /// Distinct HTTP clients (connection pools, each with its own client id), shared
    /// round-robin by the logical clients; at most --clients [default: --clients]. Client
    /// number j starts on endpoint j (mod the number of endpoints) to spread the load.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,

    /// How long to measure, after the warmup: `10s`, `500ms`, `2m` or a bare number of
    /// seconds [default: 10s, unless --ops is given]. With --ops too, the run stops at
    /// whichever limit is reached first.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub duration: Option<Duration>,

    /// Number of measured operations (warmup excluded) after which the run stops.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,

    /// Time to run before measuring; its operations are not counted. Same formats as
    /// --duration; `0` for none.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_duration_or_zero
    )]
    pub warmup: Duration,

    /// Fraction of operations that are gets (0.0 to 1.0); the rest are puts. Gets use the
    /// global --consistency.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Key space: keys `bench-0` .. `bench-<N-1>`, picked uniformly at random.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keys: u64,

    /// Key order: `random` (uniform over --keys) or `sequential` (bench-0, bench-1, ... shared
    /// by all clients, wrapping at --keys): `--ops N --keys N --key-order sequential --warmup 0`
    /// writes every key exactly once (to load a data set).
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub key_order: KeyOrder,

    /// Size of each put's value, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,

    /// Worker threads of the load generator's async runtime [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// The system under load: omnikv (kvd's /v1/kv API) or etcd (its v3 JSON gateway on the
    /// client port; --endpoints are then etcd client URLs; linearizable gets are etcd's
    /// default range, local gets are `serializable` ranges).
    #[arg(long, value_enum, default_value_t = Target::Omnikv)]
    pub target: Target,
}

/// How `kvctl bench` picks keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyOrder {
    /// Uniformly at random.
    Random,
    /// One after the other, across all clients.
    Sequential,
}

/// The system `kvctl bench` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// kvd replicas (`PUT/GET /v1/kv/{key}`).
    Omnikv,
    /// etcd v3 members, through the gRPC-gateway (`POST /v3/kv/put`, `/v3/kv/range`).
    Etcd,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Omnikv => "omnikv",
            Target::Etcd => "etcd",
        }
    }
}

/// Parses a ratio in 0.0..=1.0.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid ratio {s:?} (expected a number from 0.0 to 1.0)"
        )),
    }
}

/// The validated run settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub clients: usize,
    pub connections: usize,
    /// Measured duration; `None`: until `ops` operations are done.
    pub duration: Option<Duration>,
    pub ops: Option<u64>,
    pub warmup: Duration,
    pub read_ratio: f64,
    pub keys: u64,
    pub value_size: usize,
    pub key_order: KeyOrder,
    pub target: Target,
}

impl BenchArgs {
    /// Checks the flags together and fills in the defaults.
    pub fn plan(&self) -> Result<Plan, Error> {
        let clients = self.clients as usize;
        let connections = self.connections.map_or(clients, |c| c as usize);
        if connections > clients {
            return Err(Error::usage(format!(
                "--connections {connections} is more than --clients {clients}"
            )));
        }
        let duration = match (self.duration, self.ops) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        Ok(Plan {
            clients,
            connections,
            duration,
            ops: self.ops,
            warmup: self.warmup,
            read_ratio: self.read_ratio,
            keys: self.keys,
            value_size: self.value_size,
            key_order: self.key_order,
            target: self.target,
        })
    }
}

/// Latency histogram in microseconds: exact below 512 µs, then 256 linear sub-buckets per
/// power of two (relative error under 0.4%), up to 2^36 µs (about 19 hours; longer values
/// are clamped). Recording is a few integer operations, no allocation.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: u128,
    max_us: u64,
}

const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
const MAX_BIT: u32 = 36;
const BUCKETS: usize = (2 * SUB + (MAX_BIT - SUB_BITS - 1) as u64 * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let v = v.min((1 << MAX_BIT) - 1);
        if v < 2 * SUB {
            return v as usize;
        }
        let bit = 63 - v.leading_zeros();
        let shift = bit - SUB_BITS;
        (2 * SUB + u64::from(bit - SUB_BITS - 1) * SUB + ((v >> shift) - SUB)) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn bucket_high(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let j = i - 2 * SUB;
        let shift = j / SUB + 1;
        let m = j % SUB + SUB;
        ((m + 1) << shift) - 1
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max_us
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.total as f64
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value (to the bucket's
    /// precision, rounded up) with at least `q` of the values at or below it. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_high(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

/// Error classes counted (and not fatal) during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Unavailable = 0,
    Indeterminate = 1,
    Rejected = 2,
}

const CLASSES: [(ErrorClass, &str); 3] = [
    (ErrorClass::Unavailable, "unavailable"),
    (ErrorClass::Indeterminate, "indeterminate"),
    (ErrorClass::Rejected, "rejected"),
];

fn classify(e: &ClientError) -> ErrorClass {
    match e {
        ClientError::Unavailable(_) => ErrorClass::Unavailable,
        ClientError::Indeterminate(_) => ErrorClass::Indeterminate,
        // Not found only for a write, or a client-side refusal: both "refused on its merits".
        ClientError::Rejected { .. } | ClientError::NotFound | ClientError::Usage(_) => {
            ErrorClass::Rejected
        }
    }
}

/// One task's (or, merged, the run's) results.
#[derive(Debug, Clone, Default)]
struct Stats {
    /// Latencies of the successful operations.
    latency: Histogram,
    ok: u64,
    misses: u64,
    errors: [u64; 3],
    first_errors: [Option<String>; 3],
}

impl Stats {
    fn error(&mut self, e: &ClientError) {
        let c = classify(e) as usize;
        self.errors[c] += 1;
        if self.first_errors[c].is_none() {
            self.first_errors[c] = Some(crate::Error::Client(clone_error(e)).to_string());
        }
    }

    fn merge(&mut self, o: Stats) {
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

fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::NotFound => ClientError::NotFound,
        ClientError::Unavailable(m) => ClientError::Unavailable(m.clone()),
        ClientError::Indeterminate(m) => ClientError::Indeterminate(m.clone()),
        ClientError::Rejected { code, message } => ClientError::Rejected {
            code: *code,
            message: message.clone(),
        },
        ClientError::Usage(m) => ClientError::Usage(m.clone()),
    }
}

/// A small, fast PRNG (splitmix64): one per task, no sharing.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `read_ratio` as a threshold on 53-bit random numbers (1.0: always; 0.0: never).
fn read_threshold(ratio: f64) -> u64 {
    (ratio * (1u64 << 53) as f64) as u64
}

/// Settings and shared counters of a run, read by every task.
struct Shared {
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

enum Outcome {
    Ok,
    Miss,
    Err(ClientError),
}

/// Standard base64 (RFC 4648, padded), as etcd's JSON gateway expects for bytes fields.
pub fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal etcd v3 client over the JSON gRPC-gateway: one HTTP/1.1 connection pool (like
/// omnikv's [`Client`]), endpoints tried in order when one is unreachable. etcd members
/// forward writes to their leader themselves, as kvd followers do.
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    timeout: Duration,
}

impl EtcdClient {
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Usage("no endpoints given".into()));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim().trim_end_matches('/');
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        // The same pool settings as omnikv_common::Client.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(1000).min(timeout))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build HTTP client: {e}")))?;
        Ok(EtcdClient {
            http,
            endpoints,
            timeout,
        })
    }

    /// `Put`; answered by etcd once committed and applied.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value));
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// `Range` of one key: linearizable (etcd's ReadIndex) or serializable (the member's own
    /// state). Returns whether the key exists.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<bool, ClientError> {
        let serializable = matches!(consistency, Consistency::Local);
        let body = format!(
            r#"{{"key":"{}","serializable":{serializable}}}"#,
            base64(key)
        );
        let answer = self.call("/v3/kv/range", body).await?;
        // `"kvs"` cannot occur inside a base64 string: it is present iff the key exists.
        Ok(answer.windows(5).any(|w| w == b"\"kvs\""))
    }

    async fn call(&self, path: &str, body: String) -> Result<bytes::Bytes, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no attempt in time");
        for endpoint in &self.endpoints {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let sent = self
                .http
                .post(format!("{endpoint}{path}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(remaining)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .bytes()
                        .await
                        .map_err(|e| ClientError::Indeterminate(format!("{endpoint}: {e}")));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(etcd_error(status, &text));
                }
                Err(e) if e.is_connect() => {
                    last = format!("{endpoint}: {e}");
                }
                Err(e) => return Err(ClientError::Indeterminate(format!("{endpoint}: {e}"))),
            }
        }
        Err(ClientError::Unavailable(format!(
            "no etcd endpoint reachable ({last})"
        )))
    }
}

/// Maps an etcd gateway error answer to our classes: "no leader" and other gRPC Unavailable
/// (HTTP 503) answers are unavailable, timeouts indeterminate, the rest rejected.
fn etcd_error(status: u16, body: &str) -> ClientError {
    let message = format!("etcd HTTP {status}: {}", body.trim());
    if body.contains("timed out") || status == 504 {
        ClientError::Indeterminate(message)
    } else if status == 503 {
        ClientError::Unavailable(message)
    } else {
        ClientError::Rejected {
            code: ErrorCode::Rejected,
            message,
        }
    }
}

/// What a logical client sends its operations through.
#[derive(Clone)]
enum Driver {
    Omnikv(Arc<Client>),
    Etcd(Arc<EtcdClient>),
}

impl Driver {
    async fn get(&self, key: &[u8], consistency: Consistency) -> Outcome {
        let found = match self {
            Driver::Omnikv(c) => match c.get(key, consistency).await {
                Ok(_) => Ok(true),
                Err(ClientError::NotFound) => Ok(false),
                Err(e) => Err(e),
            },
            Driver::Etcd(c) => c.get(key, consistency).await,
        };
        match found {
            Ok(true) => Outcome::Ok,
            Ok(false) => Outcome::Miss,
            Err(e) => Outcome::Err(e),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Outcome {
        let done = match self {
            Driver::Omnikv(c) => c.put(key, value.to_vec()).await.map(|_| ()),
            Driver::Etcd(c) => c.put(key, value).await,
        };
        match done {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Err(e),
        }
    }
}

/// One logical client: a closed loop until the deadline or the operation budget.
async fn client_loop(sh: Arc<Shared>, client: Driver, seed: u64) -> Stats {
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
                client.get(&key, sh.consistency).await
            } else {
                client.put(&key, &value).await
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
            Outcome::Err(e) => stats.error(&e),
        }
    }
    stats
}

/// User + system CPU time of this process (all threads) so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given; a zeroed rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Errors by class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCounts {
    pub unavailable: u64,
    pub indeterminate: u64,
    pub rejected: u64,
}

/// The result of a run, as printed (`-o json`: this object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The system driven: `omnikv` or `etcd`.
    pub target: &'static str,
    pub clients: usize,
    pub connections: usize,
    /// Worker threads of the load generator.
    pub threads: usize,
    /// Length of the measured window, in seconds.
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Measured operations completed: successes plus errors.
    pub ops: u64,
    /// Successful operations (gets of a missing key included).
    pub ok: u64,
    /// Gets that found no key (counted in `ok`).
    pub misses: u64,
    /// Successful operations per second over the measured window.
    pub ops_per_sec: f64,
    pub errors: ErrorCounts,
    /// Latency of the successful operations.
    pub latency_ms: LatencyMs,
    /// User + system CPU time of kvctl during the window, divided by its length.
    pub client_cpu_cores: f64,
    pub read_ratio: f64,
    pub value_size: usize,
    pub keys: u64,
    pub consistency: &'static str,
    /// The first error message of each class that occurred.
    pub first_errors: BTreeMap<&'static str, String>,
}

fn round(x: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (x * p).round() / p
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 3)
}

/// Runs the benchmark and prints its report. Exit 3 (unavailable) when no operation succeeded.
pub async fn run(ctx: &Context, args: &BenchArgs, out: &mut dyn Write) -> Result<(), Error> {
    let plan = args.plan()?;
    let endpoints = ctx.selected_endpoints()?;
    let pools = (0..plan.connections)
        .map(|j| {
            let mut eps = endpoints.clone();
            eps.rotate_left(j % endpoints.len());
            Ok(match plan.target {
                Target::Omnikv => Driver::Omnikv(Arc::new(Client::new(&eps, ctx.timeout)?)),
                Target::Etcd => Driver::Etcd(Arc::new(EtcdClient::new(&eps, ctx.timeout)?)),
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    let threads = tokio::runtime::Handle::current().metrics().num_workers();

    let begin = Instant::now();
    let measure_start = begin + plan.warmup;
    let deadline = plan.duration.map(|d| measure_start + d);
    let shared = Arc::new(Shared {
        measure_start,
        deadline,
        ops_limit: plan.ops,
        started: AtomicU64::new(0),
        read_threshold: read_threshold(plan.read_ratio),
        keys: plan.keys,
        value_size: plan.value_size,
        consistency: ctx.consistency,
        key_order: plan.key_order,
        next_key: AtomicU64::new(0),
    });
    let base_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            let seed = base_seed.wrapping_add((i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            tokio::spawn(client_loop(
                shared.clone(),
                pools[i % pools.len()].clone(),
                seed,
            ))
        })
        .collect();

    tokio::time::sleep_until(measure_start.into()).await;
    let cpu_before = process_cpu_time();
    let wall_before = Instant::now();
    let mut stats = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(s),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let end = Instant::now();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let window = deadline
        .map_or(end, |d| end.min(d))
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let wall = end.saturating_duration_since(wall_before).as_secs_f64();

    let h = &stats.latency;
    let report = BenchReport {
        target: plan.target.as_str(),
        clients: plan.clients,
        connections: plan.connections,
        threads,
        duration_s: round(window, 3),
        warmup_s: round(plan.warmup.as_secs_f64(), 3),
        ops: stats.ok + stats.errors.iter().sum::<u64>(),
        ok: stats.ok,
        misses: stats.misses,
        ops_per_sec: if window > 0.0 {
            round(stats.ok as f64 / window, 1)
        } else {
            0.0
        },
        errors: ErrorCounts {
            unavailable: stats.errors[ErrorClass::Unavailable as usize],
            indeterminate: stats.errors[ErrorClass::Indeterminate as usize],
            rejected: stats.errors[ErrorClass::Rejected as usize],
        },
        latency_ms: LatencyMs {
            p50: ms(h.quantile(0.50)),
            p90: ms(h.quantile(0.90)),
            p99: ms(h.quantile(0.99)),
            max: ms(h.max()),
            mean: round(h.mean() / 1000.0, 3),
        },
        client_cpu_cores: if wall > 0.0 {
            round(cpu.as_secs_f64() / wall, 3)
        } else {
            0.0
        },
        read_ratio: plan.read_ratio,
        value_size: plan.value_size,
        keys: plan.keys,
        consistency: ctx.consistency.as_str(),
        first_errors: CLASSES
            .iter()
            .filter_map(|&(c, name)| Some((name, stats.first_errors[c as usize].clone()?)))
            .collect(),
    };
    output::write_bench_report(out, ctx.output, &report).map_err(Error::stdout)?;
    if report.ok == 0 {
        let why = report
            .first_errors
            .values()
            .next()
            .map_or_else(String::new, |m| format!(" (first error: {m})"));
        return Err(Error::Client(ClientError::Unavailable(format!(
            "no operation succeeded{why}"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kvctl", "bench"].iter().chain(args))?;
        match cli.command {
            Command::Bench(b) => Ok(b),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let b = parse(&[]).unwrap();
        let p = b.plan().unwrap();
        assert_eq!(
            p,
            Plan {
                clients: 16,
                connections: 16,
                duration: Some(Duration::from_secs(10)),
                ops: None,
                warmup: Duration::from_secs(1),
                read_ratio: 0.0,
                keys: 10_000,
                value_size: 100,
                key_order: KeyOrder::Random,
                target: Target::Omnikv,
            }
        );
        assert_eq!(b.threads, None);
    }

    #[test]
    fn flags() {
        let b = parse(&[
            "--clients",
            "8",
            "--connections",
            "2",
            "--duration",
            "500ms",
            "--ops",
            "1000",
            "--warmup",
            "0",
            "--read-ratio",
            "0.25",
            "--keys",
            "7",
            "--value-size",
            "0",
            "--threads",
            "3",
            "-o",
            "json",
        ])
        .unwrap();
        let p = b.plan().unwrap();
        assert_eq!((p.clients, p.connections), (8, 2));
        assert_eq!(p.duration, Some(Duration::from_millis(500)));
        assert_eq!(p.ops, Some(1000));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!((p.read_ratio, p.keys, p.value_size), (0.25, 7, 0));
        assert_eq!(b.threads, Some(3));
        // --ops alone: no duration limit.
        let p = parse(&["--ops", "5"]).unwrap().plan().unwrap();
        assert_eq!((p.duration, p.ops), (None, Some(5)));
        let p = parse(&["--duration", "2m"]).unwrap().plan().unwrap();
        assert_eq!((p.duration, p.ops), (Some(Duration::from_secs(120)), None));
        // --connections defaults to --clients.
        assert_eq!(
            parse(&["--clients", "3"])
                .unwrap()
                .plan()
                .unwrap()
                .connections,
            3
        );
        for r in ["0", "1", "1.0", "0.5"] {
            assert!(parse(&["--read-ratio", r]).is_ok(), "{r}");
        }
    }

    #[test]
    fn bad_flags() {
        for args in [
            &["--clients", "0"][..],
            &["--connections", "0"],
            &["--ops", "0"],
            &["--duration", "0"],
            &["--duration", "soon"],
            &["--warmup", "-1"],
            &["--read-ratio", "1.5"],
            &["--read-ratio", "-0.1"],
            &["--read-ratio", "NaN"],
            &["--keys", "0"],
            &["--value-size", "-1"],
            &["--threads", "0"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
        let e = parse(&["--clients", "2", "--connections", "3"])
            .unwrap()
            .plan()
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
    }

    #[test]
    fn percentiles_exact_for_small_values() {
        let mut h = Histogram::default();
        assert_eq!((h.quantile(0.5), h.max(), h.mean()), (0, 0, 0.0));
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.max(), 100);
        assert_eq!(h.mean(), 50.5);
        let mut one = Histogram::default();
        one.record(7);
        assert_eq!((one.quantile(0.5), one.quantile(0.99)), (7, 7));
    }

    #[test]
    fn percentiles_close_to_exact_and_merge() {
        // Values over many orders of magnitude, spread over several histograms then merged,
        // against the exact percentile of the sorted values.
        let mut rng = Rng::new(42);
        let mut all = Vec::new();
        let mut parts = vec![Histogram::default(); 4];
        for i in 0..20_000 {
            let bits = 1 + rng.below(30);
            let v = rng.below(1 << bits);
            all.push(v);
            parts[i % 4].record(v);
        }
        let mut h = Histogram::default();
        for p in &parts {
            h.merge(p);
        }
        all.sort_unstable();
        assert_eq!(h.count(), all.len() as u64);
        assert_eq!(h.max(), *all.last().unwrap());
        for q in [0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * all.len() as f64).ceil() as usize).max(1);
            let exact = all[rank - 1];
            let got = h.quantile(q);
            assert!(got >= exact, "q={q}: {got} < {exact}");
            assert!(
                got - exact <= exact / 256 + 1,
                "q={q}: {got} vs exact {exact}"
            );
        }
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
        assert!((h.mean() - mean).abs() < 1e-6 * mean);
    }

    #[test]
    fn buckets_are_contiguous() {
        // Every value maps to a bucket whose upper bound is at or above it, and the bucket
        // before ends just below it.
        for v in (0..5000).chain([1 << 20, (1 << 20) + 12345, (1 << 36) - 1]) {
            let i = Histogram::index(v);
            assert!(Histogram::bucket_high(i) >= v, "{v}");
            if i > 0 {
                assert!(Histogram::bucket_high(i - 1) < v, "{v}");
            }
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::bucket_high(BUCKETS - 1), (1 << 36) - 1);
    }

    #[test]
    fn target_flag() {
        assert_eq!(parse(&[]).unwrap().target, Target::Omnikv);
        let p = parse(&["--target", "etcd"]).unwrap().plan().unwrap();
        assert_eq!((p.target, p.target.as_str()), (Target::Etcd, "etcd"));
        assert_eq!(parse(&["--target", "redis"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn base64_matches_rfc4648() {
        // RFC 4648 section 10 test vectors, plus every byte value.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert!(base64(&all).ends_with("+/w=="));
    }

    #[test]
    fn etcd_errors_are_classified() {
        let no_leader = r#"{"error":"etcdserver: no leader","code":14}"#;
        assert!(matches!(
            etcd_error(503, no_leader),
            ClientError::Unavailable(_)
        ));
        let timeout = r#"{"error":"etcdserver: request timed out","code":14}"#;
        assert!(matches!(
            etcd_error(503, timeout),
            ClientError::Indeterminate(_)
        ));
        assert!(matches!(
            etcd_error(400, "{}"),
            ClientError::Rejected { .. }
        ));
    }

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
