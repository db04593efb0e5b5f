//! The watcher's Prometheus metrics and its small HTTP server (`/healthz`, `/metrics`).
//! `serve` takes an already-bound listener, so tests bind port 0.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabel {
    pub plan: String,
}

/// Metrics, all prefixed `omnikv_watcher_`.
pub struct Metrics {
    registry: Registry,
    /// kvctl reconfigure runs by outcome (applied, unavailable, indeterminate, rejected, failed).
    pub reconfigures: Family<ResultLabel, Counter>,
    /// Planner answers by kind (not_leader, in_sync, record, wait, refuse, reconfigure).
    pub plans: Family<PlanLabel, Counter>,
    /// Kubernetes watch events received (ConfigMap and pods).
    pub watch_events: Counter,
    /// 1 while the local kvd leads the current configuration.
    pub leader: Gauge,
    /// CONFIG_ID in the ConfigMap.
    pub desired_config_id: Gauge,
    /// Configuration id the local kvd reports.
    pub cluster_config_id: Gauge,
    /// 1 once the start-up RBAC check passed.
    pub rbac_ok: Gauge,
    /// Unix time (ms) of the last planning pass, for /healthz.
    last_pass_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("omnikv_watcher");
        let m = Metrics {
            reconfigures: Family::default(),
            plans: Family::default(),
            watch_events: Counter::default(),
            leader: Gauge::default(),
            desired_config_id: Gauge::default(),
            cluster_config_id: Gauge::default(),
            rbac_ok: Gauge::default(),
            last_pass_ms: AtomicU64::new(now_ms()),
            registry: Registry::default(),
        };
        registry.register(
            "reconfigures",
            "kvctl reconfigure runs by outcome",
            m.reconfigures.clone(),
        );
        registry.register("plans", "planner answers by kind", m.plans.clone());
        registry.register(
            "watch_events",
            "Kubernetes watch events received",
            m.watch_events.clone(),
        );
        registry.register(
            "leader",
            "1 while the local kvd leads the current configuration",
            m.leader.clone(),
        );
        registry.register(
            "desired_config_id",
            "CONFIG_ID in the ConfigMap",
            m.desired_config_id.clone(),
        );
        registry.register(
            "cluster_config_id",
            "configuration id the local kvd reports",
            m.cluster_config_id.clone(),
        );
        registry.register(
            "rbac_ok",
            "1 once the start-up RBAC check passed",
            m.rbac_ok.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Notes that a planning pass ran (the liveness signal).
    pub fn passed(&self) {
        self.last_pass_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Time since the last planning pass.
    pub fn since_last_pass(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_pass_ms.load(Ordering::Relaxed)))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    stale_after: Duration,
}

/// Serves `/healthz` (200 while the planning loop runs; 503 once it has not run for
/// `stale_after`) and `/metrics` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stale_after: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render))
        .with_state(AppState {
            metrics,
            stale_after,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz(State(s): State<AppState>) -> Response {
    let idle = s.metrics.since_last_pass();
    if idle > s.stale_after {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the planning loop has not run for {idle:?}\n"),
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn render(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
