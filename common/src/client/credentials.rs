//! What a client proves and trusts on a TLS or authenticated cluster: the CA that signs the
//! servers' certificates, an optional client certificate, an optional bearer token; and the
//! reqwest client configured with them (used by [`super::Client`] and the watcher alike).
//!
//! Every file problem is a [`ClientError::Usage`] naming the file. The token never appears in
//! a message, a `Debug` form or a log line.

use super::ClientError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// Environment variables kvctl's flags read, and the watcher reads (kvctl children inherit).
pub const ENV_CACERT: &str = "KVCTL_CACERT";
pub const ENV_CERT: &str = "KVCTL_CERT";
pub const ENV_KEY: &str = "KVCTL_KEY";
pub const ENV_TOKEN: &str = "KVCTL_TOKEN";
pub const ENV_TOKEN_FILE: &str = "KVCTL_TOKEN_FILE";

/// Longest token file read (a token is some 50 bytes; a larger file is a mistake).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Longest certificate or key file read.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// A client's TLS material and token. All `None` (the default) is a plaintext, anonymous
/// client. `cert` and `key` go together (PEM files: the client certificate, optionally
/// followed by its chain, and its PKCS#8, PKCS#1 or SEC1 private key). `cacert` is a PEM file
/// of one or more CA certificates; when given, only those are trusted (not the public roots).
/// `token` is sent as `Authorization: Bearer <token>` on every request.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// From the `KVCTL_*` environment variables, as kvctl reads them (empty variables count
    /// as unset; `KVCTL_TOKEN` and `KVCTL_TOKEN_FILE` together are a usage error, as for
    /// kvctl).
    pub fn from_env() -> Result<Credentials, ClientError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let token = match (var(ENV_TOKEN), var(ENV_TOKEN_FILE)) {
            (Some(_), Some(_)) => {
                return Err(ClientError::Usage(format!(
                    "{ENV_TOKEN} and {ENV_TOKEN_FILE} are both set: set one"
                )))
            }
            (Some(t), None) => Some(
                t.into_string()
                    .map_err(|_| ClientError::Usage(format!("{ENV_TOKEN} is not UTF-8")))?
                    .trim()
                    .to_string(),
            ),
            (None, Some(file)) => Some(read_token_file(Path::new(&file))?),
            (None, None) => None,
        };
        Ok(Credentials {
            cacert: var(ENV_CACERT).map(PathBuf::from),
            cert: var(ENV_CERT).map(PathBuf::from),
            key: var(ENV_KEY).map(PathBuf::from),
            token,
        })
    }

    /// Whether anything is set (else the client is plaintext and anonymous).
    pub fn is_empty(&self) -> bool {
        *self == Credentials::default()
    }

    /// `builder` with these credentials: trusted CAs, client identity, bearer token header.
    pub fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ClientError> {
        if let Some(path) = &self.cacert {
            let pem = read_limited(path, "CA certificate", MAX_PEM_FILE_BYTES)?;
            let certs = parse_certs(path, &pem, "CA certificate")?;
            builder = builder.tls_built_in_root_certs(false);
            for der in certs {
                let cert = reqwest::Certificate::from_der(&der).map_err(|e| {
                    ClientError::Usage(format!(
                        "CA certificate file {}: not a usable certificate: {e}",
                        path.display()
                    ))
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&self.cert, &self.key) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(ClientError::Usage(
                    "a client certificate (--cert) needs its key (--key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ClientError::Usage(
                    "a client key (--key) needs its certificate (--cert)".into(),
                ))
            }
            (Some(cert_path), Some(key_path)) => {
                let mut pem = read_limited(cert_path, "client certificate", MAX_PEM_FILE_BYTES)?;
                parse_certs(cert_path, &pem, "client certificate")?;
                let key = read_limited(key_path, "client key", MAX_PEM_FILE_BYTES)?;
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                    ClientError::Usage(format!(
                        "client key file {}: no PEM private key ({e})",
                        key_path.display()
                    ))
                })?;
                pem.push(b'\n');
                pem.extend_from_slice(&key);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ClientError::Usage(format!(
                        "client certificate {} with key {}: {e}",
                        cert_path.display(),
                        key_path.display()
                    ))
                })?;
                builder = builder.identity(identity);
            }
        }
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    ClientError::Usage(
                        "the token holds characters a header cannot carry (it is printable ASCII)"
                            .into(),
                    )
                })?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }
}

/// A token file's token: its first line, trimmed. Empty is an error (a missing Secret key
/// mounts as an empty file).
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let bytes = read_limited(path, "token", MAX_TOKEN_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ClientError::Usage(format!("token file {}: not UTF-8 text", path.display()))
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(ClientError::Usage(format!(
            "token file {}: the first line is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// The file's bytes, at most `limit` of them (more is an error naming the file).
fn read_limited(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| ClientError::Usage(format!("{what} file {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(ClientError::Usage(format!(
            "{what} file {}: larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The PEM certificates in `pem`: at least one, every one well-formed.
fn parse_certs(
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::Usage(format!("{what} file {}: bad PEM ({e})", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ClientError::Usage(format!(
            "{what} file {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}
