//! Leases on a real three-replica cluster: keys attached to a lease live while it is kept
//! alive and are deleted (one revision, watch events) when it is revoked or expires; expiry
//! is decided by the leader, survives restarts, and neither resets to the full TTL nor fires
//! early while the leader is killed over and over.

use crate::data_model::{base, put};
use crate::harness::*;
use omnikv_common::lease::{GrantRequest, LeaseGranted, LeaseList, LeaseRevoked, LeaseStatus};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

async fn grant(http: &reqwest::Client, ep: &str, ttl: u64, id: Option<u64>) -> LeaseGranted {
    let r = http
        .post(format!("{ep}/v1/lease"))
        .json(&GrantRequest { ttl, id })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Asks `request(ep)` of whichever replica answers first (a killed one refuses connections):
/// `Some(true)` on 200, `Some(false)` on 404, `None` when nobody answered either in time.
async fn first_answer(
    eps: &[String],
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Option<bool> {
    for ep in eps {
        let r = request(ep).timeout(Duration::from_millis(700)).send().await;
        match r.map(|r| r.status()) {
            Ok(StatusCode::OK) => return Some(true),
            Ok(StatusCode::NOT_FOUND) => return Some(false),
            _ => continue,
        }
    }
    None
}

/// The JSON answer of a request that must succeed.
async fn json_of<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// A keepalive: `Some(true)` renewed, `Some(false)` the lease is gone.
async fn keepalive_any(http: &reqwest::Client, eps: &[String], id: u64) -> Option<bool> {
    first_answer(eps, |ep| http.post(format!("{ep}/v1/lease/{id}/keepalive"))).await
}

/// Whether `key` exists, by a linearizable read.
async fn exists_any(http: &reqwest::Client, eps: &[String], key: &str) -> Option<bool> {
    first_answer(eps, |ep| http.get(format!("{ep}/v1/kv/{key}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_live_while_kept_alive_and_go_with_their_lease() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let http = reqwest::Client::new();
    let ep = base(&c, 1);
    let eps: Vec<String> = (1..=3).map(|p| base(&c, p)).collect();

    // A TTL below the minimum is raised to it; an id may be chosen by the caller.
    let a = grant(&http, &ep, 1, Some(0xa)).await;
    assert_eq!((a.id, a.ttl), (0xa, 2));
    let taken = http
        .post(format!("{ep}/v1/lease"))
        .json(&GrantRequest {
            ttl: 5,
            id: Some(0xa),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let b = grant(&http, &base(&c, 2), 60, None).await;
    assert!(b.id > 0 && b.id < 1 << 63);

    // A put naming a missing lease writes nothing.
    let missing = http
        .put(format!("{ep}/v1/kv/ghost?lease=12345"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(exists_any(&http, &eps, "ghost").await, Some(false));

    put(&http, &ep, "a1", "x", "?lease=10").await;
    put(&http, &ep, "a2", "y", "?lease=10").await;
    let b_put = put(&http, &ep, "b1", "z", &format!("?lease={}", b.id)).await;
    // Moved off lease b by a plain put: it no longer goes with b.
    put(&http, &ep, "b2", "1", &format!("?lease={}", b.id)).await;
    put(&http, &ep, "b2", "2", "").await;
    let kv: serde_json::Value = http
        .get(format!("{ep}/v1/kv?prefix=b1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kv["kvs"][0]["lease"], b.id);

    // Kept alive for twice its TTL: the keys stay.
    let granted = Instant::now();
    let mut last = granted;
    while granted.elapsed() < Duration::from_secs(4) {
        last = Instant::now();
        assert_eq!(keepalive_any(&http, &eps, 0xa).await, Some(true));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(exists_any(&http, &eps, "a1").await, Some(true));
    let ttl: LeaseStatus =
        json_of(http.get(format!("{}/v1/lease/10?keys=true", base(&c, 3)))).await;
    assert_eq!(ttl.keys.unwrap().len(), 2);
    assert!(ttl.remaining_ms <= 2_000, "{}", ttl.remaining_ms);

    // No more keepalives: gone after the TTL (2 s) since the last one was sent, within a bound.
    loop {
        match exists_any(&http, &eps, "a2").await {
            Some(false) => break,
            _ => assert!(
                last.elapsed() < Duration::from_secs(8),
                "lease keys outlived their TTL by far\n{}",
                c.dump_logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.elapsed() >= Duration::from_millis(1_900),
        "expired early"
    );
    assert_eq!(exists_any(&http, &eps, "a1").await, Some(false));
    assert_eq!(keepalive_any(&http, &eps, 0xa).await, Some(false));

    // Revoking deletes its keys in one revision; a key moved off it stays.
    let r: LeaseRevoked = json_of(http.delete(format!("{ep}/v1/lease/{}", b.id))).await;
    assert_eq!(r.deleted, Some(1));
    assert!(r.revision > b_put.revision);
    assert_eq!(exists_any(&http, &eps, "b1").await, Some(false));
    assert_eq!(exists_any(&http, &eps, "b2").await, Some(true));
    let gone = http
        .delete(format!("{ep}/v1/lease/{}", b.id))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // Leases survive a restart of every replica, with their keys.
    let c_lease = grant(&http, &ep, 300, Some(0xc)).await;
    put(&http, &ep, "c1", "v", "?lease=12").await;
    for pid in 1..=3 {
        c.kill(pid);
    }
    for pid in 1..=3 {
        c.spawn(pid);
    }
    c.wait_leader(Duration::from_secs(20)).await;
    let list: LeaseList = json_of(http.get(format!("{}/v1/lease", base(&c, 2)))).await;
    let ids: Vec<u64> = list.leases.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![c_lease.id]);
    let metrics = http
        .get(format!("{}/metrics", base(&c, 2)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("omnikv_leases 1\n"), "{metrics}");
    assert_eq!(exists_any(&http, &eps, "c1").await, Some(true));
    let local: LeaseList =
        json_of(http.get(format!("{}/v1/lease?consistency=local", base(&c, 3)))).await;
    assert_eq!(local.leases.len(), 1);
    let bogus = http
        .get(format!("{ep}/v1/lease?consistency=bogus"))
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), StatusCode::BAD_REQUEST);
    // Bad input: not an id.
    let bad = http
        .post(format!("{ep}/v1/lease/zz/keepalive"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// The leader is killed every half TTL while two leases run: one kept alive (its key must never
/// vanish while keepalives succeed), one left alone (its key must not vanish before its TTL,
/// and must be gone within TTL + a bound although every new leader adds a grace period and a
/// restarted one counts from the last checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_under_leader_kills_is_neither_early_nor_reset() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let http = reqwest::Client::new();
    let eps: Vec<String> = (1..=3).map(|p| base(&c, p)).collect();
    const TTL: Duration = Duration::from_secs(6);
    let idle_sent = Instant::now();
    let idle = grant(&http, &eps[0], TTL.as_secs(), Some(0x1d1e)).await;
    put(&http, &eps[0], "idle", "v", &format!("?lease={}", idle.id)).await;
    let kept = grant(&http, &eps[0], TTL.as_secs(), Some(0x4ee9)).await;
    put(&http, &eps[0], "kept", "v", &format!("?lease={}", kept.id)).await;

    let mut last_keepalive_sent = Instant::now();
    let mut next_kill = Instant::now() + TTL / 2;
    let mut idle_gone_at = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if Instant::now() >= next_kill {
            let leader = c.wait_leader(Duration::from_secs(10)).await;
            c.kill(leader);
            c.spawn(leader);
            next_kill = Instant::now() + TTL / 2;
        }
        let sent = Instant::now();
        if sent.duration_since(last_keepalive_sent) >= Duration::from_secs(1)
            && keepalive_any(&http, &eps, kept.id).await == Some(true)
        {
            last_keepalive_sent = sent;
        }
        if idle_gone_at.is_none() && exists_any(&http, &eps, "idle").await == Some(false) {
            let at = Instant::now();
            assert!(
                at.duration_since(idle_sent) >= TTL,
                "the idle lease's key vanished {:?} after its grant, before its TTL",
                at.duration_since(idle_sent)
            );
            idle_gone_at = Some(at);
        }
        if exists_any(&http, &eps, "kept").await == Some(false) {
            panic!(
                "the kept lease's key vanished {:?} after a successful keepalive (TTL {TTL:?})\n{}",
                last_keepalive_sent.elapsed(),
                c.dump_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = idle_gone_at.expect("the idle lease never expired while leaders changed");
    eprintln!(
        "idle lease (TTL {TTL:?}) expired {:?} after its grant, leader killed every {:?}",
        gone.duration_since(idle_sent),
        TTL / 2
    );
    // Each new leader adds a few election rounds; the restarted replicas count from the last
    // checkpoint: well under twice the TTL.
    assert!(
        gone.duration_since(idle_sent) < TTL * 2,
        "expired {:?} after its grant",
        gone.duration_since(idle_sent)
    );
}

/// A member that joins takes the leases with the state (the checkpoint carries them), and a
/// revoke through it after the leader left still deletes the lease's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_carry_over_to_a_new_member_and_configuration() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let http = reqwest::Client::new();
    let ep = base(&c, 1);
    grant(&http, &ep, 300, Some(0x77)).await;
    put(&http, &ep, "held", "v", "?lease=119").await;
    c.add_node(4);
    let peer = format!("4={}", c.peer_addr(4));
    let eps: Vec<String> = (1..=3).map(|p| c.endpoint(p)).collect();
    let out = c.kvctl_with(
        &eps.join(","),
        &[
            "--timeout",
            "20s",
            "reconfigure",
            "--nodes",
            "2,3,4",
            "--peer",
            &peer,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = base(&c, 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status: LeaseStatus = loop {
        let r = http
            .get(format!("{new}/v1/lease/119?keys=true&consistency=local"))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == StatusCode::OK {
                break r.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "replica 4 never showed the lease\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.ttl, 300);
    let keys: Vec<Vec<u8>> = status.keys.unwrap().into_iter().map(|k| k.0).collect();
    assert_eq!(keys, vec![b"held".to_vec()]);
    c.kill(1);
    // Replica 1 may have led: the revoke goes once 2, 3 and 4 have a leader.
    c.wait_leader(Duration::from_secs(20)).await;
    let r: LeaseRevoked = json_of(http.delete(format!("{new}/v1/lease/119"))).await;
    assert_eq!(r.deleted, Some(1));
    let eps: Vec<String> = (2..=4).map(|p| base(&c, p)).collect();
    assert_eq!(exists_any(&http, &eps, "held").await, Some(false));
}
