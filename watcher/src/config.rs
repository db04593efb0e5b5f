//! The watcher's configuration: clap flags, each with a `WATCHER_*` env var (the doc comments
//! are the `--help`), and the pid <-> pod name / URL mappings derived from it.

use clap::Parser;
use omnikv_common::membership::{from_template, parse_template, ParseError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// watcher: the omnikv Kubernetes sidecar. Watches the ConfigMap (NODES, CONFIG_ID) and the
/// kv-store pods, and where its own kvd leads the current configuration, runs
/// `kvctl reconfigure` to make the cluster's members match the ConfigMap.
///
/// On a TLS or authenticated cluster, kvd URLs are https:// and the credentials come from
/// kvctl's environment variables, which the watcher reads too (and its kvctl inherits):
/// KVCTL_CACERT, KVCTL_CERT, KVCTL_KEY, KVCTL_TOKEN or KVCTL_TOKEN_FILE (re-read every pass).
#[derive(Parser, Debug, Clone)]
#[command(name = "watcher", version, about)]
pub struct Config {
    /// Namespace of the ConfigMap, the pods and the Events (in a pod: from the downward API).
    #[arg(long, env = "WATCHER_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Name of the ConfigMap holding NODES and CONFIG_ID.
    #[arg(long, env = "WATCHER_CONFIGMAP", default_value = "kv-config")]
    pub configmap: String,

    /// Name of the StatefulSet: pod `<name>-<ordinal>` runs pid ordinal + 1.
    #[arg(long, env = "WATCHER_STATEFULSET", default_value = "kv-store")]
    pub statefulset: String,

    /// Label selector of the StatefulSet's pods.
    #[arg(long, env = "WATCHER_POD_SELECTOR", default_value = "app=kv-store")]
    pub pod_selector: String,

    /// Name of the pod this watcher runs in (reported in Events; optional).
    #[arg(long, env = "WATCHER_POD_NAME", default_value = "")]
    pub pod_name: String,

    /// Client URL of the kvd next to this watcher (same pod).
    #[arg(long, env = "WATCHER_KVD_URL", default_value = "http://127.0.0.1:8000")]
    pub kvd_url: String,

    /// Client URL of replica `pid`, for its /healthz and as a kvctl endpoint: `{ordinal}` is
    /// pid - 1 (the pod's ordinal), `{pid}` is the pid (no other braces).
    #[arg(
        long,
        env = "WATCHER_PEER_URL_TEMPLATE",
        default_value = "http://kv-store-{ordinal}.kv-store:8000",
        value_parser = parse_template
    )]
    pub peer_url_template: String,

    /// Peer (consensus) address of an added replica, passed as `kvctl reconfigure --peer`
    /// (`{ordinal}`, `{pid}` as above). Empty: not passed, kvd uses its own peer template.
    #[arg(
        long,
        env = "WATCHER_PEER_ADDR_TEMPLATE",
        default_value = "",
        value_parser = parse_optional_template
    )]
    pub peer_addr_template: String,

    /// The kvctl binary (a path, or a name looked up in PATH).
    #[arg(long, env = "WATCHER_KVCTL", default_value = "kvctl")]
    pub kvctl: PathBuf,

    /// kvctl's own `--timeout` per reconfigure attempt, in milliseconds.
    #[arg(long, env = "WATCHER_KVCTL_TIMEOUT_MS", default_value_t = 10_000)]
    pub kvctl_timeout_ms: u64,

    /// kvctl attempts per planned change before the watcher backs off and plans again
    /// (unavailable and indeterminate outcomes are retried with the same config id).
    #[arg(long, env = "WATCHER_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,

    /// First delay between kvctl attempts, in milliseconds; it doubles up to --backoff-max-ms.
    #[arg(long, env = "WATCHER_BACKOFF_MS", default_value_t = 500)]
    pub backoff_ms: u64,

    /// Longest delay between attempts (and after a rejected change), in milliseconds.
    #[arg(long, env = "WATCHER_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,

    /// Period at which the watcher re-reads its kvd's status and plans again even without a
    /// Kubernetes event (leadership and health are not Kubernetes objects), in milliseconds.
    #[arg(long, env = "WATCHER_RESYNC_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_ms: u64,

    /// Timeout of the status and /healthz requests to kvd, in milliseconds.
    #[arg(long, env = "WATCHER_PROBE_TIMEOUT_MS", default_value_t = 2_000)]
    pub probe_timeout_ms: u64,

    /// Address of the watcher's own HTTP server (/healthz, /metrics).
    #[arg(long, env = "WATCHER_LISTEN", default_value = "0.0.0.0:9100")]
    pub listen: String,
}

impl Config {
    /// Client URL of replica `pid` from the template.
    pub fn peer_url(&self, pid: u64) -> String {
        expand(&self.peer_url_template, pid)
    }

    /// `--peer pid=addr` pairs for the added `pids`, when a peer address template is set.
    pub fn peer_addrs(&self, pids: &[u64]) -> BTreeMap<u64, String> {
        if self.peer_addr_template.is_empty() {
            return BTreeMap::new();
        }
        pids.iter()
            .map(|&pid| (pid, expand(&self.peer_addr_template, pid)))
            .collect()
    }

    /// The pid pod `name` runs (`<statefulset>-<ordinal>` -> ordinal + 1), if it is one of ours.
    pub fn pid_of_pod(&self, name: &str) -> Option<u64> {
        let ordinal = name
            .strip_prefix(&self.statefulset)?
            .strip_prefix('-')?
            .parse::<u64>()
            .ok()?;
        Some(ordinal + 1)
    }

    /// The pod name that runs `pid`.
    pub fn pod_of_pid(&self, pid: u64) -> String {
        format!("{}-{}", self.statefulset, pid.saturating_sub(1))
    }

    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }

    pub fn resync(&self) -> Duration {
        Duration::from_millis(self.resync_ms)
    }
}

/// The empty string (no template), or a template `parse_template` accepts.
fn parse_optional_template(s: &str) -> Result<String, ParseError> {
    if s.is_empty() {
        return Ok(String::new());
    }
    parse_template(s)
}

/// `template` for `pid`. The flags' parsers have checked the templates; one set in code
/// without that check and malformed is used as it stands, so a request fails naming it.
fn expand(template: &str, pid: u64) -> String {
    from_template(template, pid).unwrap_or_else(|| template.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_map_to_pids_and_back() {
        let c = Config::parse_from(["watcher"]);
        assert_eq!(c.pid_of_pod("kv-store-0"), Some(1));
        assert_eq!(c.pid_of_pod("kv-store-3"), Some(4));
        assert_eq!(c.pid_of_pod("kv-store-x"), None);
        assert_eq!(c.pid_of_pod("kv-storage-1"), None);
        assert_eq!(c.pid_of_pod("net"), None);
        assert_eq!(c.pod_of_pid(4), "kv-store-3");
        assert_eq!(c.peer_url(4), "http://kv-store-3.kv-store:8000");
        assert!(c.peer_addrs(&[4]).is_empty());
    }

    #[test]
    fn templates_take_pid_and_ordinal() {
        let c = Config::parse_from([
            "watcher",
            "--peer-url-template",
            "http://127.0.0.1:180{pid}",
            "--peer-addr-template",
            "127.0.0.1:170{pid}",
        ]);
        assert_eq!(c.peer_url(2), "http://127.0.0.1:1802");
        assert_eq!(
            c.peer_addrs(&[4]),
            BTreeMap::from([(4, "127.0.0.1:1704".to_string())])
        );
        for (flag, bad) in [
            ("--peer-url-template", "http://kv-store:8000"),
            ("--peer-url-template", ""),
            ("--peer-addr-template", "kv-store-{n}:7000"),
        ] {
            assert!(
                Config::try_parse_from(["watcher", flag, bad]).is_err(),
                "{flag} {bad:?}"
            );
        }
    }
}
