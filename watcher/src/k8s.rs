//! Everything the watcher asks of the Kubernetes API besides watching: the start-up RBAC check
//! (SelfSubjectAccessReview, with an actionable error), the applied-config annotation on the
//! ConfigMap, Events, and reading pods into the planner's terms.

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

/// The permissions the watcher uses, exactly (deploy/k8s/rbac.yaml grants these and `get`).
pub fn required_permissions(cfg: &Config) -> Vec<Permission> {
    vec![
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

/// Records `config_id` / `members` as applied on the ConfigMap (a merge patch of two
/// annotations: idempotent, and it never touches NODES / CONFIG_ID).
pub async fn record_applied(
    client: &Client,
    cfg: &Config,
    config_id: u32,
    members: &[u64],
) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let members: Vec<String> = members.iter().map(u64::to_string).collect();
    let patch = serde_json::json!({
        "metadata": { "annotations": {
            ANNOTATION_CONFIG_ID: config_id.to_string(),
            ANNOTATION_MEMBERS: members.join(","),
        }}
    });
    api.patch(
        &cfg.configmap,
        &PatchParams {
            field_manager: Some(COMPONENT.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
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

/// Creates a core/v1 Event about the ConfigMap `cm`.
pub async fn emit_event(
    client: &Client,
    cfg: &Config,
    cm: Option<&ConfigMap>,
    kind: EventType,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = k8s_openapi::jiff::Timestamp::now();
    let instance = if cfg.pod_name.is_empty() {
        COMPONENT.to_string()
    } else {
        cfg.pod_name.clone()
    };
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", cfg.configmap)),
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
        reporting_instance: Some(instance.clone()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        ..Default::default()
    };
    api.create(&PostParams::default(), &event).await?;
    Ok(())
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
