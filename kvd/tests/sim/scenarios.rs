//! Named scenarios on scripted schedules (docs/architecture.md, "Design decisions"), each run
//! through the same world and checks as the random seeds, plus the mutations that show the
//! checks fail when the apply loop is wrong.

use crate::run_world;
use crate::world::{Mutation, NodeStats, Params, Payload, World};

fn ok<T>(r: Result<T, crate::Failure>) -> T {
    r.unwrap_or_else(|f| panic!("{f}"))
}

/// Steps until every live replica knows the same leader; returns it.
fn wait_leader(w: &mut World) -> Result<u64, String> {
    for _ in 0..200 {
        w.step(false);
        let leaders: Vec<Option<u64>> = w
            .nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.current_leader())
            .collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                return Ok(*l);
            }
        }
    }
    Err(format!("no leader: {}", w.summary()))
}

/// `n` client writes handed to `pid`, two steps apart.
fn write_n(w: &mut World, pid: u64, n: usize) {
    for _ in 0..n {
        w.client_write(Some(pid), true);
        w.step(false);
        w.step(false);
    }
}

fn run_until(
    w: &mut World,
    max: u64,
    what: &str,
    f: impl Fn(&World) -> bool,
) -> Result<(), String> {
    for _ in 0..max {
        if f(w) {
            return Ok(());
        }
        w.step(false);
    }
    Err(format!(
        "{what}: not reached in {max} steps: {}",
        w.summary()
    ))
}

fn others(w: &World, l: u64) -> (u64, u64) {
    let o: Vec<u64> = (1..=w.env.p.n as u64).filter(|&p| p != l).collect();
    (o[0], o[1])
}

/// The 0.2.4 StopSign re-sync bug as kvd meets it: the followers accept the StopSign but
/// miss its Decide; the leader switches to the new configuration (its old instance is gone);
/// the followers elect a leader of the old configuration among themselves, whose re-sync of
/// the other puts that follower's accepted index one too high. kvd must still bring both into
/// the new configuration with the identical state (announcements, straggler grace, joining by
/// checkpoint), and never apply anything twice or differently.
#[test]
fn stopsign_resync_bug_followers_miss_the_decide() {
    let (stats, _) = ok(run_world(11, Params::scripted(3), false, |w| {
        let l = wait_leader(w)?;
        write_n(w, l, 5);
        w.env.filter = Some(Box::new(move |m| {
            (m.config == 1 && m.is_decide() && m.to != l) || matches!(m.p, Payload::NewConfig(_))
        }));
        w.request_reconfig();
        run_until(w, 100, "the leader switches", |w| {
            w.node(l).config_id() == 2
        })?;
        // No shortcut for a while: the followers re-sync each other in configuration 1.
        w.env.filter = Some(Box::new(|m| matches!(m.p, Payload::NewConfig(_))));
        for _ in 0..60 {
            w.step(false);
        }
        let (f, g) = others(w, l);
        w.env
            .log(format!("after the re-sync window: {}", w.summary()));
        w.env.filter = None;
        run_until(w, 300, "both followers switch", |w| {
            w.node(f).config_id() == 2 && w.node(g).config_id() == 2
        })?;
        write_n(w, l, 5);
        w.settle()
    }));
    assert!(
        stats.switches >= 1 && stats.joins_as_new + stats.switches >= 3,
        "{stats:?}"
    );
}

/// A seed of the random schedule on which a replica's switch came from storage alone
/// (`is_reconfigured()` None, StopSign stored and the decided index past it): the 0.2.4 bug
/// hit, and survived. Found by the random search; kept as a named regression. kvd now
/// corrects such re-syncs where they arrive (`fix_stopsign_resync`), after which the library
/// reports the decision too; the detection from storage stays, and is exercised here with the
/// re-syncs left as the library sends them.
#[test]
fn stopsign_decision_seen_from_storage_only() {
    let seed = STOPSIGN_BUG_SEED;
    let mut p = crate::params_for(seed);
    p.fix_stopsign_sync = false;
    let (stats, _) = ok(run_world(seed, p, false, |w| w.run_random()));
    assert!(
        stats.stopsign_bug_hits > 0,
        "seed {seed} no longer hits the 0.2.4 StopSign bug: {stats:?}"
    );
    let (stats, _) = ok(crate::run_seed(seed, false));
    assert_eq!(
        stats.stopsign_bug_hits, 0,
        "with the re-sync fix the library reports the decision: {stats:?}"
    );
}

const STOPSIGN_BUG_SEED: u64 = 188;

fn quiet(keep: u64, interval: u64) -> Params {
    let mut p = Params::scripted(3);
    p.snapshot_keep = keep;
    p.snapshot_interval = interval;
    p
}

/// A follower restarted under load: the leader's re-sync makes the library compact the
/// follower's log past its applied cursor. The cursor must not take the Snapshotted element
/// for state: it catches up from peers (their kept tail covers the gap) to the identical state.
fn follower_restarted_under_load(
    p: Params,
) -> Result<(crate::world::Stats, NodeStats), crate::Failure> {
    let mut f_stats = NodeStats::default();
    let fs = &mut f_stats;
    let r = run_world(21, p, false, |w| {
        let l = wait_leader(w)?;
        let (f, _) = others(w, l);
        write_n(w, l, 10);
        w.crash(f);
        write_n(w, l, 30);
        w.restart(f);
        write_n(w, l, 20);
        w.settle()?;
        *fs = w.env.node_stats[f as usize].clone();
        Ok(())
    });
    r.map(|(s, _)| (s, f_stats))
}

#[test]
fn library_compacts_a_follower_restarted_under_load() {
    let (_, f) = ok(follower_restarted_under_load(quiet(100, 5)));
    assert!(f.lib_compactions_past_cursor > 0, "{f:?}");
    assert!(f.fetched_entries > 0 && f.checkpoints == 0, "{f:?}");
}

/// The mutation: an apply loop that trusts the library's compaction (jumps its cursor to
/// the compacted index as if the snapshot held the state) is caught by the checks.
#[test]
fn checks_catch_an_apply_loop_trusting_the_library_snapshot() {
    let mut p = quiet(100, 5);
    p.mutation = Some(Mutation::TrustLibrarySnapshot);
    let Err(f) = follower_restarted_under_load(p) else {
        panic!("the mutation went unnoticed");
    };
    assert!(
        f.error.contains("state hash") || f.error.contains("missing"),
        "{}",
        f.error
    );
}

/// A leader elected while behind: the replica missed entries (partitioned), then is made
/// leader while the old one is down. Its own log is compacted past its cursor by the library
/// during the leader's sync; it must catch up from the remaining peer.
#[test]
fn library_compacts_a_leader_elected_while_behind() {
    let (_, f) = ok({
        let mut out = NodeStats::default();
        let o = &mut out;
        run_world(31, quiet(100, 5), false, |w| {
            let l = wait_leader(w)?;
            let (f, g) = others(w, l);
            write_n(w, l, 5);
            w.isolate(f);
            write_n(w, l, 30);
            w.heal();
            w.crash(l);
            run_until(w, 100, "the behind replica leads", |w| {
                w.node(f).current_leader() == Some(f) && w.node(g).current_leader() == Some(f)
            })
            .or_else(|_| {
                w.node_mut(f).op.as_mut().expect("up").try_become_leader();
                run_until(w, 100, "the behind replica leads", |w| {
                    w.node(f).current_leader() == Some(f)
                })
            })?;
            write_n(w, f, 10);
            w.settle()?;
            *o = w.env.node_stats[f as usize].clone();
            Ok(())
        })
        .map(|(s, _)| (s, out))
    });
    assert!(f.leader_while_behind > 0, "{f:?}");
    assert!(f.lib_compactions_past_cursor > 0, "{f:?}");
    assert!(f.fetched_entries > 0, "{f:?}");
}

/// Catch-up from peers (they keep a tail longer than the gap) versus from a checkpoint (every
/// peer compacted past the cursor): both end in the identical state.
#[test]
fn catch_up_from_peers_versus_from_a_checkpoint() {
    let run = |p: Params| {
        let mut out = (NodeStats::default(), 0u64);
        let o = &mut out;
        ok(run_world(41, p, false, |w| {
            let l = wait_leader(w)?;
            let (f, _) = others(w, l);
            write_n(w, l, 10);
            w.crash(f);
            write_n(w, l, 30);
            w.restart(f);
            w.settle()?;
            *o = (
                w.env.node_stats[f as usize].clone(),
                w.node(f).sm().meta().hash,
            );
            Ok(())
        }));
        out
    };
    // Each run ends converged: every replica, the caught-up one included, at the same
    // position with the same state hash (checked by `settle`).
    let (peers, _) = run(quiet(100, 5));
    assert!(
        peers.fetched_entries > 0 && peers.checkpoints == 0,
        "{peers:?}"
    );
    let (ckpt, _) = run(quiet(0, 2));
    assert!(ckpt.checkpoints > 0, "{ckpt:?}");
}

/// The mutation: one replica applies one corrupted value; the state-hash check fails.
#[test]
fn checks_catch_a_corrupted_apply() {
    let mut p = quiet(10, 5);
    p.mutation = Some(Mutation::CorruptApply { pid: 2, after: 3 });
    let r = run_world(51, p, false, |w| {
        let l = wait_leader(w)?;
        write_n(w, l, 20);
        w.settle()
    });
    let Err(f) = r else {
        panic!("the corrupted value went unnoticed");
    };
    assert!(f.error.contains("state hash"), "{}", f.error);
}
