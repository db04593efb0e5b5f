//! The seed's flows typed at the real `kvctl shell` and run as `kvctl reconfigure`, against
//! real kvd processes laid out as in Kubernetes (tests/real_kvd: every replica on one port,
//! told apart by host): a trailing port 800N addresses replica N, a local read answers where
//! a linearizable one cannot (Demo 1 step 4), and asking for the configuration already in
//! place succeeds and says so.

mod real_kvd;

use real_kvd::{outcome, poll, Cluster};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kvctl(endpoints: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    for var in [
        "KVCTL_NODE",
        "KVCTL_CONSISTENCY",
        "KVCTL_OUTPUT",
        "KVCTL_TIMEOUT",
    ] {
        c.env_remove(var);
    }
    c.env("KVCTL_ENDPOINTS", endpoints).args(args);
    c
}

/// Types `lines` at `kvctl [flags] shell`; prints the session as typed, with its output.
fn shell(endpoints: &str, flags: &[&str], lines: &str) -> (String, String) {
    let mut args = flags.to_vec();
    args.push("shell");
    let mut child = kvctl(endpoints, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let (code, out, err) = outcome(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "the shell ends with its input: {err}");
    eprintln!("$ kvctl {}", args.join(" "));
    for l in lines.lines() {
        eprintln!("> {l}");
    }
    eprint!("{out}{err}");
    (out, err)
}

fn run(endpoints: &str, args: &[&str]) -> Output {
    let o = kvctl(endpoints, args).output().unwrap();
    let (code, out, err) = outcome(&o);
    eprintln!("$ kvctl {}   # exit {code}\n{out}{err}", args.join(" "));
    o
}

#[test]
fn seed_shell_and_reconfigure_on_a_kubernetes_layout() {
    let t0 = Instant::now();
    let mut c = Cluster::new(4);
    for pid in 1..=3 {
        c.spawn(pid, 1, &[1, 2, 3]);
    }
    // The seed's fourth pod: started after NODES [1,2,3,4] and CONFIG_ID 2 were patched in.
    c.spawn(4, 2, &[1, 2, 3, 4]);
    let eps = c.endpoints();
    poll(Duration::from_secs(20), "a first write", || {
        let o = kvctl(&eps, &["--timeout", "2s", "put", "a", "1"])
            .output()
            .unwrap();
        o.status.success().then_some(())
    });

    // The seed's `reconfigure 4`, then typed again: the second finds it in place.
    let (out, err) = shell(
        &eps,
        &["--timeout", "20s"],
        "reconfigure 4\nreconfigure 4\n",
    );
    assert_eq!(
        out,
        "OK: configuration 2, members 1,2,3,4\n\
         already in place: configuration 2 with members [1, 2, 3, 4]\n",
        "{err}\n{}",
        c.logs()
    );
    assert_eq!(err, "");
    // Every form of kvctl reconfigure asking for it: exit 0, nothing proposed.
    for args in [
        &["reconfigure", "--nodes", "1,2,3,4"][..],
        &["reconfigure", "--nodes", "4,3,2,1", "--config-id", "2"],
        &["reconfigure", "--nodes", "[1, 2, 3, 4]", "--force"],
    ] {
        let (code, out, err) = outcome(&run(&eps, args));
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                "already in place: configuration 2 with members [1, 2, 3, 4]\n"
            ),
            "{args:?}: {err}"
        );
    }
    let (code, out, _) = outcome(&run(
        &eps,
        &["-o", "json", "reconfigure", "--nodes", "1,2,3,4"],
    ));
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "{\"config_id\":2,\"members\":[1,2,3,4],\"already_in_place\":true}\n"
        )
    );
    // Another configuration is still refused (exit 5), as before.
    for (args, says) in [
        (
            &["reconfigure", "--nodes", "1,2,3,4", "--config-id", "3"][..],
            "already the members",
        ),
        (
            &["reconfigure", "--nodes", "1,2,3,4", "--config-id", "1"],
            "configuration id 1 refused",
        ),
        (
            &["reconfigure", "--nodes", "1,2,3", "--config-id", "2"],
            "configuration id 2 refused",
        ),
    ] {
        let (code, out, err) = outcome(&run(&eps, args));
        assert_eq!((code, out.as_str()), (5, ""), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let members = String::from_utf8(run(&eps, &["members"]).stdout).unwrap();
    assert!(members.starts_with("config 2, leader "), "{members}");

    // Ports 8001-8004 address replicas 1-4 although all listen on one port.
    poll(Duration::from_secs(20), "replica 4 holds a", || {
        let (out, _) = shell(&eps, &[], "get a 8004 --local\n");
        (out == "1\n").then_some(())
    });
    let (out, err) = shell(
        &eps,
        &[],
        "get a 8001\nstatus 8001\nstatus 8002\nstatus 8003\nstatus 8004\nget a 8005\n",
    );
    assert!(out.starts_with("1\n"), "{out}{err}");
    let pids: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("pid:"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(pids, ["1", "2", "3", "4"], "{out}");
    assert_eq!(
        err,
        format!(
            "error: usage: port 8005 addresses replica 5, but only 4 endpoints are given (the \
             N-th is replica N): add replica 5's to --endpoints / KVCTL_ENDPOINTS ({eps})\n"
        )
    );

    // Demo 1: kill s1, a write goes on; pause s2: no majority of four.
    c.kill(1);
    let (out, err) = shell(&eps, &["--timeout", "20s"], "put a 2\n");
    assert_eq!(out, "OK\n", "{err}\n{}", c.logs());
    for port in ["8003", "8004"] {
        poll(
            Duration::from_secs(10),
            "replicas 3 and 4 apply a = 2",
            || {
                let (out, _) = shell(&eps, &[], &format!("get a {port} --local\n"));
                (out == "2\n").then_some(())
            },
        );
    }
    c.pause(2, true);
    // A linearizable read from s3 fails once nothing can confirm it (at once, or when
    // a leader's confirmation lapses).
    poll(Duration::from_secs(20), "a linearizable read fails", || {
        let (out, err) = shell(&eps, &["--timeout", "1s"], "get a 8003\n");
        (out.is_empty() && err.starts_with("error: ")).then_some(())
    });
    // Demo 1 step 4, typed: a local read from s3 answers; so does every read after
    // `consistency local`, until `consistency linearizable`.
    let (out, err) = shell(
        &eps,
        &["--timeout", "1s"],
        "get a 8003 --local\nconsistency local\nget a 8004\nget --prefix a 8003\n\
         consistency linearizable\nget a 8003\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}{err}");
    assert_eq!(lines[0], "2");
    assert!(lines[1].starts_with("reads: local"), "{out}");
    assert_eq!(lines[2], "2");
    assert_eq!(lines[3], "a\t2");
    assert!(lines[4].starts_with("reads: linearizable"), "{out}");
    // The last, linearizable read cannot be confirmed.
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    c.pause(2, false);
    eprintln!("took {:?}", t0.elapsed());
}
