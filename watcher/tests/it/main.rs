//! The watcher's integration tests: the real watcher binary against an in-process fake
//! Kubernetes API server (real HTTP), with fake kvds and a fake kvctl (`fake_cluster`), and
//! with real kvd and kvctl processes (`e2e`); the seed's kubectl sequences and the watcher
//! library under API-server faults, with real kvds (`seed_k8s`). Plus checks of the
//! manifests against the code.

mod e2e;
mod fake_cluster;
mod fake_kube;
mod harness;
mod lib_watcher;
mod manifests;
mod seed_k8s;
