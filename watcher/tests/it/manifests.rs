//! The manifests against the code: the Role grants exactly what the watcher checks and uses,
//! every WATCHER_* variable the StatefulSet sets is a real flag, and the settings that keep a
//! scale-up from deadlocking are there.

use std::collections::BTreeSet;
use std::path::PathBuf;
use yaml_serde::Value;

fn k8s_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(k8s_dir().join(file)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn of_kind(file: &str, kind: &str) -> Value {
    docs(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn role_grants_exactly_what_the_watcher_uses() {
    use clap::Parser;
    let role = of_kind("rbac.yaml", "Role");
    // (verb, resource, resource name or "")
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        assert_eq!(strs(&rule["apiGroups"]), [""], "core API group only");
        let names = strs(&rule["resourceNames"]);
        for verb in strs(&rule["verbs"]) {
            for res in strs(&rule["resources"]) {
                if names.is_empty() {
                    granted.insert((verb.clone(), res.clone(), String::new()));
                }
                for n in &names {
                    granted.insert((verb.clone(), res.clone(), n.clone()));
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> = [
        ("get", "configmaps", ""),
        ("list", "configmaps", ""),
        ("watch", "configmaps", ""),
        ("get", "pods", ""),
        ("list", "pods", ""),
        ("watch", "pods", ""),
        ("patch", "configmaps", "kv-config"),
        ("create", "events", ""),
    ]
    .iter()
    .map(|(v, r, n)| (v.to_string(), r.to_string(), n.to_string()))
    .collect();
    assert_eq!(granted, expected);

    // What the watcher checks at start-up is granted.
    let cfg = watcher::Config::parse_from(["watcher"]);
    for (verb, res, name) in watcher::k8s::required_permissions(&cfg) {
        let key = (verb.to_string(), res.to_string(), name.unwrap_or_default());
        // A grant without resourceNames covers every name.
        let any = (verb.to_string(), res.to_string(), String::new());
        assert!(
            granted.contains(&key) || granted.contains(&any),
            "{key:?} is checked but not granted"
        );
    }
    let binding = of_kind("rbac.yaml", "RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["name"], "kv-watcher");
}

#[test]
fn statefulset_cannot_deadlock_a_scale_up_and_sets_real_flags() {
    let sts = of_kind("statefulset.yaml", "StatefulSet");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        sts["spec"]["template"]["spec"]["serviceAccountName"],
        "kv-watcher"
    );
    let headless = docs("services.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "kv-store")
        .unwrap();
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);

    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    let kvd = containers.iter().find(|c| c["name"] == "kvd").unwrap();
    assert_eq!(kvd["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(kvd["readinessProbe"]["httpGet"]["path"], "/readyz");
    let watcher = containers.iter().find(|c| c["name"] == "watcher").unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_watcher"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for var in watcher["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap();
        if name.starts_with("WATCHER_") {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "{name} is not a watcher flag"
            );
        }
    }
    let pdb = of_kind("pdb.yaml", "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

/// A rolling update SIGTERMs each kvd: the grace period must cover the leader hand-off and
/// the in-flight requests after it (kvd's defaults unless the manifest sets them), and no
/// preStop hook may delay the signal that starts the hand-off.
#[test]
fn statefulset_gives_the_sigterm_hand_off_time() {
    let sts = of_kind("statefulset.yaml", "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    let kvd = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kvd")
        .unwrap();
    let env_ms = |name: &str, default: u64| {
        kvd["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map_or(default, |v| v["value"].as_str().unwrap().parse().unwrap())
    };
    let handoff_ms = env_ms("KVD_HANDOFF_TIMEOUT_MS", 2_000);
    let request_ms = env_ms("KVD_REQUEST_TIMEOUT_MS", 5_000);
    assert!(handoff_ms > 0, "the hand-off is on");
    let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace_s * 1000 >= 2 * (handoff_ms + request_ms),
        "grace period {grace_s} s is not twice hand-off {handoff_ms} ms + requests {request_ms} ms"
    );
    assert!(
        kvd["lifecycle"]["preStop"].is_null(),
        "a preStop hook delays the SIGTERM that starts the hand-off"
    );
}
