//! A data dir on a small tmpfs: the free-space guard refuses writes before RocksDB runs out,
//! reads go on, writes resume once space is freed; with the guard off, RocksDB's own failure
//! fails the write, and a restart keeps every acknowledged write. Mounting needs root (CI has it).

use crate::harness::{Cluster, Opts};
use omnikv_common::{ClientError, Consistency};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Tmpfs {
    /// The operator adds space (a tmpfs can be resized in place).
    fn grow(&self, mib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a ballast file until `leave` bytes are free.
fn ballast(dir: &Path, leave: u64) -> PathBuf {
    let free = kvd::space::free_bytes(dir).unwrap();
    assert!(free > leave, "only {free} bytes free");
    let path = dir.join("ballast.bin");
    let f = std::fs::File::create(&path).unwrap();
    // tmpfs allocates on write: write real bytes.
    let chunk = vec![7u8; 1 << 20];
    let mut left = free - leave;
    let mut w = std::io::BufWriter::new(f);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    std::io::Write::flush(&mut w).unwrap();
    path
}

const VALUE: usize = 60 * 1024;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    v.resize(VALUE, b'v');
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_before_the_disk_fills_and_resume_when_space_frees() {
    // 16 MiB to fill before the guard refuses, with kvd's default of 128 MiB kept free:
    // room for RocksDB's flushes and compactions, which write new table files before deleting
    // the old ones. Between two of the guard's measurements (250 ms apart) free space fell by
    // up to 53 MiB in this test; with 24 MiB kept, one CI run saw a compaction run out of
    // space before the guard refused.
    let mut c = Cluster::new_stopped(
        1,
        Opts {
            extra_env: vec![("KVD_MIN_FREE_BYTES".into(), (128 << 20).to_string())],
            ..Opts::default()
        },
    );
    let dir = c.nodes[&1].data_dir.clone();
    let _fs = Tmpfs::mount(&dir, 512);
    c.spawn(1);
    c.wait_ready(1, Duration::from_secs(20)).await;
    let ballast = ballast(&dir, 144 << 20);
    let client = c.client(Duration::from_secs(5));
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..2000 {
        match client.put(format!("k{i}").as_bytes(), value(i)).await {
            Ok(_) => acked.push(i),
            Err(ClientError::Unavailable(m)) if m.contains("no space") => {
                refusal = Some(m);
                break;
            }
            Err(e) => panic!("put k{i}: {e}\n{}", c.dump_logs()),
        }
    }
    let refusal = refusal.expect("the guard never refused a write");
    eprintln!("{} writes acknowledged, then: {refusal}", acked.len());
    assert!(c.is_running(1), "the replica must not fail");
    // kvctl says so with exit 3; reads go on.
    let out = c.kvctl(&["--timeout", "3s", "put", "more", "x"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no space"));
    for &i in acked.iter().step_by(7) {
        let v = client
            .get(format!("k{i}").as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(v, value(i), "k{i}");
    }
    // Space freed: writes resume by themselves.
    std::fs::remove_file(ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.put(b"after", b"1".to_vec()).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "writes did not resume: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_guard_off_a_full_disk_fails_writes_and_loses_no_acked_write() {
    let mut c = Cluster::new_stopped(
        1,
        Opts {
            extra_env: vec![
                ("KVD_MIN_FREE_BYTES".into(), "0".into()),
                ("KVD_LOOP_STALL_SECS".into(), "5".into()),
            ],
            ..Opts::default()
        },
    );
    let dir = c.nodes[&1].data_dir.clone();
    let fs = Tmpfs::mount(&dir, 64);
    c.spawn(1);
    c.wait_ready(1, Duration::from_secs(20)).await;
    let ballast = ballast(&dir, 12 << 20);
    let client = c.client(Duration::from_secs(3));
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..2000 {
        match client.put(format!("k{i}").as_bytes(), value(i)).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("2000 puts of 60 KiB fit in 12 MiB?");
    // RocksDB fails the write (kvd answers it with the error, or exits on a failed sync):
    // either way nothing acknowledged may be lost.
    eprintln!(
        "{} writes acknowledged, then: {failure}; process exited: {}",
        acked.len(),
        c.exited(1)
    );
    c.kill(1);
    // Space comes back (more than the ballast: recovery replays the WAL into new files).
    std::fs::remove_file(ballast).unwrap();
    fs.grow(256);
    c.spawn(1);
    c.wait_ready(1, Duration::from_secs(30)).await;
    let client = c.client(Duration::from_secs(5));
    for &i in &acked {
        let v = client
            .get(format!("k{i}").as_bytes(), Consistency::Local)
            .await
            .unwrap_or_else(|e| panic!("acked k{i} lost after the restart: {e}"));
        assert_eq!(v, value(i), "k{i}");
    }
}
