//! The control loop: kube-rs watchers (reflectors) on the ConfigMap and the StatefulSet's
//! pods wake the loop; each pass gathers the planner's inputs (the stores, the local kvd's
//! status, /healthz of added nodes), asks the pure planner, and carries its answer out
//! (`kvctl reconfigure`, the annotation, Events). A pass is idempotent: duplicate events and
//! restarts re-plan from what the cluster reports, never from memory.

use crate::config::Config;
use crate::k8s::{self, EventType};
use crate::kvctl::{Backoff, Kvctl, Outcome};
use crate::metrics::{Metrics, PlanLabel, ResultLabel};
use crate::planner::{self, Change, Input, Plan};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use omnikv_common::client::Credentials;
use omnikv_common::Client as KvClient;
use omnikv_common::StatusView;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Errors that stop the watcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    K8s(#[from] k8s::Error),
    #[error("a reflector stopped before its first list")]
    StoreNotReady,
    #[error("bad --kvd-url: {0}")]
    KvdUrl(String),
    /// The `KVCTL_CACERT`/`KVCTL_CERT`/`KVCTL_KEY`/`KVCTL_TOKEN(_FILE)` settings at startup.
    #[error("bad kvd credentials (KVCTL_* environment): {0}")]
    Credentials(String),
}

/// The loop's state between passes.
struct Controller {
    cfg: Config,
    client: Client,
    metrics: Arc<Metrics>,
    /// The TLS material and token from the `KVCTL_*` environment (kvctl children inherit the
    /// same variables), as last read: `kvd`, `http` and the peer clients use them.
    credentials: Credentials,
    kvd: KvClient,
    http: reqwest::Client,
    kvctl: Kvctl,
    backoff: Backoff,
    configmaps: Store<ConfigMap>,
    pods: Store<Pod>,
    /// The last Wait / Refuse / NotLeader reported, so each is logged and evented once.
    last_report: Option<String>,
    /// Failed attempts at `failing` in a row, and when to try it again.
    failing: Option<(Change, u32, Instant)>,
    /// The configuration whose Event this watcher has seen to exist (it makes sure once per
    /// configuration: a watcher restarted between the annotation and the Event adds it).
    announced: Option<u32>,
}

/// Runs the watcher until `shutdown` resolves: RBAC check (retried until it passes, so a
/// misconfigured Role is fixed without restarting the pod), watchers, planning loop.
pub async fn run(
    cfg: Config,
    client: Client,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let mut delay = Duration::from_secs(1);
    loop {
        match k8s::check_rbac(&client, &cfg).await {
            Ok(()) => break,
            Err(e) => tracing::error!(retry_in = ?delay, "{e}"),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    metrics.rbac_ok.set(1);
    tracing::info!(namespace = %cfg.namespace, configmap = %cfg.configmap, "RBAC check passed");

    let wake = Arc::new(Notify::new());
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
    let (configmaps, cm_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let cm_stream = reflector::reflector(
        cm_writer,
        watcher(
            cm_api,
            watcher::Config::default().fields(&format!("metadata.name={}", cfg.configmap)),
        ),
    )
    .default_backoff();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(
            pod_api,
            watcher::Config::default().labels(&cfg.pod_selector),
        ),
    )
    .default_backoff();
    let watches = tokio::spawn(drive(cm_stream, pod_stream, wake.clone(), metrics.clone()));

    let credentials = Credentials::from_env().map_err(|e| Error::Credentials(e.to_string()))?;
    let (kvd, http) = kvd_clients(&cfg, &credentials).map_err(|e| match e {
        omnikv_common::ClientError::Usage(m) if m.contains("endpoint") => Error::KvdUrl(m),
        e => Error::Credentials(e.to_string()),
    })?;
    let mut c = Controller {
        kvctl: Kvctl {
            program: cfg.kvctl.clone(),
            timeout: Duration::from_millis(cfg.kvctl_timeout_ms),
        },
        backoff: Backoff {
            attempts: cfg.attempts,
            initial: Duration::from_millis(cfg.backoff_ms),
            max: Duration::from_millis(cfg.backoff_max_ms),
        },
        cfg,
        client,
        metrics,
        credentials,
        kvd,
        http,
        configmaps,
        pods,
        last_report: None,
        failing: None,
        announced: None,
    };

    let ready = async {
        c.configmaps.wait_until_ready().await?;
        c.pods.wait_until_ready().await
    };
    tokio::select! {
        _ = &mut shutdown => { watches.abort(); return Ok(()) }
        r = ready => r.map_err(|_| Error::StoreNotReady)?,
    }
    tracing::info!("watching the ConfigMap and the pods");

    loop {
        let next = c.pass().await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
    watches.abort();
    tracing::info!("watcher stopped");
    Ok(())
}

/// Drives both watch streams (which feed the stores) and wakes the loop on every event.
async fn drive<A, B, EA, EB>(cm: A, pods: B, wake: Arc<Notify>, metrics: Arc<Metrics>)
where
    A: futures::Stream<Item = Result<watcher::Event<ConfigMap>, EA>> + Send,
    B: futures::Stream<Item = Result<watcher::Event<Pod>, EB>> + Send,
    EA: std::fmt::Display,
    EB: std::fmt::Display,
{
    let cm = cm.map(|r| r.map(|_| ()).map_err(|e| format!("ConfigMap watch: {e}")));
    let pods = pods.map(|r| r.map(|_| ()).map_err(|e| format!("pod watch: {e}")));
    let mut both = futures::stream::select(cm.boxed(), pods.boxed());
    while let Some(item) = both.next().await {
        match item {
            Ok(()) => {
                metrics.watch_events.inc();
                wake.notify_one();
            }
            // The backoff retries; the stores keep their last state meanwhile.
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The client of the local kvd and the plain HTTP client (/healthz), with `credentials`.
fn kvd_clients(
    cfg: &Config,
    credentials: &Credentials,
) -> Result<(KvClient, reqwest::Client), omnikv_common::ClientError> {
    let kvd = KvClient::with_credentials(
        std::slice::from_ref(&cfg.kvd_url),
        cfg.probe_timeout(),
        credentials,
    )?;
    let http = credentials
        .apply(reqwest::Client::builder().timeout(cfg.probe_timeout()))?
        .build()
        .map_err(|e| omnikv_common::ClientError::Usage(format!("cannot build HTTP client: {e}")))?;
    Ok((kvd, http))
}

impl Controller {
    /// Re-reads the credentials (a mounted Secret's token file or certificates may have been
    /// replaced) and rebuilds the clients when they changed; a bad new setting is logged and
    /// the clients built from the last good one are kept.
    fn refresh_credentials(&mut self) {
        let fresh = Credentials::from_env().and_then(|c| {
            let clients = kvd_clients(&self.cfg, &c)?;
            Ok((c, clients))
        });
        match fresh {
            Ok((c, (kvd, http))) => {
                if c != self.credentials {
                    tracing::info!("kvd credentials changed: using the new ones");
                }
                self.credentials = c;
                self.kvd = kvd;
                self.http = http;
            }
            Err(e) => tracing::warn!("kvd credentials: {e}; keeping the previous ones"),
        }
    }

    /// One planning pass. Returns how long to wait before the next one absent events.
    async fn pass(&mut self) -> Duration {
        self.metrics.passed();
        if !self.credentials.is_empty() {
            self.refresh_credentials();
        }
        let input = self.gather().await;
        let plan = planner::plan(&input);
        let label = match &plan {
            Plan::NotLeader { .. } => "not_leader",
            Plan::InSync { .. } => "in_sync",
            Plan::Record { .. } => "record",
            Plan::Wait(_) => "wait",
            Plan::Refuse(_) => "refuse",
            Plan::Reconfigure(_) => "reconfigure",
        };
        self.metrics
            .plans
            .get_or_create(&PlanLabel { plan: label.into() })
            .inc();
        let resync = self.cfg.resync();
        match plan {
            Plan::NotLeader { leader } => {
                self.report(
                    EventType::Normal,
                    None,
                    format!("not the leader (leader: {leader:?})"),
                )
                .await;
                self.failing = None;
                resync
            }
            Plan::InSync { config_id } => {
                self.report(
                    EventType::Normal,
                    None,
                    format!("in sync at configuration {config_id}"),
                )
                .await;
                self.failing = None;
                if self.announced != Some(config_id) {
                    let members = input.status.map(|s| s.members).unwrap_or_default();
                    let message = format!("configuration {config_id} {members:?} in force");
                    self.announce(config_id, &message).await;
                }
                resync
            }
            Plan::Record { config_id } => {
                let members = input.status.map(|s| s.members).unwrap_or_default();
                match self.record(config_id, &members, None).await {
                    // The watch event of our own patch wakes the next pass.
                    true => resync,
                    false => self.backoff.initial,
                }
            }
            Plan::Wait(why) => {
                self.report(EventType::Normal, Some("Waiting"), why).await;
                resync.min(Duration::from_secs(1))
            }
            Plan::Refuse(why) => {
                self.report(EventType::Warning, Some("ReconfigureRefused"), why)
                    .await;
                resync
            }
            Plan::Reconfigure(change) => self.reconfigure(change, input.pods.keys()).await,
        }
    }

    /// Reads the stores and kvd: everything the planner needs.
    async fn gather(&self) -> Input {
        let cm = self.configmap();
        let desired = cm
            .as_ref()
            .map(|cm| planner::parse_desired(&cm.data.clone().unwrap_or_default()));
        if let Some(Ok(d)) = &desired {
            self.metrics.desired_config_id.set(i64::from(d.config_id));
        }
        let pods = k8s::pod_states(&self.cfg, self.pods.state().iter().map(|p| p.as_ref()));
        let status = match self.kvd.status().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("local kvd status: {e}");
                None
            }
        };
        let mut healthy = BTreeMap::new();
        let mut added_status = BTreeMap::new();
        if let (Some(s), Some(Ok(d))) = (&status, &desired) {
            self.metrics.cluster_config_id.set(i64::from(s.config_id));
            let leads = planner::acts(s);
            self.metrics.leader.set(i64::from(leads));
            if leads {
                // Only the added nodes: the members' health is in the status
                // (connected_peers), and the planner asks nothing of removed ones.
                for &pid in d.nodes.iter().filter(|p| !s.members.contains(p)) {
                    let alive = self.healthz(pid).await;
                    healthy.insert(pid, alive);
                    if let Some(st) = self.peer_status(pid, alive).await {
                        added_status.insert(pid, st);
                    }
                }
            }
        } else {
            self.metrics.leader.set(0);
        }
        Input {
            recorded: cm.as_ref().and_then(|c| k8s::recorded_config_id(c)),
            desired,
            pods,
            healthy,
            added_status,
            status,
        }
    }

    fn configmap(&self) -> Option<Arc<ConfigMap>> {
        self.configmaps
            .state()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(self.cfg.configmap.as_str()))
    }

    async fn healthz(&self, pid: u64) -> bool {
        let url = format!("{}/healthz", self.cfg.peer_url(pid).trim_end_matches('/'));
        match self.http.get(&url).send().await {
            Ok(r) => r.status().is_success(),
            Err(e) => {
                tracing::debug!(pid, %url, "healthz: {e}");
                false
            }
        }
    }

    /// The /v1/status of replica `pid` (asked only when its /healthz answered).
    async fn peer_status(&self, pid: u64, alive: bool) -> Option<StatusView> {
        if !alive {
            return None;
        }
        let url = self.cfg.peer_url(pid);
        let client = KvClient::with_credentials(
            std::slice::from_ref(&url),
            self.cfg.probe_timeout(),
            &self.credentials,
        );
        match client.map_err(|e| e.to_string()) {
            Ok(c) => match c.status().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(pid, %url, "status: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(pid, %url, "status: {e}");
                None
            }
        }
    }

    /// Logs (and, with a reason, emits an Event for) a state once, when it changes.
    async fn report(&mut self, kind: EventType, reason: Option<&str>, message: String) {
        if self.last_report.as_deref() == Some(message.as_str()) {
            return;
        }
        match kind {
            EventType::Warning => tracing::warn!("{message}"),
            EventType::Normal => tracing::info!("{message}"),
        }
        if let Some(reason) = reason {
            self.event(kind, reason, &message).await;
        }
        self.last_report = Some(message);
    }

    async fn event(&self, kind: EventType, reason: &str, message: &str) {
        let cm = self.configmap();
        if let Err(e) = k8s::emit_event(
            &self.client,
            &self.cfg,
            cm.as_deref(),
            kind,
            reason,
            message,
        )
        .await
        {
            tracing::warn!(reason, "cannot emit an Event: {e}");
        }
    }

    /// Records configuration `config_id` (`members`) as applied on the ConfigMap, then makes
    /// sure its Event exists, with `message` (the change as this watcher made it) or one
    /// built from the annotation it replaced. False if the annotation could not be written.
    async fn record(&mut self, config_id: u32, members: &[u64], message: Option<String>) -> bool {
        let message = match k8s::record_applied(&self.client, &self.cfg, config_id, members).await {
            Ok(k8s::Recorded::Now { before }) => {
                tracing::info!(config_id, ?members, "recorded the applied configuration");
                message.unwrap_or_else(|| match before {
                    Some((id, before)) => {
                        format!("configuration {id} [{before}] -> {config_id} {members:?}")
                    }
                    None => format!("configuration {config_id} {members:?} in force"),
                })
            }
            Ok(k8s::Recorded::Already(id)) => {
                tracing::info!(
                    config_id,
                    recorded = id,
                    "the applied configuration is recorded"
                );
                message.unwrap_or_else(|| format!("configuration {config_id} {members:?} in force"))
            }
            Err(e) => {
                tracing::warn!("cannot record the applied configuration: {e}");
                return false;
            }
        };
        self.announce(config_id, &message).await;
        true
    }

    /// Makes sure the one Event about configuration `config_id` exists (reason
    /// `Reconfigured`); none for the initial configuration 1.
    async fn announce(&mut self, config_id: u32, message: &str) {
        if config_id <= 1 || self.announced == Some(config_id) {
            return;
        }
        let cm = self.configmap();
        match k8s::ensure_config_event(
            &self.client,
            &self.cfg,
            cm.as_deref(),
            config_id,
            "Reconfigured",
            message,
        )
        .await
        {
            Ok(created) => {
                if created {
                    tracing::info!(config_id, "Event: {message}");
                }
                self.announced = Some(config_id);
            }
            // The next pass tries again.
            Err(e) => tracing::warn!(config_id, "cannot emit the Reconfigured Event: {e}"),
        }
    }

    /// Runs kvctl for `change` (unless a failed earlier attempt's backoff is still running)
    /// and records the result.
    async fn reconfigure<'a>(
        &mut self,
        change: Change,
        pods: impl Iterator<Item = &'a u64>,
    ) -> Duration {
        let now = Instant::now();
        let failures = match &self.failing {
            Some((c, n, not_before)) if *c == change => {
                if now < *not_before {
                    return *not_before - now;
                }
                *n
            }
            _ => 0,
        };
        self.last_report = None;
        let mut endpoints = vec![self.cfg.kvd_url.clone()];
        let mut pids: Vec<u64> = change.from_nodes.clone();
        pids.extend(pods.copied());
        pids.sort_unstable();
        pids.dedup();
        endpoints.extend(pids.into_iter().map(|p| self.cfg.peer_url(p)));
        endpoints.dedup();
        let peers = self.cfg.peer_addrs(&change.added);
        tracing::info!(
            from = change.from_config_id,
            to = change.config_id,
            nodes = ?change.nodes,
            added = ?change.added,
            removed = ?change.removed,
            "reconfiguring"
        );
        let (outcome, attempts) = self
            .kvctl
            .reconfigure(&endpoints, &change, &peers, self.backoff)
            .await;
        self.metrics
            .reconfigures
            .get_or_create(&ResultLabel {
                result: outcome.label().into(),
            })
            .inc();
        match outcome {
            Outcome::Applied(r) => {
                self.failing = None;
                let message = format!(
                    "configuration {} {:?} -> {} {:?} (added {:?}, removed {:?})",
                    change.from_config_id,
                    change.from_nodes,
                    r.config_id,
                    r.members,
                    change.added,
                    change.removed
                );
                tracing::info!(attempts, "reconfigured: {message}");
                if r.config_id != change.config_id || r.members != change.nodes {
                    tracing::warn!(?r, ?change, "kvctl applied something else than planned");
                }
                // On failure the next pass (Plan::Record) retries it.
                self.record(r.config_id, &r.members, Some(message)).await;
                Duration::from_millis(1)
            }
            other => {
                let failures = failures + 1;
                let (reason, delay) = match &other {
                    Outcome::Rejected(_) => ("ReconfigureRejected", self.backoff.max),
                    _ => ("ReconfigureFailed", self.backoff.delay(failures)),
                };
                let message = format!(
                    "kvctl reconfigure --nodes {:?} --config-id {} ({attempts} attempts): {} \
                     {other:?}; trying again in {delay:?}",
                    change.nodes,
                    change.config_id,
                    other.label()
                );
                tracing::warn!("{message}");
                self.event(EventType::Warning, reason, &message).await;
                self.failing = Some((change, failures, Instant::now() + delay));
                delay
            }
        }
    }
}
