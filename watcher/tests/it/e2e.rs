//! End to end: real kvd processes (replica pid N on 127.0.0.N), the real kvctl, one real
//! watcher per replica (as sidecars), and the fake API server standing in for Kubernetes.
//! Needs kvd and kvctl built (`cargo build --bins`; OMNIKV_BIN or the watcher's own target
//! dir) with the membership changes (`/v1/reconfigure`, joiners).

use crate::fake_kube::FakeKube;
use crate::harness::{free_port_on, has_event, wait_for, Watcher};
use omnikv_common::{Client, Consistency, StatusView};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CM: &str = "kv-config";
const ANN: &str = "omnikv.io/applied-config-id";
const T: Duration = Duration::from_secs(60);

pub(crate) fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("OMNIKV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_watcher"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    for b in ["kvd", "kvctl"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build kvd and kvctl first (cargo build --bins) or set OMNIKV_BIN",
            dir.join(b).display()
        );
    }
    dir
}

pub(crate) struct Kvd {
    child: Child,
    pub(crate) log: PathBuf,
}

impl Drop for Kvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Ports {
    pub(crate) client: u16,
    pub(crate) peer: u16,
}

impl Ports {
    /// Client and peer ports free on 127.0.0.1 .. 127.0.0.n.
    pub(crate) fn on(n: u8) -> Ports {
        Ports {
            client: free_port_on(n),
            peer: free_port_on(n),
        }
    }
}

/// Starts kvd `pid` with `NODES` / `CONFIG_ID` over `dir/data-<pid>` (kept across restarts, as
/// a PVC is); its log, `dir/kvd-<pid>.log`, is appended to.
pub(crate) fn start_kvd(dir: &Path, pid: u64, nodes: &str, config_id: u32, ports: &Ports) -> Kvd {
    let log = dir.join(format!("kvd-{pid}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(bin_dir().join("kvd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PID", pid.to_string())
        .env("NODES", nodes)
        .env("CONFIG_ID", config_id.to_string())
        .env("KVD_DATA_DIR", dir.join(format!("data-{pid}")))
        .env("KVD_CLIENT_ADDR", format!("127.0.0.{pid}:{}", ports.client))
        .env("KVD_PEER_ADDR", format!("127.0.0.{pid}:{}", ports.peer))
        .env(
            "KVD_PEER_TEMPLATE",
            format!("127.0.0.{{pid}}:{}", ports.peer),
        )
        .env("KVD_CLUSTER_TOKEN", "watcher-e2e")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn kvd");
    Kvd { child, log }
}

pub(crate) fn url(pid: u64, ports: &Ports) -> String {
    format!("http://127.0.0.{pid}:{}", ports.client)
}

/// The sidecar's env for replica `pid`: its kvd, the other replicas' URLs, the real kvctl.
fn watcher_env(pid: u64, ports: &Ports) -> Vec<(&'static str, String)> {
    vec![
        ("WATCHER_KVD_URL", url(pid, ports)),
        (
            "WATCHER_PEER_URL_TEMPLATE",
            format!("http://127.0.0.{{pid}}:{}", ports.client),
        ),
        (
            "WATCHER_KVCTL",
            bin_dir().join("kvctl").display().to_string(),
        ),
    ]
}

/// Every kvd's and watcher's log and the Events, for a timeout's message.
fn logs(kube: &FakeKube, kvds: &[Kvd], watchers: &[Watcher]) -> String {
    let mut s = String::new();
    for k in kvds {
        s += &format!(
            "--- {}\n{}\n",
            k.log.display(),
            std::fs::read_to_string(&k.log).unwrap_or_default()
        );
    }
    for w in watchers {
        s += &format!("--- {}\n{}\n", w.log.display(), w.log());
    }
    s += &format!("--- events\n{:#?}\n", kube.events());
    s
}

pub(crate) async fn status(pid: u64, ports: &Ports) -> Option<StatusView> {
    Client::new(&[url(pid, ports)], Duration::from_secs(1))
        .ok()?
        .status()
        .await
        .ok()
}

/// Polls `f` (async) until Some, with the logs of everything on timeout.
pub(crate) async fn eventually<T, F, Fut>(what: &str, ctx: &dyn Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", ctx());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the watcher recorded configuration `config_id` on the ConfigMap and replica
/// `pid` runs it; returns its members.
async fn applied(
    kube: &FakeKube,
    ports: &Ports,
    ctx: &dyn Fn() -> String,
    config_id: u32,
    pid: u64,
) -> Vec<u64> {
    let id = config_id.to_string();
    wait_for(&format!("annotation {id}"), T, ctx, || {
        (kube.annotation(CM, ANN)? == id).then_some(())
    })
    .await;
    eventually(&format!("config {id} on replica {pid}"), ctx, || async {
        status(pid, ports)
            .await
            .filter(|s| s.config_id == config_id)
    })
    .await
    .members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_edits_grow_and_shrink_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = Ports::on(5);
    let mut kvds: Vec<Kvd> = (1..=3)
        .map(|pid| start_kvd(d, pid, "[1, 2, 3]", 1, &ports))
        .collect();

    let kube = FakeKube::start().await;
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3]"), ("CONFIG_ID", "1")]);
    for i in 0..3 {
        kube.set_pod(&format!("kv-store-{i}"), "Running", true);
    }
    let watcher_env = |pid: u64| watcher_env(pid, &ports);
    let mut watchers: Vec<Watcher> = (1..=3)
        .map(|pid| {
            Watcher::start(
                &kube,
                d,
                &format!("kv-store-{}", pid - 1),
                &watcher_env(pid),
            )
        })
        .collect();
    let logs = |kvds: &[Kvd], watchers: &[Watcher]| logs(&kube, kvds, watchers);

    // Configuration 1 is recorded once a leader is elected.
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("annotation 1", T, ctx, || {
            (kube.annotation(CM, ANN)? == "1").then_some(())
        })
        .await;
    }
    let client = Client::new(
        &(1..=3).map(|p| url(p, &ports)).collect::<Vec<_>>(),
        Duration::from_secs(5),
    )
    .unwrap();
    client.put(b"before", b"growth".to_vec()).await.unwrap();

    // Grow: patch the ConfigMap and "scale" (start kvd 4 with the ConfigMap's env, so it is
    // a joiner), and report kv-store-3 Running but not Ready, as a real joiner is.
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3, 4]"), ("CONFIG_ID", "2")]);
    kvds.push(start_kvd(d, 4, "[1, 2, 3, 4]", 2, &ports));
    kube.set_pod("kv-store-3", "Running", false);
    watchers.push(Watcher::start(&kube, d, "kv-store-3", &watcher_env(4)));
    {
        let ctx = || logs(&kvds, &watchers);
        let members = applied(&kube, &ports, &ctx, 2, 1).await;
        assert_eq!(members, [1, 2, 3, 4]);
        // The joiner gets the state and turns ready; it serves the key written before.
        eventually("replica 4 ready with the data", &ctx, || async {
            let c = Client::new(&[url(4, &ports)], Duration::from_secs(2)).ok()?;
            (c.get(b"before", Consistency::Local).await.ok()? == b"growth").then_some(())
        })
        .await;
    }
    kube.set_pod("kv-store-3", "Running", true);
    assert!(kube
        .events()
        .iter()
        .any(|(_, r, m)| r == "Reconfigured" && m.contains("-> 2 [1, 2, 3, 4]")));

    // Shrink: remove the highest pid the same way (the pod goes after the change).
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3]"), ("CONFIG_ID", "3")]);
    {
        let ctx = || logs(&kvds, &watchers);
        let members = applied(&kube, &ports, &ctx, 3, 2).await;
        assert_eq!(members, [1, 2, 3]);
    }
    watchers.pop();
    kvds.pop();

    // Replacing a majority at once is refused by the planner; nothing changes.
    kube.set_configmap(CM, &[("NODES", "[1, 4, 5]"), ("CONFIG_ID", "4")]);
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("the refusal", T, ctx, || {
            kube.events()
                .iter()
                .any(|(t, r, m)| {
                    t == "Warning"
                        && r == "ReconfigureRefused"
                        && m.contains("replaces a majority at once")
                })
                .then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kube.annotation(CM, ANN).as_deref(), Some("3"));
    let s = status(1, &ports).await.unwrap();
    assert_eq!((s.config_id, s.members), (3, vec![1, 2, 3]));
    assert_eq!(
        client
            .get(b"before", Consistency::Linearizable)
            .await
            .unwrap(),
        b"growth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_edit_grows_a_standalone_replica_into_three() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = Ports::on(3);
    // Demo 0 on Kubernetes: one replica, NODES [1], CONFIG_ID 1.
    let mut kvds = vec![start_kvd(d, 1, "[1]", 1, &ports)];
    let kube = FakeKube::start().await;
    kube.set_configmap(CM, &[("NODES", "[1]"), ("CONFIG_ID", "1")]);
    kube.set_pod("kv-store-0", "Running", true);
    let watcher_env = |pid: u64| watcher_env(pid, &ports);
    let mut watchers = vec![Watcher::start(&kube, d, "kv-store-0", &watcher_env(1))];
    let logs = |kvds: &[Kvd], watchers: &[Watcher]| logs(&kube, kvds, watchers);
    let refused = |text: &str| has_event(&kube, "ReconfigureRefused", text);

    // The standalone replica's watcher acts: it records configuration 1.
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("annotation 1 from the standalone's watcher", T, ctx, || {
            (kube.annotation(CM, ANN)? == "1").then_some(())
        })
        .await;
    }
    assert_eq!(
        status(1, &ports).await.map(|s| s.role),
        Some(omnikv_common::Role::Standalone)
    );
    let one = Client::new(&[url(1, &ports)], Duration::from_secs(5)).unwrap();
    for i in 0..50 {
        one.put(format!("k{i:02}").as_bytes(), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }

    // Four members in one step: refused with check_change's rule, nothing run.
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3, 4]"), ("CONFIG_ID", "2")]);
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("the refusal of four members", T, ctx, || {
            refused("a single server grows to at most 3 members").then_some(())
        })
        .await;
    }

    // Three: the watcher waits for the pods of the added nodes.
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3]"), ("CONFIG_ID", "2")]);
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("a Waiting event for the pods", T, ctx, || {
            has_event(&kube, "Waiting", "waiting for the pod of added node 2").then_some(())
        })
        .await;
    }
    // "Scale" to three: kvd 2 starts with the ConfigMap's env (a joiner); kvd 3 as if it had
    // started before CONFIG_ID was bumped, so it bootstrapped a configuration of its own.
    kvds.push(start_kvd(d, 2, "[1, 2, 3]", 2, &ports));
    kvds.push(start_kvd(d, 3, "[1, 2, 3]", 1, &ports));
    for (pid, name) in [(2, "kv-store-1"), (3, "kv-store-2")] {
        kube.set_pod(name, "Running", false);
        watchers.push(Watcher::start(&kube, d, name, &watcher_env(pid)));
    }
    {
        let ctx = || logs(&kvds, &watchers);
        wait_for("the refusal of a pod that is not a joiner", T, ctx, || {
            refused("kv-store-2 (node 3) is not a joiner").then_some(())
        })
        .await;
    }
    let s = status(1, &ports).await.unwrap();
    assert_eq!((s.config_id, s.members), (1, vec![1]));
    assert_eq!(kube.annotation(CM, ANN).as_deref(), Some("1"));

    // The operator deletes the added nodes' pods and PVCs, as the refusal says (they hold no
    // data yet; joiner 2 has met the bootstrapped 3 and would refuse its new disk): both come
    // back empty, as joiners.
    kvds.truncate(1);
    for pid in [2, 3] {
        std::fs::remove_dir_all(d.join(format!("data-{pid}"))).unwrap();
        kvds.push(start_kvd(d, pid, "[1, 2, 3]", 2, &ports));
    }
    {
        let ctx = || logs(&kvds, &watchers);
        let members = applied(&kube, &ports, &ctx, 2, 1).await;
        assert_eq!(members, [1, 2, 3]);
        // Both new replicas take the state: every key, at the same revision.
        for pid in [2, 3] {
            eventually(&format!("replica {pid} with the data"), &ctx, || async {
                let c = Client::new(&[url(pid, &ports)], Duration::from_secs(2)).ok()?;
                (c.get(b"k49", Consistency::Local).await.ok()? == b"v49").then_some(())
            })
            .await;
        }
    }
    assert_eq!(
        kube.annotation(CM, "omnikv.io/applied-members").as_deref(),
        Some("1,2,3")
    );
    assert!(
        kube.events()
            .iter()
            .any(|(_, r, m)| r == "Reconfigured" && m.contains("1 [1] -> 2 [1, 2, 3]")),
        "{:#?}",
        kube.events()
    );
    // The grown cluster takes writes, and keeps them with replica 1 gone.
    let all = Client::new(
        &(1..=3).map(|p| url(p, &ports)).collect::<Vec<_>>(),
        Duration::from_secs(5),
    )
    .unwrap();
    all.put(b"after", b"growth".to_vec()).await.unwrap();
    drop(kvds.remove(0));
    let rest = Client::new(
        &(2..=3).map(|p| url(p, &ports)).collect::<Vec<_>>(),
        Duration::from_secs(5),
    )
    .unwrap();
    {
        let ctx = || logs(&kvds, &watchers);
        eventually("a write without replica 1", &ctx, || async {
            rest.put(b"without", b"1".to_vec()).await.ok()
        })
        .await;
    }
    for (k, v) in [(&b"k00"[..], &b"v0"[..]), (b"after", b"growth")] {
        assert_eq!(rest.get(k, Consistency::Linearizable).await.unwrap(), v);
    }
}
