//! Deterministic simulation of omnikv: replicas running kvd's shipped consensus loop
//! (`kvd::replica::Replica`, sans-IO) over real RocksDB, stepped in one thread over a seeded
//! network that drops, delays and reorders frames across links, partitions links, pauses,
//! crashes and power-cuts replicas and restarts them from their persisted stores, while an
//! operator adds, removes and replaces members. See `world.rs` for the checks.
//!
//! - `random_seeds_*`: `OMNIKV_SIM_SEEDS` seeds (default 1000; CI runs 1200) split over four
//!   tests.
//! - `OMNIKV_SIM_SEED=S`: replay seed S alone with a verbose trace (every frame).
//! - `scenarios.rs`: named, scripted schedules (past regressions among them).
//! - `mutations.rs`: deliberate defects in the shipped loop (`kvd::replica::Defect`), each
//!   caught by a named seed.

mod clients;
#[path = "../it/linearizability.rs"]
#[allow(dead_code)]
mod linearizability;
mod mutations;
mod net;
mod node;
mod scenarios;
mod world;

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;
use world::{Params, Stats, World};

/// The outcome of one seed: its stats, or the failure with the trace to print.
pub struct Failure {
    pub seed: u64,
    pub error: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation seed {} FAILED: {}", self.seed, self.error)?;
        let keep = if std::env::var("OMNIKV_SIM_FULLTRACE").is_ok() {
            usize::MAX
        } else {
            400
        };
        let skip = self.trace.len().saturating_sub(keep);
        if skip > 0 {
            writeln!(f, "... ({skip} earlier trace lines)")?;
        }
        for l in &self.trace[skip..] {
            writeln!(f, "  {l}")?;
        }
        write!(
            f,
            "replay: OMNIKV_SIM_SEED={} cargo test -p kvd --test sim replay -- --nocapture",
            self.seed
        )
    }
}

/// The random schedule of `seed`.
pub fn params_for(seed: u64) -> Params {
    Params::random(&mut StdRng::seed_from_u64(seed))
}

/// Silences the panic message of a simulated crash (`kvd::failpoint::Crashed`): it is an
/// event of the schedule, not a failure. Other panics print as usual.
fn quiet_simulated_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<kvd::failpoint::Crashed>() {
                default(info);
            }
        }));
    });
}

/// Runs `body` on a fresh world for `seed`, turning panics into failures with the trace.
pub fn run_world(
    seed: u64,
    params: Params,
    verbose: bool,
    body: impl FnOnce(&mut World) -> Result<(), String>,
) -> Result<(Stats, u64), Failure> {
    quiet_simulated_crashes();
    let trace = Rc::new(RefCell::new(Vec::new()));
    let t2 = trace.clone();
    let r = catch_unwind(AssertUnwindSafe(move || {
        let mut w = World::new(seed, params, t2, verbose);
        let r = body(&mut w);
        r.map(|()| (w.stats.clone(), w.digest()))
    }));
    let error = match r {
        Ok(Ok(ok)) => return Ok(ok),
        Ok(Err(e)) => e,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            format!("panic: {msg}")
        }
    };
    let trace = trace.borrow().clone();
    Err(Failure { seed, error, trace })
}

/// Seed `seed`'s schedule as it was before clients compacted and used leases: the seeds that
/// tests named before those came (mutations, a regression) were found on these schedules.
pub fn params_before_leases(seed: u64) -> Params {
    let mut p = params_for(seed);
    p.p_compact = 0.0;
    p.p_lease = 0.0;
    p
}

pub fn run_seed(seed: u64, verbose: bool) -> Result<(Stats, u64), Failure> {
    run_world(seed, params_for(seed), verbose, |w| w.run_random())
}

fn seed_count() -> u64 {
    std::env::var("OMNIKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

const SHARDS: u64 = 4;

/// Seeds that fail today, not yet diagnosed, excluded from the random search and reported
/// as open bugs. None today.
pub const KNOWN_FAILING: [u64; 0] = [];

fn run_shard(shard: u64) {
    if std::env::var("OMNIKV_SIM_SEED").is_ok() {
        return; // replaying one seed: the `replay` test does it
    }
    let started = Instant::now();
    let mut total = Stats::default();
    let mut seeds = 0;
    let mut failures = Vec::new();
    for seed in (0..seed_count()).filter(|s| s % SHARDS == shard && !KNOWN_FAILING.contains(s)) {
        match run_seed(seed, false) {
            Ok((s, _)) => total.add(&s),
            Err(f) => failures.push(f),
        }
        seeds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sim shard {shard}: {seeds} seeds in {secs:.1}s ({:.1} seeds/s): {total:?}",
        seeds as f64 / secs
    );
    if let Some(f) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        panic!("{} seeds failed: {seeds:?}\n{f}", failures.len());
    }
}

#[test]
fn random_seeds_0() {
    run_shard(0);
}
#[test]
fn random_seeds_1() {
    run_shard(1);
}
#[test]
fn random_seeds_2() {
    run_shard(2);
}
#[test]
fn random_seeds_3() {
    run_shard(3);
}

/// `OMNIKV_SIM_SEED=S`: one seed, with every frame in the trace (printed whatever the
/// outcome).
#[test]
fn replay() {
    let Some(seed) = std::env::var("OMNIKV_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let trace = Rc::new(RefCell::new(Vec::new()));
    let t2 = trace.clone();
    let r = catch_unwind(AssertUnwindSafe(move || {
        let mut w = World::new(seed, params_for(seed), t2, true);
        let r = w.run_random();
        (r, w.stats.clone())
    }));
    for l in trace.borrow().iter() {
        eprintln!("{l}");
    }
    match r {
        Ok((Ok(()), stats)) => eprintln!("seed {seed} passed: {stats:?}"),
        Ok((Err(e), _)) => panic!("seed {seed} FAILED: {e}"),
        Err(_) => panic!("seed {seed} panicked (see above)"),
    }
}

/// A seed is a complete description of a run: running it twice gives the same run.
#[test]
fn a_seed_reproduces_its_run() {
    for seed in [7, 1234] {
        let a = run_seed(seed, false).unwrap_or_else(|f| panic!("{f}"));
        let b = run_seed(seed, false).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(
            a.1, b.1,
            "seed {seed}: two runs differ ({:?} vs {:?})",
            a.0, b.0
        );
    }
}
