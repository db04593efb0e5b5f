//! Running `kvctl reconfigure`: the command line, kvctl's exit codes mapped to outcomes, and
//! the bounded retry with backoff. Every attempt passes the same explicit `--config-id`, so a
//! retry after an indeterminate attempt is a compare-and-set no-op if the change happened.

use crate::planner::Change;
use omnikv_common::api::ReconfigureResult;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

/// kvctl's exit codes (kvctl/src/exit.rs).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const UNAVAILABLE: i32 = 3;
    pub const INDETERMINATE: i32 = 4;
    pub const REJECTED: i32 = 5;
    pub const NOT_PERMITTED: i32 = 7;
}

/// How one `kvctl reconfigure` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: the configuration now in force.
    Applied(ReconfigureResult),
    /// Exit 3: definitely not applied (no leader, nothing reachable). Retry.
    Unavailable(String),
    /// Exit 4: may have happened. Retry with the same config id.
    Indeterminate(String),
    /// Exit 5: refused on its merits (CAS mismatch, a guard). Not retried at once.
    Rejected(String),
    /// Anything else: usage error (a bug here), kvctl missing or killed, unreadable output.
    Failed(String),
}

impl Outcome {
    /// Worth another attempt with the same arguments.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Unavailable(_) | Outcome::Indeterminate(_))
    }

    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::Indeterminate(_) => "indeterminate",
            Outcome::Rejected(_) => "rejected",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Retry policy for one planned change.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay after failed attempt number `n` (1-based): initial x 2^(n-1), capped.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs kvctl.
#[derive(Debug, Clone)]
pub struct Kvctl {
    pub program: PathBuf,
    /// kvctl's `--timeout` per attempt.
    pub timeout: Duration,
}

impl Kvctl {
    /// The arguments of one attempt.
    pub fn args(
        &self,
        endpoints: &[String],
        change: &Change,
        peers: &BTreeMap<u64, String>,
    ) -> Vec<String> {
        let nodes: Vec<String> = change.nodes.iter().map(u64::to_string).collect();
        let mut args = vec![
            "--endpoints".to_string(),
            endpoints.join(","),
            "-o".into(),
            "json".into(),
            "--timeout".into(),
            format!("{}ms", self.timeout.as_millis()),
            "reconfigure".into(),
            "--nodes".into(),
            nodes.join(","),
            "--config-id".into(),
            change.config_id.to_string(),
        ];
        for (pid, addr) in peers {
            args.push("--peer".into());
            args.push(format!("{pid}={addr}"));
        }
        args
    }

    /// One attempt.
    pub async fn reconfigure_once(
        &self,
        endpoints: &[String],
        change: &Change,
        peers: &BTreeMap<u64, String>,
    ) -> Outcome {
        let args = self.args(endpoints, change, peers);
        let mut cmd = Command::new(&self.program);
        cmd.args(&args).kill_on_drop(true);
        // kvctl bounds itself with --timeout; this only guards against a wedged process.
        let run = tokio::time::timeout(self.timeout + Duration::from_secs(10), cmd.output());
        let out = match run.await {
            Err(_) => return Outcome::Indeterminate("kvctl did not exit in time".into()),
            Ok(Err(e)) => {
                return Outcome::Failed(format!(
                    "cannot run {}: {e} (set --kvctl / WATCHER_KVCTL)",
                    self.program.display()
                ))
            }
            Ok(Ok(out)) => out,
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(exit::OK) => match serde_json::from_str::<ReconfigureResult>(stdout.trim()) {
                Ok(r) => Outcome::Applied(r),
                // Exit 0 says it happened; unreadable output leaves us unsure of what.
                Err(e) => Outcome::Indeterminate(format!(
                    "kvctl exited 0 but printed no configuration ({e}): {stdout:?}"
                )),
            },
            Some(exit::UNAVAILABLE) => Outcome::Unavailable(stderr),
            Some(exit::INDETERMINATE) => Outcome::Indeterminate(stderr),
            Some(exit::REJECTED) => Outcome::Rejected(stderr),
            Some(exit::USAGE) => Outcome::Failed(format!("kvctl usage error: {stderr}")),
            // Credentials are configuration: retrying the same ones cannot help.
            Some(exit::NOT_PERMITTED) => Outcome::Failed(format!(
                "kvctl was refused (KVCTL_CACERT, KVCTL_CERT/KEY, KVCTL_TOKEN(_FILE)?): {stderr}"
            )),
            Some(code) => Outcome::Failed(format!("kvctl exited {code}: {stderr}")),
            None => Outcome::Indeterminate(format!("kvctl was killed by a signal: {stderr}")),
        }
    }

    /// Up to `backoff.attempts` attempts, retrying unavailable and indeterminate outcomes
    /// with the same arguments. Returns the last outcome and the number of attempts made.
    pub async fn reconfigure(
        &self,
        endpoints: &[String],
        change: &Change,
        peers: &BTreeMap<u64, String>,
        backoff: Backoff,
    ) -> (Outcome, u32) {
        let mut n = 0;
        loop {
            n += 1;
            let outcome = self.reconfigure_once(endpoints, change, peers).await;
            if !outcome.is_retryable() || n >= backoff.attempts {
                return (outcome, n);
            }
            let delay = backoff.delay(n);
            tracing::warn!(
                attempt = n,
                outcome = outcome.label(),
                ?delay,
                detail = ?outcome,
                "kvctl reconfigure did not complete; retrying with the same config id"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        Change {
            nodes: vec![1, 2, 3, 4],
            config_id: 2,
            from_config_id: 1,
            from_nodes: vec![1, 2, 3],
            added: vec![4],
            removed: vec![],
        }
    }

    /// A fake kvctl: appends its arguments (one line per call) to `calls`, then exits with
    /// the next code of `codes` (one per line; the last repeats), printing `stdout` on 0.
    fn fake_kvctl(dir: &std::path::Path, codes: &[i32], stdout: &str) -> PathBuf {
        let codes_file = dir.join("codes");
        std::fs::write(
            &codes_file,
            codes.iter().map(|c| format!("{c}\n")).collect::<String>(),
        )
        .unwrap();
        let script = dir.join("kvctl");
        // The text goes to a sibling file that `install` copies in a child process, so this
        // process never holds a writable descriptor of the script: a child forked by another
        // test thread would inherit it until its exec, and running a file open for writing
        // fails with "Text file busy".
        let text = dir.join("kvctl.text");
        std::fs::write(
            &text,
            format!(
                r#"#!/bin/sh
d={dir}
echo "$*" >> "$d/calls"
n=$(wc -l < "$d/calls")
code=$(sed -n "${{n}}p" "$d/codes")
[ -n "$code" ] || code=$(tail -n 1 "$d/codes")
if [ "$code" = 0 ]; then printf '%s\n' '{stdout}'; else echo "error: fake failure $code" >&2; fi
exit "$code"
"#,
                dir = dir.display()
            ),
        )
        .unwrap();
        let status = std::process::Command::new("install")
            .args(["-m", "755"])
            .arg(&text)
            .arg(&script)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "install {} failed: {status}",
            script.display()
        );
        script
    }

    fn calls(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn kvctl(program: PathBuf) -> Kvctl {
        Kvctl {
            program,
            timeout: Duration::from_secs(3),
        }
    }

    const FAST: Backoff = Backoff {
        attempts: 4,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
    };

    const APPLIED: &str = r#"{"config_id":2,"members":[1,2,3,4]}"#;

    #[test]
    fn command_line() {
        let k = kvctl("kvctl".into());
        let peers = BTreeMap::from([(4, "10.0.0.4:7000".to_string())]);
        assert_eq!(
            k.args(
                &["http://a:8000".into(), "http://b:8000".into()],
                &change(),
                &peers
            )
            .join(" "),
            "--endpoints http://a:8000,http://b:8000 -o json --timeout 3000ms reconfigure \
             --nodes 1,2,3,4 --config-id 2 --peer 4=10.0.0.4:7000"
        );
    }

    #[tokio::test]
    async fn retries_unavailable_and_indeterminate_with_the_same_config_id() {
        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[3, 4, 0], APPLIED));
        let (outcome, n) = k
            .reconfigure(&["http://a:8000".into()], &change(), &BTreeMap::new(), FAST)
            .await;
        assert_eq!(
            outcome,
            Outcome::Applied(ReconfigureResult {
                config_id: 2,
                members: vec![1, 2, 3, 4]
            })
        );
        assert_eq!(n, 3);
        let calls = calls(dir.path());
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c| c == &calls[0]), "{calls:?}");
        assert!(calls[0].contains("reconfigure --nodes 1,2,3,4 --config-id 2"));
    }

    #[tokio::test]
    async fn rejected_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[5, 0], APPLIED));
        let (outcome, n) = k
            .reconfigure(&["http://a:8000".into()], &change(), &BTreeMap::new(), FAST)
            .await;
        assert!(
            matches!(&outcome, Outcome::Rejected(m) if m.contains("fake failure 5")),
            "{outcome:?}"
        );
        assert_eq!((n, calls(dir.path()).len()), (1, 1));
    }

    #[tokio::test]
    async fn refused_credentials_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[7, 0], APPLIED));
        let (outcome, n) = k
            .reconfigure(
                &["https://a:8000".into()],
                &change(),
                &BTreeMap::new(),
                FAST,
            )
            .await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("KVCTL_TOKEN") && m.contains("fake failure 7")),
            "{outcome:?}"
        );
        assert_eq!((n, calls(dir.path()).len()), (1, 1));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[3], APPLIED));
        let (outcome, n) = k
            .reconfigure(&["http://a:8000".into()], &change(), &BTreeMap::new(), FAST)
            .await;
        assert!(matches!(outcome, Outcome::Unavailable(_)), "{outcome:?}");
        assert_eq!((n, calls(dir.path()).len()), (4, 4));
    }

    #[tokio::test]
    async fn usage_errors_and_bad_output_are_not_success() {
        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[2], APPLIED));
        let (outcome, n) = k
            .reconfigure(&["x".into()], &change(), &BTreeMap::new(), FAST)
            .await;
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        assert_eq!(n, 1);

        let dir = tempfile::tempdir().unwrap();
        let k = kvctl(fake_kvctl(dir.path(), &[0], "not json"));
        let outcome = k
            .reconfigure_once(&["x".into()], &change(), &BTreeMap::new())
            .await;
        assert!(matches!(outcome, Outcome::Indeterminate(_)), "{outcome:?}");

        let k = kvctl(dir.path().join("no-such-kvctl"));
        let outcome = k
            .reconfigure_once(&["x".into()], &change(), &BTreeMap::new())
            .await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("WATCHER_KVCTL")),
            "{outcome:?}"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            attempts: 10,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let d: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(b.delay(64), Duration::from_secs(3));
    }
}
