//! Growing a single server into a cluster between real kvd processes: a standalone replica
//! with data grown to three under write load (every acknowledged write, key, revision and
//! dedup record on all three), and a standalone killed in the middle of its growth, which
//! finishes it on restart without another command.

use crate::harness::{stdout_ok, Cluster, Opts};
use crate::membership::{check_all, check_writers, load, reconfigure, wait_status, Writers};
use omnikv_common::{Consistency, Role};
use std::time::{Duration, Instant};

/// Keys the standalone holds before it grows (`bench/grow.sh` measures 100,000).
fn keys_to_grow() -> usize {
    std::env::var("OMNIKV_GROW_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// A standalone replica and two empty replicas started as joiners (CONFIG_ID 2), waiting.
async fn standalone_and_joiners(c: &mut Cluster) {
    for pid in [2, 3] {
        c.add_node(pid);
    }
    for pid in [2, 3] {
        wait_status(c, pid, Duration::from_secs(10), "a waiting joiner", |s| {
            s.role == Role::Joining
        })
        .await;
    }
}

/// `kvctl reconfigure --nodes 1,2,3` sent to the standalone replica, with the joiners' peer
/// addresses (it was started knowing only its own).
fn grow(c: &Cluster) -> std::process::Output {
    let (p2, p3) = (
        format!("2={}", c.peer_addr(2)),
        format!("3={}", c.peer_addr(3)),
    );
    reconfigure(c, &[1], &["--nodes", "1,2,3", "--peer", &p2, "--peer", &p3])
}

async fn wait_serving(c: &Cluster, pids: &[u64], within: Duration) {
    for &pid in pids {
        wait_status(c, pid, within, "serving", |s| {
            matches!(s.role, Role::Follower | Role::Leader)
        })
        .await;
    }
}

/// A put of `value` to replica `pid` under the fixed dedup identity (77, 1), by plain HTTP;
/// the answer's JSON.
async fn put_with_identity(c: &Cluster, pid: u64, value: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .put(format!("http://{}/v1/kv/idem", c.endpoint(pid)))
        .header("omnikv-client-id", "77")
        .header("omnikv-seq", "1")
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "put idem on {pid}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_with_data_grows_to_three_under_load_losing_nothing() {
    let mut c = Cluster::start(1, Opts::default()).await;
    let n = keys_to_grow();
    let t = Instant::now();
    load(&c, n).await;
    eprintln!("standalone loaded {n} keys in {:?}", t.elapsed());
    let first = put_with_identity(&c, 1, "first").await;
    assert_eq!(first["config_id"], 1, "{first}");
    standalone_and_joiners(&mut c).await;

    let endpoints: Vec<String> = (1..=3).map(|p| c.endpoint(p)).collect();
    let writers = Writers::start(&endpoints, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t = Instant::now();
    let out = stdout_ok(grow(&c));
    assert_eq!(out.trim(), "OK: configuration 2, members 1,2,3");
    let decided = t.elapsed();
    wait_serving(&c, &[2, 3], Duration::from_secs(60)).await;
    eprintln!(
        "grown: change decided in {decided:?}, replicas 2 and 3 serving after {:?}",
        t.elapsed()
    );
    assert!(c.log_text(1).contains("grown from a single server"));
    assert!(c
        .log_text(1)
        .contains("a majority of the grown configuration holds the state"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = writers.stop().await;
    c.members = vec![1, 2, 3];
    let hash = c.wait_converged(Duration::from_secs(60)).await;
    let mut revisions = Vec::new();
    for pid in 1..=3 {
        let s = c.status(pid).await.unwrap();
        assert_eq!((s.config_id, s.members.clone()), (2, vec![1, 2, 3]));
        assert_eq!(s.state_hash, hash);
        revisions.push(s.revision);
        // Every acknowledged write readable on this replica, every loaded key too.
        let client = c.client_of(pid, Duration::from_secs(20));
        check_writers(&client, &logs).await;
        check_all(client, n, Consistency::Local).await;
    }
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
    assert!(revisions[0] as usize > n, "{revisions:?}");
    // The dedup record came along: the same identity on a new member is answered from it
    // (configuration 1, the first revision) and changes nothing.
    let again = put_with_identity(&c, 3, "second").await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(
        (&again["config_id"], &again["revision"]),
        (&first["config_id"], &first["revision"])
    );
    let v = c
        .client_of(2, Duration::from_secs(5))
        .get(b"idem", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(v, b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_killed_mid_growth_finishes_it_on_restart() {
    let mut c = Cluster::start(1, Opts::default()).await;
    load(&c, 2_000).await;
    // Replica 1 aborts as it persists the new configuration: its StopSign is stored (and
    // synced), the switch is not.
    c.kill(1);
    c.spawn_with(1, &[("KVD_FAILPOINT", "switch:1")]);
    c.wait_ready(1, Duration::from_secs(20)).await;
    standalone_and_joiners(&mut c).await;
    let out = grow(&c);
    assert!(
        matches!(out.status.code(), Some(3 | 4)),
        "a reconfigure cut short by the crash: {out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.exited(1) {
        assert!(Instant::now() < deadline, "replica 1 did not abort");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.log_text(1).contains("failpoint switch:1 reached"));
    // Restarted, it finishes the growth from its stored StopSign: no second command.
    c.spawn(1);
    let s = wait_status(&c, 1, Duration::from_secs(20), "in configuration 2", |s| {
        s.config_id == 2
    })
    .await;
    assert_eq!(s.members, [1, 2, 3]);
    wait_serving(&c, &[2, 3], Duration::from_secs(60)).await;
    c.members = vec![1, 2, 3];
    // A joiner that holds the state restarts (kill -9) and serves again.
    c.kill(2);
    c.spawn(2);
    c.client(Duration::from_secs(15))
        .put(b"after", b"growth".to_vec())
        .await
        .unwrap();
    wait_serving(&c, &[2], Duration::from_secs(30)).await;
    c.wait_converged(Duration::from_secs(30)).await;
    for pid in 1..=3 {
        check_all(
            c.client_of(pid, Duration::from_secs(20)),
            2_000,
            Consistency::Local,
        )
        .await;
    }
    let v = c
        .client_of(2, Duration::from_secs(5))
        .get(b"after", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(v, b"growth");
}
