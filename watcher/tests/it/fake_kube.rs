//! An in-process fake Kubernetes API server over real HTTP: just what the watcher uses.
//! ConfigMaps and Pods with list and watch (resourceVersion, field and label selectors,
//! chunked JSON-lines watch streams), merge-patch of a ConfigMap, Event creation, and
//! SelfSubjectAccessReview answering from a deny list.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// One change, as a watch stream reports it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: &'static str,
    kind: &'static str, // ADDED | MODIFIED | DELETED
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (resource, name) -> object.
    objects: BTreeMap<(&'static str, String), Value>,
    log: Vec<Change>,
    events: Vec<Value>,
    denied: BTreeSet<(String, String)>,
    requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeKube {
    pub url: String,
    pub namespace: String,
    store: Arc<Mutex<Store>>,
    tx: broadcast::Sender<Change>,
}

#[derive(Clone)]
struct Shared {
    kube: FakeKube,
}

impl FakeKube {
    /// Starts the server on 127.0.0.1:0 (it runs until the test's runtime ends).
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, _) = broadcast::channel(1024);
        let kube = FakeKube {
            url: format!("http://{}", listener.local_addr().unwrap()),
            namespace: "default".into(),
            store: Arc::default(),
            tx,
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/configmaps", get(list_configmaps))
            .route(
                "/api/v1/namespaces/{ns}/configmaps/{name}",
                get(get_configmap).patch(patch_configmap),
            )
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/events", post(create_event))
            .route(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                post(access_review),
            )
            .fallback(|req: axum::extract::Request| async move {
                (
                    StatusCode::NOT_FOUND,
                    format!("fake kube: no route for {} {}", req.method(), req.uri()),
                )
            })
            .with_state(Shared { kube: kube.clone() });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        kube
    }

    /// A kubeconfig pointing at this server over plain HTTP.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\n",
            url = self.url,
            ns = self.namespace
        )
    }

    fn put(&self, resource: &'static str, name: &str, mut object: Value) -> Value {
        let mut s = self.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let key = (resource, name.to_string());
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["namespace"] = json!(self.namespace);
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{resource}-{name}"));
        }
        s.objects.insert(key, object.clone());
        let change = Change {
            rv,
            resource,
            kind,
            object: object.clone(),
        };
        s.log.push(change.clone());
        let _ = self.tx.send(change);
        object
    }

    /// Creates or replaces ConfigMap `name` with `data`, keeping its annotations.
    pub fn set_configmap(&self, name: &str, data: &[(&str, &str)]) {
        let annotations = self
            .configmap(name)
            .map(|c| c["metadata"]["annotations"].clone())
            .unwrap_or(Value::Null);
        let data: BTreeMap<&str, &str> = data.iter().copied().collect();
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name },
            "data": data,
        });
        if !annotations.is_null() {
            cm["metadata"]["annotations"] = annotations;
        }
        self.put("configmaps", name, cm);
    }

    pub fn configmap(&self, name: &str) -> Option<Value> {
        let s = self.store.lock().unwrap();
        s.objects.get(&("configmaps", name.to_string())).cloned()
    }

    /// The annotation `key` of ConfigMap `name`.
    pub fn annotation(&self, name: &str, key: &str) -> Option<String> {
        self.configmap(name)?["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Creates or updates pod `name` (label app=kv-store) in `phase`, Ready or not.
    pub fn set_pod(&self, name: &str, phase: &str, ready: bool) {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "labels": { "app": "kv-store" } },
            "spec": { "containers": [ { "name": "kvd", "image": "omnikv:dev" } ] },
            "status": { "phase": phase, "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } }
            ]},
        });
        self.put("pods", name, pod);
    }

    /// Events created so far: (type, reason, message).
    pub fn events(&self) -> Vec<(String, String, String)> {
        let s = self.store.lock().unwrap();
        s.events
            .iter()
            .map(|e| {
                let f = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (f("type"), f("reason"), f("message"))
            })
            .collect()
    }

    /// Makes access reviews for `verb` on `resource` answer "denied".
    pub fn deny(&self, verb: &str, resource: &str) {
        let mut s = self.store.lock().unwrap();
        s.denied.insert((verb.into(), resource.into()));
    }

    pub fn allow_all(&self) {
        self.store.lock().unwrap().denied.clear();
    }

    /// Requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().unwrap().requests.clone()
    }

    fn note(&self, line: String) {
        self.store.lock().unwrap().requests.push(line);
    }
}

fn matches(object: &Value, q: &HashMap<String, String>) -> bool {
    if let Some(fs) = q.get("fieldSelector") {
        for term in fs.split(',').filter(|t| !t.is_empty()) {
            match term.split_once('=') {
                Some(("metadata.name", v)) if object["metadata"]["name"] == v => {}
                _ => return false,
            }
        }
    }
    if let Some(ls) = q.get("labelSelector") {
        for term in ls.split(',').filter(|t| !t.is_empty()) {
            match term.split_once('=') {
                Some((k, v)) if object["metadata"]["labels"][k] == v => {}
                _ => return false,
            }
        }
    }
    true
}

async fn list_configmaps(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(s.kube, "configmaps", "ConfigMapList", q)
}

async fn list_pods(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(s.kube, "pods", "PodList", q)
}

fn list_or_watch(
    kube: FakeKube,
    resource: &'static str,
    list_kind: &str,
    q: HashMap<String, String>,
) -> Response {
    let mut query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query.sort();
    kube.note(format!("GET {resource}?{}", query.join("&")));
    if q.get("watch").map(String::as_str) == Some("true") {
        return watch(kube, resource, q);
    }
    let s = kube.store.lock().unwrap();
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|((r, _), o)| *r == resource && matches(o, &q))
        .map(|(_, o)| o.clone())
        .collect();
    Json(json!({
        "apiVersion": "v1", "kind": list_kind,
        "metadata": { "resourceVersion": s.rv.to_string() },
        "items": items,
    }))
    .into_response()
}

/// A watch stream: the changes after `resourceVersion`, then live ones, until
/// `timeoutSeconds` (capped at 30 s so reconnects are exercised).
fn watch(kube: FakeKube, resource: &'static str, q: HashMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30u64)
        .min(30);
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut rx = kube.tx.subscribe();
    let backlog: Vec<Change> = {
        let s = kube.store.lock().unwrap();
        s.log
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
            .cloned()
            .collect()
    };
    let last = backlog.last().map(|c| c.rv).unwrap_or(from);
    let (out_tx, out_rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let line = |c: &Change| {
            let mut l = serde_json::to_vec(&json!({ "type": c.kind, "object": c.object })).unwrap();
            l.push(b'\n');
            Ok(Bytes::from(l))
        };
        for c in backlog.iter().filter(|c| matches(&c.object, &q)) {
            if out_tx.send(line(c)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let c = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                c = rx.recv() => match c { Ok(c) => c, Err(_) => return },
            };
            if c.rv <= last || c.resource != resource || !matches(&c.object, &q) {
                continue;
            }
            if out_tx.send(line(&c)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream(out_rx);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get_configmap(
    State(s): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    s.kube.note(format!("GET configmaps/{name}"));
    match s.kube.configmap(&name) {
        Some(cm) => Json(cm).into_response(),
        None => not_found("configmaps", &name),
    }
}

fn not_found(resource: &str, name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("{resource} \"{name}\" not found"),
            "reason": "NotFound", "code": 404
        })),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn patch_configmap(
    State(s): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    s.kube.note(format!("PATCH configmaps/{name} ({ctype})"));
    if ctype != "application/merge-patch+json" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("fake kube: only merge patches, got {ctype}"),
        )
            .into_response();
    }
    let denied = s
        .kube
        .store
        .lock()
        .unwrap()
        .denied
        .contains(&("patch".to_string(), "configmaps".to_string()));
    if denied {
        return (StatusCode::FORBIDDEN, "forbidden").into_response();
    }
    let Some(mut cm) = s.kube.configmap(&name) else {
        return not_found("configmaps", &name);
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    merge(&mut cm, &patch);
    Json(s.kube.put("configmaps", &name, cm)).into_response()
}

async fn create_event(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Json(mut event): Json<Value>,
) -> Response {
    let mut st = s.kube.store.lock().unwrap();
    let n = st.events.len();
    let prefix = event["metadata"]["generateName"]
        .as_str()
        .unwrap_or("event.")
        .to_string();
    event["metadata"]["name"] = json!(format!("{prefix}{n}"));
    st.events.push(event.clone());
    st.requests.push("POST events".into());
    (StatusCode::CREATED, Json(event)).into_response()
}

async fn access_review(State(s): State<Shared>, Json(mut review): Json<Value>) -> Response {
    let attrs = &review["spec"]["resourceAttributes"];
    let key = (
        attrs["verb"].as_str().unwrap_or_default().to_string(),
        attrs["resource"].as_str().unwrap_or_default().to_string(),
    );
    let allowed = {
        let mut st = s.kube.store.lock().unwrap();
        st.requests
            .push(format!("POST selfsubjectaccessreviews {} {}", key.0, key.1));
        !st.denied.contains(&key)
    };
    review["status"] = json!({ "allowed": allowed });
    (StatusCode::CREATED, Json(review)).into_response()
}
