//! An in-process fake Kubernetes API server over real HTTP: just what the watcher and the
//! seed's kubectl sequences use. ConfigMaps and Pods with list and watch (resourceVersion,
//! field and label selectors, chunked JSON-lines watch streams), get and merge-patch of a
//! ConfigMap (a resourceVersion in the patch is a precondition: `409 Conflict`), Event
//! creation (a named one once: `409 AlreadyExists`), a StatefulSet with its `scale`
//! subresource, and SelfSubjectAccessReview answering from a deny list.
//!
//! Faults, as a real API server shows them: open watch streams cut, watch requests refused
//! for a while (`503`), the change history compacted (a watch from before it gets a `410
//! Gone` ERROR event, "too old resource version"), and the next writes of a kind answered
//! `409 Conflict`.

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
    /// Changes at or below this resourceVersion are forgotten: older watches get 410.
    compacted: u64,
    events: Vec<Value>,
    denied: BTreeSet<(String, String)>,
    requests: Vec<String>,
    /// While set, watch requests are answered 503.
    watches_held: bool,
    /// Writes still to answer with 409 Conflict, by "METHOD resource" (`PATCH configmaps`).
    conflicts: HashMap<String, u32>,
    /// Every move of the applied-config annotation: (from, to).
    annotation_moves: Vec<(Option<String>, String)>,
}

#[derive(Clone)]
pub struct FakeKube {
    pub url: String,
    pub namespace: String,
    store: Arc<Mutex<Store>>,
    tx: broadcast::Sender<Change>,
    /// Bumped to cut every open watch stream.
    cuts: tokio::sync::watch::Sender<u64>,
    /// Watch streams open now.
    open: Arc<std::sync::atomic::AtomicUsize>,
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
            cuts: tokio::sync::watch::channel(0).0,
            open: Arc::default(),
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
                "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
                get(get_statefulset),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
                get(get_scale).patch(patch_scale),
            )
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

    fn put(&self, resource: &'static str, name: &str, object: Value) -> Value {
        let mut s = self.store.lock().unwrap();
        self.put_in(&mut s, resource, name, object)
    }

    /// `put` with the store's lock held by the caller.
    fn put_in(
        &self,
        s: &mut Store,
        resource: &'static str,
        name: &str,
        mut object: Value,
    ) -> Value {
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

    /// Deletes pod `name` (a watch reports DELETED), as the StatefulSet controller does on a
    /// scale-down.
    pub fn delete_pod(&self, name: &str) {
        let mut s = self.store.lock().unwrap();
        let Some(object) = s.objects.remove(&("pods", name.to_string())) else {
            return;
        };
        s.rv += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let change = Change {
            rv: s.rv,
            resource: "pods",
            kind: "DELETED",
            object,
        };
        s.log.push(change.clone());
        let _ = self.tx.send(change);
    }

    /// Creates StatefulSet `name` with `replicas`.
    pub fn set_statefulset(&self, name: &str, replicas: u32) {
        let sts = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": { "matchLabels": { "app": name } },
                "template": { "metadata": { "labels": { "app": name } },
                              "spec": { "containers": [ { "name": "kvd" } ] } },
            },
        });
        self.put("statefulsets", name, sts);
    }

    /// The replicas StatefulSet `name` asks for.
    pub fn replicas(&self, name: &str) -> Option<u32> {
        let s = self.store.lock().unwrap();
        let sts = s.objects.get(&("statefulsets", name.to_string()))?;
        sts["spec"]["replicas"].as_u64().map(|r| r as u32)
    }

    /// Cuts every open watch stream (mid-body, as a dropped connection does).
    pub fn cut_watches(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Watch streams open now (a cut one closes at once).
    pub fn open_watches(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// While `held`, new watch requests are answered 503 (open ones are not touched).
    pub fn hold_watches(&self, held: bool) {
        self.store.lock().unwrap().watches_held = held;
    }

    /// Forgets the change history up to now: a watch from an older resourceVersion gets a
    /// `410 Gone` ERROR event and must list again.
    pub fn compact(&self) {
        let mut s = self.store.lock().unwrap();
        s.compacted = s.rv;
        s.log.clear();
    }

    /// Answers the next `n` requests `what` with `409 Conflict`, without doing them: "PATCH
    /// configmaps FIELD-MANAGER" (`-` for none), "POST events named" (an Event with a name).
    pub fn conflict_next(&self, what: &str, n: u32) {
        *self
            .store
            .lock()
            .unwrap()
            .conflicts
            .entry(what.to_string())
            .or_default() += n;
    }

    /// Takes one injected conflict for `what`, if any is left.
    fn take_conflict(&self, what: &str) -> bool {
        let mut s = self.store.lock().unwrap();
        match s.conflicts.get_mut(what) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Every write that moved the applied-config annotation: (from, to).
    pub fn annotation_moves(&self) -> Vec<(Option<String>, String)> {
        self.store.lock().unwrap().annotation_moves.clone()
    }

    /// Events with this name (a named Event exists at most once).
    pub fn events_named(&self, name: &str) -> usize {
        let s = self.store.lock().unwrap();
        s.events
            .iter()
            .filter(|e| e["metadata"]["name"] == name)
            .count()
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
        if kube.store.lock().unwrap().watches_held {
            kube.note(format!("503 watch {resource}"));
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "held",
            );
        }
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
/// `timeoutSeconds` (capped at 30 s so reconnects are exercised) or a cut. From before the
/// compacted history: one `410 Gone` ERROR event.
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
    let mut cut = kube.cuts.subscribe();
    let (backlog, expired): (Vec<Change>, bool) = {
        let s = kube.store.lock().unwrap();
        // Held since the caller looked (a cut comes after the hold): not subscribed in time
        // to see the cut, so refused.
        if s.watches_held {
            drop(s);
            kube.note(format!("503 watch {resource}"));
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "held",
            );
        }
        let backlog = s
            .log
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
            .cloned()
            .collect();
        (backlog, from < s.compacted)
    };
    if expired {
        kube.note(format!("410 watch {resource} from {from}"));
        let gone = json!({ "type": "ERROR", "object": {
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("too old resource version: {from}"),
            "reason": "Expired", "code": 410,
        }});
        let mut line = serde_json::to_vec(&gone).unwrap();
        line.push(b'\n');
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(line))
            .unwrap();
    }
    let last = backlog.last().map(|c| c.rv).unwrap_or(from);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let open = OpenWatch::new(&kube.open);
    tokio::spawn(async move {
        let _open = open;
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
                // A cut wins over a change arriving at the same moment.
                biased;
                _ = cut.changed() => {
                    // An error in the body aborts the chunked response mid-stream.
                    let _ = out_tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
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

/// Counts a watch stream as open while it lives.
struct OpenWatch(Arc<std::sync::atomic::AtomicUsize>);

impl OpenWatch {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> OpenWatch {
        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenWatch(open.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
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

/// A metav1 Status answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}

fn conflict(what: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {what}: the object has been modified; please \
             apply your changes to the latest version and try again"
        ),
    )
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
    Query(q): Query<HashMap<String, String>>,
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
    let manager = q.get("fieldManager").map_or("-", String::as_str);
    if s.kube.take_conflict(&format!("PATCH configmaps {manager}")) {
        s.kube
            .note(format!("409 PATCH configmaps/{name} (injected)"));
        return conflict(&format!("configmaps \"{name}\""));
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // Read, check and write under one lock: concurrent patches are serialised.
    let mut st = s.kube.store.lock().unwrap();
    let Some(mut cm) = st.objects.get(&("configmaps", name.clone())).cloned() else {
        return not_found("configmaps", &name);
    };
    // A resourceVersion in the patch is a precondition, as on a real API server.
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str() {
        if cm["metadata"]["resourceVersion"] != want {
            st.requests
                .push(format!("409 PATCH configmaps/{name} (stale {want})"));
            return conflict(&format!("configmaps \"{name}\""));
        }
    }
    let key = "omnikv.io/applied-config-id";
    let before = cm["metadata"]["annotations"][key]
        .as_str()
        .map(String::from);
    merge(&mut cm, &patch);
    let after = cm["metadata"]["annotations"][key]
        .as_str()
        .map(String::from);
    let stored = s.kube.put_in(&mut st, "configmaps", &name, cm);
    if let Some(after) = after.filter(|a| before.as_ref() != Some(a)) {
        st.annotation_moves.push((before, after));
    }
    Json(stored).into_response()
}

async fn get_statefulset(
    State(s): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    let st = s.kube.store.lock().unwrap();
    match st.objects.get(&("statefulsets", name.clone())) {
        Some(sts) => Json(sts.clone()).into_response(),
        None => not_found("statefulsets.apps", &name),
    }
}

/// The autoscaling/v1 Scale of a StatefulSet.
fn scale_of(sts: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": sts["metadata"]["name"],
            "namespace": sts["metadata"]["namespace"],
            "resourceVersion": sts["metadata"]["resourceVersion"],
        },
        "spec": { "replicas": sts["spec"]["replicas"] },
        "status": { "replicas": sts["spec"]["replicas"] },
    })
}

async fn get_scale(State(s): State<Shared>, Path((_ns, name)): Path<(String, String)>) -> Response {
    let st = s.kube.store.lock().unwrap();
    match st.objects.get(&("statefulsets", name.clone())) {
        Some(sts) => Json(scale_of(sts)).into_response(),
        None => not_found("statefulsets.apps", &name),
    }
}

/// `kubectl scale statefulset NAME --replicas=N`: a merge patch of the scale subresource.
async fn patch_scale(
    State(s): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    s.kube.note(format!("PATCH statefulsets/{name}/scale"));
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let Some(replicas) = patch["spec"]["replicas"].as_u64() else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "spec.replicas");
    };
    let sts = s
        .kube
        .store
        .lock()
        .unwrap()
        .objects
        .get(&("statefulsets", name.clone()))
        .cloned();
    let Some(mut sts) = sts else {
        return not_found("statefulsets.apps", &name);
    };
    sts["spec"]["replicas"] = json!(replicas);
    let sts = s.kube.put("statefulsets", &name, sts);
    Json(scale_of(&sts)).into_response()
}

async fn create_event(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Json(mut event): Json<Value>,
) -> Response {
    if event["metadata"]["name"].is_string() && s.kube.take_conflict("POST events named") {
        s.kube.note("409 POST events (injected)".into());
        return conflict("events");
    }
    let mut st = s.kube.store.lock().unwrap();
    let n = st.events.len();
    match event["metadata"]["name"].as_str().map(String::from) {
        Some(name) => {
            if st.events.iter().any(|e| e["metadata"]["name"] == name) {
                st.requests.push(format!("409 POST events {name} (exists)"));
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("events \"{name}\" already exists"),
                );
            }
            st.requests.push(format!("POST events {name}"));
        }
        None => {
            let prefix = event["metadata"]["generateName"]
                .as_str()
                .unwrap_or("event.")
                .to_string();
            event["metadata"]["name"] = json!(format!("{prefix}{n}"));
            st.requests.push("POST events".into());
        }
    }
    st.events.push(event.clone());
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
