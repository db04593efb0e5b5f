//! Recognising a refusal of who we are, as opposed to a replica being down: a 401, a 403, a
//! 400 `tls_required` answer, or a TLS handshake that failed on a certificate (ours or the
//! server's). Each becomes [`ClientError::NotPermitted`] with a message saying what to do.
//! None of them reached consensus, so none makes a write indeterminate by itself.

use super::ClientError;
use rustls::{AlertDescription, CertificateError};

/// The error codes kvd's JSON error body uses for these refusals (`common/src/api.rs`).
pub const CODE_UNAUTHENTICATED: &str = "unauthenticated";
pub const CODE_PERMISSION_DENIED: &str = "permission_denied";
pub const CODE_TLS_REQUIRED: &str = "tls_required";

/// The refusal an error answer is, if it is one: 401 and 403 always, 400 only with code
/// `tls_required`. `code` is the body's `error.code`, `message` its `error.message`.
pub(super) fn refused_answer(
    status: u16,
    code: Option<&str>,
    message: &str,
    endpoint: &str,
) -> Option<ClientError> {
    let detail = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message.to_string()
    };
    let msg = match (status, code) {
        (401, _) | (_, Some(CODE_UNAUTHENTICATED)) => format!(
            "unauthenticated: {detail} — pass a token (--token, --token-file) or a client \
             certificate (--cert, --key) of a user in the cluster's auth file"
        ),
        (403, _) | (_, Some(CODE_PERMISSION_DENIED)) => {
            format!("permission denied: {detail} — use a user whose role and prefix allow this")
        }
        (400, Some(CODE_TLS_REQUIRED)) => {
            let https = endpoint.replacen("http://", "https://", 1);
            if message.contains("https://") {
                format!("{message} (asked {endpoint})")
            } else {
                format!("this endpoint serves HTTPS: use {https} (and --cacert)")
            }
        }
        _ => return None,
    };
    Some(ClientError::NotPermitted(msg))
}

/// The TLS failure a request error is, if it is one: a rustls error anywhere in its source
/// chain (also inside an `io::Error`), turned into a message with the fix. A certificate
/// error or alert ends a handshake, before the server reads any request; any other rustls
/// error counts only while connecting (after that, a request may have been handled).
pub(super) fn tls_failure(e: &reqwest::Error) -> Option<ClientError> {
    let tls = find_rustls(e)?;
    let (message, about_certificates) = explain(tls);
    (about_certificates || e.is_connect()).then_some(ClientError::NotPermitted(message))
}

/// The rustls error in `err`'s source chain. An `io::Error`'s `source()` skips the error it
/// wraps (reqwest nests one `io::Error` in another), so the wrapped ones are searched too.
fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(tls) = find_rustls(inner) {
            return Some(tls);
        }
    }
    find_rustls(err.source()?)
}

/// A rustls error as "what failed — what to do", and whether it is about a certificate.
fn explain(e: &rustls::Error) -> (String, bool) {
    let mut about_certificates = true;
    let fix = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server's certificate is not signed by a CA we trust: pass the cluster CA \
                 with --cacert"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is outside its validity period: renew it (kvctl certs) \
                 or check the clocks"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host dialed: use an endpoint host the \
                 certificate lists (kvctl certs --hosts adds names)"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers (extended key usage)"
            }
            _ => "the server's certificate was refused: check it and --cacert",
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "the server requires a client certificate: pass --cert and --key, or use \
                 a token"
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError => {
                "the server refused our client certificate: use one signed by the cluster's \
                 client CA"
            }
            AlertDescription::CertificateExpired => {
                "the server refused our client certificate as expired: renew it"
            }
            AlertDescription::CertificateRevoked => {
                "the server refused our client certificate as revoked"
            }
            AlertDescription::UnsupportedCertificate => {
                "the server refused our client certificate: it is not for TLS clients \
                 (extended key usage)"
            }
            AlertDescription::AccessDenied => "the server refused our client certificate",
            _ => {
                about_certificates = false;
                "the TLS handshake failed"
            }
        },
        rustls::Error::InvalidMessage(_) => {
            about_certificates = false;
            "the endpoint does not speak TLS: if it serves plain HTTP, use http://"
        }
        _ => {
            about_certificates = false;
            "the TLS handshake failed: check --cacert, --cert and --key"
        }
    };
    (format!("TLS: {e} — {fix}"), about_certificates)
}
