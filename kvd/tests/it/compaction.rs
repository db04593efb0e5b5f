//! Log compaction with marker snapshots, and catch-up of a replica that missed compacted
//! entries: from peers' kept tails, or from a streamed checkpoint when none holds them.

use crate::harness::*;
use std::time::Duration;

async fn put_n(c: &Cluster, from: u64, n: u64) {
    let client = c.client(Duration::from_secs(5));
    for i in from..from + n {
        client
            .put(format!("k{i}").as_bytes(), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
}

fn log_of(c: &Cluster, pid: u64) -> String {
    stdout_ok(c.kvctl_with(&c.endpoint(pid), &["log", "--limit", "100"], None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_squash_the_log_and_a_far_behind_replica_gets_a_checkpoint() {
    // Demo 2 settings: compact every 5 entries, keep none.
    let mut c = Cluster::start(3, Opts::compacting(5, 0)).await;
    put_n(&c, 0, 5).await;
    c.wait_converged(Duration::from_secs(10)).await;
    let log = log_of(&c, 3);
    assert!(log.contains("snapshot\t[0, 5)"), "log after 5 puts:\n{log}");
    put_n(&c, 5, 15).await;
    c.wait_converged(Duration::from_secs(10)).await;
    let s = c.status(3).await.unwrap();
    assert!(
        s.compacted_idx >= 15 && s.decided_idx - s.compacted_idx < 5,
        "{s:?}"
    );
    let log = log_of(&c, 3);
    assert!(
        log.lines().next().unwrap().starts_with("snapshot\t[0, "),
        "{log}"
    );
    assert!(log.lines().count() < 6, "stored log is short:\n{log}");
    // Replica 3 misses 20 entries that every peer compacts away: checkpoint path.
    c.kill(3);
    put_n(&c, 20, 20).await;
    c.spawn(3);
    let hash = c.wait_converged(Duration::from_secs(30)).await;
    assert!(
        c.log_text(3).contains("catching up from a checkpoint"),
        "{}",
        c.dump_logs()
    );
    assert_eq!(c.status(3).await.unwrap().keys, 40);
    assert_eq!(get_from(&c, 3, "k0").await.unwrap(), b"v0");
    assert_eq!(get_from(&c, 3, "k39").await.unwrap(), b"v39");
    assert_eq!(hash, c.status(1).await.unwrap().state_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_behind_replica_fetches_missing_entries_from_peers() {
    let mut c = Cluster::start(3, Opts::compacting(5, 20)).await;
    put_n(&c, 0, 30).await;
    c.wait_converged(Duration::from_secs(10)).await;
    assert!(c.status(1).await.unwrap().compacted_idx >= 5);
    c.kill(3);
    put_n(&c, 30, 8).await;
    c.spawn(3);
    c.wait_converged(Duration::from_secs(30)).await;
    // Peers keep 20 entries: the 8 it missed come from them, not from a checkpoint.
    let log3 = c.log_text(3);
    assert!(
        !log3.contains("catching up from a checkpoint"),
        "{}",
        c.dump_logs()
    );
    assert_eq!(c.status(3).await.unwrap().keys, 38);
    assert_eq!(get_from(&c, 3, "k37").await.unwrap(), b"v37");
}
