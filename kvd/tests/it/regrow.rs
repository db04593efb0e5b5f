//! Grow, shrink and grow again with one pid, as a StatefulSet scaled 3 -> 4 -> 3 -> 4 does
//! (the returning ordinal is pid 4 again, over its retained PVC): the removed replica's old
//! data is wiped by kvd itself and it joins as new. Also the other ways back (still running
//! when it is added again; with a lost disk) and the refusal that must stay: a current
//! member with a wiped disk.

use crate::harness::{stdout_ok, Cluster, Opts};
use crate::membership::{check_all, load, reconfigure, wait_status};
use omnikv_common::{Consistency, Role, StatusView};
use std::time::{Duration, Instant};

const KEYS: usize = 300;
const T: Duration = Duration::from_secs(30);

fn serving(s: &StatusView) -> bool {
    matches!(s.role, Role::Follower | Role::Leader)
}

/// `kvctl reconfigure --nodes NODES --config-id ID` through replicas 1-3; returns its output.
fn change(c: &Cluster, nodes: &str, id: u32) -> String {
    stdout_ok(reconfigure(
        c,
        &[1, 2, 3],
        &["--nodes", nodes, "--config-id", &id.to_string()],
    ))
}

/// Adds pid 4 in configuration `id` (it must be waiting as a joiner or be removed) and waits
/// until it serves every key, the ones written while it was away included.
async fn add_four(c: &mut Cluster, id: u32, written: usize) -> Duration {
    let t = Instant::now();
    let out = change(c, "1,2,3,4", id);
    assert_eq!(
        out.trim(),
        format!("OK: configuration {id}, members 1,2,3,4")
    );
    let s = wait_status(c, 4, T, "serving with every key", |s| {
        serving(s) && s.config_id == id && s.keys as usize >= written
    })
    .await;
    let took = t.elapsed();
    assert_eq!(s.members, [1, 2, 3, 4]);
    c.members = vec![1, 2, 3, 4];
    c.wait_converged(T).await;
    check_all(c.client_of(4, T), written, Consistency::Local).await;
    took
}

/// Removes pid 4 in configuration `id` and waits until it has retired.
async fn remove_four(c: &mut Cluster, id: u32) -> Duration {
    let t = Instant::now();
    let out = change(c, "1,2,3", id);
    assert_eq!(out.trim(), format!("OK: configuration {id}, members 1,2,3"));
    let s = wait_status(c, 4, T, "removed", |s| s.role == Role::Removed).await;
    assert_eq!((s.config_id, s.members.clone()), (id, vec![1, 2, 3]));
    c.members = vec![1, 2, 3];
    t.elapsed()
}

/// Restarts pid 4 with the env a StatefulSet pod gets from the ConfigMap: NODES [1,2,3,4],
/// CONFIG_ID `id`; waits until it reports itself a joiner waiting to be added.
async fn restart_four_as(c: &mut Cluster, id: u32) -> StatusView {
    c.nodes.get_mut(&4).unwrap().config_env = (id, vec![1, 2, 3, 4]);
    c.spawn(4);
    wait_status(c, 4, T, "a joiner waiting to be added", |s| {
        s.role == Role::Joining && s.config_id == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_shrink_grow_brings_pid_4_back_over_its_old_data_dir() {
    let started = Instant::now();
    let mut c = Cluster::start(3, Opts::default()).await;
    load(&c, KEYS).await;
    let mut steps: Vec<(&str, Duration)> = Vec::new();

    // 3 -> 4: pid 4 new (empty data dir, CONFIG_ID 2).
    let t = Instant::now();
    c.add_node(4);
    wait_status(&c, 4, T, "a joiner", |s| s.role == Role::Joining).await;
    let peer = format!("4={}", c.peer_addr(4));
    stdout_ok(reconfigure(
        &c,
        &[1, 2, 3],
        &["--nodes", "1,2,3,4", "--peer", &peer, "--config-id", "2"],
    ));
    let s = wait_status(&c, 4, T, "serving", |s| {
        serving(s) && s.keys as usize >= KEYS
    })
    .await;
    assert_eq!(s.config_id, 2);
    c.members = vec![1, 2, 3, 4];
    steps.push(("3 -> 4, pid 4 new", t.elapsed()));

    // 4 -> 3, then the pod goes (scale-down); its data dir stays (the PVC is retained).
    steps.push(("4 -> 3, pid 4 retired", remove_four(&mut c, 3).await));
    c.kill(4);
    load(&c, KEYS + 100).await;

    // Restarted with its old env, it stays removed (nothing names it again).
    c.spawn(4);
    wait_status(&c, 4, T, "still removed", |s| s.role == Role::Removed).await;
    c.kill(4);

    // 3 -> 4 again: the ConfigMap says NODES [1,2,3,4], CONFIG_ID 4; the pod starts over the
    // old data dir, wipes it by itself and waits as a joiner.
    let t = Instant::now();
    let s = restart_four_as(&mut c, 4).await;
    assert_eq!(s.keys, 0, "the old state is wiped: {s:?}");
    let log = c.log_text(4);
    assert!(
        log.contains("this replica was removed by configuration 3, and CONFIG_ID 4 names it again"),
        "{log}"
    );
    let took = add_four(&mut c, 4, KEYS + 100).await;
    steps.push(("3 -> 4, pid 4 back over its old data dir", t.elapsed()));
    eprintln!("  of which the change and the state transfer: {took:?}");
    // Its peers took it under the storage id they knew: no disk was refused.
    for p in [1, 2, 3] {
        assert!(
            !c.log_text(p).contains("its disk was replaced"),
            "replica {p}"
        );
    }

    // 4 -> 3 with pid 4 left running (removed, not restarted), then 3 -> 4: told of the
    // change that adds it, it joins as new in place.
    steps.push((
        "4 -> 3, pid 4 retired, kept running",
        remove_four(&mut c, 5).await,
    ));
    load(&c, KEYS + 200).await;
    let t = Instant::now();
    add_four(&mut c, 6, KEYS + 200).await;
    steps.push(("3 -> 4, pid 4 back without a restart", t.elapsed()));

    // 4 -> 3, and this time the data dir is lost (a deleted PVC): pid 4 comes back with a new
    // disk, which its peers take (the change that removed it released the old one), and it
    // joins as new.
    steps.push(("4 -> 3, pid 4 retired", remove_four(&mut c, 7).await));
    c.kill(4);
    std::fs::remove_dir_all(&c.nodes[&4].data_dir).unwrap();
    load(&c, KEYS + 300).await;
    let t = Instant::now();
    restart_four_as(&mut c, 8).await;
    add_four(&mut c, 8, KEYS + 300).await;
    steps.push(("3 -> 4, pid 4 back with a new disk", t.elapsed()));
    // The change that removed it made its peers forget its old disk: none refused the new.
    for p in [1, 2, 3] {
        assert!(
            !c.log_text(p).contains("its disk was replaced"),
            "replica {p}"
        );
    }

    // A current member whose disk is wiped is still refused under its pid. Started empty
    // with CONFIG_ID 8 it waits as a joiner; a restarted member re-announces configuration 8
    // to it, it joins as new and dials the members, which refuse the new disk.
    c.kill(4);
    std::fs::remove_dir_all(&c.nodes[&4].data_dir).unwrap();
    c.spawn(4);
    wait_status(&c, 4, T, "a joiner", |s| s.role == Role::Joining).await;
    c.kill(3);
    c.spawn(3);
    let deadline = Instant::now() + T;
    while ![1, 2, 3]
        .iter()
        .all(|&p| c.log_text(p).contains("its disk was replaced"))
    {
        assert!(
            Instant::now() < deadline,
            "a wiped member was not refused\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = c.status(4).await.unwrap();
    assert!(
        s.role == Role::Joining && s.keys == 0 && s.connected_peers.is_empty(),
        "the wiped member must not rejoin: {s:?}"
    );
    // The others (3 of 4) still serve.
    c.client(T).put(b"after", b"wipe".to_vec()).await.unwrap();

    for (step, took) in &steps {
        eprintln!("grow-shrink-grow: {step}: {took:?}");
    }
    eprintln!("grow-shrink-grow: whole test {:?}", started.elapsed());
}
