//! Everything the watcher asks of the Kubernetes API besides watching: the start-up RBAC check
//! (SelfSubjectAccessReview, with an actionable error), the applied-config annotation on the
//! ConfigMap, Events, and reading pods into the planner's terms.
//!
//! Writes are safe to repeat and to race (two watchers, a watcher restarted mid-change): the
//! annotation is patched with the ConfigMap's resourceVersion as a precondition and never
//! moves backwards (a `409 Conflict` re-reads and tries again), and the one Event per
//! configuration has a name derived from its id, so a second create is `409 AlreadyExists`.

use crate::config::Config;
use crate::planner::PodState;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use std::collections::BTreeMap;

/// Annotation on the ConfigMap: the configuration id the watcher last saw applied.
pub const ANNOTATION_CONFIG_ID: &str = "omnikv.io/applied-config-id";
/// Annotation on the ConfigMap: the members of that configuration (`1,2,3`).
pub const ANNOTATION_MEMBERS: &str = "omnikv.io/applied-members";
/// Field manager / reporting component name.
pub const COMPONENT: &str = "omnikv-watcher";

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "RBAC: this pod's service account may not {missing} in namespace {namespace:?}. \
         The watcher needs exactly: get/list/watch on configmaps and pods, patch on configmap \
         {configmap:?}, create on events. Apply deploy/k8s/rbac.yaml (Role and RoleBinding \
         `kv-watcher`) in this namespace and run the StatefulSet with \
         `serviceAccountName: kv-watcher` (see docs/kubernetes.md, \"RBAC\")"
    )]
    Forbidden {
        missing: String,
        namespace: String,
        configmap: String,
    },
}

/// One permission the watcher needs: (verb, resource, resource name).
pub type Permission = (&'static str, &'static str, Option<String>);

/// The permissions the watcher uses, exactly (deploy/k8s/rbac.yaml grants these and `get`
/// on pods).
pub fn required_permissions(cfg: &Config) -> Vec<Permission> {
    vec![
        ("get", "configmaps", Some(cfg.configmap.clone())),
        ("list", "configmaps", None),
        ("watch", "configmaps", None),
        ("patch", "configmaps", Some(cfg.configmap.clone())),
        ("list", "pods", None),
        ("watch", "pods", None),
        ("create", "events", None),
    ]
}

/// Asks the API server, for each permission, whether this identity has it. Returns the
/// first one missing as an actionable error.
pub async fn check_rbac(client: &Client, cfg: &Config) -> Result<(), Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for (verb, resource, name) in required_permissions(cfg) {
        let review = SelfSubjectAccessReview {
            metadata: ObjectMeta::default(),
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(cfg.namespace.clone()),
                    verb: Some(verb.into()),
                    resource: Some(resource.into()),
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            status: None,
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        let allowed = answer.status.map(|s| s.allowed).unwrap_or(false);
        if !allowed {
            missing.push(match name {
                Some(n) => format!("{verb} {resource}/{n}"),
                None => format!("{verb} {resource}"),
            });
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Forbidden {
            missing: missing.join(", "),
            namespace: cfg.namespace.clone(),
            configmap: cfg.configmap.clone(),
        })
    }
}

/// Attempts at recording against concurrent writers (each a `409 Conflict`) before giving up
/// until the next pass.
const RECORD_ATTEMPTS: u32 = 5;

/// How recording an applied configuration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// This call moved the annotation to the configuration; the one recorded before, if any
    /// (id and members as written, `1,2,3`).
    Now { before: Option<(u32, String)> },
    /// The annotation already named this configuration or a later one: nothing written.
    Already(u32),
}

/// Records `config_id` / `members` as applied on the ConfigMap: a merge patch of two
/// annotations (never NODES / CONFIG_ID), made only while the annotation is behind and with
/// the resourceVersion it was read at, so concurrent recorders write it once and it never
/// moves backwards.
pub async fn record_applied(
    client: &Client,
    cfg: &Config,
    config_id: u32,
    members: &[u64],
) -> Result<Recorded, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let members: Vec<String> = members.iter().map(u64::to_string).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cm = api.get(&cfg.configmap).await?;
        let before = recorded_config_id(&cm);
        if let Some(id) = before.filter(|&id| id >= config_id) {
            return Ok(Recorded::Already(id));
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": cm.metadata.resource_version,
                "annotations": {
                    ANNOTATION_CONFIG_ID: config_id.to_string(),
                    ANNOTATION_MEMBERS: members.join(","),
                },
            }
        });
        let params = PatchParams {
            field_manager: Some(COMPONENT.into()),
            ..Default::default()
        };
        match api
            .patch(&cfg.configmap, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                let members_before = cm
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_MEMBERS).cloned())
                    .unwrap_or_default();
                return Ok(Recorded::Now {
                    before: before.map(|id| (id, members_before)),
                });
            }
            Err(kube::Error::Api(s)) if s.is_conflict() && attempt < RECORD_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "the ConfigMap changed under the annotation patch: {s}"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The applied config id recorded on `cm`, if any.
pub fn recorded_config_id(cm: &ConfigMap) -> Option<u32> {
    cm.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_CONFIG_ID)?
        .parse()
        .ok()
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Creates a core/v1 Event about the ConfigMap `cm` (a generated name: one per call).
pub async fn emit_event(
    client: &Client,
    cfg: &Config,
    cm: Option<&ConfigMap>,
    kind: EventType,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut event = event(cfg, cm, kind, reason, message);
    event.metadata.generate_name = Some(format!("{}.", cfg.configmap));
    api.create(&PostParams::default(), &event).await?;
    Ok(())
}

/// The name of the one Event about configuration `config_id` (`kv-config.config-4`).
pub fn config_event_name(cfg: &Config, config_id: u32) -> String {
    format!("{}.config-{config_id}", cfg.configmap)
}

/// Makes sure the Event about configuration `config_id` exists, creating it with this
/// reason and message if not: true if this call created it, false if it was there (its
/// first creator's message stands).
pub async fn ensure_config_event(
    client: &Client,
    cfg: &Config,
    cm: Option<&ConfigMap>,
    config_id: u32,
    reason: &str,
    message: &str,
) -> Result<bool, Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut event = event(cfg, cm, EventType::Normal, reason, message);
    event.metadata.name = Some(config_event_name(cfg, config_id));
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// An Event about the ConfigMap `cm`, unnamed.
fn event(
    cfg: &Config,
    cm: Option<&ConfigMap>,
    kind: EventType,
    reason: &str,
    message: &str,
) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    let instance = if cfg.pod_name.is_empty() {
        COMPONENT.to_string()
    } else {
        cfg.pod_name.clone()
    };
    Event {
        metadata: ObjectMeta {
            namespace: Some(cfg.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some(cfg.configmap.clone()),
            namespace: Some(cfg.namespace.clone()),
            uid: cm.and_then(|c| c.metadata.uid.clone()),
            resource_version: cm.and_then(|c| c.metadata.resource_version.clone()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        // The API server caps messages at 1 KiB.
        message: Some(truncate(message, 1000)),
        type_: Some(
            match kind {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        action: Some("Reconfigure".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(instance),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The StatefulSet's pods in the planner's terms, by pid.
pub fn pod_states<'a>(
    cfg: &Config,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> BTreeMap<u64, PodState> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        let Some(pid) = cfg.pid_of_pod(name) else {
            continue;
        };
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        out.insert(
            pid,
            PodState {
                name: name.to_string(),
                running,
                ready,
                terminating: pod.metadata.deletion_timestamp.is_some(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn pod(name: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name },
            "status": { "phase": phase, "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } }
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn pods_map_to_pids() {
        let cfg = Config::parse_from(["watcher"]);
        let pods = [
            pod("kv-store-0", "Running", true),
            pod("kv-store-3", "Running", false),
            pod("kv-store-4", "Pending", false),
            pod("net", "Running", true),
        ];
        let states = pod_states(&cfg, &pods);
        assert_eq!(states.keys().copied().collect::<Vec<_>>(), [1, 4, 5]);
        assert!(states[&1].running && states[&1].ready);
        assert!(states[&4].running && !states[&4].ready);
        assert!(!states[&5].running);
    }

    #[test]
    fn annotation_round_trip() {
        let mut cm = ConfigMap::default();
        assert_eq!(recorded_config_id(&cm), None);
        cm.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_CONFIG_ID.to_string(),
            "7".to_string(),
        )]));
        assert_eq!(recorded_config_id(&cm), Some(7));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1000);
        assert!(t.len() <= 1003 && t.ends_with("..."));
    }
}
