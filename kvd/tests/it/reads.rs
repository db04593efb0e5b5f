//! Linearizable reads without log writes, on real processes: 10,000 reads through every
//! replica leave the log as it was, each served after a quorum round of the leader's, and a
//! read on a follower sees the write acknowledged just before it.

use crate::harness::*;
use omnikv_common::Consistency;
use std::time::{Duration, Instant};

/// `omnikv_read_rounds_total` of replica `pid`.
async fn read_rounds(c: &Cluster, pid: u64) -> u64 {
    c.metric(pid, "omnikv_read_rounds_total")
        .await
        .unwrap_or_else(|| panic!("no omnikv_read_rounds_total in /metrics of replica {pid}"))
        as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_linearizable_reads_write_nothing_to_the_log() {
    let c = Cluster::start(3, Opts::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let client = c.client(Duration::from_secs(5));
    for i in 0..10 {
        client
            .put(format!("r{i}").as_bytes(), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
    c.wait_converged(Duration::from_secs(10)).await;
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for pid in 1..=3 {
            v.push(c.status(pid).await.unwrap().decided_idx);
        }
        v
    };
    let rounds_before = read_rounds(&c, leader).await;
    // 16 readers, each pinned to one replica (followers included), 625 reads each.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let client = c.client_of(1 + w % 3, Duration::from_secs(10));
        tasks.push(tokio::spawn(async move {
            for i in 0..625u64 {
                let k = format!("r{}", (w + i) % 10);
                let v = client
                    .get(k.as_bytes(), Consistency::Linearizable)
                    .await
                    .unwrap();
                assert_eq!(v, format!("v{}", (w + i) % 10).into_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let rounds = read_rounds(&c, leader).await - rounds_before;
    eprintln!("10,000 linearizable reads in {took:.2?}: {rounds} quorum rounds on the leader");
    for pid in 1..=3 {
        let s = c.status(pid).await.unwrap();
        assert_eq!(
            s.decided_idx,
            before[pid as usize - 1],
            "replica {pid}: the reads added log entries"
        );
    }
    assert!(rounds >= 1, "no quorum round confirmed the reads");
    assert!(
        rounds <= 10_000,
        "more rounds ({rounds}) than reads: rounds are not shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_sees_the_write_acknowledged_before_it() {
    let c = Cluster::start(3, Opts::default()).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let writer = c.client_of(leader, Duration::from_secs(5));
    let followers: Vec<u64> = (1..=3).filter(|&p| p != leader).collect();
    let readers: Vec<_> = followers
        .iter()
        .map(|&p| c.client_of(p, Duration::from_secs(5)))
        .collect();
    for i in 0..200u64 {
        writer.put(b"x", i.to_string().into_bytes()).await.unwrap();
        let r = &readers[(i % 2) as usize];
        let v = r.get(b"x", Consistency::Linearizable).await.unwrap();
        assert_eq!(
            v,
            i.to_string().into_bytes(),
            "write {i}, read on a follower"
        );
    }
}
