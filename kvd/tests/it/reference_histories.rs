//! The linearizability checker against every reference history in `shared/data/`, whose
//! verdicts were given by porcupine: the checker must agree with all of them.

use crate::histories::{parse_jepsen_log, parse_kv_history, AppendModel, RegisterModel};
use crate::linearizability::{check, Verdict};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// `shared/data/`: `$OMNIKV_SHARED_DATA` if set, else `shared/` next to the repository
/// checkout. Missing data fails the test: skipping would silently drop the check.
fn data_dir() -> PathBuf {
    let dir = match std::env::var_os("OMNIKV_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")),
    };
    assert!(
        dir.join("README.md").is_file(),
        "reference histories not found at {} (expected shared/data/ beside the repository \
         checkout, or set OMNIKV_SHARED_DATA to its path)",
        dir.display()
    );
    dir
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn reference_jepsen_etcd_verdicts() {
    let dir = data_dir().join("jepsen-etcd");
    let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
    for line in read(&dir.join("verdicts.tsv")).lines() {
        let (file, verdict) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("bad verdicts.tsv line {line:?}"));
        let linearizable = match verdict.trim() {
            "linearizable" => true,
            "not-linearizable" => false,
            other => panic!("unknown verdict {other:?} for {file}"),
        };
        assert!(
            verdicts.insert(file.to_string(), linearizable).is_none(),
            "{file} twice"
        );
    }
    assert_eq!(verdicts.len(), 102, "verdicts.tsv should judge 102 logs");

    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 103, "expected etcd_000.log ... etcd_102.log");
    // The one log without a verdict is etcd_095.log, and it is empty.
    let unjudged: Vec<&String> = logs.iter().filter(|l| !verdicts.contains_key(*l)).collect();
    assert_eq!(unjudged, ["etcd_095.log"]);
    assert!(read(&dir.join("etcd_095.log")).trim().is_empty());

    let started = Instant::now();
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut slowest = (std::time::Duration::ZERO, "");
    for (file, &expected) in &verdicts {
        let ops =
            parse_jepsen_log(&read(&dir.join(file))).unwrap_or_else(|e| panic!("{file}: {e}"));
        let t = Instant::now();
        let verdict = check(&RegisterModel, &ops);
        checked += 1;
        if verdict.is_linearizable() != expected {
            wrong.push(format!(
                "{file}: expected {}, got {verdict:?}",
                if expected {
                    "linearizable"
                } else {
                    "not linearizable"
                }
            ));
        }
        slowest = slowest.max((t.elapsed(), file.as_str()));
    }
    eprintln!(
        "checked {checked} jepsen etcd logs in {:?} (slowest: {} in {:?})",
        started.elapsed(),
        slowest.1,
        slowest.0
    );
    assert!(wrong.is_empty(), "verdicts disagree:\n{}", wrong.join("\n"));
    assert_eq!(checked, 102);
}

#[test]
fn reference_kv_histories_verdicts() {
    let dir = data_dir().join("kv-histories");
    let started = Instant::now();
    let mut checked = 0;
    for clients in ["c01", "c10", "c50"] {
        for (suffix, expected) in [("ok", true), ("bad", false)] {
            let file = format!("{clients}-{suffix}.txt");
            let ops =
                parse_kv_history(&read(&dir.join(&file))).unwrap_or_else(|e| panic!("{file}: {e}"));
            let t = Instant::now();
            let verdict = check(&AppendModel, &ops);
            eprintln!("{file}: {} ops, {:?}", ops.len(), t.elapsed());
            match (&verdict, expected) {
                (Verdict::Linearizable, true) => {}
                (Verdict::NotLinearizable(v), false) => eprintln!("  {v}"),
                _ => panic!("{file}: expected linearizable = {expected}, got {verdict:?}"),
            }
            checked += 1;
        }
    }
    eprintln!("checked {checked} kv histories in {:?}", started.elapsed());
    assert_eq!(checked, 6);
}
