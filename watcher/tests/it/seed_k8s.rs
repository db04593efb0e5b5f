//! The seed's Kubernetes sequences as the API calls kubectl makes (the real kube client over
//! HTTP to the fake API server), with real kvd processes (replica pid N on 127.0.0.N), the
//! real kvctl and the real watcher library; then the watcher under API-server trouble.
//!
//! The fake plays the StatefulSet controller and the kubelet too (`Cluster::sync`): after a
//! scale, the kvd of each ordinal the StatefulSet asks for runs with the ConfigMap's NODES and
//! CONFIG_ID of that moment, over its own data dir, which a scale-down keeps (a PVC).
//!
//! Every change is checked to be proposed once (kvd's "StopSign proposed" log lines), applied
//! once (replica 1's `omnikv_reconfigurations_total`), recorded once (one move of the
//! applied-config annotation) and announced once (one `Reconfigured` Event).

use crate::e2e::{eventually, start_kvd, status, url, Kvd, Ports};
use crate::fake_kube::FakeKube;
use crate::harness::wait_for;
use crate::lib_watcher::{kvctl_calls, kvctl_wrapper, LibWatcher, Wrap};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use omnikv_common::{Client, Consistency, ReconfigureRequest, Role};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CM: &str = "kv-config";
const STS: &str = "kv-store";
const ANN: &str = "omnikv.io/applied-config-id";
const T: Duration = Duration::from_secs(30);

/// What the cluster and the watchers did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// kvctl runs by the watchers.
    kvctl: usize,
    /// StopSigns proposed (kvd logs).
    proposed: usize,
    /// Configuration changes replica 1 went through.
    applied: u64,
    /// Moves of the applied-config annotation.
    recorded: usize,
    /// `Reconfigured` Events.
    announced: usize,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            kvctl: self.kvctl - o.kvctl,
            proposed: self.proposed - o.proposed,
            applied: self.applied - o.applied,
            recorded: self.recorded - o.recorded,
            announced: self.announced - o.announced,
        }
    }
}

/// Replicas 1-3 (and 4 when scaled) with the fake API server and an operator's client.
struct Cluster {
    dir: PathBuf,
    ports: Ports,
    kvds: BTreeMap<u64, Kvd>,
    kube: FakeKube,
    /// The operator's kubectl: the real kube client.
    op: kube::Client,
}

impl Cluster {
    /// The base manifests' state: ConfigMap NODES [1, 2, 3] / CONFIG_ID 1, three replicas.
    async fn start(dir: &Path) -> Cluster {
        let kube = FakeKube::start().await;
        kube.set_configmap(CM, &[("NODES", "[1, 2, 3]"), ("CONFIG_ID", "1")]);
        kube.set_statefulset(STS, 3);
        let op = kube::Client::try_from(kube::Config::new(kube.url.parse().unwrap())).unwrap();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            ports: Ports::on(4),
            kvds: BTreeMap::new(),
            kube,
            op,
        };
        c.sync();
        for i in 0..3 {
            c.kube.set_pod(&format!("{STS}-{i}"), "Running", true);
        }
        let ctx = || c.logs(&[]);
        eventually("a leader", &ctx, || async {
            status(1, &c.ports).await?.leader
        })
        .await;
        c
    }

    /// The StatefulSet controller and kubelet: a kvd per ordinal asked for (started with the
    /// ConfigMap's env of now, over its kept data dir), none beyond (its pod deleted).
    fn sync(&mut self) {
        let replicas = u64::from(self.kube.replicas(STS).unwrap());
        let cm = self.kube.configmap(CM).unwrap();
        let nodes = cm["data"]["NODES"].as_str().unwrap().to_string();
        let id: u32 = cm["data"]["CONFIG_ID"].as_str().unwrap().parse().unwrap();
        for pid in 1..=replicas {
            if !self.kvds.contains_key(&pid) {
                let kvd = start_kvd(&self.dir, pid, &nodes, id, &self.ports);
                self.kvds.insert(pid, kvd);
                self.kube
                    .set_pod(&format!("{STS}-{}", pid - 1), "Running", false);
            }
        }
        let gone: Vec<u64> = self
            .kvds
            .keys()
            .copied()
            .filter(|&p| p > replicas)
            .collect();
        for pid in gone {
            self.kvds.remove(&pid);
            self.kube.delete_pod(&format!("{STS}-{}", pid - 1));
        }
    }

    /// `kubectl patch configmap kv-config --type merge -p PATCH`; returns the data after.
    async fn patch(&self, patch: Value) -> BTreeMap<String, String> {
        let api: Api<ConfigMap> = Api::default_namespaced(self.op.clone());
        let cm = api
            .patch(CM, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        cm.data.unwrap_or_default()
    }

    /// `kubectl patch configmap kv-config --type merge --patch-file=deploy/k8s/examples/FILE`.
    async fn patch_file(&self, file: &str) -> BTreeMap<String, String> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/examples");
        let text = std::fs::read_to_string(path.join(file)).unwrap();
        self.patch(serde_json::from_str(&text).unwrap()).await
    }

    /// `kubectl scale statefulset kv-store --replicas=N`, then the controller acts.
    async fn scale(&mut self, replicas: u32) -> i32 {
        let api: Api<StatefulSet> = Api::default_namespaced(self.op.clone());
        let scale = api
            .patch_scale(
                STS,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await
            .unwrap();
        self.sync();
        scale.spec.and_then(|s| s.replicas).unwrap_or_default()
    }

    fn client(&self, pids: &[u64]) -> Client {
        let urls: Vec<String> = pids.iter().map(|&p| url(p, &self.ports)).collect();
        Client::new(&urls, Duration::from_secs(10)).unwrap()
    }

    /// The shell's `reconfigure 4` as the requests it makes: the members, then the change
    /// to them plus `pid` with the next configuration id.
    async fn shell_reconfigure(&self, add: Option<u64>, remove: Option<u64>) -> String {
        let c = self.client(&[1, 2, 3]);
        let m = c.members().await.unwrap();
        let mut nodes: Vec<u64> = m.members.iter().map(|x| x.pid).collect();
        nodes.extend(add);
        nodes.retain(|&p| Some(p) != remove);
        let r = c
            .reconfigure(&ReconfigureRequest {
                nodes,
                config_id: Some(m.config_id + 1),
                force: false,
                peers: BTreeMap::new(),
            })
            .await
            .unwrap();
        format!("OK: configuration {}, members {:?}", r.config_id, r.members)
    }

    /// Replica 1's configuration changes so far (its metrics).
    async fn applied(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", url(1, &self.ports)))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("omnikv_reconfigurations_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no omnikv_reconfigurations_total in\n{text}"))
    }

    async fn counts(&self) -> Counts {
        let mut proposed = 0;
        for pid in 1..=4 {
            let log = std::fs::read_to_string(self.dir.join(format!("kvd-{pid}.log")));
            proposed += log.unwrap_or_default().matches("StopSign proposed").count();
        }
        Counts {
            kvctl: kvctl_calls(&self.dir).len(),
            proposed,
            applied: self.applied().await,
            recorded: self.kube.annotation_moves().len(),
            announced: (self.kube.events().iter())
                .filter(|(_, reason, _)| reason == "Reconfigured")
                .count(),
        }
    }

    /// Every kvd's and watcher's log, the Events and the API requests, for a failure.
    fn logs(&self, watchers: &[&LibWatcher]) -> String {
        let mut s = String::new();
        for pid in 1..=4 {
            let path = self.dir.join(format!("kvd-{pid}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                s += &format!("--- kvd {pid}\n{text}\n");
            }
        }
        for w in watchers {
            s += &format!("--- watcher {}\n{}\n", w.name, w.log());
        }
        s += &format!("--- events\n{:#?}\n", self.kube.events());
        let reqs = self.kube.requests();
        s += &format!(
            "--- API requests (last 60 of {})\n{}\n",
            reqs.len(),
            reqs[reqs.len().saturating_sub(60)..].join("\n")
        );
        s
    }

    /// Waits until the annotation reads `id`, its Event exists (after configuration 1) and
    /// every running replica runs it.
    async fn wait_applied(&self, id: u32, watchers: &[&LibWatcher]) {
        let ctx = || self.logs(watchers);
        wait_for(&format!("annotation {id} and its Event"), T, ctx, || {
            let event = id == 1 || self.kube.events_named(&format!("{CM}.config-{id}")) == 1;
            (self.kube.annotation(CM, ANN)? == id.to_string() && event).then_some(())
        })
        .await;
        self.wait_config(id, watchers).await;
    }

    /// Waits until every running replica serves configuration `id`, or was removed by it.
    async fn wait_config(&self, id: u32, watchers: &[&LibWatcher]) {
        let ctx = || self.logs(watchers);
        for &pid in self.kvds.keys() {
            eventually(
                &format!("replica {pid} in configuration {id}"),
                &ctx,
                || async {
                    let s = status(pid, &self.ports).await?;
                    let done = matches!(s.role, Role::Leader | Role::Follower | Role::Removed);
                    (s.config_id >= id && done).then_some(())
                },
            )
            .await;
        }
    }

    /// The watcher of pod `kv-store-<pid - 1>`, with its own counting kvctl.
    fn watcher(&self, pid: u64, wrap: Wrap) -> LibWatcher {
        let name = format!("{STS}-{}", pid - 1);
        self.watcher_of(&name, pid, wrap)
    }

    /// A watcher named `name` next to replica `pid`'s kvd.
    fn watcher_of(&self, name: &str, pid: u64, wrap: Wrap) -> LibWatcher {
        let kvctl = kvctl_wrapper(&self.dir, name, wrap);
        LibWatcher::start(
            &self.kube,
            &self.dir,
            name,
            &url(pid, &self.ports),
            &format!("http://127.0.0.{{pid}}:{}", self.ports.client),
            &kvctl,
        )
    }

    async fn leader(&self) -> u64 {
        status(1, &self.ports).await.and_then(|s| s.leader).unwrap()
    }
}

/// Asserts that `d` is one change, proposed once, applied once, recorded once (with the
/// watchers: `kvctl` runs, one annotation move and one Event; without: none), and that the
/// Event of configuration `id` exists once.
fn once(c: &Cluster, step: &str, d: Counts, id: u32, kvctl: usize, recorded: bool) {
    let r = usize::from(recorded);
    let want = Counts {
        kvctl,
        proposed: 1,
        applied: 1,
        recorded: r,
        announced: r,
    };
    assert_eq!(d, want, "{step}\n{}", c.logs(&[]));
    if recorded {
        assert_eq!(
            c.kube.events_named(&format!("{CM}.config-{id}")),
            1,
            "{step}"
        );
        let moves: Vec<_> = c.kube.annotation_moves();
        let to_id = moves.iter().filter(|(_, to)| *to == id.to_string()).count();
        assert_eq!(to_id, 1, "{step}: {moves:?}");
    }
}

fn row(table: &mut Vec<String>, step: &str, what: &str, d: Counts) {
    table.push(format!(
        "| {step} | {what} | {} | {} | {} | {} | {} |",
        d.kvctl, d.proposed, d.applied, d.recorded, d.announced
    ));
}

fn print_table(title: &str, table: &[String]) {
    eprintln!(
        "{title}\n| step | what happened | kvctl runs | StopSigns proposed | applied (kvd) | \
         annotation moves | Reconfigured Events |\n|---|---|---|---|---|---|---|\n{}",
        table.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_kubectl_sequences_manual_then_automatic_with_an_ordinal_back() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    c.client(&[1, 2, 3]).put(b"a", b"1".to_vec()).await.unwrap();
    let mut table = Vec::new();

    // Manual, without the watcher (components/no-watcher): the seed's two patch files, the
    // scale, then `reconfigure 4` at the prompt.
    let t = Instant::now();
    let before = c.counts().await;
    let data = c.patch_file("patch.json").await;
    eprintln!(
        "$ kubectl patch configmap kv-config --type merge --patch-file=patch.json\n  {data:?}"
    );
    let data = c.patch_file("patchconfig.json").await;
    eprintln!("$ kubectl patch configmap kv-config --type merge --patch-file=patchconfig.json\n  {data:?}");
    let n = c.scale(4).await;
    eprintln!("$ kubectl scale statefulset kv-store --replicas=4\n  replicas {n}");
    let ctx = || c.logs(&[]);
    eventually("replica 4 waiting as a joiner", &ctx, || async {
        (status(4, &c.ports).await?.role == Role::Joining).then_some(())
    })
    .await;
    let out = c.shell_reconfigure(Some(4), None).await;
    eprintln!("> reconfigure 4\n  {out}");
    assert_eq!(out, "OK: configuration 2, members [1, 2, 3, 4]");
    c.wait_config(2, &[]).await;
    let got = c.client(&[4]).get(b"a", Consistency::Local).await.unwrap();
    assert_eq!(got, b"1");
    let d = c.counts().await - before;
    once(&c, "manual 3 -> 4", d, 2, 0, false);
    row(
        &mut table,
        &format!("manual 3 -> 4 ({:?})", t.elapsed()),
        "pid 4 new, joined",
        d,
    );

    // Manual back to three: the change first, then the scale (pid 4's data dir stays).
    let t = Instant::now();
    let before = c.counts().await;
    let data = c.patch_file("remove-node-4.json").await;
    eprintln!("$ kubectl patch configmap kv-config --type merge --patch-file=remove-node-4.json\n  {data:?}");
    let out = c.shell_reconfigure(None, Some(4)).await;
    eprintln!("> reconfigure --nodes 1,2,3\n  {out}");
    assert_eq!(out, "OK: configuration 3, members [1, 2, 3]");
    let ctx = || c.logs(&[]);
    eventually("replica 4 removed", &ctx, || async {
        (status(4, &c.ports).await?.role == Role::Removed).then_some(())
    })
    .await;
    let n = c.scale(3).await;
    eprintln!("$ kubectl scale statefulset kv-store --replicas=3\n  replicas {n}");
    let d = c.counts().await - before;
    once(&c, "manual 4 -> 3", d, 3, 0, false);
    row(
        &mut table,
        &format!("manual 4 -> 3 ({:?})", t.elapsed()),
        "pid 4 retired, pod deleted, data dir kept",
        d,
    );

    // Automatic: the watchers (one per pod) take over; they record configuration 3.
    let mut watchers: Vec<LibWatcher> = (1..=3).map(|p| c.watcher(p, Wrap::Plain)).collect();
    c.wait_applied(3, &watchers.iter().collect::<Vec<_>>())
        .await;

    // `just k8s-add-node`: NODES and CONFIG_ID in one patch, then the scale. Pod kv-store-3
    // comes back over pid 4's old data dir: kvd wipes it and waits as a joiner; the leader's
    // watcher reconfigures.
    let t = Instant::now();
    let before = c.counts().await;
    let data = c
        .patch(json!({"data": {"NODES": "[1, 2, 3, 4]", "CONFIG_ID": "4"}}))
        .await;
    eprintln!("$ kubectl patch configmap kv-config --type merge -p ...\n  {data:?}");
    let n = c.scale(4).await;
    eprintln!("$ kubectl scale statefulset kv-store --replicas=4\n  replicas {n}");
    watchers.push(c.watcher(4, Wrap::Plain));
    let refs: Vec<&LibWatcher> = watchers.iter().collect();
    c.wait_applied(4, &refs).await;
    let got = c.client(&[4]).get(b"a", Consistency::Local).await.unwrap();
    assert_eq!(got, b"1");
    let log4 = std::fs::read_to_string(dir.path().join("kvd-4.log")).unwrap();
    assert!(log4.contains("its old data is wiped; it starts over as a joiner"));
    let d = c.counts().await - before;
    once(&c, "automatic 3 -> 4", d, 4, 1, true);
    row(
        &mut table,
        &format!("automatic 3 -> 4 ({:?})", t.elapsed()),
        "pid 4 back over its old data dir",
        d,
    );

    // `just k8s-remove-node`: the patch, the annotation, then the scale.
    let t = Instant::now();
    let before = c.counts().await;
    c.patch(json!({"data": {"NODES": "[1, 2, 3]", "CONFIG_ID": "5"}}))
        .await;
    c.wait_applied(5, &refs).await;
    drop(refs);
    watchers.pop();
    c.scale(3).await;
    let d = c.counts().await - before;
    once(&c, "automatic 4 -> 3", d, 5, 1, true);
    row(
        &mut table,
        &format!("automatic 4 -> 3 ({:?})", t.elapsed()),
        "pid 4 retired, then scaled away",
        d,
    );

    let all = c.client(&[1, 2, 3]);
    assert_eq!(
        all.get(b"a", Consistency::Linearizable).await.unwrap(),
        b"1"
    );
    print_table("seed sequences:", &table);
    eprintln!("seed sequences: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_survives_its_api_server() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = Cluster::start(d).await;
    let mut watchers: Vec<LibWatcher> = (1..=3).map(|p| c.watcher(p, Wrap::Plain)).collect();
    c.wait_applied(1, &watchers.iter().collect::<Vec<_>>())
        .await;
    let mut table = Vec::new();
    let requests = |c: &Cluster, what: &str| {
        c.kube
            .requests()
            .iter()
            .filter(|r| r.contains(what))
            .count()
    };

    // 1. Watch streams cut, and refused (503) for a while: the change made meanwhile is
    //    seen once they are back, and acted on once; nothing happens while they are down.
    let t = Instant::now();
    let before = c.counts().await;
    let refused = requests(&c, "503 watch");
    cut_and_hold(&c).await;
    c.patch(json!({"data": {"NODES": "[1, 2, 3, 4]", "CONFIG_ID": "2"}}))
        .await;
    c.scale(4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.kube.annotation(CM, ANN).as_deref(), Some("1"));
    assert_eq!(c.counts().await.kvctl, before.kvctl, "acted blind");
    c.kube.hold_watches(false);
    watchers.push(c.watcher(4, Wrap::Plain));
    c.wait_applied(2, &watchers.iter().collect::<Vec<_>>())
        .await;
    let dd = c.counts().await - before;
    once(&c, "watch cut", dd, 2, 1, true);
    let what = format!(
        "streams cut, {} watch requests refused (503) in 1.5 s; applied {:?} after",
        requests(&c, "503 watch") - refused,
        t.elapsed()
    );
    row(&mut table, "watch streams cut + 503", &what, dd);

    // 2. 410 Gone: streams cut, a change made, the history compacted past the watchers'
    //    resourceVersion: their watches are answered "too old", they list again.
    let before = c.counts().await;
    let (gone, lists) = (requests(&c, "410 watch"), list_requests(&c));
    cut_and_hold(&c).await;
    c.patch(json!({"data": {"NODES": "[1, 2, 3]", "CONFIG_ID": "3"}}))
        .await;
    c.kube.compact();
    c.kube.hold_watches(false);
    c.wait_applied(3, &watchers.iter().collect::<Vec<_>>())
        .await;
    watchers.pop();
    c.scale(3).await;
    let dd = c.counts().await - before;
    once(&c, "410 Gone", dd, 3, 1, true);
    let (gone, lists) = (requests(&c, "410 watch") - gone, list_requests(&c) - lists);
    assert!(gone > 0 && lists > 0, "no 410 / no relist: {gone} {lists}");
    let what = format!("{gone} watches answered 410 Gone, {lists} lists after");
    row(&mut table, "410 Gone (resourceVersion too old)", &what, dd);

    // 3. 409 Conflict on the watcher's writes: the annotation patches and the Event.
    let before = c.counts().await;
    let conflicts = requests(&c, "(injected)");
    c.kube.conflict_next("PATCH configmaps omnikv-watcher", 3);
    c.kube.conflict_next("POST events named", 2);
    c.patch(json!({"data": {"NODES": "[1, 2, 3, 4]", "CONFIG_ID": "4"}}))
        .await;
    c.scale(4).await;
    watchers.push(c.watcher(4, Wrap::Plain));
    c.wait_applied(4, &watchers.iter().collect::<Vec<_>>())
        .await;
    let dd = c.counts().await - before;
    once(&c, "409 Conflict", dd, 4, 1, true);
    let what = format!(
        "{} writes answered 409 (3 annotation patches, 2 creates of its Event), retried",
        requests(&c, "(injected)") - conflicts
    );
    row(&mut table, "409 Conflict on its writes", &what, dd);

    // 4. The leader's watcher killed mid-change: its kvctl made the change (kvd applied
    //    configuration 5) and the watcher never heard back. Restarted, it records the change
    //    and runs nothing again.
    let before = c.counts().await;
    let leader = c.leader().await;
    let i = usize::try_from(leader - 1).unwrap();
    let marker = d.join("held");
    watchers[i] = c.watcher(leader, Wrap::HoldAfter(marker.clone()));
    c.patch(json!({"data": {"NODES": "[1, 2, 3]", "CONFIG_ID": "5"}}))
        .await;
    let ctx = || c.logs(&[]);
    wait_for("kvctl to have made the change", T, ctx, || {
        marker.exists().then_some(())
    })
    .await;
    watchers[i].kill();
    assert_eq!(c.kube.annotation(CM, ANN).as_deref(), Some("4"));
    eventually("replica 1 in configuration 5", &ctx, || async {
        (status(1, &c.ports).await?.config_id == 5).then_some(())
    })
    .await;
    watchers[i] = c.watcher(leader, Wrap::Plain);
    c.wait_applied(5, &watchers.iter().collect::<Vec<_>>())
        .await;
    watchers.pop();
    c.scale(3).await;
    let dd = c.counts().await - before;
    once(&c, "watcher restarted", dd, 5, 1, true);
    let what = format!("watcher of replica {leader} killed after its kvctl applied, restarted: recorded, ran nothing");
    row(&mut table, "watcher restarted mid-change", &what, dd);

    // 5. Two watchers acting at once (say both read a leader's status, around a leader
    //    change): their kvctl runs meet and go together. kvd makes one change; one of them
    //    moves the annotation and creates the Event, the other finds both done.
    for w in &mut watchers {
        w.kill();
    }
    let before = c.counts().await;
    let leader = c.leader().await;
    let (m0, m1) = (d.join("meet-0"), d.join("meet-1"));
    let pair = [
        c.watcher_of("kv-store-0", leader, Wrap::Meet(m0.clone(), m1.clone())),
        c.watcher_of("kv-store-1", leader, Wrap::Meet(m1, m0)),
    ];
    c.patch(json!({"data": {"NODES": "[1, 2, 3, 4]", "CONFIG_ID": "6"}}))
        .await;
    c.scale(4).await;
    c.wait_applied(6, &pair.iter().collect::<Vec<_>>()).await;
    let ctx = || c.logs(&pair.iter().collect::<Vec<_>>());
    wait_for("both watchers' kvctl answered", T, ctx, || {
        pair.iter()
            .all(|w| w.reconfigures("applied") == 1)
            .then_some(())
    })
    .await;
    // A few passes later nothing more happens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dd = c.counts().await - before;
    once(&c, "two watchers", dd, 6, 2, true);
    let what = "two watchers ran kvctl for configuration 6 at the same moment; both saw it applied";
    row(&mut table, "two watchers acting at once", what, dd);

    let all = c.client(&[1, 2, 3, 4]);
    all.put(b"after", b"faults".to_vec()).await.unwrap();
    print_table("watcher faults:", &table);
    eprintln!("watcher faults: {:?}", started.elapsed());
}

/// Refuses new watches and cuts the open ones; returns once they are all closed.
async fn cut_and_hold(c: &Cluster) {
    c.kube.hold_watches(true);
    c.kube.cut_watches();
    let ctx = || c.logs(&[]);
    wait_for("every watch stream closed", T, ctx, || {
        (c.kube.open_watches() == 0).then_some(())
    })
    .await;
}

/// List (not watch) requests for ConfigMaps and pods so far.
fn list_requests(c: &Cluster) -> usize {
    c.kube
        .requests()
        .iter()
        .filter(|r| {
            (r.starts_with("GET configmaps?") || r.starts_with("GET pods?"))
                && !r.contains("watch=true")
        })
        .count()
}
