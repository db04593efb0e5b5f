//! Stable, coverage-less fuzz driver: seeded mutation of the corpus (bit flips, interesting
//! bytes and integers, varint markers, insertions, deletions, duplications, splices) against
//! each target under `catch_unwind`. A panic or a run over 1 s is a finding: the input is
//! saved to `fuzz/artifacts/TARGET/crash-HASH` (replayed by `cargo test -p omnikv-fuzz`)
//! and the driver exits 1.
//!
//! usage: fuzz TARGET|all [SECONDS=60] [--seed N]     (SECONDS shared by the targets)
//!        fuzz --gen-seeds                             (rewrite fuzz/corpus/*/seed-*)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn load(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

const INTERESTING: &[u8] = &[
    0, 1, 2, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, b'%', b'+', b'-', b'0', b'9', b'a',
    b'f', b'g', b' ', b'\t', b'"', b'{', b'}', b'[', b']', b',', b':', b'\\',
];

fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = d.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.random_range(0..=len);
                d.insert(i, INTERESTING[rng.random_range(0..INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                d.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a chunk (repeated structures, longer lists).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let chunk = d[i..i + n].to_vec();
                let at = rng.random_range(0..=d.len());
                d.splice(at..at, chunk);
            }
            5 if len > 0 => {
                // An interesting little-endian integer (bincode varint payloads).
                let v: u64 =
                    [0, 1, 0xff, 0xffff, 0xffff_ffff, u64::MAX, 1 << 60][rng.random_range(0..7)];
                let w = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let i = rng.random_range(0..len);
                for (k, b) in v.to_le_bytes()[..w].iter().enumerate() {
                    if i + k < d.len() {
                        d[i + k] = *b;
                    }
                }
            }
            6 if !corpus.is_empty() => {
                // Splice: our head, another input's tail.
                let other = &corpus[rng.random_range(0..corpus.len())];
                let cut = rng.random_range(0..=d.len());
                let from = rng.random_range(0..=other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            7 if len > 1 => {
                let n = rng.random_range(1..len);
                d.truncate(n);
            }
            _ => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..8);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                d.splice(i..i, junk);
            }
        }
    }
    d.truncate(1 << 16);
    d
}

/// Runs one input; `Err` with the panic message on a finding.
fn run_one(f: fn(&[u8]), data: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| f(data));
    let took = t.elapsed();
    match r {
        Ok(()) if took > Duration::from_secs(1) => Err(format!("slow input: {took:?}")),
        Ok(()) => Ok(took),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

fn fuzz(name: &str, f: fn(&[u8]), budget: Duration, seed: u64) -> usize {
    let corpus_dir = fuzz_dir().join("corpus").join(name);
    let artifacts = fuzz_dir().join("artifacts").join(name);
    let mut corpus = load(&corpus_dir);
    corpus.extend(omnikv_fuzz::seeds::for_target(name));
    corpus.push(vec![]);
    let mut rng = StdRng::seed_from_u64(seed ^ hash(name.as_bytes()));
    let start = Instant::now();
    let (mut execs, mut findings, mut slowest) = (0u64, 0usize, Duration::ZERO);
    while start.elapsed() < budget {
        let base = corpus[rng.random_range(0..corpus.len())].clone();
        let input = mutate(&mut rng, &base, &corpus);
        execs += 1;
        match run_one(f, &input) {
            Ok(t) => slowest = slowest.max(t),
            Err(msg) => {
                findings += 1;
                std::fs::create_dir_all(&artifacts).unwrap();
                let path = artifacts.join(format!("crash-{:016x}", hash(&input)));
                std::fs::write(&path, &input).unwrap();
                eprintln!(
                    "fuzz {name}: FINDING saved to {}: {msg}\n  input: {input:?}",
                    path.display()
                );
                if findings >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "fuzz {name}: {execs} inputs in {:.1?}, {} corpus entries, slowest {slowest:?}, {findings} findings",
        start.elapsed(),
        corpus.len()
    );
    findings
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--gen-seeds") {
        for (name, _) in omnikv_fuzz::TARGETS {
            let dir = fuzz_dir().join("corpus").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in omnikv_fuzz::seeds::for_target(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
            }
        }
        return;
    }
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = match args.iter().position(|a| a == "--seed") {
        Some(i) => args[i + 1].parse().expect("--seed N"),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    };
    let targets: Vec<(&str, omnikv_fuzz::Target)> = if which == "all" {
        omnikv_fuzz::TARGETS.to_vec()
    } else {
        match omnikv_fuzz::target(&which) {
            Some(f) => vec![(
                omnikv_fuzz::TARGETS
                    .iter()
                    .find(|t| t.0 == which)
                    .unwrap()
                    .0,
                f,
            )],
            None => {
                eprintln!(
                    "unknown target {which}; targets: all, {:?}",
                    omnikv_fuzz::TARGETS.iter().map(|t| t.0).collect::<Vec<_>>()
                );
                std::process::exit(2);
            }
        }
    };
    // Findings are reported once, by us; keep the default hook from printing each panic.
    std::panic::set_hook(Box::new(|_| {}));
    eprintln!(
        "fuzz: seed {seed} (--seed {seed} repeats the inputs), {secs} s over {} target(s)",
        targets.len()
    );
    let per = Duration::from_secs(secs) / targets.len() as u32;
    let findings: usize = targets.iter().map(|(n, f)| fuzz(n, *f, per, seed)).sum();
    if findings > 0 {
        eprintln!("fuzz: {findings} findings (saved under fuzz/artifacts/)");
        std::process::exit(1);
    }
}
