//! TLS for kvd: building rustls configurations from PEM files (client API, peer mutual TLS),
//! reading identities out of presented certificates, and the pieces that use them: the
//! reloading of changed files (`reload`), the client API's HTTPS listener (`listener`) and
//! the peer wire's handshakes (`peer`). ring is the one crypto provider.

pub mod listener;
pub mod peer;
pub mod reload;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// A certificate, key or CA file that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn invalid(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// A file's path and the bytes read from it.
pub struct PemFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl PemFile {
    pub fn read(path: &Path) -> Result<PemFile, TlsError> {
        let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(PemFile {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The certificates (at least one) of a PEM chain.
    pub fn certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&self.path, format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(&self.path, "no CERTIFICATE in the file"));
        }
        for c in &certs {
            x509_parser::parse_x509_certificate(c)
                .map_err(|e| invalid(&self.path, format!("bad certificate: {e}")))?;
        }
        Ok(certs)
    }

    /// The first private key (PKCS#8, PKCS#1 or SEC1) in the file.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.bytes)
            .map_err(|e| invalid(&self.path, format!("no usable private key: {e}")))
    }

    /// The CA certificates of a trust file.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut store = RootCertStore::empty();
        for c in self.certs()? {
            store
                .add(c)
                .map_err(|e| invalid(&self.path, format!("not a usable CA certificate: {e}")))?;
        }
        Ok(Arc::new(store))
    }
}

fn key_unfit(cert: &PemFile, key: &PemFile, e: rustls::Error) -> TlsError {
    invalid(
        &key.path,
        format!("key does not fit {}: {e}", cert.path.display()),
    )
}

/// The crypto provider of every configuration kvd builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_builder(
    cert: &PemFile,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&cert.path, e.to_string()))
}

/// The client API's server configuration: `cert`/`key` presented; with `client_ca`, client
/// certificates it signed are verified (and optional: token clients present none).
pub fn client_api_config(
    cert: &PemFile,
    key: &PemFile,
    client_ca: Option<&PemFile>,
) -> Result<ServerConfig, TlsError> {
    let (chain, key_der) = (cert.certs()?, key.key()?);
    let builder = server_builder(cert)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots()?, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(&ca.path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| key_unfit(cert, key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The peer wire's acceptor configuration: a client certificate signed by `ca` is required.
pub fn peer_server_config(
    cert: &PemFile,
    key: &PemFile,
    ca: &PemFile,
) -> Result<ServerConfig, TlsError> {
    let (chain, key_der) = (cert.certs()?, key.key()?);
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots()?, provider())
        .build()
        .map_err(|e| invalid(&ca.path, e.to_string()))?;
    let mut config = server_builder(cert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| key_unfit(cert, key, e))?;
    // Every peer session verifies certificates afresh (sessions are long-lived; a resumed
    // one would carry an identity past a rotation).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The peer wire's dialer configuration: servers must chain to `ca`; we present `cert`.
pub fn peer_client_config(
    cert: &PemFile,
    key: &PemFile,
    ca: &PemFile,
) -> Result<ClientConfig, TlsError> {
    let (chain, key_der) = (cert.certs()?, key.key()?);
    let verifier = WebPkiServerVerifier::builder_with_provider(ca.roots()?, provider())
        .build()
        .map_err(|e| invalid(&ca.path, e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&cert.path, e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| key_unfit(cert, key, e))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The subject common name of a (DER) certificate, if it has one.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// URI SAN prefix naming a replica's pid: `omnikv:replica:<pid>`.
pub const REPLICA_URI_PREFIX: &str = "omnikv:replica:";

/// The replica pid a (DER) certificate names in its URI SAN `omnikv:replica:<pid>`. Exactly
/// one such name must be there.
pub fn replica_pid(cert: &[u8]) -> Result<u64, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("bad certificate: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?;
    let mut pids = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix(REPLICA_URI_PREFIX) {
                let pid = rest
                    .parse::<u64>()
                    .map_err(|_| format!("bad replica URI SAN {uri:?}"))?;
                pids.push(pid);
            }
        }
    }
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => Err(format!(
            "certificate names no replica (no URI SAN {REPLICA_URI_PREFIX}<pid>)"
        )),
        _ => Err(format!("certificate names several replicas: {pids:?}")),
    }
}

/// The client API's TLS configuration from --cert-file/--key-file (and --client-ca-file),
/// rebuilt when the files change.
pub fn watch_client_api(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> Result<tokio::sync::watch::Receiver<Arc<ServerConfig>>, TlsError> {
    let mut paths = vec![cert, key];
    paths.extend(client_ca);
    reload::watch_files("client API TLS", paths, |f| {
        client_api_config(&f[0], &f[1], f.get(2))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identities_in_certificates() {
        let c = cert(
            "omnikv-replica-7",
            &["omnikv:replica:7", "https://example.org"],
        );
        assert_eq!(replica_pid(&c), Ok(7));
        assert_eq!(common_name(&c).as_deref(), Some("omnikv-replica-7"));
        assert!(replica_pid(&cert("x", &[])).is_err());
        assert!(replica_pid(&cert("x", &["omnikv:replica:1", "omnikv:replica:2"])).is_err());
        assert!(replica_pid(&cert("x", &["omnikv:replica:two"])).is_err());
        assert!(replica_pid(b"not a certificate").is_err());
        assert_eq!(common_name(b"junk"), None);
    }

    #[test]
    fn unusable_files_are_named() {
        let f = |bytes: &[u8]| PemFile {
            path: "/etc/x.pem".into(),
            bytes: bytes.to_vec(),
        };
        for e in [
            f(b"junk").certs().unwrap_err(),
            f(b"junk").key().unwrap_err(),
            f(b"").roots().unwrap_err(),
        ] {
            assert!(e.to_string().starts_with("/etc/x.pem: "), "{e}");
        }
        let missing = PemFile::read(Path::new("/nonexistent/cert.pem"))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("/nonexistent/cert.pem"));
    }
}
