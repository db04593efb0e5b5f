//! End to end: real kvd processes (replica pid N on 127.0.0.N), the real kvctl, one real
//! watcher per replica (as sidecars), and the fake API server standing in for Kubernetes.
//! Needs kvd and kvctl built (`cargo build --bins`; OMNIKV_BIN or the watcher's own target
//! dir) with the membership changes (`/v1/reconfigure`, joiners).

use crate::fake_kube::FakeKube;
use crate::harness::{free_port_on, wait_for, Watcher};
use omnikv_common::{Client, Consistency, StatusView};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CM: &str = "kv-config";
const ANN: &str = "omnikv.io/applied-config-id";
const T: Duration = Duration::from_secs(60);

fn bin_dir() -> PathBuf {
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

struct Kvd {
    child: Child,
    log: PathBuf,
}

impl Drop for Kvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ports {
    client: u16,
    peer: u16,
}

fn start_kvd(dir: &Path, pid: u64, nodes: &str, config_id: u32, ports: &Ports) -> Kvd {
    let log = dir.join(format!("kvd-{pid}.log"));
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
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("spawn kvd");
    Kvd { child, log }
}

fn url(pid: u64, ports: &Ports) -> String {
    format!("http://127.0.0.{pid}:{}", ports.client)
}

async fn status(pid: u64, ports: &Ports) -> Option<StatusView> {
    Client::new(&[url(pid, ports)], Duration::from_secs(1))
        .ok()?
        .status()
        .await
        .ok()
}

/// Polls `f` (async) until Some, with the logs of everything on timeout.
async fn eventually<T, F, Fut>(what: &str, ctx: &dyn Fn() -> String, mut f: F) -> T
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_edits_grow_and_shrink_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = Ports {
        client: free_port_on(5),
        peer: free_port_on(5),
    };
    let mut kvds: Vec<Kvd> = (1..=3)
        .map(|pid| start_kvd(d, pid, "[1, 2, 3]", 1, &ports))
        .collect();

    let kube = FakeKube::start().await;
    kube.set_configmap(CM, &[("NODES", "[1, 2, 3]"), ("CONFIG_ID", "1")]);
    for i in 0..3 {
        kube.set_pod(&format!("kv-store-{i}"), "Running", true);
    }
    let kvctl = bin_dir().join("kvctl").display().to_string();
    let watcher_env = |pid: u64| {
        vec![
            ("WATCHER_KVD_URL", url(pid, &ports)),
            (
                "WATCHER_PEER_URL_TEMPLATE",
                format!("http://127.0.0.{{pid}}:{}", ports.client),
            ),
            ("WATCHER_KVCTL", kvctl.clone()),
        ]
    };
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
    let logs = |kvds: &[Kvd], watchers: &[Watcher]| {
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
    };

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
        wait_for("annotation 2", T, ctx, || {
            (kube.annotation(CM, ANN)? == "2").then_some(())
        })
        .await;
        let s = eventually("config 2 on replica 1", &ctx, || async {
            status(1, &ports).await.filter(|s| s.config_id == 2)
        })
        .await;
        assert_eq!(s.members, [1, 2, 3, 4]);
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
        wait_for("annotation 3", T, ctx, || {
            (kube.annotation(CM, ANN)? == "3").then_some(())
        })
        .await;
        let s = eventually("config 3 on replica 2", &ctx, || async {
            status(2, &ports).await.filter(|s| s.config_id == 3)
        })
        .await;
        assert_eq!(s.members, [1, 2, 3]);
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
