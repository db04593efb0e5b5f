//! omnikv's Kubernetes sidecar. It watches the ConfigMap (NODES, CONFIG_ID) and the
//! StatefulSet's pods and, where its own kvd leads the current configuration, runs
//! `kvctl reconfigure` so the cluster's members follow the ConfigMap.
//!
//! - [`planner`]: the pure decision (desired, pods, cluster status) -> plan.
//! - [`controller`]: the watchers and the loop that gathers inputs and carries plans out.
//! - [`kvctl`]: running `kvctl reconfigure`, exit codes, retries with backoff.
//! - [`k8s`]: RBAC check, the applied-config annotation, Events, pods in planner terms.
//! - [`metrics`]: Prometheus metrics and the `/healthz` + `/metrics` server.
//! - [`config`]: flags and env (`WATCHER_*`).

pub mod config;
pub mod controller;
pub mod k8s;
pub mod kvctl;
pub mod metrics;
pub mod planner;

pub use config::Config;
