//! Regression tests for bugs the simulation found.
//!
//! Stale AcceptDecide after a re-sync (OmniPaxos 0.2.4, reachable through kvd's loop before
//! the fix). In one loop iteration the leader (a) queues an AcceptDecide to follower F (an
//! append), (b) handles F's Promise while in Accept phase: `handle_promise_accept` queues an
//! AcceptSync (new sequence session) but, unlike `handle_preparereq`, does not reset F's cached
//! "latest AcceptDecide", then (c) appends again: `send_acceptdecide` extends the STALE message
//! (a), which F drops (old session). F's next AcceptDecide carries session 2 counter 2, so F
//! sees no gap and stores the later entries one slot early, reports that accepted index, and
//! the leader counts it: F decides and applies a different entry at the same index (seed 3:
//! replica 4 holds `put u3-12` at c1#8 where the others hold `put u3-11`). kvd now takes the
//! outgoing messages after every `handle_incoming` (replica.rs, `handle_peer`), which ends the
//! batching across the Promise; the loop from before is kept here as `drain_per_message =
//! false` to show the test tells the two apart.

use crate::world::World;
use crate::{params_for, run_world};

fn run(seed: u64, drain_per_message: bool) -> Result<(), crate::Failure> {
    let mut p = params_for(seed);
    p.drain_per_message = drain_per_message;
    run_world(seed, p, false, |w: &mut World| w.run_random()).map(|_| ())
}

#[test]
fn accept_after_resync_seed_3_decided_entries_agree() {
    run(3, true).unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn the_loop_before_the_fix_decides_two_entries_at_one_index_on_seed_3() {
    let failure = run(3, false).expect_err("seed 3 no longer exposes the stale AcceptDecide");
    eprintln!("old loop, seed 3: {}", failure.error);
}
