//! The report of a `kvctl bench` run: built from the merged counts, printed as aligned text
//! or as one JSON object (`-o json`; bench/run.py and the scripts read its fields).

use crate::bench::plan::Plan;
use crate::bench::workload::{ErrorClass, Stats, CLASSES};
use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output::json_line;
use omnikv_common::{ClientError, Consistency};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};

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
    /// The system driven: `omnikv` (kvctl), or what the benchmark tool names (`etcd`).
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
    /// Successes that found nothing (counted in `ok`): gets of a missing key, failed compares.
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

impl BenchReport {
    /// The report of a run of `plan` against `target` on `threads` worker threads: `stats`
    /// merged from every client, over a measured window of `window_s` seconds in which the
    /// load generator used `cpu_cores`.
    pub fn new(
        target: &'static str,
        plan: &Plan,
        threads: usize,
        consistency: Consistency,
        stats: &Stats,
        window_s: f64,
        cpu_cores: f64,
    ) -> Self {
        let h = &stats.latency;
        BenchReport {
            target,
            clients: plan.clients,
            connections: plan.connections,
            threads,
            duration_s: round(window_s, 3),
            warmup_s: round(plan.warmup.as_secs_f64(), 3),
            ops: stats.ok + stats.errors.iter().sum::<u64>(),
            ok: stats.ok,
            misses: stats.misses,
            ops_per_sec: if window_s > 0.0 {
                round(stats.ok as f64 / window_s, 1)
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
            client_cpu_cores: round(cpu_cores, 3),
            read_ratio: plan.read_ratio,
            value_size: plan.value_size,
            keys: plan.keys,
            consistency: consistency.as_str(),
            first_errors: CLASSES
                .iter()
                .filter_map(|&(c, name)| Some((name, stats.first_errors[c as usize].clone()?)))
                .collect(),
        }
    }

    /// The report as text: aligned `label: value` lines.
    pub fn text(&self) -> String {
        let r = self;
        let e = &r.errors;
        let l = &r.latency_ms;
        let mut rows = vec![
            (
                "clients:".to_string(),
                format!(
                    "{} over {} connection(s), {} thread(s)",
                    r.clients, r.connections, r.threads
                ),
            ),
            (
                "workload:".into(),
                format!(
                    "read ratio {:.2} ({}), {} keys, {}-byte values",
                    r.read_ratio, r.consistency, r.keys, r.value_size
                ),
            ),
            (
                "duration:".into(),
                format!("{:.2} s (after {:.2} s warmup)", r.duration_s, r.warmup_s),
            ),
            (
                "ops:".into(),
                format!("{} (ok {}, get misses {})", r.ops, r.ok, r.misses),
            ),
            ("throughput:".into(), format!("{:.1} ops/s", r.ops_per_sec)),
            (
                "latency ms:".into(),
                format!(
                    "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
                    l.p50, l.p90, l.p99, l.max, l.mean
                ),
            ),
            (
                "errors:".into(),
                format!(
                    "unavailable {}, indeterminate {}, rejected {}",
                    e.unavailable, e.indeterminate, e.rejected
                ),
            ),
            (
                "client CPU:".into(),
                format!("{:.2} cores", r.client_cpu_cores),
            ),
        ];
        // The error samples (long labels) do not widen the block.
        let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (class, message) in &r.first_errors {
            rows.push((format!("first {class} error:"), message.clone()));
        }
        let mut out = String::new();
        for (name, value) in rows {
            out.push_str(&format!("{name:<width$} {value}\n"));
        }
        out
    }

    /// Exit 3 (unavailable) when no operation succeeded, with the first error seen.
    pub fn check(&self) -> Result<(), Error> {
        if self.ok > 0 {
            return Ok(());
        }
        let why = self
            .first_errors
            .values()
            .next()
            .map_or_else(String::new, |m| format!(" (first error: {m})"));
        // Refused credentials are the only errors whose message starts so (ClientError's
        // Display): the run failed for who we are, not for the cluster (exit 7).
        if self
            .first_errors
            .values()
            .any(|m| m.starts_with("not permitted: "))
        {
            return Err(Error::Client(ClientError::NotPermitted(format!(
                "no operation succeeded{why}"
            ))));
        }
        Err(Error::Client(ClientError::Unavailable(format!(
            "no operation succeeded{why}"
        ))))
    }

    /// Prints the report: text see [`BenchReport::text`], JSON this object on one line.
    pub fn write(&self, out: &mut dyn Write, format: OutputFormat) -> io::Result<()> {
        match format {
            OutputFormat::Json => json_line(out, self),
            OutputFormat::Text => out.write_all(self.text().as_bytes()),
        }
    }
}
