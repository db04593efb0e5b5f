//! `kvctl bench`: a load generator. `--clients` logical clients (tokio tasks) each run one
//! operation at a time, in a closed loop (`workload`), over `--connections` shared drivers
//! (`driver`: omnikv's client). Each task records its own counts and latency histogram (no
//! locks, no allocation on the hot path beyond what the client does); they are merged into
//! the `report` at the end. The benchmark tool (bench/driver) runs the same loop with its
//! own drivers through [`connections`] and [`measure`].

mod driver;
mod histogram;
mod plan;
mod report;
mod rng;
mod workload;

pub use driver::{Driver, Outcome};
pub use histogram::Histogram;
pub use plan::Plan;
pub use report::BenchReport;
pub use rng::Rng;

use crate::cli::BenchArgs;
use crate::context::Context;
use crate::exit::Error;
use omnikv_common::{Client, Consistency};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{client_loop, Shared, Stats};

/// Runs the benchmark and prints its report. Exit 3 (unavailable) when no operation succeeded.
pub async fn run(ctx: &Context, args: &BenchArgs, out: &mut dyn Write) -> Result<(), Error> {
    let plan = Plan::from_args(args)?;
    let endpoints = ctx.selected_endpoints()?;
    let credentials = ctx.credentials()?;
    let drivers = connections(&plan, &endpoints, |eps| {
        Client::with_credentials(eps, ctx.timeout, &credentials)
    })?;
    let report = measure("omnikv", &plan, ctx.consistency, drivers).await;
    report.write(out, ctx.output).map_err(Error::stdout)?;
    report.check()
}

/// The `plan.connections` drivers made by `new`: driver j gets the endpoints rotated to start
/// on endpoint j (mod their number), to spread the load.
pub fn connections<D, E>(
    plan: &Plan,
    endpoints: &[String],
    new: impl Fn(&[String]) -> Result<D, E>,
) -> Result<Vec<Arc<D>>, E> {
    (0..plan.connections)
        .map(|j| {
            let mut eps = endpoints.to_vec();
            eps.rotate_left(j.checked_rem(endpoints.len()).unwrap_or(0));
            new(&eps).map(Arc::new)
        })
        .collect()
}

/// Runs `plan`'s logical clients over `drivers` (client i on driver i mod their number), the
/// warmup then the measured window, and reports on the system named `target`.
pub async fn measure<D: Driver>(
    target: &'static str,
    plan: &Plan,
    consistency: Consistency,
    drivers: Vec<Arc<D>>,
) -> BenchReport {
    assert!(!drivers.is_empty(), "no driver");
    let threads = tokio::runtime::Handle::current().metrics().num_workers();

    let measure_start = Instant::now() + plan.warmup;
    let deadline = plan.duration.map(|d| measure_start + d);
    let shared = Arc::new(Shared::new(plan, consistency, measure_start, deadline));
    let base_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            let seed = base_seed.wrapping_add((i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            tokio::spawn(client_loop(
                shared.clone(),
                drivers[i % drivers.len()].clone(),
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
    let cpu_cores = if wall > 0.0 {
        cpu.as_secs_f64() / wall
    } else {
        0.0
    };
    BenchReport::new(
        target,
        plan,
        threads,
        consistency,
        &stats,
        window,
        cpu_cores,
    )
}

/// User + system CPU time of this process (all threads) so far.
pub fn process_cpu_time() -> Duration {
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
