//! The real watcher binary against the fake API server, fake kvds (status from a shared file)
//! and a fake kvctl: the control loop's behaviour without RocksDB.

use crate::fake_kube::FakeKube;
use crate::harness::{free_port_on, has_event, wait_for, FakeCluster, Watcher};
use std::time::Duration;

const CM: &str = "kv-config";
const ANN: &str = "omnikv.io/applied-config-id";
const T: Duration = Duration::from_secs(20);

fn seed_configmap(kube: &FakeKube, nodes: &str, id: &str) {
    kube.set_configmap(CM, &[("NODES", nodes), ("CONFIG_ID", id)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_waits_for_a_live_joiner_then_reconfigures_once_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    seed_configmap(&kube, "[1, 2, 3]", "1");
    for i in 0..3 {
        kube.set_pod(&format!("kv-store-{i}"), "Running", true);
    }
    let cluster = FakeCluster::new(dir.path(), 1, &[1, 2, 3]);
    let port = free_port_on(4);
    for pid in 1..=3 {
        cluster.serve_kvd(pid, 1, port).await;
    }
    let env = |pid: u64| {
        vec![
            ("WATCHER_KVD_URL", format!("http://127.0.0.{pid}:{port}")),
            (
                "WATCHER_PEER_URL_TEMPLATE",
                format!("http://127.0.0.{{pid}}:{port}"),
            ),
            ("WATCHER_KVCTL", cluster.kvctl.display().to_string()),
        ]
    };
    // The sidecars of the leader (pid 1) and of a follower (pid 2).
    let w1 = Watcher::start(&kube, dir.path(), "kv-store-0", &env(1));
    let w2 = Watcher::start(&kube, dir.path(), "kv-store-1", &env(2));
    let logs = || {
        format!(
            "--- leader's watcher:\n{}\n--- follower's:\n{}",
            w1.log(),
            w2.log()
        )
    };

    // In sync at start: the leader's watcher records configuration 1.
    wait_for("annotation 1", T, logs, || {
        (kube.annotation(CM, ANN)? == "1").then_some(())
    })
    .await;

    // Ask for node 4 before its pod exists: nothing happens but a Waiting event.
    seed_configmap(&kube, "[1, 2, 3, 4]", "2");
    wait_for("a Waiting event for the pod", T, logs, || {
        has_event(&kube, "Waiting", "waiting for the pod of added node 4").then_some(())
    })
    .await;
    // The pod runs, but its kvd does not answer /healthz yet: still waiting.
    kube.set_pod("kv-store-3", "Pending", false);
    kube.set_pod("kv-store-3", "Running", false);
    wait_for("a Waiting event for /healthz", T, logs, || {
        has_event(&kube, "Waiting", "kv-store-3 (node 4) to answer /healthz").then_some(())
    })
    .await;
    assert!(
        cluster.calls().is_empty(),
        "acted too early: {:?}",
        cluster.calls()
    );

    // The joiner's kvd answers /healthz (the pod stays not Ready, as a real joiner's does).
    cluster.serve_kvd(4, 1, port).await;
    wait_for("annotation 2", T, logs, || {
        (kube.annotation(CM, ANN)? == "2").then_some(())
    })
    .await;
    assert_eq!(cluster.get(), (2, vec![1, 2, 3, 4]));
    assert_eq!(
        kube.annotation(CM, "omnikv.io/applied-members").as_deref(),
        Some("1,2,3,4")
    );
    // The event is posted after the annotation: wait for it rather than race it.
    wait_for("the Reconfigured event", T, logs, || {
        has_event(&kube, "Reconfigured", "-> 2 [1, 2, 3, 4]").then_some(())
    })
    .await;

    // Duplicate events and a few resync periods later: still exactly one kvctl run, made by
    // the leader's watcher, with the explicit config id.
    kube.set_pod("kv-store-3", "Running", false);
    seed_configmap(&kube, "[1,2,3,4]", "2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = cluster.calls();
    assert_eq!(calls.len(), 1, "{calls:?}\n{}", logs());
    assert!(
        calls[0].contains(&format!("--endpoints http://127.0.0.1:{port},"))
            && calls[0].ends_with("reconfigure --nodes 1,2,3,4 --config-id 2"),
        "{calls:?}"
    );
    assert!(w2.log().contains("not the leader"), "{}", w2.log());
    assert!(!w2.log().contains("reconfiguring"), "{}", w2.log());

    // Removal of the highest pid: reconfigure first (the pod is still there).
    seed_configmap(&kube, "[1, 2, 3]", "3");
    wait_for("annotation 3", T, logs, || {
        (kube.annotation(CM, ANN)? == "3").then_some(())
    })
    .await;
    assert_eq!(cluster.get(), (3, vec![1, 2, 3]));

    // CONFIG_ID going backwards: refused with the id to use, nothing run.
    seed_configmap(&kube, "[1, 2, 3, 4]", "2");
    wait_for("a refusal of the stale CONFIG_ID", T, logs, || {
        has_event(
            &kube,
            "ReconfigureRefused",
            "CONFIG_ID 2 is behind the cluster's configuration 3",
        )
        .then_some(())
    })
    .await;
    // Replacing a majority at once: refused.
    seed_configmap(&kube, "[1, 4, 5]", "4");
    wait_for("a refusal of the majority replacement", T, logs, || {
        has_event(&kube, "ReconfigureRefused", "replaces a majority at once").then_some(())
    })
    .await;
    assert_eq!(cluster.calls().len(), 2, "{:?}", cluster.calls());
    assert_eq!(kube.annotation(CM, ANN).as_deref(), Some("3"));

    // Its own /healthz and /metrics.
    let health = reqwest::get(format!("{}/healthz", w1.metrics_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{}/metrics", w1.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "omnikv_watcher_reconfigures_total{result=\"applied\"} 2",
        "omnikv_watcher_leader 1",
        "omnikv_watcher_cluster_config_id 3",
        "omnikv_watcher_rbac_ok 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The watches are watches: list once, then watch from its resourceVersion.
    let reqs = kube.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET pods?")
            && r.contains("watch=true")
            && r.contains("labelSelector=app=kv-store")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.starts_with("GET configmaps?")
            && r.contains("watch=true")
            && r.contains("fieldSelector=metadata.name=kv-config")),
        "{reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_reported_with_the_fix_and_rechecked() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    seed_configmap(&kube, "[1, 2, 3]", "1");
    kube.deny("patch", "configmaps");
    let cluster = FakeCluster::new(dir.path(), 1, &[1, 2, 3]);
    let port = free_port_on(1);
    cluster.serve_kvd(1, 1, port).await;
    let w = Watcher::start(
        &kube,
        dir.path(),
        "kv-store-0",
        &[
            ("WATCHER_KVD_URL", format!("http://127.0.0.1:{port}")),
            ("WATCHER_KVCTL", cluster.kvctl.display().to_string()),
        ],
    );
    let log = || w.log();
    wait_for("the RBAC error", T, log, || {
        let l = w.log();
        (l.contains("may not patch configmaps/kv-config in namespace \"default\"")
            && l.contains("deploy/k8s/rbac.yaml"))
        .then_some(())
    })
    .await;
    // Nothing was watched, nothing patched, and the process is still up.
    assert!(
        kube.requests().iter().all(|r| !r.starts_with("GET ")),
        "{:?}",
        kube.requests()
    );
    assert_eq!(kube.annotation(CM, ANN), None);
    assert_eq!(
        reqwest::get(format!("{}/healthz", w.metrics_url))
            .await
            .unwrap()
            .status(),
        200
    );

    // Once the Role is fixed the watcher carries on by itself.
    kube.allow_all();
    wait_for(
        "annotation 1 after the fix",
        Duration::from_secs(30),
        log,
        || (kube.annotation(CM, ANN)? == "1").then_some(()),
    )
    .await;
}
