//! Proof that the simulator catches real bugs: each test switches on one deliberate defect
//! in the shipped loop (`kvd::replica::Defect`) and runs the random schedule from seed 0 up
//! until a seed fails, within CI's seed budget. The seed that catches each defect is named
//! in the test (the first seed the search finds); if the search ever needs more, the test
//! says so and still passes as long as it is within the budget.

use crate::world::Params;
use crate::{params_for, run_world, Failure};
use kvd::replica::Defect;

/// CI runs this many random seeds; a defect must be caught within them.
const BUDGET: u64 = 3000;

/// The first seed (from 0) on which `defect` makes the run fail, with the failure.
fn first_failing_seed(defect: Defect, tweak: impl Fn(&mut Params)) -> Option<Failure> {
    (0..BUDGET).find_map(|seed| {
        let mut p = params_for(seed);
        p.defect = Some(defect);
        tweak(&mut p);
        run_world(seed, p, false, |w| w.run_random()).err()
    })
}

fn caught(defect: Defect, named_seed: u64, tweak: impl Fn(&mut Params)) {
    let f = first_failing_seed(defect, tweak)
        .unwrap_or_else(|| panic!("{defect:?} went unnoticed over {BUDGET} seeds"));
    eprintln!(
        "{defect:?}: caught by seed {} (named: {named_seed}): {}",
        f.seed, f.error
    );
    assert_eq!(
        f.seed, named_seed,
        "{defect:?} is now first caught by seed {}, not {named_seed}: update the name",
        f.seed
    );
    // The same seed passes without the defect (it is one of the random seeds CI runs).
    crate::run_seed(f.seed, false).unwrap_or_else(|f| panic!("without the defect: {f}"));
}

#[test]
fn apply_ignoring_dedup_is_caught() {
    caught(Defect::ApplyIgnoresDedup, 0, |_| {});
}

#[test]
fn acknowledging_before_the_sync_is_caught() {
    caught(Defect::SendBeforeSync, 0, |_| {});
}

#[test]
fn an_apply_cursor_trusting_the_library_compaction_is_caught() {
    caught(Defect::TrustLibraryCompaction, 0, |_| {});
}

#[test]
fn answering_a_read_before_its_barrier_is_caught() {
    caught(Defect::ReadBeforeBarrier, 0, |_| {});
}
