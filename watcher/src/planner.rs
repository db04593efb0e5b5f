//! The pure planner: (desired NODES / CONFIG_ID, the pods, the local kvd's status) -> what to
//! do. No I/O here: the controller gathers the inputs, asks `plan`, and carries the answer out,
//! so every decision is a table test.
//!
//! Rules, in order:
//! 1. Act only where the local kvd leads the CURRENT configuration (a removed ex-leader or a
//!    joiner does not; a standalone replica, the only member of its configuration, is its own
//!    leader) and reaches a majority of its members (trivially true for one member): one
//!    watcher of the StatefulSet acts, the others idle.
//! 2. A bad ConfigMap, or a change already in flight, is not acted on.
//! 3. CONFIG_ID is the id the new configuration gets: current + 1. Equal to the current id it
//!    must name the current members (in sync: only the annotation may need recording);
//!    behind the cluster, or skipping ahead, it is refused with the id to use.
//! 4. The change must pass kvd's own guard (`omnikv_common::membership::check_change`: at
//!    least two members, and the members kept a majority of the old and of the new
//!    configuration, so a change that replaces a majority at once is refused: do it in
//!    steps; growing a standalone replica must keep it and go to at most three members),
//!    and a majority of the new configuration must be up now.
//! 5. Every added node's pod must be Running (not terminating) with its kvd answering
//!    /healthz and reporting the role `joining` (an empty replica started with a later
//!    CONFIG_ID, or a removed one restarted so, which starts over) or `removed` (removed
//!    earlier and still running: it joins as new when told of the change). One still
//!    `leaving` is waited for; one that bootstrapped a configuration of its own is refused:
//!    the change could not complete. Not Ready: a joiner is Ready only once it holds state,
//!    which it only gets after this change. Removed nodes need nothing: the change comes
//!    first, the StatefulSet is scaled down after.

use omnikv_common::membership::{check_change, grows_from_one, majority, parse_nodes};
use omnikv_common::{Role, StatusView};
use std::collections::{BTreeMap, BTreeSet};

/// Key of the ConfigMap entry with the desired members (`[1, 2, 3]` or `1,2,3`).
pub const KEY_NODES: &str = "NODES";
/// Key of the ConfigMap entry with the desired configuration id.
pub const KEY_CONFIG_ID: &str = "CONFIG_ID";

/// What the ConfigMap asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Sorted, distinct pids >= 1.
    pub nodes: Vec<u64>,
    pub config_id: u32,
}

/// Reads NODES and CONFIG_ID from a ConfigMap's data. The error says what to fix.
pub fn parse_desired(data: &BTreeMap<String, String>) -> Result<Desired, String> {
    let nodes = data
        .get(KEY_NODES)
        .ok_or_else(|| format!("the ConfigMap has no {KEY_NODES}"))?;
    let nodes = parse_nodes(nodes)
        .map_err(|e| format!("{KEY_NODES} {nodes:?}: {e}"))?
        .0;
    let config_id = data
        .get(KEY_CONFIG_ID)
        .ok_or_else(|| format!("the ConfigMap has no {KEY_CONFIG_ID}"))?;
    let config_id = config_id
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&id| id >= 1)
        .ok_or_else(|| format!("{KEY_CONFIG_ID} {config_id:?} is not an integer >= 1"))?;
    Ok(Desired { nodes, config_id })
}

/// What the watcher knows of one StatefulSet pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodState {
    pub name: String,
    /// Phase Running.
    pub running: bool,
    /// The Ready condition (informational: a joiner is not Ready until it holds state).
    pub ready: bool,
    /// A deletion timestamp is set.
    pub terminating: bool,
}

/// Everything a decision depends on.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The ConfigMap's NODES / CONFIG_ID (`Err`: missing or malformed, with the reason).
    pub desired: Option<Result<Desired, String>>,
    /// The applied config id recorded on the ConfigMap (annotation), if any.
    pub recorded: Option<u32>,
    /// The StatefulSet's pods, by pid.
    pub pods: BTreeMap<u64, PodState>,
    /// Whether replica pid's kvd answered /healthz (only the pids the caller probed).
    pub healthy: BTreeMap<u64, bool>,
    /// The /v1/status of the added nodes whose kvd answered it (only the pids the caller
    /// probed).
    pub added_status: BTreeMap<u64, StatusView>,
    /// The local kvd's status; `None` when it did not answer.
    pub status: Option<StatusView>,
}

/// A membership change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub nodes: Vec<u64>,
    pub config_id: u32,
    /// Current configuration (for messages).
    pub from_config_id: u32,
    pub from_nodes: Vec<u64>,
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Another replica leads (or none is known): that replica's watcher acts.
    NotLeader { leader: Option<u64> },
    /// The cluster matches the ConfigMap and the annotation records it.
    InSync { config_id: u32 },
    /// The cluster matches the ConfigMap; record `config_id` in the annotation.
    Record { config_id: u32 },
    /// Not yet: something that resolves by itself (a pod starting, a change in flight).
    Wait(String),
    /// Not acting until the ConfigMap (or the cluster) changes: an operator must fix it.
    Refuse(String),
    /// Run `kvctl reconfigure`.
    Reconfigure(Change),
}

fn list(pids: &[u64]) -> String {
    let v: Vec<String> = pids.iter().map(u64::to_string).collect();
    format!("[{}]", v.join(","))
}

/// Whether the replica reporting `status` is the one whose watcher acts: the leader of its
/// current configuration, or a standalone replica (the only member, its own leader).
pub fn acts(status: &StatusView) -> bool {
    match status.role {
        Role::Leader => status.leader == Some(status.pid),
        Role::Standalone => true,
        _ => false,
    }
}

/// Decides what to do. Pure: same input, same answer.
pub fn plan(input: &Input) -> Plan {
    let Some(status) = &input.status else {
        return Plan::Wait("the local kvd does not answer /v1/status".into());
    };
    if !acts(status) {
        return Plan::NotLeader {
            leader: status.leader.filter(|&l| l != status.pid),
        };
    }
    // A leader that reaches no majority of its members is not one to act on (it may be a
    // stale or isolated replica that still believes it leads); nor to record its view. A
    // standalone replica is the whole of its one-member configuration: it reaches 1 of 1.
    let reached = status
        .members
        .iter()
        .filter(|&&p| p == status.pid || status.connected_peers.contains(&p))
        .count();
    if reached < majority(status.members.len()) {
        return Plan::Wait(format!(
            "this leader reaches only {reached} of its {} members",
            status.members.len()
        ));
    }
    let desired = match &input.desired {
        None => return Plan::Refuse("the ConfigMap does not exist".into()),
        Some(Err(e)) => return Plan::Refuse(format!("the ConfigMap is invalid: {e}")),
        Some(Ok(d)) => d,
    };
    if let Some(r) = &status.reconfiguration {
        return Plan::Wait(format!(
            "a change to configuration {} {} is in flight ({})",
            r.config_id,
            list(&r.members),
            r.phase
        ));
    }
    let current: BTreeSet<u64> = status.members.iter().copied().collect();
    let wanted: BTreeSet<u64> = desired.nodes.iter().copied().collect();
    let cur_id = status.config_id;
    let same_members = current == wanted;

    if desired.config_id == cur_id {
        if same_members {
            return if input.recorded == Some(cur_id) {
                Plan::InSync { config_id: cur_id }
            } else {
                Plan::Record { config_id: cur_id }
            };
        }
        return Plan::Refuse(format!(
            "CONFIG_ID {} is the current configuration, whose members are {}, but NODES is {}: \
             set CONFIG_ID to {} to change the members",
            desired.config_id,
            list(&status.members),
            list(&desired.nodes),
            cur_id + 1
        ));
    }
    if desired.config_id < cur_id {
        return Plan::Refuse(format!(
            "CONFIG_ID {} is behind the cluster's configuration {} (members {}): configuration \
             ids only grow; to change the members set NODES and CONFIG_ID {}",
            desired.config_id,
            cur_id,
            list(&status.members),
            cur_id + 1
        ));
    }
    if desired.config_id > cur_id + 1 {
        return Plan::Refuse(format!(
            "CONFIG_ID {} skips ahead of the cluster's configuration {}: the next change must \
             be CONFIG_ID {}",
            desired.config_id,
            cur_id,
            cur_id + 1
        ));
    }
    if same_members {
        return Plan::Refuse(format!(
            "CONFIG_ID {} asks for a new configuration but NODES {} are already the members \
             of configuration {}: nothing to change",
            desired.config_id,
            list(&desired.nodes),
            cur_id
        ));
    }

    if let Err(e) = check_change(&status.members, &desired.nodes) {
        if grows_from_one(&status.members) {
            return Plan::Refuse(format!(
                "replica {} runs alone (configuration {cur_id}, role {}): {e}; set NODES to \
                 at most three pids that include {}",
                status.pid, status.role, status.pid
            ));
        }
        return Plan::Refuse(e);
    }
    let added: Vec<u64> = wanted.difference(&current).copied().collect();
    let removed: Vec<u64> = current.difference(&wanted).copied().collect();

    // Who is up now: this leader, the members it has a live connection to, and the added
    // nodes whose kvd answers /healthz.
    let up = |pid: u64| {
        pid == status.pid
            || (current.contains(&pid) && status.connected_peers.contains(&pid))
            || (!current.contains(&pid) && input.healthy.get(&pid) == Some(&true))
    };
    let current_up = current.iter().filter(|&&p| up(p)).count();
    if current_up < majority(current.len()) {
        return Plan::Refuse(format!(
            "would lose quorum: only {current_up} of the {} current members are reachable",
            current.len()
        ));
    }

    for &pid in &added {
        match input.pods.get(&pid) {
            None => return Plan::Wait(format!("waiting for the pod of added node {pid}")),
            Some(p) if p.terminating => {
                return Plan::Wait(format!("pod {} (node {pid}) is terminating", p.name))
            }
            Some(p) if !p.running => {
                return Plan::Wait(format!("waiting for pod {} (node {pid}) to run", p.name))
            }
            Some(p) if input.healthy.get(&pid) != Some(&true) => {
                return Plan::Wait(format!(
                    "waiting for kvd in pod {} (node {pid}) to answer /healthz",
                    p.name
                ))
            }
            Some(p) => match input.added_status.get(&pid) {
                None => {
                    return Plan::Wait(format!(
                        "waiting for kvd in pod {} (node {pid}) to report its status",
                        p.name
                    ))
                }
                Some(s) if s.role == Role::Leaving => {
                    return Plan::Wait(format!(
                        "waiting for kvd in pod {} (node {pid}) to finish leaving (it hands \
                         its state over before it can join again)",
                        p.name
                    ))
                }
                Some(s) if !matches!(s.role, Role::Joining | Role::Removed) => {
                    return Plan::Refuse(format!(
                        "pod {} (node {pid}) is not a joiner: its kvd reports role {} in \
                         configuration {} {}; an added replica must start with an empty data \
                         dir and CONFIG_ID {}: delete the pods and PVCs of the added nodes \
                         (they hold none of this cluster's data yet) so that the StatefulSet \
                         recreates them empty",
                        p.name,
                        s.role,
                        s.config_id,
                        list(&s.members),
                        desired.config_id
                    ))
                }
                Some(_) => {}
            },
        }
    }

    let new_up = wanted.iter().filter(|&&p| up(p)).count();
    if new_up < majority(wanted.len()) {
        return Plan::Refuse(format!(
            "would lose quorum: only {new_up} of the {} members of {} are up (need {})",
            wanted.len(),
            list(&desired.nodes),
            majority(wanted.len())
        ));
    }

    Plan::Reconfigure(Change {
        nodes: desired.nodes.clone(),
        config_id: desired.config_id,
        from_config_id: cur_id,
        from_nodes: status.members.clone(),
        added,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnikv_common::api::{Phase, ReconfigView};

    fn status(pid: u64, leader: Option<u64>, config_id: u32, members: &[u64]) -> StatusView {
        StatusView {
            pid,
            role: if leader == Some(pid) {
                Role::Leader
            } else {
                Role::Follower
            },
            leader,
            config_id,
            members: members.to_vec(),
            decided_idx: 0,
            applied_idx: 0,
            compacted_idx: 0,
            keys: 0,
            state_hash: String::new(),
            revision: 0,
            cluster_id: String::new(),
            connected_peers: members.iter().copied().filter(|&p| p != pid).collect(),
            reconfiguration: None,
            transfer: None,
        }
    }

    /// An empty replica started with a later CONFIG_ID, waiting to be told its configuration.
    fn joiner(pid: u64) -> StatusView {
        let mut s = status(pid, None, 0, &[]);
        s.role = Role::Joining;
        s
    }

    /// Standalone replica `pid` (configuration `cur_id`, members [pid]), its pod up, the
    /// ConfigMap asking for `nodes` / `id`, each added node's pod Running and a live joiner.
    fn standalone(pid: u64, cur_id: u32, nodes: &[u64], id: u32) -> Input {
        let mut i = input(cur_id, &[pid], nodes, id);
        let mut s = status(pid, Some(pid), cur_id, &[pid]);
        s.role = Role::Standalone;
        i.status = Some(s);
        i
    }

    fn pod(pid: u64, running: bool, ready: bool) -> (u64, PodState) {
        (
            pid,
            PodState {
                name: format!("kv-store-{}", pid - 1),
                running,
                ready,
                terminating: false,
            },
        )
    }

    /// Leader 1 of configuration `cur_id` with `members`, every pod up and Ready, the
    /// ConfigMap asking for `nodes` / `id`.
    fn input(cur_id: u32, members: &[u64], nodes: &[u64], id: u32) -> Input {
        let mut pods: BTreeMap<u64, PodState> =
            members.iter().map(|&p| pod(p, true, true)).collect();
        let mut healthy: BTreeMap<u64, bool> = members.iter().map(|&p| (p, true)).collect();
        let mut added_status = BTreeMap::new();
        for &p in nodes.iter().filter(|p| !members.contains(p)) {
            pods.entry(p).or_insert_with(|| pod(p, true, false).1);
            healthy.insert(p, true);
            added_status.insert(p, joiner(p));
        }
        Input {
            desired: Some(Ok(Desired {
                nodes: nodes.to_vec(),
                config_id: id,
            })),
            recorded: Some(cur_id),
            pods,
            healthy,
            added_status,
            status: Some(status(1, Some(1), cur_id, members)),
        }
    }

    fn reconfigure(nodes: &[u64], id: u32) -> impl Fn(&Plan) -> bool + '_ {
        move |p| matches!(p, Plan::Reconfigure(c) if c.nodes == nodes && c.config_id == id)
    }

    fn refused_with(text: &'static str) -> impl Fn(&Plan) -> bool {
        move |p| matches!(p, Plan::Refuse(m) if m.contains(text))
    }

    fn waits_with(text: &'static str) -> impl Fn(&Plan) -> bool {
        move |p| matches!(p, Plan::Wait(m) if m.contains(text))
    }

    #[test]
    fn table() {
        type Check = Box<dyn Fn(&Plan) -> bool>;
        let mut cases: Vec<(&str, Input, Check)> = Vec::new();

        cases.push((
            "scale-up 3 -> 4, the joiner Running and alive but not Ready",
            input(1, &[1, 2, 3], &[1, 2, 3, 4], 2),
            Box::new(reconfigure(&[1, 2, 3, 4], 2)),
        ));
        cases.push((
            "scale-down 4 -> 3 (highest pid), no pod condition needed",
            input(2, &[1, 2, 3, 4], &[1, 2, 3], 3),
            Box::new(reconfigure(&[1, 2, 3], 3)),
        ));
        let mut gone = input(2, &[1, 2, 3, 4], &[1, 2, 3], 3);
        gone.pods.remove(&4);
        gone.healthy.remove(&4);
        gone.status.as_mut().unwrap().connected_peers = vec![2, 3];
        cases.push((
            "scale-down of a node whose pod is already gone",
            gone,
            Box::new(reconfigure(&[1, 2, 3], 3)),
        ));
        cases.push((
            "replace one node (3 by 4): kept 2 of 3",
            input(1, &[1, 2, 3], &[1, 2, 4], 2),
            Box::new(reconfigure(&[1, 2, 4], 2)),
        ));
        cases.push((
            "replace a majority at once (2, 3 by 4, 5)",
            input(1, &[1, 2, 3], &[1, 4, 5], 2),
            Box::new(refused_with("replaces a majority at once")),
        ));
        cases.push((
            "shrink 5 -> 2 at once: kept 2 of the old 5",
            input(1, &[1, 2, 3, 4, 5], &[1, 2], 2),
            Box::new(refused_with("replaces a majority at once")),
        ));
        cases.push((
            "replace every member",
            input(1, &[1, 2, 3], &[4, 5, 6], 2),
            Box::new(refused_with("replaces a majority at once")),
        ));
        cases.push((
            "grow 3 -> 5 in one change: kept 3 of 5",
            input(1, &[1, 2, 3], &[1, 2, 3, 4, 5], 2),
            Box::new(reconfigure(&[1, 2, 3, 4, 5], 2)),
        ));
        cases.push((
            "CONFIG_ID going backwards",
            input(3, &[1, 2, 3], &[1, 2, 3, 4], 2),
            Box::new(refused_with("is behind the cluster's configuration 3")),
        ));
        cases.push((
            "CONFIG_ID repeated with other NODES",
            input(2, &[1, 2, 3, 4], &[1, 2, 3], 2),
            Box::new(refused_with("set CONFIG_ID to 3")),
        ));
        cases.push((
            "CONFIG_ID bumped with the same NODES",
            input(1, &[1, 2, 3], &[1, 2, 3], 2),
            Box::new(refused_with("nothing to change")),
        ));
        cases.push((
            "CONFIG_ID skipping ahead",
            input(1, &[1, 2, 3], &[1, 2, 3, 4], 3),
            Box::new(refused_with("the next change must be CONFIG_ID 2")),
        ));
        cases.push((
            "in sync and recorded",
            input(2, &[1, 2, 3, 4], &[1, 2, 3, 4], 2),
            Box::new(|p: &Plan| *p == Plan::InSync { config_id: 2 }),
        ));
        let mut unrecorded = input(2, &[1, 2, 3, 4], &[1, 2, 3, 4], 2);
        unrecorded.recorded = Some(1);
        cases.push((
            "in sync, the annotation behind (restart after applying)",
            unrecorded,
            Box::new(|p: &Plan| *p == Plan::Record { config_id: 2 }),
        ));
        let mut no_pod = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        no_pod.pods.remove(&4);
        no_pod.healthy.remove(&4);
        cases.push((
            "added pod not created yet",
            no_pod,
            Box::new(waits_with("waiting for the pod of added node 4")),
        ));
        let mut pending = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        pending.pods.get_mut(&4).unwrap().running = false;
        pending.healthy.insert(4, false);
        cases.push((
            "added pod not yet Running",
            pending,
            Box::new(waits_with("kv-store-3 (node 4) to run")),
        ));
        let mut silent = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        silent.healthy.insert(4, false);
        cases.push((
            "added pod Running but its kvd not answering /healthz",
            silent,
            Box::new(waits_with("to answer /healthz")),
        ));
        let mut terminating = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        terminating.pods.get_mut(&4).unwrap().terminating = true;
        cases.push((
            "added pod terminating",
            terminating,
            Box::new(waits_with("is terminating")),
        ));
        let mut lossy = input(1, &[1, 2, 3], &[1, 2], 2);
        lossy.status.as_mut().unwrap().connected_peers = vec![3];
        cases.push((
            "quorum-unsafe removal: 2 is down, so [1,2] would have 1 of 2 up",
            lossy,
            Box::new(refused_with("would lose quorum: only 1 of the 2 members")),
        ));
        let mut minority = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        minority.status.as_mut().unwrap().connected_peers = vec![];
        cases.push((
            "quorum-unsafe: the leader reaches no other member",
            minority,
            Box::new(waits_with("reaches only 1 of its 3 members")),
        ));
        let mut isolated = input(2, &[1, 2, 3, 4], &[1, 2, 3, 4], 2);
        isolated.recorded = Some(1);
        isolated.status.as_mut().unwrap().connected_peers = vec![2];
        cases.push((
            "an isolated self-declared leader records nothing",
            isolated,
            Box::new(waits_with("reaches only 2 of its 4 members")),
        ));
        let mut down_add = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        down_add.status.as_mut().unwrap().connected_peers = vec![2];
        cases.push((
            "adding with one member down keeps 3 of 4 up",
            down_add,
            Box::new(reconfigure(&[1, 2, 3, 4], 2)),
        ));
        cases.push((
            "down to one member",
            input(2, &[1, 2], &[1], 3),
            Box::new(refused_with("needs at least two members")),
        ));
        let mut follower = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        follower.status = Some(status(2, Some(1), 1, &[1, 2, 3]));
        cases.push((
            "not the leader",
            follower,
            Box::new(|p: &Plan| *p == Plan::NotLeader { leader: Some(1) }),
        ));
        let mut removed = input(2, &[2, 3, 4], &[2, 3, 4], 2);
        let mut s = status(1, Some(1), 2, &[2, 3, 4]);
        s.role = Role::Removed;
        removed.status = Some(s);
        cases.push((
            "a removed ex-leader is not a leader",
            removed,
            Box::new(|p: &Plan| matches!(p, Plan::NotLeader { .. })),
        ));
        let mut leaderless = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        leaderless.status = Some(status(1, None, 1, &[1, 2, 3]));
        cases.push((
            "no leader known",
            leaderless,
            Box::new(|p: &Plan| *p == Plan::NotLeader { leader: None }),
        ));
        let mut kvd_down = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        kvd_down.status = None;
        cases.push((
            "local kvd down",
            kvd_down,
            Box::new(waits_with("does not answer")),
        ));
        let mut in_flight = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        in_flight.status.as_mut().unwrap().reconfiguration = Some(ReconfigView {
            config_id: 2,
            members: vec![1, 2, 3, 4],
            phase: Phase::Proposed,
        });
        cases.push((
            "a change already in flight (duplicate event)",
            in_flight,
            Box::new(waits_with("in flight")),
        ));
        let mut bad = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        bad.desired = Some(parse_desired(&BTreeMap::from([
            (KEY_NODES.to_string(), "[1, 2, x]".to_string()),
            (KEY_CONFIG_ID.to_string(), "2".to_string()),
        ])));
        cases.push((
            "malformed NODES",
            bad,
            Box::new(refused_with("\"x\" is not a node id")),
        ));
        let mut missing = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        missing.desired = None;
        cases.push((
            "ConfigMap missing",
            missing,
            Box::new(refused_with("does not exist")),
        ));
        let mut not_joining = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        not_joining
            .added_status
            .insert(4, status(4, Some(4), 1, &[4]));
        cases.push((
            "an added node that bootstrapped a configuration of its own",
            not_joining,
            Box::new(refused_with(
                "kv-store-3 (node 4) is not a joiner: its kvd reports role leader in \
                 configuration 1 [4]; an added replica must start with an empty data dir and \
                 CONFIG_ID 2",
            )),
        ));
        let mut returning = input(3, &[1, 2, 3], &[1, 2, 3, 4], 4);
        let mut r4 = status(4, None, 3, &[1, 2, 3]);
        r4.role = Role::Removed;
        returning.added_status.insert(4, r4.clone());
        cases.push((
            "re-adding a removed node whose kvd still runs (it joins as new)",
            returning.clone(),
            Box::new(reconfigure(&[1, 2, 3, 4], 4)),
        ));
        r4.role = Role::Leaving;
        returning.added_status.insert(4, r4);
        cases.push((
            "re-adding a removed node still handing over",
            returning,
            Box::new(waits_with("kv-store-3 (node 4) to finish leaving")),
        ));
        let mut no_status = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        no_status.added_status.remove(&4);
        cases.push((
            "an added node answering /healthz but not /v1/status",
            no_status,
            Box::new(waits_with("kv-store-3 (node 4) to report its status")),
        ));

        // Growing a standalone replica (configuration 1, members [1]).
        cases.push((
            "standalone grows to three",
            standalone(1, 1, &[1, 2, 3], 2),
            Box::new(reconfigure(&[1, 2, 3], 2)),
        ));
        cases.push((
            "standalone grows to two",
            standalone(1, 1, &[1, 2], 2),
            Box::new(reconfigure(&[1, 2], 2)),
        ));
        cases.push((
            "standalone in sync records its configuration",
            {
                let mut i = standalone(1, 1, &[1], 1);
                i.recorded = None;
                i
            },
            Box::new(|p: &Plan| *p == Plan::Record { config_id: 1 }),
        ));
        cases.push((
            "standalone grows to four in one change",
            standalone(1, 1, &[1, 2, 3, 4], 2),
            Box::new(refused_with(
                "replica 1 runs alone (configuration 1, role standalone): [1] -> [1, 2, 3, 4]: \
                 a single server grows to at most 3 members",
            )),
        ));
        cases.push((
            "standalone grown without itself",
            standalone(1, 1, &[2, 3], 2),
            Box::new(refused_with(
                "leaves out replica 1, the only one holding the state: growing a single \
                 server must keep it; set NODES to at most three pids that include 1",
            )),
        ));
        cases.push((
            "standalone replica 2 (pod kv-store-1) grown without itself",
            standalone(2, 3, &[1, 3], 4),
            Box::new(refused_with("leaves out replica 2")),
        ));
        let mut no_pods = standalone(1, 1, &[1, 2, 3], 2);
        no_pods.pods.retain(|&p, _| p == 1);
        no_pods.healthy.retain(|&p, _| p == 1);
        no_pods.added_status.clear();
        cases.push((
            "standalone growth before the StatefulSet is scaled",
            no_pods,
            Box::new(waits_with("waiting for the pod of added node 2")),
        ));
        let mut one_silent = standalone(1, 1, &[1, 2, 3], 2);
        one_silent.healthy.insert(3, false);
        one_silent.added_status.remove(&3);
        cases.push((
            "standalone growth with one joiner not answering /healthz yet",
            one_silent,
            Box::new(waits_with("kv-store-2 (node 3) to answer /healthz")),
        ));
        let mut bootstrapped = standalone(1, 1, &[1, 2, 3], 2);
        let mut s3 = status(3, Some(2), 1, &[1, 2, 3]);
        s3.role = Role::Follower;
        bootstrapped.added_status.insert(3, s3);
        cases.push((
            "standalone growth where a new pod bootstrapped with CONFIG_ID 1 (forgotten bump)",
            bootstrapped,
            Box::new(refused_with(
                "kv-store-2 (node 3) is not a joiner: its kvd reports role follower in \
                 configuration 1 [1,2,3]",
            )),
        ));
        let mut growing = standalone(1, 1, &[1, 2, 3], 2);
        growing.status.as_mut().unwrap().reconfiguration = Some(ReconfigView {
            config_id: 2,
            members: vec![1, 2, 3],
            phase: Phase::Proposed,
        });
        cases.push((
            "standalone growth in flight",
            growing,
            Box::new(waits_with(
                "a change to configuration 2 [1,2,3] is in flight",
            )),
        ));
        let mut cm_behind = standalone(1, 1, &[1, 2, 3], 1);
        cm_behind.recorded = Some(1);
        cases.push((
            "standalone with NODES grown but CONFIG_ID not bumped",
            cm_behind,
            Box::new(refused_with("set CONFIG_ID to 2 to change the members")),
        ));
        let mut joiner_self = standalone(1, 1, &[1, 2, 3], 2);
        joiner_self.status = Some(joiner(2));
        cases.push((
            "a joiner's watcher does not act",
            joiner_self,
            Box::new(|p: &Plan| *p == Plan::NotLeader { leader: None }),
        ));

        let mut failures = Vec::new();
        for (name, input, check) in &cases {
            let got = plan(input);
            if !check(&got) {
                failures.push(format!("{name}: got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn plan_is_idempotent_across_duplicate_inputs() {
        let i = input(1, &[1, 2, 3], &[1, 2, 3, 4], 2);
        assert_eq!(plan(&i), plan(&i.clone()));
        let Plan::Reconfigure(c) = plan(&i) else {
            panic!("expected a change")
        };
        assert_eq!(c.added, vec![4]);
        assert!(c.removed.is_empty());
        assert_eq!((c.from_config_id, c.from_nodes), (1, vec![1, 2, 3]));
    }

    #[test]
    fn desired_parses_the_seed_forms() {
        let data = |n: &str, c: &str| {
            BTreeMap::from([
                (KEY_NODES.to_string(), n.to_string()),
                (KEY_CONFIG_ID.to_string(), c.to_string()),
            ])
        };
        assert_eq!(
            parse_desired(&data("[1, 2, 3, 4]", "2")),
            Ok(Desired {
                nodes: vec![1, 2, 3, 4],
                config_id: 2
            })
        );
        assert_eq!(
            parse_desired(&data("3,1,2", " 1 ")).unwrap().nodes,
            [1, 2, 3]
        );
        assert!(parse_desired(&data("[1,1]", "1")).is_err());
        assert!(parse_desired(&data("[]", "1")).is_err());
        assert!(parse_desired(&data("[0,1]", "1")).is_err());
        assert!(parse_desired(&data("[1,2]", "0")).is_err());
        assert!(parse_desired(&data("[1,2]", "-1")).is_err());
        assert!(parse_desired(&BTreeMap::new()).is_err());
    }
}
