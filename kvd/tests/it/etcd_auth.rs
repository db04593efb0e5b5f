//! Authentication on etcd's API (kvd/src/etcd/auth.rs). Debian's etcdctl 3.4 with `--user
//! NAME:PASSWORD` against three replicas with an auth file and against a real etcd 3.4 with
//! auth enabled etcd's way (root user, `role grant-permission`, `user grant-role`, `auth
//! enable`), the same users on both (omnikv's password is the user's token, which is also
//! etcd's password here): allowed and denied puts, gets, deletes and watches, a wrong
//! password, no user, outputs and exit codes compared. Then the etcd-client crate
//! (`ConnectOptions::with_user`) across replicas and through an auth file change, and client
//! certificates over TLS naming their user.

use crate::etcd_api::{
    command_line, etcdctl, etcdctl_command, etcdctl_with, record, spawn_etcdctl, text, wait_events,
    watch_in_background, Etcd,
};
use crate::harness::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// etcd's permission of a role: type and key prefix.
type EtcdPerm = Option<(&'static str, &'static str)>;

/// The users of both systems: name, omnikv's role (and prefix), etcd's permission for its
/// role of the same name (`root` has etcd's root role).
const USERS: [(&str, &str, EtcdPerm); 4] = [
    ("root", "admin", None),
    ("writer", "write", Some(("readwrite", ""))),
    ("reader", "read", Some(("read", ""))),
    ("app", "write prefix=app/", Some(("readwrite", "app/"))),
];

/// A user's password: its token in omnikv's auth file, its password in etcd.
fn password(name: &str) -> String {
    format!("okv_etcd_pw_of_{name}")
}

fn user_arg(name: &str) -> String {
    format!("--user={name}:{}", password(name))
}

/// An auth file line: `NAME ROLE... token=sha256:HEX` (no token: certificate users only).
fn auth_line(name: &str, role: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => {
            let hash: String = Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{name} {role} token=sha256:{hash}\n")
        }
        None => format!("{name} {role}\n"),
    }
}

fn auth_file() -> String {
    USERS
        .iter()
        .map(|(name, role, _)| auth_line(name, role, Some(&password(name))))
        .collect()
}

/// Exit code, stdout and stderr (etcdctl's JSON log lines left out, as `text` does).
fn coded(out: &Output) -> (Option<i32>, String, String) {
    let (_, stdout, stderr) = text(out);
    (out.status.code(), stdout, stderr)
}

/// `etcdctl` with `user` (none: no `--user`), killed after `within` if still running (a
/// watch): its output then is what it printed until then, exit code `None`. (Its output must
/// fit the pipes until then: these commands print a few lines.)
fn etcdctl_as(endpoint: &str, user: Option<&str>, args: &[&str], within: Duration) -> Output {
    let mut global = vec!["--command-timeout=5s"];
    global.extend(user);
    let mut child = spawn_etcdctl(etcdctl_command(endpoint, &global, args).stdin(Stdio::null()));
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            // Still running: it waits for events. Ended here, by its handle (never a pid
            // that another process may have taken since).
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Records one comparison (`etcd_api::record`); notes it in `differ` when exit codes or
/// outputs differ.
fn compare(line: &str, want: &Output, got: &Output, note: &str, differ: &mut Vec<String>) {
    record(line, &text(want), &text(got), note);
    if coded(want) != coded(got) {
        differ.push(format!(
            "{line}\n  etcd:   {:?}\n  omnikv: {:?}",
            coded(want),
            coded(got)
        ));
    }
}

/// Turns on auth in `etcd` as its documentation says, with `USERS`.
fn enable_etcd_auth(etcd: &Etcd) {
    let run = |args: &[&str]| {
        let (ok, out, err) = text(&etcdctl(&etcd.endpoint, args, None));
        assert!(ok, "etcdctl {args:?}: {out}{err}");
    };
    for (name, _, perm) in USERS {
        run(&["user", "add", &format!("{name}:{}", password(name))]);
        run(&["role", "add", name]);
        if let Some((kind, prefix)) = perm {
            run(&[
                "role",
                "grant-permission",
                "--prefix=true",
                name,
                kind,
                prefix,
            ]);
        }
        run(&["user", "grant-role", name, name]);
    }
    run(&["auth", "enable"]);
}

/// Replicas 1..=3 serving etcd's API with `users` as their auth file; returns the cluster,
/// the file and the etcd endpoints, once `root` gets a healthy answer from each.
async fn start_with_auth(users: &str, opts: Opts) -> (Cluster, PathBuf, Vec<String>) {
    let mut c = Cluster::new_stopped(
        3,
        Opts {
            etcd_api: true,
            ..opts
        },
    );
    let path = c.dir.path().join("users");
    std::fs::write(&path, users).unwrap();
    c.opts
        .extra_env
        .push(("KVD_AUTH_FILE".into(), path.display().to_string()));
    for pid in 1..=3 {
        c.spawn(pid);
    }
    let endpoints: Vec<String> = (1..=3).map(|p| c.etcd_endpoint(p)).collect();
    for e in &endpoints {
        wait_healthy_as(e, &[&user_arg("root")], Duration::from_secs(30), &c);
    }
    (c, path, endpoints)
}

/// Polls `etcdctl <global> endpoint health` until it says healthy.
fn wait_healthy_as(endpoint: &str, global: &[&str], within: Duration, c: &Cluster) {
    let deadline = Instant::now() + within;
    loop {
        let out = etcdctl_with(endpoint, global, &["endpoint", "health"], None);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not healthy in {within:?}: {:?}\n{}",
            text(&out),
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same commands, as the same users, against etcd with auth and against omnikv with the
/// auth file (etcdctl given all three replicas: it authenticates with one and calls any):
/// what is allowed and what is refused, outputs and exit codes, match etcd's.
#[tokio::test]
async fn etcdctl_users_are_allowed_and_refused_as_by_etcd() {
    let (c, _path, endpoints) = start_with_auth(&auth_file(), Opts::default()).await;
    let ours = endpoints.join(",");
    let etcd = Etcd::start(c.dir.path());
    enable_etcd_auth(&etcd);
    let wrong = "--user=reader:not-the-password".to_string();
    let nobody = format!("--user=nobody:{}", password("reader"));
    let as_ = |name: &str| Some(user_arg(name));
    let steps: Vec<(Option<String>, Vec<&str>, &str)> = vec![
        (as_("writer"), vec!["put", "app/x", "1"], ""),
        (as_("writer"), vec!["put", "other/z", "1"], ""),
        (as_("writer"), vec!["get", "app/x"], ""),
        (as_("reader"), vec!["get", "app/x"], ""),
        (as_("reader"), vec!["get", "", "--prefix"], ""),
        (
            as_("reader"),
            vec!["put", "app/x", "2"],
            "a read-only user writes",
        ),
        (
            as_("reader"),
            vec!["del", "app/x"],
            "a read-only user deletes",
        ),
        (as_("app"), vec!["put", "app/y", "1"], ""),
        (as_("app"), vec!["get", "app/", "--prefix"], ""),
        (as_("app"), vec!["del", "app/y", "--prev-kv"], ""),
        (
            as_("app"),
            vec!["put", "other/z", "2"],
            "outside the user's prefix",
        ),
        (
            as_("app"),
            vec!["get", "other/z"],
            "outside the user's prefix",
        ),
        (
            as_("app"),
            vec!["get", "", "--prefix"],
            "every key: more than the prefix",
        ),
        (
            as_("app"),
            vec!["del", "other/", "--prefix"],
            "outside the user's prefix",
        ),
        (Some(wrong), vec!["get", "app/x"], "a wrong password"),
        (
            Some(nobody),
            vec!["get", "app/x"],
            "a user that does not exist",
        ),
        (None, vec!["get", "app/x"], "no user"),
        (None, vec!["put", "app/x", "3"], "no user"),
        (
            as_("root"),
            vec!["get", "", "--prefix"],
            "nothing refused was written",
        ),
    ];
    let quick = Duration::from_secs(20);
    let mut differ = Vec::new();
    for (user, args, note) in &steps {
        let want = etcdctl_as(&etcd.endpoint, user.as_deref(), args, quick);
        let got = etcdctl_as(&ours, user.as_deref(), args, quick);
        let line = command_line(
            &user
                .iter()
                .map(String::as_str)
                .chain(args.iter().copied())
                .collect::<Vec<_>>(),
            None,
        );
        compare(&line, &want, &got, note, &mut differ);
    }

    // A watch outside the user's prefix: etcd cancels it at once (etcdctl exits 5, saying
    // why); inside the prefix it runs until killed.
    let denied = ["watch", "other/", "--prefix"];
    let app = user_arg("app");
    let want = etcdctl_as(&etcd.endpoint, Some(&app), &denied, Duration::from_secs(10));
    let got = etcdctl_as(&ours, Some(&app), &denied, Duration::from_secs(10));
    let line = command_line(&[app.as_str(), denied[0], denied[1], denied[2]], None);
    let note = "a watch outside the user's prefix";
    compare(&line, &want, &got, note, &mut differ);
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
    assert_eq!(
        coded(&got),
        (
            Some(5),
            String::new(),
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: \
             permission denied)\nError: watch is canceled by the server\n"
                .into()
        )
    );
    // The put first, the watch from revision 1 after it: the history replays it, so no wait
    // for the watch to be established can race the put.
    let (ok, _, err) = text(&etcdctl_with(
        &endpoints[0],
        &[&app],
        &["put", "app/w", "v"],
        None,
    ));
    assert!(ok, "{err}");
    let out = c.dir.path().join("app-watch");
    let mut watcher = watch_in_background(
        &endpoints[2],
        &[app.as_str(), "--prefix", "app/w", "--rev=1"],
        &out,
    );
    assert_eq!(
        wait_events(&out, 1, Duration::from_secs(20)),
        "PUT\napp/w\nv\n"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();

    // What differs by nature: users and roles are the auth file's (omnikv answers that), a
    // read-only user may not grant leases in omnikv (roles, not etcd's key permissions, decide).
    for (user, args, note) in [
        (
            "root",
            ["user", "add", "new:pw"],
            "differs by nature: omnikv's users and roles are its --auth-file's; its Auth service \
             answers FAILED_PRECONDITION saying so",
        ),
        (
            "reader",
            ["lease", "grant", "100"],
            "differs by nature: etcd lets any authenticated user grant a lease; omnikv's read \
             role may not (leases are written by the write role)",
        ),
    ] {
        let u = user_arg(user);
        let want = text(&etcdctl_as(&etcd.endpoint, Some(&u), &args, quick));
        let got = text(&etcdctl_as(&ours, Some(&u), &args, quick));
        record(
            &command_line(&[u.as_str(), args[0], args[1], args[2]], None),
            &want,
            &got,
            note,
        );
        assert!(want.0 && !got.0, "{want:?} {got:?}");
    }
    let (ok, _, err) = text(&etcdctl_as(
        &ours,
        Some(&user_arg("root")),
        &["user", "add", "new:pw"],
        quick,
    ));
    assert!(!ok && err.contains("--auth-file"), "{err}");

    // etcdctl's health check is a get of `health`: a user refused it is still healthy, as
    // with etcd; without a user it is not.
    let (ok, _, err) = text(&etcdctl_as(
        &ours,
        Some(&app),
        &["endpoint", "health"],
        quick,
    ));
    assert!(ok, "{err}");
    let (ok, _, err) = text(&etcdctl_as(
        &endpoints[0],
        None,
        &["endpoint", "health"],
        quick,
    ));
    assert!(!ok && err.contains("user name is empty"), "{err}");
}

/// The etcd-client crate with `with_user`: authenticated through one replica, its token
/// works on the others; refusals are etcd's statuses; a user removed from the auth file is
/// refused from the next call on.
#[tokio::test]
async fn etcd_client_with_user_authenticates_against_omnikv() {
    use etcd_client::{Client, ConnectOptions, Error, WatchOptions};
    let (c, path, endpoints) = start_with_auth(&auth_file(), Opts::default()).await;
    let code = |e: Error| match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    };
    let connect = |endpoint: String, name: &str, pw: String| {
        let options = ConnectOptions::new()
            .with_user(name, pw)
            .with_timeout(Duration::from_secs(5));
        async move { Client::connect([endpoint], Some(options)).await }
    };
    let mut app = connect(endpoints[0].clone(), "app", password("app"))
        .await
        .unwrap();
    app.put("app/k", "v", None).await.unwrap();
    let denied = code(app.put("other/k", "v", None).await.unwrap_err());
    assert_eq!(
        denied,
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    let mut stream = app
        .watch("other/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.created() && first.canceled(), "{first:?}");
    assert!(first.cancel_reason().contains("permission denied"));

    // The token is the password (the user's token of the auth file): valid on every replica
    // the moment the file lists it, and the client's calls to replica 3 pass with it.
    let answer = app
        .auth_client()
        .authenticate("app".into(), password("app"))
        .await
        .unwrap();
    assert_eq!(answer.token(), password("app"));
    let mut spread = etcd_client::Client::connect(
        endpoints.clone(),
        Some(
            ConnectOptions::new()
                .with_user("app", password("app"))
                .with_timeout(Duration::from_secs(5)),
        ),
    )
    .await
    .unwrap();
    for i in 0..6 {
        spread.put(format!("app/s{i}"), "v", None).await.unwrap();
    }
    let mut plain = Client::connect([endpoints[2].clone()], None).await.unwrap();
    let no_user = code(plain.get("app/k", None).await.unwrap_err());
    assert_eq!(
        no_user,
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );

    // A wrong password is refused at connect, with etcd's status.
    let e = connect(endpoints[1].clone(), "app", "wrong".into())
        .await
        .err()
        .expect("a wrong password connected");
    assert_eq!(
        code(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );

    // `app` leaves the file: its next call is refused (the client's token refresh fails too).
    std::fs::write(&path, auth_line("root", "admin", Some(&password("root")))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match app.get("app/k", None).await {
            Ok(_) => assert!(Instant::now() < deadline, "app still served after removal"),
            Err(e) => {
                let (_, message) = code(e);
                assert!(
                    message.contains("invalid auth token")
                        || message.contains("authentication failed"),
                    "{message}"
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);
}

/// Over TLS with --client-ca-file, a client certificate whose common name is a user of the
/// auth file is that user on the etcd port; one naming no user is refused, and a token wins
/// over the certificate.
#[tokio::test]
async fn etcd_api_takes_a_client_certificates_user() {
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::Ca::new("etcd auth CA");
    let pki = crate::pki::lay_out(&ca, pki_dir.path(), 1..=3);
    let users = auth_line("alice", "read", None)
        + &auth_line("bob", "write prefix=b/", Some(&password("bob")));
    let opts = Opts {
        tls: Some(pki.clone()),
        ..Opts::default()
    };
    let mut c = Cluster::new_stopped(
        1,
        Opts {
            etcd_api: true,
            ..opts
        },
    );
    let path = c.dir.path().join("users");
    std::fs::write(&path, &users).unwrap();
    c.opts
        .extra_env
        .push(("KVD_AUTH_FILE".into(), path.display().to_string()));
    c.spawn(1);
    let https = format!("https://{}", c.etcd_endpoint(1));
    let cacert = format!("--cacert={}", pki.ca().display());
    let cert_args = |name: &str, dir: &Path| {
        let (crt, key) = ca
            .client(name, crate::pki::LeafOpts::default())
            .write(dir, &format!("client-{name}"));
        [
            format!("--cert={}", crt.display()),
            format!("--key={}", key.display()),
        ]
    };
    let [alice_crt, alice_key] = cert_args("alice", pki_dir.path());
    let [bob_crt, bob_key] = cert_args("bob", pki_dir.path());
    let [mallory_crt, mallory_key] = cert_args("mallory", pki_dir.path());
    let run = |global: &[&str], args: &[&str]| {
        let mut all = vec![cacert.as_str()];
        all.extend_from_slice(global);
        text(&etcdctl_with(&https, &all, args, None))
    };
    let bob = [bob_crt.as_str(), bob_key.as_str()];
    let alice = [alice_crt.as_str(), alice_key.as_str()];
    let mallory = [mallory_crt.as_str(), mallory_key.as_str()];
    wait_healthy_as(
        &https,
        &[&cacert, bob[0], bob[1]],
        Duration::from_secs(30),
        &c,
    );
    let ok = |out: &str| (true, out.to_string(), String::new());
    let denied = (
        false,
        String::new(),
        "Error: etcdserver: permission denied\n".into(),
    );
    assert_eq!(run(&bob, &["put", "b/1", "v"]), ok("OK\n"));
    assert_eq!(run(&alice, &["get", "b/1"]), ok("b/1\nv\n"));
    assert_eq!(run(&alice, &["put", "b/2", "v"]), denied);
    assert_eq!(run(&bob, &["put", "c/1", "v"]), denied);
    assert_eq!(run(&mallory, &["get", "b/1"]), denied);
    assert_eq!(
        run(&[], &["get", "b/1"]),
        (
            false,
            String::new(),
            "Error: etcdserver: user name is empty\n".into()
        )
    );
    // alice's certificate with bob's name and token: bob, who may write under b/.
    let bob_user = user_arg("bob");
    assert_eq!(
        run(&[alice[0], alice[1], &bob_user], &["put", "b/3", "v"]),
        ok("OK\n")
    );
    assert_eq!(
        run(&alice, &["get", "b/", "--prefix", "--keys-only"]),
        ok("b/1\n\nb/3\n\n")
    );
}
