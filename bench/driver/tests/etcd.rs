//! Runs `omnikv-bench --target etcd` (the built binary) against a real one-member etcd on
//! loopback: every workload, through the native gRPC client, in plaintext and over TLS
//! (certificates made here with rcgen). Fails when no `etcd` is on PATH
//! (bench/install-etcd.sh installs Debian's).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, json};

mod support;

struct Etcd {
    child: Child,
    endpoint: String,
    /// Its data dir and its log (`etcd.log`), removed with it.
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(endpoint: &str, args: &[&str]) -> Output {
    support::bench("etcd", endpoint, args)
}

/// PEM files of a test CA and of one certificate for 127.0.0.1 it signed (serverAuth and
/// clientAuth: etcd presents it on its client and its peer port).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.crt")),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn start_etcd() -> Etcd {
    start_etcd_with(None)
}

/// One etcd member; with `tls`, client TLS and peer TLS (client certificates required on
/// the peer port) with that certificate, https URLs.
fn start_etcd_with(tls: Option<&Pki>) -> Etcd {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // etcd is part of the test setup (scripts/setup.sh installs it): its absence is a
    // failure, never a silent skip.
    assert!(
        ok,
        "no etcd on PATH: run scripts/setup.sh (or bench/install-etcd.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut tls_args: Vec<&std::ffi::OsStr> = Vec::new();
    let mut probe = Vec::new();
    if let Some(p) = tls {
        for (flag, file) in [
            ("--cert-file", &p.cert),
            ("--key-file", &p.key),
            ("--peer-cert-file", &p.cert),
            ("--peer-key-file", &p.key),
            ("--peer-trusted-ca-file", &p.ca),
        ] {
            tls_args.extend([flag.as_ref(), file.as_os_str()]);
        }
        tls_args.push("--peer-client-cert-auth".as_ref());
        probe.extend(["--cacert", p.ca.to_str().unwrap()]);
    }
    // One put of bench-0 (inside every key space the tests load).
    probe.extend(["kv", "--ops", "1", "--warmup", "0", "--keys", "1"]);
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("{scheme}://{endpoint}"),
            "--advertise-client-urls",
            &format!("{scheme}://{endpoint}"),
            "--listen-peer-urls",
            &format!("{scheme}://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("{scheme}://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t={scheme}://127.0.0.1:{peer}"),
            "--log-level",
            "error",
            "--logger",
            "zap",
        ])
        .args(tls_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    let etcd = Etcd {
        child,
        endpoint,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = bench(&etcd.endpoint, &probe);
        if o.status.success() {
            return etcd;
        }
        assert!(
            Instant::now() < deadline,
            "etcd did not start on {}; the probe said: {}\netcd's log:\n{}",
            etcd.endpoint,
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_workload_drives_etcd_natively() {
    let etcd = start_etcd();
    let ep = etcd.endpoint.as_str();
    let kv = json(&bench(
        ep,
        &[
            "kv",
            "--ops",
            "200",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--keys",
            "20",
            "--read-ratio",
            "0.5",
        ],
    ));
    assert_eq!(
        (kv["target"].as_str(), kv["ok"].as_u64()),
        (Some("etcd"), Some(200)),
        "{kv}"
    );
    assert!(kv["misses"].as_u64().unwrap() < 100, "{kv}");

    let range = json(&bench(
        ep,
        &[
            "range",
            "--ops",
            "20",
            "--clients",
            "2",
            "--warmup",
            "0",
            "--range-keys",
            "50",
        ],
    ));
    assert_eq!(
        (range["ok"].as_u64(), range["range_keys"].as_u64()),
        (Some(20), Some(50)),
        "{range}"
    );

    // 4 clients over 20 keys whose revisions were read first: a compare fails only when
    // another client swapped the key in between, so most hold.
    let cas = json(&bench(
        ep,
        &[
            "cas",
            "--ops",
            "300",
            "--clients",
            "4",
            "--warmup",
            "0",
            "--keys",
            "20",
        ],
    ));
    let failed = cas["cas_failed"].as_u64().unwrap();
    assert_eq!(cas["ok"].as_u64(), Some(300), "{cas}");
    assert!(failed < 100, "{cas}");

    let watch = json(&bench(
        ep,
        &[
            "watch",
            "--watchers",
            "3",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0",
        ],
    ));
    let events = watch["events"].as_u64().unwrap();
    assert!(events > 0, "{watch}");
    assert_eq!(Some(events), watch["events_expected"].as_u64(), "{watch}");
}

#[test]
fn etcd_over_tls_with_its_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "etcd");
    let etcd = start_etcd_with(Some(&pki));
    let (ep, ca) = (etcd.endpoint.as_str(), pki.ca.to_str().unwrap());
    let https = format!("https://{ep}");

    // --cacert alone turns TLS on for a bare host:port; an https:// URL works the same.
    for endpoint in [ep, https.as_str()] {
        let kv = json(&bench(
            endpoint,
            &[
                "--cacert",
                ca,
                "kv",
                "--ops",
                "50",
                "--clients",
                "2",
                "--warmup",
                "0",
            ],
        ));
        assert_eq!(kv["ok"].as_u64(), Some(50), "{kv}");
    }
    // With a client certificate too (etcd accepts it on the client port without asking).
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let kv = json(&bench(
        ep,
        &[
            "--cacert", ca, "--cert", cert, "--key", key, "kv", "--ops", "20", "--warmup", "0",
        ],
    ));
    assert_eq!(kv["ok"].as_u64(), Some(20), "{kv}");
    let watch = json(&bench(
        ep,
        &[
            "--cacert",
            ca,
            "watch",
            "--watchers",
            "2",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0",
        ],
    ));
    assert!(watch["events"].as_u64().unwrap() > 0, "{watch}");

    // An https endpoint without a CA is refused up front (exit 2, usage).
    let o = bench(&https, &["kv", "--ops", "1", "--warmup", "0"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--cacert"),
        "{o:?}"
    );
    // Plaintext to the TLS port, and TLS trusting another CA: nothing succeeds.
    let other = make_pki(dir.path(), "other");
    for flags in [vec![], vec!["--cacert", other.ca.to_str().unwrap()]] {
        let mut args = flags.clone();
        args.extend(["--timeout", "2s", "kv", "--ops", "1", "--warmup", "0"]);
        let o = bench(ep, &args);
        assert!(!o.status.success(), "{flags:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("no operation succeeded"),
            "{flags:?}: {o:?}"
        );
    }
    // --cert without --key is a usage error.
    let o = bench(ep, &["--cacert", ca, "--cert", cert, "kv", "--ops", "1"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

/// `load` and `first-write` against etcd (support::load_and_first_write).
#[test]
fn load_writes_the_kv_key_space_into_etcd() {
    let etcd = start_etcd();
    support::load_and_first_write("etcd", &etcd.endpoint);
}
