//! Proof that the simulator catches real bugs: each test switches on one deliberate defect
//! in the shipped loop (`kvd::replica::Defect`) and runs the random schedule of the seed that
//! catches it, which must fail with the defect and pass without it. The seeds are the first
//! ones (from 0) a search over the random schedules found, within a budget of 3000 seeds;
//! one defect no random seed catches within it has a scripted schedule instead. Defects that
//! are not about leases run without the clients' compactions and leases
//! (`params_before_leases`), as the schedules were when the search found their seeds; a
//! seed's schedule with them is another schedule.
//! `OMNIKV_SIM_MUTATION_SEARCH=1 cargo test -p kvd --test sim mutation_search -- --nocapture`
//! searches again (after a change to the simulator or the loop moves the seeds).

use crate::world::Params;
use crate::{params_before_leases, params_for, run_world, Failure};
use kvd::replica::Defect;

/// A defect must be caught within this many random seeds (CI runs fewer, but each defect's seed
/// runs in its own test).
const BUDGET: u64 = 3000;

/// The schedule `defect` is searched and caught on: seed `seed`'s, with clients' leases only
/// for the defect that is about them.
fn schedule(defect: Defect, seed: u64) -> Params {
    match defect {
        Defect::UncountedLeaseCheckpoints => params_for(seed),
        _ => params_before_leases(seed),
    }
}

/// Seed `seed`'s random schedule, with `defect` switched on.
fn run_with(defect: Defect, seed: u64) -> Result<(), Failure> {
    let mut p = schedule(defect, seed);
    p.defect = Some(defect);
    run_world(seed, p, false, |w| w.run_random()).map(|_| ())
}

/// `seed` catches `defect`: its run fails with the defect and passes without it.
fn caught(defect: Defect, seed: u64) {
    let failure = run_with(defect, seed).err().unwrap_or_else(|| {
        panic!(
            "{defect:?} is no longer caught by seed {seed}: search again \
             (OMNIKV_SIM_MUTATION_SEARCH=1 ... mutation_search)"
        )
    });
    eprintln!("{defect:?}: seed {seed} fails: {}", failure.error);
    run_world(seed, schedule(defect, seed), false, |w| w.run_random())
        .unwrap_or_else(|f| panic!("without the defect: {f}"));
}

#[test]
fn apply_ignoring_dedup_is_caught() {
    caught(Defect::ApplyIgnoresDedup, 0);
}

/// No random seed within the budget catches this one (losing an acknowledged write needs a
/// follower to lose power between its Accepted and its sync, the leader to fall before the
/// entry spreads, and the third replica to have missed it): its scenario builds that
/// schedule, and catches it.
#[test]
fn acknowledging_before_the_sync_is_caught_by_its_scenario() {
    let failure = crate::scenarios::follower_power_cut_at_its_sync(Some(Defect::SendBeforeSync))
        .expect_err("the defect went unnoticed");
    eprintln!("SendBeforeSync, scripted: {}", failure.error);
    assert!(
        failure.error.contains("missing") || failure.error.contains("differs"),
        "{}",
        failure.error
    );
}

#[test]
fn an_apply_cursor_trusting_the_library_compaction_is_caught() {
    caught(Defect::TrustLibraryCompaction, 0);
}

#[test]
fn serving_a_read_before_its_quorum_round_is_caught() {
    caught(Defect::ReadBeforeQuorum, 90);
}

/// The stale AcceptDecide that the model of the loop found as its seed 3 (OmniPaxos 0.2.4
/// extends a queued AcceptDecide after a Promise handled in the same batch; the follower then
/// decides a different entry at one index): the loop takes outgoing messages after each
/// handled message since. Without that rule, the real loop's replicas apply different entries
/// at one index on seed 2458 (their state hashes differ at one position).
#[test]
fn taking_outgoing_messages_once_per_iteration_is_caught() {
    caught(Defect::OutgoingOncePerIteration, 2458);
    let f = run_with(Defect::OutgoingOncePerIteration, 2458).expect_err("caught above");
    assert!(
        f.error.contains("differs") || f.error.contains("state hash"),
        "{}",
        f.error
    );
}

/// A lease checkpoint without the renewal count it was measured at (what
/// `--legacy-lease-checkpoints` proposes for older replicas): on seed 53 the leader's
/// checkpoint, decided after a keepalive it predates, cuts the renewed lease short, and a
/// leased key goes while its lease must still live.
#[test]
fn lease_checkpoints_without_renewal_counts_are_caught() {
    caught(Defect::UncountedLeaseCheckpoints, 53);
    let f = run_with(Defect::UncountedLeaseCheckpoints, 53).expect_err("caught above");
    assert!(f.error.contains("lives until step"), "{}", f.error);
}

/// `OMNIKV_SIM_MUTATION_SEARCH=1` (or a defect's name): for each defect, the first seed whose
/// run it makes fail (a tool for moving the seeds above, not part of the suite: without the
/// variable it does nothing).
#[test]
fn mutation_search() {
    let Ok(which) = std::env::var("OMNIKV_SIM_MUTATION_SEARCH") else {
        return;
    };
    for defect in [
        Defect::ApplyIgnoresDedup,
        Defect::SendBeforeSync,
        Defect::TrustLibraryCompaction,
        Defect::ReadBeforeQuorum,
        Defect::OutgoingOncePerIteration,
        Defect::UncountedLeaseCheckpoints,
    ] {
        if which != "1" && format!("{defect:?}") != which {
            continue;
        }
        match (0..BUDGET).find_map(|seed| run_with(defect, seed).err()) {
            Some(f) => eprintln!("{defect:?}: first caught by seed {}: {}", f.seed, f.error),
            None => eprintln!("{defect:?}: NOT caught within {BUDGET} seeds"),
        }
    }
}
