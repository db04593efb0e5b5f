//! A test PKI made with rcgen, laid out as `kvctl certs` lays it out: a CA (`ca.crt`),
//! replica certificates (`replica-N.crt`/`.key`: CN `omnikv-replica-N`, URI SAN
//! `omnikv:replica:N`, DNS localhost and sN, IP 127.0.0.1 and ::1, server+client auth) and
//! client certificates (`client-U.crt`/`.key`: CN `U`, client auth). Also what the tests
//! need to be refused: expired certificates and certificates for another pid.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};

/// A certificate authority that signs test certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How a leaf certificate is made.
#[derive(Default, Clone, Copy)]
pub struct LeafOpts {
    /// Valid until yesterday (and from a year ago).
    pub expired: bool,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
        }
    }

    /// Replica `pid`'s certificate (server and client auth).
    pub fn replica(&self, pid: u64) -> Leaf {
        self.replica_with(pid, LeafOpts::default())
    }

    pub fn replica_with(&self, pid: u64, opts: LeafOpts) -> Leaf {
        let sans = vec![
            SanType::URI(format!("omnikv:replica:{pid}").try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::DnsName(format!("s{pid}").try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
        ];
        self.leaf(
            &format!("omnikv-replica-{pid}"),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            opts,
        )
    }

    /// Client user `user`'s certificate (client auth only).
    pub fn client(&self, user: &str, opts: LeafOpts) -> Leaf {
        self.leaf(
            user,
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            opts,
        )
    }

    fn leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        opts: LeafOpts,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = eku;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = time_now();
        if opts.expired {
            params.not_before = now - rcgen_days(365);
            params.not_after = now - rcgen_days(1);
        } else {
            params.not_before = now - rcgen_days(1);
            params.not_after = now + rcgen_days(30);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.crt` into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (crt, key)
    }

    /// The certificate's serial number (DER bytes), as x509-parser reads it.
    pub fn serial(&self) -> Vec<u8> {
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap();
        serial_of(&der)
    }
}

/// The serial number of the first certificate in a PEM file.
pub fn file_serial(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    serial_of(&rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap())
}

/// The serial number of a DER certificate.
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.tbs_certificate.raw_serial().to_vec()
}

use rustls_pki_types::pem::PemObject;

/// A test PKI on disk: one CA, replica certificates for pids `1..=n`, laid out in `dir`
/// as `kvctl certs new` writes it.
#[derive(Clone)]
pub struct PkiDir {
    pub dir: PathBuf,
}

impl PkiDir {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn replica_cert(&self, pid: u64) -> PathBuf {
        self.dir.join(format!("replica-{pid}.crt"))
    }
    pub fn replica_key(&self, pid: u64) -> PathBuf {
        self.dir.join(format!("replica-{pid}.key"))
    }
}

/// Makes `ca` write its certificate and replica certificates for `pids` into `dir`.
pub fn lay_out(ca: &Ca, dir: &Path, pids: impl IntoIterator<Item = u64>) -> PkiDir {
    std::fs::create_dir_all(dir).unwrap();
    ca.write(dir);
    for pid in pids {
        ca.replica(pid).write(dir, &format!("replica-{pid}"));
    }
    PkiDir {
        dir: dir.to_path_buf(),
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn random_serial() -> SerialNumber {
    // Positive, non-zero, 8 bytes: as x509-parser reads it back (no sign padding needed).
    SerialNumber::from((rand::random::<u64>() >> 1) | (1 << 62))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(n: i64) -> time::Duration {
    time::Duration::days(n)
}
