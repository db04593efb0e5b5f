//! The client API's door. A layer over every route names the caller of each request (a
//! bearer token, else a verified client certificate, against `--auth-file`) and answers 401
//! `unauthenticated` when it names no user; /healthz, /readyz and (unless --metrics-auth)
//! /metrics are open. Handlers then ask the `Caller` whether its role and prefix allow what
//! they are about to do (403 `permission_denied` otherwise), before any work is handed to
//! consensus. Without an auth file every caller is `Caller::Open` and everything is allowed.

use super::{err, Error};
use crate::auth::{policy, Auth, Call, Denied, Unnamed, User, Users};
use crate::client_conn::ClientConn;
use crate::command::{KeyRange, Txn};
use crate::metrics::Metrics;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use omnikv_common::api::ErrorCode;
use std::sync::Arc;

/// The layer's state.
#[derive(Clone)]
pub(crate) struct Gate {
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
}

/// Who makes a request, as handlers see it (an extractor: the layer put it there).
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// No auth file: everything is allowed.
    Open,
    User(Arc<User>),
}

impl From<Denied> for Error {
    fn from(d: Denied) -> Error {
        err(ErrorCode::PermissionDenied, d.0)
    }
}

/// Routes anyone may call, whatever the auth file says.
fn is_open(path: &str, metrics_auth: bool) -> bool {
    matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !metrics_auth)
}

/// The layer: names the caller or answers 401; counts the 401s and 403s.
pub(crate) async fn authenticate(
    State(gate): State<Gate>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(users) = gate.auth.users() else {
        req.extensions_mut().insert(Caller::Open);
        return next.run(req).await;
    };
    if is_open(req.uri().path(), gate.auth.metrics_auth()) {
        return next.run(req).await;
    }
    let cert_user = req
        .extensions()
        .get::<ConnectInfo<ClientConn>>()
        .and_then(|c| c.0.cert_user.clone());
    match identify(&users, req.headers(), cert_user.as_deref()) {
        Ok(user) => {
            req.extensions_mut().insert(Caller::User(user));
            let response = next.run(req).await;
            if response.status() == StatusCode::FORBIDDEN {
                gate.metrics.count_denied("permission_denied");
            }
            response
        }
        Err(message) => {
            gate.metrics.count_denied("unauthenticated");
            tracing::debug!(path = req.uri().path(), %message, "request refused: unauthenticated");
            let mut response = err(ErrorCode::Unauthenticated, message).into_response();
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="omnikv""#),
            );
            response
        }
    }
}

/// The user a request authenticates as: its bearer token's, else its verified client
/// certificate's. A token that names no user is refused even with a certificate.
fn identify(
    users: &Users,
    headers: &HeaderMap,
    cert_user: Option<&str>,
) -> Result<Arc<User>, String> {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    let token = match (authorization.next(), authorization.next()) {
        (Some(_), Some(_)) => return Err("more than one Authorization header".into()),
        (Some(value), None) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or("the Authorization header must be `Bearer <token>`")?,
        ),
        (None, _) => None,
    };
    users
        .identify(token, cert_user)
        .map_err(|unnamed| match unnamed {
            Unnamed::BadToken => "the bearer token names no user".into(),
            Unnamed::UnlistedCert(name) => {
                format!("client certificate user {name} is not in the auth file")
            }
            Unnamed::NoUser => "authentication required: send `Authorization: Bearer <token>` or \
                            a client certificate"
                .into(),
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Error> {
        // Fails closed: a route outside the layer serves nobody.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            err(
                ErrorCode::Internal,
                "the request did not pass the authentication layer",
            )
        })
    }
}

impl Caller {
    fn user(&self) -> Option<&User> {
        match self {
            Caller::Open => None,
            Caller::User(u) => Some(u),
        }
    }

    /// Logs a denial (never a token: the message names the user and the call).
    fn denied(&self, d: Denied) -> Error {
        tracing::info!(message = %d.0, "request refused: permission denied");
        d.into()
    }

    /// Whether the role allows `call` at all.
    pub fn may(&self, call: Call) -> Result<(), Error> {
        match self.user() {
            None => Ok(()),
            Some(u) => policy::may_call(u, call).map_err(|d| self.denied(d)),
        }
    }

    /// Whether the role allows `call` on `range` (inside the user's prefix, if any).
    pub fn may_touch(&self, call: Call, range: &KeyRange) -> Result<(), Error> {
        match self.user() {
            None => Ok(()),
            Some(u) => policy::may_call(u, call)
                .and_then(|()| policy::may_touch(u, call, range))
                .map_err(|d| self.denied(d)),
        }
    }

    /// `may_touch` for one key.
    pub fn may_key(&self, call: Call, key: &[u8]) -> Result<(), Error> {
        self.may_touch(call, &KeyRange::Key(key.to_vec()))
    }

    /// Whether the role allows `txn`: every compare key and every op's key or range.
    pub fn may_txn(&self, txn: &Txn) -> Result<(), Error> {
        match self.user() {
            None => Ok(()),
            Some(u) => policy::may_txn(u, txn).map_err(|d| self.denied(d)),
        }
    }

    /// Whether a lease call must look at the lease's keys first (a prefix-limited user).
    pub fn prefixed(&self) -> bool {
        self.user().is_some_and(|u| u.prefix.is_some())
    }

    /// Whether `call` may act on lease `id`, whose attached keys are `keys`.
    pub fn may_use_lease_keys(&self, call: Call, id: u64, keys: &[Vec<u8>]) -> Result<(), Error> {
        match self.user() {
            None => Ok(()),
            Some(u) => policy::may_use_lease_keys(u, call, id, keys).map_err(|d| self.denied(d)),
        }
    }
}
