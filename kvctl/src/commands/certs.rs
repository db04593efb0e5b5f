//! `kvctl certs new` and `kvctl certs replica`: a cluster's CA and the certificates it signs
//! (replicas: server and client auth, identity URI SAN `omnikv:replica:N`; users: client
//! auth, CN = user name), written as PEM files with private keys mode 0600, and optionally a
//! Kubernetes Secret manifest holding them.

use crate::cli::{CertsCommand, NewCerts, OutputFormat};
use crate::exit::Error;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "omnikv CA";

/// The files written, in order (names inside the output directory).
pub type Written = Vec<String>;

/// Runs a `certs` command; prints the files written (text: one path a line; JSON:
/// `{"dir": DIR, "files": [NAME, ...]}`).
pub fn run(command: CertsCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), Error> {
    let (dir, written) = match command {
        CertsCommand::New(args) => (args.out.clone(), new(&args)?),
        CertsCommand::Replica {
            pid,
            out: dir,
            hosts,
            days,
            force,
        } => {
            let written = replica(&dir, pid, &hosts, days, force)?;
            (dir, written)
        }
    };
    match format {
        OutputFormat::Text => {
            for name in &written {
                writeln!(out, "{}", dir.join(name).display()).map_err(Error::stdout)?;
            }
        }
        OutputFormat::Json => {
            let doc = serde_json::json!({"dir": dir.display().to_string(), "files": written});
            writeln!(out, "{doc}").map_err(Error::stdout)?;
        }
    }
    Ok(())
}

/// `certs new`: a CA, `replicas` replica certificates and one per client user.
pub fn new(args: &NewCerts) -> Result<Written, Error> {
    // `--clients ''` makes no client certificate.
    let clients: Vec<&String> = args.clients.iter().filter(|c| !c.is_empty()).collect();
    for user in &clients {
        check_user_name(user)?;
    }
    let hosts = parse_hosts(&args.hosts)?;
    if let Some(name) = &args.k8s_secret {
        check_secret_name(name)?;
    }
    std::fs::create_dir_all(&args.out).map_err(|e| io_error(&args.out, e))?;
    let ca_key_path = args.out.join("ca.key");
    if ca_key_path.exists() && !args.force {
        return Err(Error::usage(format!(
            "{} exists: a CA is already there (pass --force to replace it and everything it \
             signed, or `kvctl certs replica` to sign more with it)",
            ca_key_path.display()
        )));
    }
    let (not_before, not_after) = validity(args.days)?;
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name(CA_COMMON_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut files: Vec<(String, String)> = vec![
        ("ca.crt".into(), ca_cert.pem()),
        ("ca.key".into(), issuer.key().serialize_pem()),
    ];
    for pid in 1..=args.replicas {
        let (crt, key) = replica_cert(pid, &hosts, args.days, &issuer)?;
        files.push((format!("replica-{pid}.crt"), crt));
        files.push((format!("replica-{pid}.key"), key));
    }
    for user in clients {
        let (crt, key) = client_cert(user, args.days, &issuer)?;
        files.push((format!("client-{user}.crt"), crt));
        files.push((format!("client-{user}.key"), key));
    }
    let mut written = Vec::new();
    for (name, pem) in &files {
        write_file(&args.out, name, pem.as_bytes())?;
        written.push(name.clone());
    }
    if let Some(secret) = &args.k8s_secret {
        let data: Vec<(&str, &[u8])> = files
            .iter()
            .filter(|(name, _)| name != "ca.key")
            .map(|(name, pem)| (name.as_str(), pem.as_bytes()))
            .collect();
        write_file(
            &args.out,
            "secret.yaml",
            secret_yaml(secret, &data).as_bytes(),
        )?;
        written.push("secret.yaml".into());
    }
    Ok(written)
}

/// `certs replica N`: one more replica certificate signed by the CA in `dir`.
pub fn replica(
    dir: &Path,
    pid: u64,
    hosts: &[String],
    days: u32,
    force: bool,
) -> Result<Written, Error> {
    let hosts = parse_hosts(hosts)?;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))
    };
    let (ca_pem, ca_key_pem) = (read("ca.crt")?, read("ca.key")?);
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        Error::usage(format!(
            "{}: not a PEM private key: {e}",
            dir.join("ca.key").display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
        Error::usage(format!(
            "{}: not a PEM CA certificate: {e}",
            dir.join("ca.crt").display()
        ))
    })?;
    let (crt_name, key_name) = (format!("replica-{pid}.crt"), format!("replica-{pid}.key"));
    if !force && dir.join(&crt_name).exists() {
        return Err(Error::usage(format!(
            "{} exists (pass --force to replace it)",
            dir.join(&crt_name).display()
        )));
    }
    let (crt, key) = replica_cert(pid, &hosts, days, &issuer)?;
    write_file(dir, &crt_name, crt.as_bytes())?;
    write_file(dir, &key_name, key.as_bytes())?;
    Ok(vec![crt_name, key_name])
}

/// A replica's certificate and key (PEM): CN `omnikv-replica-N`, URI SAN `omnikv:replica:N`,
/// the standard DNS and IP names plus `hosts`, server and client auth.
fn replica_cert(
    pid: u64,
    hosts: &[SanType],
    days: u32,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), Error> {
    let pod = format!("kv-store-{}", pid - 1);
    let dns = [
        "localhost".to_string(),
        format!("s{pid}"),
        pod.clone(),
        format!("{pod}.kv-store"),
        format!("{pod}.kv-store.default.svc.cluster.local"),
    ];
    let mut sans = vec![SanType::URI(ia5(&format!("omnikv:replica:{pid}"))?)];
    for name in &dns {
        sans.push(SanType::DnsName(ia5(name)?));
    }
    sans.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    sans.push(SanType::IpAddress(IpAddr::from(
        std::net::Ipv6Addr::LOCALHOST,
    )));
    for host in hosts {
        if !sans.contains(host) {
            sans.push(host.clone());
        }
    }
    leaf(
        &format!("omnikv-replica-{pid}"),
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        days,
        issuer,
    )
}

/// A client user's certificate and key (PEM): CN `user`, client auth only.
fn client_cert(
    user: &str,
    days: u32,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), Error> {
    leaf(
        user,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        days,
        issuer,
    )
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), Error> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(days)?;
    let cert = params.signed_by(&key, issuer).map_err(cert_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// From an hour ago (clock skew between machines) to `days` from now.
fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), Error> {
    let now = time::OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(time::Duration::days(i64::from(days)))
        .ok_or_else(|| Error::usage(format!("--days {days} is too far ahead")))?;
    Ok((now - time::Duration::hours(1), not_after))
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, Error> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|e| Error::usage(format!("{s:?} cannot go in a certificate: {e}")))
}

/// `--hosts` as SANs: IP addresses as IP SANs, the rest as DNS names.
fn parse_hosts(hosts: &[String]) -> Result<Vec<SanType>, Error> {
    hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if is_dns_name(h) => Ok(SanType::DnsName(ia5(h)?)),
            Err(_) => Err(Error::usage(format!(
                "--hosts: {h:?} is neither an IP address nor a DNS name"
            ))),
        })
        .collect()
}

/// A DNS name (or wildcard name) as certificates hold them: labels of letters, digits and
/// hyphens (a leading `*` label allowed), at most 253 bytes.
fn is_dns_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

/// A user name as kvd's auth file takes it: [A-Za-z0-9._@-]{1,64}.
pub fn check_user_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "user name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -"
        )))
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn check_secret_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "--k8s-secret {name:?}: a Kubernetes name is lower-case letters, digits, '-' and '.'"
        )))
    }
}

/// A `kind: Secret` manifest (type Opaque) with each file base64-encoded under its name.
pub fn secret_yaml(name: &str, files: &[(&str, &[u8])]) -> String {
    let mut yaml =
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\ndata:\n");
    for (file, bytes) in files {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        yaml.push_str(&format!("  {file}: {b64}\n"));
    }
    yaml
}

/// Writes `dir/name`: private keys (`*.key`) and the Secret manifest mode 0600, the rest 0644.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(name);
    let secret = name.ends_with(".key") || name == "secret.yaml";
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(&path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::usage(format!("{}: {e}", path.display()))
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::usage(format!("cannot make the certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn args(dir: &Path) -> NewCerts {
        NewCerts {
            out: dir.to_path_buf(),
            replicas: 2,
            clients: vec!["root".into(), "app@x".into()],
            hosts: vec!["db.example.com".into(), "10.1.2.3".into()],
            days: 30,
            k8s_secret: Some("omnikv-tls".into()),
            force: false,
        }
    }

    fn der(dir: &Path, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(name)).unwrap()
    }

    fn roots(dir: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(dir, "ca.crt")).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// (CN, DNS names, IPs, URIs, server auth, client auth, validity in seconds).
    #[allow(clippy::type_complexity)]
    fn inspect(
        cert: &CertificateDer<'_>,
    ) -> (
        String,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        bool,
        bool,
        i64,
    ) {
        let (_, x) = X509Certificate::from_der(cert).unwrap();
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let (mut dns, mut ips, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(san) = x.subject_alternative_name().unwrap() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => ips.push(match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                        _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                    }),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
        let eku = x.extended_key_usage().unwrap().map(|e| e.value);
        let validity = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        let (server_auth, client_auth) =
            eku.map_or((false, false), |e| (e.server_auth, e.client_auth));
        (cn, dns, ips, uris, server_auth, client_auth, validity)
    }

    #[test]
    fn new_makes_a_ca_and_certificates_that_verify_against_it() {
        let dir = tempfile::tempdir().unwrap();
        let written = new(&args(dir.path())).unwrap();
        assert_eq!(
            written,
            [
                "ca.crt",
                "ca.key",
                "replica-1.crt",
                "replica-1.key",
                "replica-2.crt",
                "replica-2.key",
                "client-root.crt",
                "client-root.key",
                "client-app@x.crt",
                "client-app@x.key",
                "secret.yaml"
            ]
        );
        for name in &written {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            let secret = name.ends_with(".key") || name == "secret.yaml";
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{name}");
        }
        let (ca_cn, ..) = inspect(&der(dir.path(), "ca.crt"));
        assert_eq!(ca_cn, CA_COMMON_NAME);

        let server = WebPkiServerVerifier::builder_with_provider(roots(dir.path()), provider())
            .build()
            .unwrap();
        for pid in 1..=2u64 {
            let cert = der(dir.path(), &format!("replica-{pid}.crt"));
            let (cn, dns, ips, uris, server_auth, client_auth, validity) = inspect(&cert);
            assert_eq!(cn, format!("omnikv-replica-{pid}"));
            let pod = format!("kv-store-{}", pid - 1);
            assert_eq!(
                dns,
                [
                    "localhost".to_string(),
                    format!("s{pid}"),
                    pod.clone(),
                    format!("{pod}.kv-store"),
                    format!("{pod}.kv-store.default.svc.cluster.local"),
                    "db.example.com".into()
                ]
            );
            assert_eq!(ips, ["127.0.0.1", "::1", "10.1.2.3"]);
            assert_eq!(uris, [format!("omnikv:replica:{pid}")]);
            assert!(server_auth && client_auth);
            // 30 days and the hour before now.
            assert_eq!(validity, 30 * 86400 + 3600);
            for name in [
                "localhost",
                &format!("{pod}.kv-store.default.svc.cluster.local"),
                "db.example.com",
                "127.0.0.1",
                "10.1.2.3",
            ] {
                let name = ServerName::try_from(name.to_string()).unwrap();
                server
                    .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                    .unwrap_or_else(|e| panic!("replica-{pid} for {name:?}: {e}"));
            }
            let wrong = ServerName::try_from("other.example.com").unwrap();
            assert!(server
                .verify_server_cert(&cert, &[], &wrong, &[], UnixTime::now())
                .is_err());
        }

        let client = WebPkiClientVerifier::builder_with_provider(roots(dir.path()), provider())
            .build()
            .unwrap();
        for user in ["root", "app@x"] {
            let cert = der(dir.path(), &format!("client-{user}.crt"));
            let (cn, dns, ips, uris, server_auth, client_auth, _) = inspect(&cert);
            assert_eq!(cn, user);
            assert!(dns.is_empty() && ips.is_empty() && uris.is_empty());
            assert!(client_auth && !server_auth);
            client
                .verify_client_cert(&cert, &[], UnixTime::now())
                .unwrap();
            // Not a server certificate.
            let name = ServerName::try_from("localhost").unwrap();
            assert!(server
                .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_err());
        }

        // Another CA's certificates do not verify against this one.
        let other = tempfile::tempdir().unwrap();
        new(&NewCerts {
            k8s_secret: None,
            ..args(other.path())
        })
        .unwrap();
        let foreign = der(other.path(), "replica-1.crt");
        let name = ServerName::try_from("localhost").unwrap();
        assert!(server
            .verify_server_cert(&foreign, &[], &name, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn the_secret_holds_every_file_but_the_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        new(&args(dir.path())).unwrap();
        let yaml = std::fs::read_to_string(dir.path().join("secret.yaml")).unwrap();
        assert!(yaml.starts_with(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: omnikv-tls\ntype: Opaque\ndata:\n"
        ));
        let entries: Vec<(&str, &str)> = yaml
            .split("\ndata:\n")
            .nth(1)
            .unwrap()
            .lines()
            .map(|l| l.trim().split_once(": ").unwrap())
            .collect();
        assert_eq!(entries.len(), 9);
        for (name, b64) in entries {
            assert_ne!(name, "ca.key");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(
                bytes,
                std::fs::read(dir.path().join(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn an_existing_ca_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        new(&args(dir.path())).unwrap();
        let ca = std::fs::read(dir.path().join("ca.key")).unwrap();
        let e = new(&args(dir.path())).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca);
        new(&NewCerts {
            force: true,
            ..args(dir.path())
        })
        .unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca);
    }

    #[test]
    fn replica_signs_one_more_with_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        new(&args(dir.path())).unwrap();
        assert!(replica(dir.path(), 2, &[], 10, false).is_err(), "exists");
        let written = replica(dir.path(), 4, &["extra.example".into()], 10, false).unwrap();
        assert_eq!(written, ["replica-4.crt", "replica-4.key"]);
        let cert = der(dir.path(), "replica-4.crt");
        let (cn, dns, _, uris, ..) = inspect(&cert);
        assert_eq!(cn, "omnikv-replica-4");
        assert_eq!(uris, ["omnikv:replica:4"]);
        assert!(dns.contains(&"kv-store-3.kv-store".to_string()));
        assert!(dns.contains(&"extra.example".to_string()));
        let server = WebPkiServerVerifier::builder_with_provider(roots(dir.path()), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from("s4").unwrap();
        server
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("replica-4.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_names_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            NewCerts {
                clients: vec!["has space".into()],
                ..args(dir.path())
            },
            NewCerts {
                hosts: vec!["bad_host!".into()],
                ..args(dir.path())
            },
            NewCerts {
                k8s_secret: Some("Upper".into()),
                ..args(dir.path())
            },
        ] {
            assert_eq!(new(&bad).unwrap_err().exit_code(), crate::exit::USAGE);
        }
        assert!(!dir.path().join("ca.key").exists(), "nothing written");
    }
}
