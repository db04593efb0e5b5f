//! The `watcher` binary: parse flags, init tracing, bind the metrics server, run the loop
//! until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use watcher::metrics::{self, Metrics};
use watcher::{controller, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,hyper=warn".into()),
        )
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz and /metrics");
    let metrics = Arc::new(Metrics::new());
    // /healthz fails once no planning pass ran for this long (a pass may run kvctl with
    // retries; the loop otherwise runs every --resync-ms).
    let stale = Duration::from_millis(cfg.resync_ms * 3)
        + Duration::from_millis(cfg.kvctl_timeout_ms + cfg.backoff_max_ms) * (cfg.attempts + 1);
    let server = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        stale,
        shutdown_signal(),
    ));

    let client = kube::Client::try_default().await.context(
        "cannot configure the Kubernetes client: in a pod it needs the service account \
         token (automountServiceAccountToken); elsewhere KUBECONFIG or ~/.kube/config",
    )?;
    controller::run(cfg, client, metrics, shutdown_signal()).await?;
    server.abort();
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
