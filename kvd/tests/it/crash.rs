//! Crash consistency: every replica is aborted at one persistence step (kvd's failpoints,
//! `KVD_FAILPOINT=step:N`) while a client writes; each is restarted as it dies. No
//! acknowledged write may be lost, and the replicas converge.

use crate::harness::{Cluster, Opts};
use omnikv_common::Consistency;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn crash_everyone_at(step: &str, first_hit: u64) {
    let mut c = Cluster::start(3, Opts::compacting(20, 5)).await;
    // Re-arm every replica with the failpoint, each at a different hit.
    for pid in 1..=3u64 {
        c.kill(pid);
        let at = format!("{step}:{}", first_hit + 7 * (pid - 1));
        c.spawn_with(pid, &[("KVD_FAILPOINT", &at)]);
    }
    let client = c.client(Duration::from_secs(2));
    let mut acked = Vec::new();
    let mut crashed = BTreeSet::new();
    let mut after_last = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0u64;
    while crashed.len() < 3 || after_last < 30 {
        assert!(
            Instant::now() < deadline,
            "{step}: only {crashed:?} reached the failpoint ({} writes acked)\n{}",
            acked.len(),
            c.dump_logs()
        );
        i += 1;
        if client
            .put(format!("{step}-{i}").as_bytes(), i.to_string().into_bytes())
            .await
            .is_ok()
        {
            acked.push(i);
            if crashed.len() == 3 {
                after_last += 1;
            }
        }
        for pid in 1..=3 {
            if !crashed.contains(&pid) && c.exited(pid) {
                assert!(
                    c.log_text(pid).contains(&format!("failpoint {step}:")),
                    "replica {pid} died, but not at the failpoint\n{}",
                    c.dump_logs()
                );
                crashed.insert(pid);
                c.spawn(pid);
            }
        }
    }
    eprintln!(
        "{step}: 3 replicas crashed at the step, {} writes acknowledged",
        acked.len()
    );
    c.wait_leader(Duration::from_secs(20)).await;
    c.wait_converged(Duration::from_secs(60)).await;
    for pid in 1..=3 {
        let replica = c.client_of(pid, Duration::from_secs(5));
        for n in &acked {
            let v = replica
                .get(format!("{step}-{n}").as_bytes(), Consistency::Local)
                .await
                .unwrap_or_else(|e| {
                    panic!("{step}: acked write {n} missing on replica {pid}: {e}")
                });
            assert_eq!(v, n.to_string().into_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_a_log_write_loses_no_acked_write() {
    crash_everyone_at("log-write", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_a_decide_loses_no_acked_write() {
    crash_everyone_at("decide", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_an_apply_batch_loses_no_acked_write() {
    crash_everyone_at("apply", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_around_the_sync_loses_no_acked_write() {
    crash_everyone_at("before-sync", 300).await;
    crash_everyone_at("after-sync", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_a_compaction_loses_no_acked_write() {
    crash_everyone_at("compact", 2).await;
}

/// Power cuts: every replica dies at once (kill -9; the harness buffers the WAL, so each kill
/// loses whatever was not synced, as a power cut loses the page cache) at a random moment of
/// a write load from 8 clients, five times over, with compaction running. After each restart
/// every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_power_cuts_of_the_whole_cluster_lose_no_acked_write() {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let seed = rand::random::<u64>();
    eprintln!("power cuts: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Cluster::start(3, Opts::compacting(50, 10)).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (client, stop, acked) = (
                    c.client(Duration::from_secs(2)),
                    stop.clone(),
                    acked.clone(),
                );
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("cut{round}-w{w}-{i}");
                        if client
                            .put(key.as_bytes(), key.clone().into_bytes())
                            .await
                            .is_ok()
                        {
                            acked.lock().unwrap().push(key);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let before = acked.lock().unwrap().len();
        for pid in 1..=3 {
            c.kill(pid);
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        for pid in 1..=3 {
            c.spawn(pid);
        }
        c.wait_leader(Duration::from_secs(20)).await;
        let acked = acked.lock().unwrap().clone();
        eprintln!(
            "power cut {round}: {} writes acknowledged so far ({} before the cut)",
            acked.len(),
            before
        );
        let client = c.client(Duration::from_secs(5));
        for key in &acked {
            let v = client
                .get(key.as_bytes(), Consistency::Linearizable)
                .await
                .unwrap_or_else(|e| {
                    panic!("seed {seed}: acked {key} lost after power cut {round}: {e}")
                });
            assert_eq!(v, key.as_bytes());
        }
    }
    c.wait_converged(Duration::from_secs(30)).await;
}
