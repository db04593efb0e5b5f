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

/// A follower pushed past compaction takes a checkpoint while the third member is stopped: it
/// is the leader's only partner for a quorum, so the cluster keeps acknowledging writes only
/// if the follower keeps its part in consensus while it installs (issue 19). Writers run
/// throughout; every write must succeed, and some must be acknowledged while the follower's
/// transfer is under way. (How long a write waits is measured by `just bench-transfer`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_compaction_takes_a_checkpoint_while_the_other_member_is_down() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut c = Cluster::start(3, Opts::compacting(50, 5)).await;
    // 2,000 keys of 32 KiB: 64 MB of state, a transfer of several hundred chunks.
    let client = Arc::new(c.client(Duration::from_secs(20)));
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (t..2000).step_by(16) {
                    let value = vec![b'a' + (i % 26) as u8; 32 * 1024];
                    client
                        .put(format!("big{i}").as_bytes(), value)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let (f, o) = match [1, 2, 3]
        .into_iter()
        .filter(|&p| p != leader)
        .collect::<Vec<_>>()[..]
    {
        [a, b] => (a, b),
        _ => unreachable!(),
    };
    c.kill(f);
    put_n(&c, 0, 200).await; // past the others' compaction
    c.kill(o);
    c.spawn(f);

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (client, acked, stop) = (
                c.client_of(leader, Duration::from_secs(20)),
                acked.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .put(format!("w{w}-{i}").as_bytes(), b"v".to_vec())
                        .await
                        .unwrap_or_else(|e| panic!("write w{w}-{i} during the transfer: {e}"));
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    // Acknowledged writes seen at the first and the last status that showed the transfer.
    let (mut first, mut last) = (None, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match c.status(f).await {
            Ok(s) if s.transfer.is_some() => {
                let n = acked.load(Ordering::Relaxed);
                first.get_or_insert(n);
                last = n;
            }
            Ok(s) if first.is_some() && s.keys >= 2200 => break,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "{}", c.dump_logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let first = first.expect("the transfer was seen");
    assert!(
        last > first,
        "no write acknowledged while the follower installed ({first} before, {last} after)"
    );
    assert!(c.log_text(f).contains("catching up from a checkpoint"));
    c.spawn(o);
    c.wait_converged(Duration::from_secs(60)).await;
}
