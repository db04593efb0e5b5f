//! Replication basics on a healthy 3-replica cluster.

use crate::harness::*;
use omnikv_common::Consistency;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_replicas_agree() {
    let c = Cluster::start(3, Opts::default()).await;
    // A put on one replica is seen by a linearizable get on each other one.
    c.client_of(1, Duration::from_secs(5))
        .put(b"a", b"1".to_vec())
        .await
        .unwrap();
    for pid in [2, 3] {
        assert_eq!(get_from(&c, pid, "a").await.unwrap(), b"1", "replica {pid}");
    }
    // 1,000 puts from 8 concurrent clients, spread over all endpoints.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let endpoints = c.endpoints();
        tasks.push(tokio::spawn(async move {
            let mut eps = endpoints.clone();
            eps.rotate_left((w % 3) as usize);
            let client = omnikv_common::Client::new(&eps, Duration::from_secs(10)).unwrap();
            for i in 0..125u64 {
                let k = format!("k-{w}-{i}");
                client
                    .put(k.as_bytes(), format!("v-{w}-{i}").into_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every write readable from every replica.
    for pid in 1..=3 {
        let client = c.client_of(pid, Duration::from_secs(10));
        for w in 0..8u64 {
            for i in 0..125u64 {
                let k = format!("k-{w}-{i}");
                let v = client
                    .get(k.as_bytes(), Consistency::Linearizable)
                    .await
                    .unwrap();
                assert_eq!(v, format!("v-{w}-{i}").into_bytes(), "{k} on replica {pid}");
            }
        }
    }
    // Identical state everywhere.
    c.wait_converged(Duration::from_secs(10)).await;
    let s = c.status(1).await.unwrap();
    assert_eq!(s.keys, 1001);
    assert_eq!(s.members, vec![1, 2, 3]);
}
