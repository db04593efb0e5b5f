//! Authentication on etcd's API, against the users of `--auth-file` (the HTTP API's, with the
//! same roles and prefixes: `auth::policy` decides for both front doors).
//!
//! Auth.Authenticate takes a user's name and, as the password, the user's token (the secret the
//! HTTP API takes as a bearer token), and answers that same token as etcd's auth token: clients
//! send it in the `token` metadata of every later call. It is valid on every replica and stops
//! working the moment its user leaves the file. The other Auth methods (AuthEnable, UserAdd,
//! RoleGrantPermission, ...) answer FAILED_PRECONDITION: users and roles live in the file.
//!
//! Each call names its caller as etcd does: the `token` metadata (or etcd's other name for it,
//! `authorization`), else, over TLS with --client-ca-file, the user named by the client
//! certificate's common name. No user: INVALID_ARGUMENT "user name is empty"; a token that
//! names no user: UNAUTHENTICATED "invalid auth token"; a call the user's role or prefix does
//! not allow: PERMISSION_DENIED "permission denied" (the reason goes to the log). The services
//! check before anything is handed to consensus, so a denied call changes nothing.

use super::pb::etcdserverpb as pb;
use super::EtcdState;
use crate::api::gate::Caller;
use crate::api::Error;
use crate::auth::{Call, Unnamed, User, Users};
use crate::command::{KeyRange, Txn};
use crate::metrics::Metrics;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// etcd's messages for the refusals clients branch on (rpctypes).
pub const USER_EMPTY: &str = "etcdserver: user name is empty";
pub const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
/// The metadata etcd's clients send the token in, and the one etcd also reads it from.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];
/// Longest token looked up (a longer one names nobody: no file holds it).
const MAX_TOKEN_BYTES: usize = 4096;

/// The user a verified client certificate names (its common name), for each call of its TLS
/// connection (`tls::TlsConn`); `None` without a certificate.
#[derive(Clone, Debug, Default)]
pub struct CertUser(pub Option<String>);

/// The user a call authenticates as (`Users::identify`): its token (`token` or
/// `authorization` metadata, raw or in the HTTP API's bearer form), else its client
/// certificate's.
fn identify(
    users: &Users,
    metadata: &MetadataMap,
    cert_user: Option<&str>,
) -> Result<Arc<User>, Unnamed> {
    let token = match TOKEN_KEYS.iter().find_map(|k| metadata.get(*k)) {
        Some(value) => {
            let token = strip_bearer(value.to_str().map_err(|_| Unnamed::BadToken)?);
            if token.len() > MAX_TOKEN_BYTES {
                return Err(Unnamed::BadToken);
            }
            Some(token)
        }
        None => None,
    };
    users.identify(token, cert_user)
}

/// A token sent as `authorization: Bearer <token>` (the HTTP API's form) is the token.
fn strip_bearer(token: &str) -> &str {
    match token.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => token,
    }
}

/// etcd's answer to a call that names no user. A certificate naming no user is etcd's too:
/// its common name is taken as the user name, which has no permission.
fn refusal(unnamed: &Unnamed) -> Status {
    match unnamed {
        Unnamed::NoUser => Status::invalid_argument(USER_EMPTY),
        Unnamed::BadToken => Status::unauthenticated(INVALID_TOKEN),
        Unnamed::UnlistedCert(_) => Status::permission_denied(super::error::PERMISSION_DENIED),
    }
}

/// Why a call names no user, for the log (never a token).
fn why(unnamed: &Unnamed) -> String {
    match unnamed {
        Unnamed::NoUser => "no token and no client certificate".into(),
        Unnamed::BadToken => "the token names no user".into(),
        Unnamed::UnlistedCert(name) => {
            format!("client certificate user {name} is not in the auth file")
        }
    }
}

/// Who makes a call of etcd's API; its refusals are counted in the metrics the HTTP API's are.
pub(super) struct EtcdCaller {
    caller: Caller,
    metrics: Arc<Metrics>,
}

/// What names a stream's caller, kept to name it again at each watch the stream creates (the
/// auth file may have changed since the stream opened, as etcd checks each create).
pub(super) struct Credentials {
    metadata: MetadataMap,
    cert_user: Option<String>,
}

impl Credentials {
    pub fn of<T>(request: &Request<T>) -> Credentials {
        Credentials {
            metadata: request.metadata().clone(),
            cert_user: cert_user(request).map(str::to_string),
        }
    }
}

fn cert_user<T>(request: &Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<CertUser>()
        .and_then(|c| c.0.as_deref())
}

impl EtcdState {
    /// The caller of `request` (anyone when there is no auth file), or etcd's refusal.
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<EtcdCaller, Status> {
        self.caller_from(request.metadata(), cert_user(request))
    }

    /// `caller` for a stream's kept credentials.
    pub(super) fn caller_of(&self, credentials: &Credentials) -> Result<EtcdCaller, Status> {
        self.caller_from(&credentials.metadata, credentials.cert_user.as_deref())
    }

    fn caller_from(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
    ) -> Result<EtcdCaller, Status> {
        let metrics = self.api.metrics.clone();
        let Some(users) = self.api.auth.users() else {
            return Ok(EtcdCaller {
                caller: Caller::Open,
                metrics,
            });
        };
        match identify(&users, metadata, cert_user) {
            Ok(user) => Ok(EtcdCaller {
                caller: Caller::User(user),
                metrics,
            }),
            Err(unnamed) => {
                metrics.count_denied("unauthenticated");
                tracing::debug!(why = %why(&unnamed), "etcd API call refused: unauthenticated");
                Err(refusal(&unnamed))
            }
        }
    }
}

impl EtcdCaller {
    fn counted(&self, checked: Result<(), Error>) -> Result<(), Status> {
        checked.map_err(|e| {
            self.metrics.count_denied("permission_denied");
            e.into()
        })
    }

    /// Whether the role allows `call` at all.
    pub fn may(&self, call: Call) -> Result<(), Status> {
        self.counted(self.caller.may(call))
    }

    /// Whether the role allows `call` on `range` (inside the user's prefix, if any).
    pub fn may_touch(&self, call: Call, range: &KeyRange) -> Result<(), Status> {
        self.counted(self.caller.may_touch(call, range))
    }

    /// `may_touch` for one key.
    pub fn may_key(&self, call: Call, key: &[u8]) -> Result<(), Status> {
        self.counted(self.caller.may_key(call, key))
    }

    /// Whether the role allows `txn`: every compare key and every op's key or range.
    pub fn may_txn(&self, txn: &Txn) -> Result<(), Status> {
        self.counted(self.caller.may_txn(txn))
    }

    /// Whether a lease call must look at the lease's keys first (a prefix-limited user).
    pub fn prefixed(&self) -> bool {
        self.caller.prefixed()
    }

    /// Whether `call` may act on lease `id`, whose attached keys are `keys`.
    pub fn may_use_lease_keys(&self, call: Call, id: u64, keys: &[Vec<u8>]) -> Result<(), Status> {
        self.counted(self.caller.may_use_lease_keys(call, id, keys))
    }
}

pub struct AuthService(pub EtcdState);

impl AuthService {
    /// A user's name and token in, the token out (see the module's doc).
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let Some(users) = self.0.api.auth.users() else {
            return Err(Status::failed_precondition(AUTH_NOT_ENABLED));
        };
        let r = request.into_inner();
        let named = (r.password.len() <= MAX_TOKEN_BYTES)
            .then(|| users.by_token(&r.password))
            .flatten()
            .is_some_and(|u| u.name == r.name);
        if !named {
            self.0.api.metrics.count_denied("unauthenticated");
            let name: String = r.name.chars().take(64).collect();
            tracing::info!(user = %name.escape_debug(), "etcd Authenticate refused: wrong user name or token");
            return Err(Status::invalid_argument(AUTH_FAILED));
        }
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.0.header(0),
            token: r.password,
        }))
    }
}

/// The answer of every Auth method but Authenticate.
fn managed_in_file() -> Status {
    Status::failed_precondition(
        "etcdserver: omnikv's users and roles are managed in kvd's --auth-file (lines NAME \
         ROLE [prefix=PREFIX] [token=sha256:HEX]), not through etcd's Auth API; \
         authenticate with a user's name and its token as the password",
    )
}

/// The Auth service: Authenticate, and the methods that answer `managed_in_file`.
macro_rules! auth_service {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl pb::auth_server::Auth for AuthService {
            async fn authenticate(
                &self,
                request: Request<pb::AuthenticateRequest>,
            ) -> Result<Response<pb::AuthenticateResponse>, Status> {
                AuthService::authenticate(self, request).await
            }
            $(
                async fn $method(
                    &self,
                    _request: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    Err(managed_in_file())
                }
            )*
        }
    };
}

auth_service! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::token_line_hash;
    use tonic::metadata::MetadataValue;

    fn line(name: &str, role: &str, token: &str) -> String {
        format!("{name} {role} token=sha256:{}\n", token_line_hash(token))
    }

    fn users() -> Users {
        let text = line("root", "admin", "root-token") + &line("app", "write", "app-token");
        Users::parse(format!("{text}certonly read\n").as_bytes()).unwrap()
    }

    fn with(key: &'static str, value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(key, MetadataValue::try_from(value).unwrap());
        m
    }

    fn name(r: Result<Arc<User>, Unnamed>) -> Result<String, Unnamed> {
        r.map(|u| u.name.clone())
    }

    #[test]
    fn a_call_is_its_tokens_user_else_its_certificates() {
        let u = users();
        let none = MetadataMap::new();
        assert_eq!(
            name(identify(&u, &with("token", "app-token"), None)),
            Ok("app".into())
        );
        // etcd's other metadata name, raw or as the HTTP API's bearer form.
        for v in ["root-token", "Bearer root-token", "bearer  root-token"] {
            let got = identify(&u, &with("authorization", v), None);
            assert_eq!(name(got), Ok("root".into()), "{v}");
        }
        assert_eq!(
            name(identify(&u, &none, Some("certonly"))),
            Ok("certonly".into())
        );
        // A token wins over a certificate, and a bad one is refused even with a good cert.
        let both = identify(&u, &with("token", "app-token"), Some("root"));
        assert_eq!(name(both), Ok("app".into()));
        let bad = identify(&u, &with("token", "nope"), Some("root"));
        assert_eq!(name(bad), Err(Unnamed::BadToken));
        assert_eq!(name(identify(&u, &none, None)), Err(Unnamed::NoUser));
        assert_eq!(
            name(identify(&u, &none, Some("stranger"))),
            Err(Unnamed::UnlistedCert("stranger".into()))
        );
        let long = "t".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            name(identify(&u, &with("token", &long), None)),
            Err(Unnamed::BadToken)
        );
        assert_eq!(
            name(identify(&u, &with("token", ""), None)),
            Err(Unnamed::BadToken)
        );
    }

    #[test]
    fn refusals_are_etcds_codes_and_messages() {
        let s = refusal(&Unnamed::NoUser);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, USER_EMPTY)
        );
        let s = refusal(&Unnamed::BadToken);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unauthenticated, INVALID_TOKEN)
        );
        let s = refusal(&Unnamed::UnlistedCert("x".into()));
        assert_eq!(
            (s.code(), s.message()),
            (
                tonic::Code::PermissionDenied,
                super::super::error::PERMISSION_DENIED
            )
        );
        assert!(!why(&Unnamed::BadToken).contains("token="));
    }
}
