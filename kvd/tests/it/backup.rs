//! Backup and restore end to end: `kvctl snapshot save` from a cluster under write load,
//! `kvd restore` into a fresh 3-replica cluster, which must hold exactly the source's state at
//! the snapshot's revision (contents, revisions, hash), under a new cluster id; corrupt and
//! truncated files refused; and the disaster path rebuilding a cluster from one survivor's
//! data dir with every key it had applied.

use crate::harness::{kvctl_run, kvd_bin, Cluster, Opts};
use kvd::state_machine::pair_hash;
use omnikv_common::client::{KeySet, RangeOpts};
use omnikv_common::Client;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a key holds: value and mod revision.
type State = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// Every key of the cluster, read linearizably page by page: key -> (value, mod revision).
async fn read_all(client: &Client) -> (State, u64) {
    let mut out = State::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .range_page(
                &KeySet::Prefix(Vec::new()),
                &RangeOpts::default(),
                after.as_deref(),
                omnikv_common::Consistency::Linearizable,
            )
            .await
            .expect("range read");
        for kv in page.kvs {
            let value = kv.value.expect("values asked").0;
            out.insert(kv.key.0, (value, kv.mod_revision));
        }
        if !page.more {
            return (out, page.revision);
        }
        after = page.r#continue;
    }
}

/// The state hash kvd computes (`status`'s `state_hash`) for `state`.
fn hash_of(state: &State) -> String {
    let h = state
        .iter()
        .fold(0u64, |h, (k, (v, _))| h ^ pair_hash(k, v));
    format!("{h:016x}")
}

/// Runs `kvd restore` with `args` as replica `pid` of `target` (its ports, data dir, peers).
fn restore_into(target: &Cluster, pid: u64, args: &[&str]) -> Output {
    let node = &target.nodes[&pid];
    let peers: Vec<String> = target
        .nodes
        .values()
        .map(|n| format!("{}={}", n.pid, target.peer_addr(n.pid)))
        .collect();
    let members: Vec<String> = target.members.iter().map(u64::to_string).collect();
    Command::new(kvd_bin())
        .arg("restore")
        .args(args)
        .env("PID", pid.to_string())
        .env("NODES", members.join(","))
        .env("KVD_DATA_DIR", &node.data_dir)
        .env("KVD_PEERS", peers.join(","))
        .env("KVD_CLIENT_ADDR", format!("127.0.0.1:{}", node.client_port))
        .env("KVD_PEER_ADDR", format!("127.0.0.1:{}", node.peer_port))
        .output()
        .expect("run kvd restore")
}

fn ok(out: Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Seeds every member of `target` from `source_args` and starts it; waits for a leader.
async fn restore_cluster(target: &mut Cluster, source_args: &[&str]) {
    for pid in target.members.clone() {
        ok(restore_into(target, pid, source_args), "kvd restore");
    }
    for pid in target.members.clone() {
        target.spawn(pid);
    }
    if target.members.len() > 1 {
        target.wait_leader(Duration::from_secs(30)).await;
    } else {
        target.wait_ready(1, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_saved_under_load_restores_into_a_new_cluster_at_its_revision() {
    let source = Cluster::start(3, Opts::default()).await;
    let client = Arc::new(source.client(Duration::from_secs(20)));
    for i in 0..300 {
        client
            .put(
                format!("pre/{i:04}").as_bytes(),
                format!("v{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    // A lease with a key attached travels with the state.
    let lease = client.lease_grant(300, None).await.unwrap().id;
    client
        .put_leased(b"pre/leased", b"L".to_vec(), lease)
        .await
        .unwrap();
    // Writers overwrite and delete keys while the snapshot streams; every acknowledged
    // change is logged with its revision, so the state at any revision can be replayed.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(Mutex::new(Vec::<(u64, Vec<u8>, Option<Vec<u8>>)>::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, stop, changes) = (client.clone(), stop.clone(), changes.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("load/{w}/{:03}", n % 150).into_bytes();
                if n.is_multiple_of(7) {
                    let r = client.delete(&key).await.expect("delete under load");
                    if r.existed {
                        changes.lock().unwrap().push((r.revision, key, None));
                    }
                } else {
                    let value = format!("w{w}-{n}").into_bytes();
                    let r = client
                        .put(&key, value.clone())
                        .await
                        .expect("put under load");
                    changes.lock().unwrap().push((r.revision, key, Some(value)));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = source.dir.path().join("backup.snap");
    let file_s = file.to_str().unwrap().to_string();
    let endpoints = source.endpoints().join(",");
    let saved = tokio::task::spawn_blocking(move || {
        kvctl_run(
            &endpoints,
            &["-o", "json", "snapshot", "save", &file_s],
            None,
        )
    })
    .await
    .unwrap();
    let saved: serde_json::Value = serde_json::from_str(&ok(saved, "snapshot save")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(!Path::new(&format!("{}.part", file.display())).exists());
    let revision = saved["revision"].as_u64().unwrap();
    let changes = changes.lock().unwrap().clone();
    assert!(
        changes.iter().any(|c| c.0 > revision) && changes.iter().any(|c| c.0 <= revision),
        "the save must fall inside the write load (revision {revision})"
    );

    // The source's state at the snapshot's revision, replayed from the acknowledged writes
    // over the preload (revisions 1..=300).
    let (pre, _) = read_all(&client).await;
    let mut expected: State = pre
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"pre/"))
        .collect();
    let mut ordered = changes.clone();
    ordered.sort();
    for (rev, key, value) in ordered.into_iter().filter(|c| c.0 <= revision) {
        match value {
            Some(v) => expected.insert(key, (v, rev)),
            None => expected.remove(&key),
        };
    }
    assert_eq!(saved["keys"].as_u64().unwrap(), expected.len() as u64);
    assert_eq!(saved["state_hash"].as_str().unwrap(), hash_of(&expected));

    let status = ok(
        kvctl_run("", &["snapshot", "status", file.to_str().unwrap()], None),
        "snapshot status",
    );
    assert!(
        status.contains(&format!("revision {revision},")),
        "{status}"
    );

    let mut target = Cluster::new_stopped(3, Opts::default());
    restore_cluster(&mut target, &[file.to_str().unwrap()]).await;
    let hash = target.wait_converged(Duration::from_secs(30)).await;
    let st = target.status(1).await.unwrap();
    assert_eq!(st.revision, revision, "restored revision");
    assert_eq!(hash, hash_of(&expected), "restored state hash");
    assert_ne!(
        st.cluster_id,
        source.status(1).await.unwrap().cluster_id,
        "a restored cluster has a new cluster id"
    );
    let restored = target.client(Duration::from_secs(10));
    let (got, read_rev) = read_all(&restored).await;
    assert_eq!(read_rev, revision);
    assert_eq!(got, expected, "restored contents with their mod revisions");
    let restored_lease = restored.lease_time_to_live(lease, true).await.unwrap();
    assert_eq!(restored_lease.ttl, 300);
    let keys: Vec<Vec<u8>> = restored_lease
        .keys
        .unwrap()
        .into_iter()
        .map(|k| k.0)
        .collect();
    assert_eq!(keys, vec![b"pre/leased".to_vec()]);
    // It takes writes, numbered on from the snapshot's revision.
    let r = restored.put(b"after", b"restore".to_vec()).await.unwrap();
    assert_eq!(r.revision, revision + 1);
    target.wait_converged(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_snapshot_is_refused_with_a_clear_error() {
    let source = Cluster::start(1, Opts::default()).await;
    let client = source.client(Duration::from_secs(10));
    for i in 0..200 {
        client
            .put(format!("k{i:03}").as_bytes(), vec![b'x'; 100])
            .await
            .unwrap();
    }
    let file = source.dir.path().join("good.snap");
    let endpoints = source.endpoints().join(",");
    ok(
        kvctl_run(
            &endpoints,
            &["snapshot", "save", file.to_str().unwrap()],
            None,
        ),
        "snapshot save",
    );
    let good = std::fs::read(&file).unwrap();
    let mut target = Cluster::new_stopped(1, Opts::default());
    let refused = |target: &Cluster, bytes: &[u8], name: &str, says: &str| {
        let path = target.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.to_str().unwrap();
        let out = kvctl_run("", &["snapshot", "status", p], None);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(5),
            "kvctl snapshot status {name}: {err}"
        );
        assert!(err.contains(says), "kvctl on {name}: {err}");
        let out = restore_into(target, 1, &[p]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(5), "kvd restore {name}: {err}");
        assert!(
            err.contains("snapshot refused") && err.contains(says),
            "{err}"
        );
        assert!(
            !target.nodes[&1].data_dir.exists(),
            "a refused restore leaves no data dir"
        );
    };
    // One byte of a value in the middle: the structure still parses, the checksum does not.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    let at = mid
        + good[mid..]
            .windows(10)
            .position(|w| w == b"xxxxxxxxxx")
            .unwrap()
        + 5;
    flipped[at] ^= 0x01;
    refused(&target, &flipped, "flipped.snap", "checksum");
    refused(
        &target,
        &good[..good.len() - 10],
        "truncated.snap",
        "truncated",
    );
    refused(&target, &good[..mid], "half.snap", "truncated");
    refused(
        &target,
        b"not a snapshot at all",
        "junk.snap",
        "not an omnikv snapshot",
    );

    // The force flag is required for the disaster path, and a used data dir is never
    // overwritten: usage errors (2).
    let survivor = source.nodes[&1].data_dir.to_str().unwrap().to_string();
    let out = restore_into(&target, 1, &["--from-data-dir", &survivor]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force-new-cluster"));
    std::fs::create_dir_all(target.nodes[&1].data_dir.join("x")).unwrap();
    let out = restore_into(&target, 1, &[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    std::fs::remove_dir_all(&target.nodes[&1].data_dir).unwrap();

    // The good file restores into a standalone replica.
    restore_cluster(&mut target, &[file.to_str().unwrap()]).await;
    let got = target
        .client(Duration::from_secs(5))
        .get(b"k123", omnikv_common::Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got, vec![b'x'; 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_rebuilds_a_cluster_from_one_survivor() {
    let mut source = Cluster::start(3, Opts::default()).await;
    let client = source.client(Duration::from_secs(10));
    let mut acked = BTreeMap::new();
    for i in 0..400u32 {
        let key = format!("k{:03}", i % 250).into_bytes();
        let value = format!("v{i}").into_bytes();
        client.put(&key, value.clone()).await.unwrap();
        acked.insert(key, value);
    }
    let hash = source.wait_converged(Duration::from_secs(30)).await;
    let revision = source.status(1).await.unwrap().revision;
    // The majority is gone for good; the survivor dies too (kill -9: what it had not synced
    // is lost, its log still holds every decided entry).
    source.kill(2);
    source.kill(3);
    std::fs::remove_dir_all(&source.nodes[&2].data_dir).unwrap();
    std::fs::remove_dir_all(&source.nodes[&3].data_dir).unwrap();
    source.kill(1);
    let survivor = source.nodes[&1].data_dir.to_str().unwrap().to_string();

    let mut target = Cluster::new_stopped(3, Opts::default());
    restore_cluster(
        &mut target,
        &["--force-new-cluster", "--from-data-dir", &survivor],
    )
    .await;
    assert_eq!(target.wait_converged(Duration::from_secs(30)).await, hash);
    assert_eq!(target.status(2).await.unwrap().revision, revision);
    let restored = target.client(Duration::from_secs(10));
    let (got, _) = read_all(&restored).await;
    let got: BTreeMap<Vec<u8>, Vec<u8>> = got.into_iter().map(|(k, (v, _))| (k, v)).collect();
    assert_eq!(got, acked, "every acknowledged key, as last written");
    restored.put(b"new", b"1".to_vec()).await.unwrap();
}
