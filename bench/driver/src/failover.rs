//! `omnikv-bench first-write`: bench/run.py's failover probe, the same for both systems. One
//! connection per endpoint (the members left once the leader is killed; omnikv over its HTTP
//! API, etcd over its native gRPC API), each warmed by one put; prints `ready`, waits for a
//! line on stdin (the orchestrator sends it right after the kill -9), then puts one key
//! through the endpoints in turn, each attempt bounded by --attempt-ms with --pause-ms
//! between attempts, until one is acknowledged: the seconds from that line to the
//! acknowledgement.

use crate::conn::Target;
use crate::rolling_restart::Member;
use kvctl::Error;
use omnikv_common::ClientError;
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// Puts tried per endpoint before the measurement, to connect.
const WARM_TRIES: u32 = 20;

/// `first-write` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FirstWriteArgs {
    /// The key written.
    #[arg(long, value_name = "KEY", default_value = "failover")]
    pub write_key: String,
    /// Time allowed per attempt, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub attempt_ms: u64,
    /// Pause after a failed attempt, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub pause_ms: u64,
    /// Give up after this long without an acknowledged write.
    #[arg(long, default_value = "30s", value_parser = kvctl::cli::parse_timeout)]
    pub within: Duration,
}

/// What `first-write` prints (after its `ready` line).
#[derive(Debug, Serialize)]
pub struct FirstWriteReport {
    pub workload: &'static str,
    pub target: &'static str,
    /// From the go line to the first acknowledged write; None when none came in time.
    pub seconds: Option<f64>,
    pub attempts: u64,
    /// The endpoint that acknowledged it.
    pub endpoint: Option<String>,
    /// The first few failed attempts' errors.
    pub first_errors: Vec<String>,
}

/// Warms a connection to every endpoint, prints `ready` to `out`, waits for a line on stdin,
/// then writes until a put is acknowledged.
pub async fn run(
    target: Target,
    endpoints: &[String],
    args: &FirstWriteArgs,
    out: &mut dyn Write,
) -> Result<FirstWriteReport, Error> {
    if endpoints.is_empty() {
        return Err(Error::usage("no endpoints given"));
    }
    let attempt = Duration::from_millis(args.attempt_ms.max(1));
    let members: Vec<Member> = endpoints
        .iter()
        .map(|e| Member::new(target, e, attempt))
        .collect();
    // Dedup ids of omnikv's writes: one client, one sequence number per put.
    let client_id = (u64::from(std::process::id()) << 20) | 1;
    let mut seq = 0;
    for (m, e) in members.iter().zip(endpoints) {
        // A few tries: each is bounded by --attempt-ms, which a loaded machine can pass.
        let mut tries = 0;
        loop {
            seq += 1;
            tries += 1;
            match m
                .put(&args.write_key, b"warm", (client_id, seq), attempt)
                .await
            {
                Ok(()) => break,
                Err(err) if tries == WARM_TRIES => {
                    return Err(Error::Client(ClientError::Unavailable(format!(
                        "warming the connection to {e}: {err}"
                    ))))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(Error::stdout)?;
    let line = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map(|n| n > 0)
    })
    .await
    .map_err(|e| Error::usage(format!("reading stdin: {e}")))?;
    if !matches!(line, Ok(true)) {
        return Err(Error::usage("stdin ended before the go line"));
    }
    let start = Instant::now();
    let mut report = FirstWriteReport {
        workload: "first-write",
        target: target.as_str(),
        seconds: None,
        attempts: 0,
        endpoint: None,
        first_errors: Vec::new(),
    };
    let mut j = 0;
    while start.elapsed() < args.within {
        seq += 1;
        report.attempts += 1;
        let put = members[j].put(&args.write_key, b"x", (client_id, seq), attempt);
        let outcome = match tokio::time::timeout(attempt, put).await {
            Ok(r) => r,
            Err(_) => Err(format!("{}: no answer in {attempt:?}", endpoints[j])),
        };
        match outcome {
            Ok(()) => {
                report.seconds = Some(start.elapsed().as_secs_f64());
                report.endpoint = Some(endpoints[j].clone());
                break;
            }
            Err(e) => {
                if report.first_errors.len() < 5 {
                    report.first_errors.push(e);
                }
                j = (j + 1) % members.len();
                tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
            }
        }
    }
    Ok(report)
}
