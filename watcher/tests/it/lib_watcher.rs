//! The real watcher library (`watcher::controller::run`) run in-process against the fake API
//! server, one per "pod": each on its own thread and tokio runtime with its own log, so that
//! killing one (dropping its runtime mid-flight, its kvctl child included) is what a container
//! restart does. Plus kvctl wrappers that count the runs and hold or synchronise them.

use crate::e2e::bin_dir;
use crate::fake_kube::FakeKube;
use crate::harness::write_executable;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use watcher::metrics::{Metrics, ResultLabel};

/// One watcher (sidecar) running the library; killed on drop.
pub struct LibWatcher {
    pub name: String,
    pub metrics: Arc<Metrics>,
    pub log: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LibWatcher {
    /// Starts the watcher of pod `name` next to the kvd at `kvd_url`, reaching replica `pid`
    /// at `peer_url_template`, running `kvctl`. Periods are short, as in the other tests.
    pub fn start(
        kube: &FakeKube,
        dir: &Path,
        name: &str,
        kvd_url: &str,
        peer_url_template: &str,
        kvctl: &Path,
    ) -> LibWatcher {
        let cfg = watcher::Config::parse_from([
            "watcher",
            "--namespace",
            &kube.namespace,
            "--pod-name",
            name,
            "--kvd-url",
            kvd_url,
            "--peer-url-template",
            peer_url_template,
            "--kvctl",
            &kvctl.display().to_string(),
            "--resync-ms",
            "300",
            "--backoff-ms",
            "200",
            "--backoff-max-ms",
            "2000",
        ]);
        let metrics = Arc::new(Metrics::new());
        let log = dir.join(format!("watcher-{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let url: axum::http::Uri = kube.url.parse().unwrap();
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name(format!("watcher-{name}"))
            .spawn(move || {
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_ansi(false)
                    .with_env_filter(tracing_subscriber::EnvFilter::new(
                        "info,watcher=debug,kube=warn",
                    ))
                    .finish();
                let _log = tracing::subscriber::set_default(subscriber);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
                    let run = watcher::controller::run(cfg, client, m, std::future::pending());
                    tokio::select! {
                        r = run => tracing::error!("the watcher ended: {r:?}"),
                        // Sent or dropped: the "container" is killed.
                        _ = stopped => tracing::warn!("killed"),
                    }
                });
                // Dropping the runtime ends every task of this watcher where it stands.
            })
            .unwrap();
        LibWatcher {
            name: name.to_string(),
            metrics,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// kvctl runs this watcher counted with outcome `result` (applied, rejected...).
    pub fn reconfigures(&self, result: &str) -> u64 {
        self.metrics
            .reconfigures
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .get()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it: nothing is flushed or finished.
    pub fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LibWatcher {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a kvctl wrapper runs the real kvctl.
pub enum Wrap {
    /// At once.
    Plain,
    /// At once, then, if it succeeded, touches the file and hangs without answering: the
    /// change is made and the watcher never hears of it (until it is killed).
    HoldAfter(PathBuf),
    /// Touches the first file and waits (at most 10 s) for the second to exist before it
    /// runs: two wrappers meeting so run at the same moment.
    Meet(PathBuf, PathBuf),
}

/// A kvctl for watcher `name`: appends `name ARGS` to `dir/kvctl-calls`, then runs the real
/// kvctl as `wrap` says.
pub fn kvctl_wrapper(dir: &Path, name: &str, wrap: Wrap) -> PathBuf {
    let real = bin_dir().join("kvctl");
    let (real, calls) = (real.display(), dir.join("kvctl-calls"));
    let calls = calls.display();
    let run = match wrap {
        Wrap::Plain => format!("exec {real} \"$@\""),
        Wrap::HoldAfter(marker) => format!(
            "{real} \"$@\" > /dev/null 2>&1 || exit $?\ntouch {}\nexec sleep 60",
            marker.display()
        ),
        Wrap::Meet(mine, other) => format!(
            "touch {}\ni=0\nwhile [ ! -e {} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); \
             done\nexec {real} \"$@\"",
            mine.display(),
            other.display()
        ),
    };
    let path = dir.join(format!("kvctl-{name}-{}", next_suffix()));
    write_executable(
        &path,
        &format!("#!/bin/sh\necho \"{name} $*\" >> {calls}\n{run}\n"),
    );
    path
}

/// kvctl runs so far, by every wrapper in `dir`: (watcher name, arguments).
pub fn kvctl_calls(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("kvctl-calls"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

/// A distinct file name part per wrapper (several per watcher name over a test).
fn next_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
