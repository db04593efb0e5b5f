//! Replays the fuzz corpus and every saved finding (`fuzz/artifacts/TARGET/*`) through the
//! targets: a finding stays a failing test until the bug is fixed.

use std::path::PathBuf;

fn replay(target: &str, sub: &str) -> usize {
    let f = omnikv_fuzz::target(target).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(sub)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if let Err(p) = std::panic::catch_unwind(|| f(&data)) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {msg}", file.display());
        }
    }
    files.len()
}

#[test]
fn corpus_replays_cleanly() {
    for (name, _) in omnikv_fuzz::TARGETS {
        let n = replay(name, "corpus");
        assert!(n > 0, "no corpus for {name}");
    }
}

#[test]
fn seeds_decode_and_pass() {
    for (name, f) in omnikv_fuzz::TARGETS {
        for s in omnikv_fuzz::seeds::for_target(name) {
            f(&s);
        }
    }
    // The peer-frame seeds are real frames: they must decode.
    for s in omnikv_fuzz::seeds::peer_frames() {
        omnikv_wire::frame::PeerFrame::decode(&s).unwrap();
    }
}

#[test]
fn saved_findings_pass() {
    for (name, _) in omnikv_fuzz::TARGETS {
        replay(name, "artifacts");
    }
}
