//! The seed's interactive prompt: `put a 1`, `get a 8001`. Works piped too
//! (`printf 'put a 1\nget a\n' | kvctl shell`).
//!
//! Line syntax (words split on ASCII whitespace, so shell keys and values cannot contain
//! whitespace runs):
//! - `put KEY VALUE [PORT]`: the value is the rest of the line after KEY, minus a trailing
//!   PORT, its words joined by single spaces.
//! - `put KEY VALUE --if-absent [PORT]`, `--if-value OLD`, `--if-mod-revision N`: a
//!   conditional put (so a value cannot contain these words).
//! - `get KEY [PORT]`, `delete KEY [PORT]` (also `del`), `status [PORT]`, `log [PORT]`,
//!   `members [PORT]`.
//! - `get --prefix P [PORT]` lists the keys starting with P; `delete --prefix P [PORT]`
//!   deletes them.
//! - `get ... --local` (the word anywhere after `get`) reads the asked replica's own state,
//!   possibly stale, which answers without a majority (the seed's `get a 8003` while s2 is
//!   paused); `consistency local|linearizable` sets how every later read is made
//!   (`consistency` alone prints it). Both start from the `--consistency` flag.
//! - `reconfigure N [PORT]` adds node N to the members (the seed's `reconfigure 4`);
//!   `reconfigure 1,2,4` sets them. Asking for what is already in place succeeds and says so.
//! - `move-leader N [PORT]` makes member N the leader.
//! - `txn [PORT]` reads the lines that follow, up to a line `end`, as one transaction (the
//!   API's JSON or etcdctl's text: compares, a blank line, success ops, a blank line, failure
//!   ops), and runs it.
//! - `watch KEY | --prefix P [--rev N] [--count N] [PORT]` prints changes, after `--count`
//!   of them returns to the prompt (without it, until the shell is interrupted).
//! - `put KEY VALUE --lease ID` attaches the key to a lease (with or without a condition);
//!   `lease grant TTL`, `lease keepalive ID [--once]`, `lease revoke ID`, `lease list`,
//!   `lease timetolive ID [--keys]` (each with an optional PORT) are `kvctl lease`'s.
//! - `help`, `exit` / `quit`. Blank lines are ignored; end of input leaves the shell (exit 0).
//!
//! A trailing all-digit word in 1..=65535 is a PORT only when the command already has its
//! required arguments without it (`get 8001` reads key `8001`; `put a 8001` writes value
//! `8001`; `put a 1 8001` writes `1` via port 8001; note `put a x 2` goes to port 2). The
//! command is then sent only to one endpoint, [`endpoint_for_port`]'s: the one with that
//! port; else, for port 800N (8001-8099), replica N wherever it listens (the seed's port to
//! server mapping); else the first endpoint's host at that port.

use crate::cli::{DEFAULT_LOG_LIMIT, DEFAULT_WATCH_PROGRESS_MS};
use crate::commands::lease::LeaseRequest;
use crate::commands::put::Condition;
use crate::commands::range::List;
use crate::commands::reconfigure::{Change, Members};
use crate::commands::{self, Request};
use crate::context::Context;
use crate::exit::Error;
use crate::output::{self, ListMode};
use omnikv_common::client::{parse_lease_id, KeySet, WatchRequest};
use omnikv_common::lease::MAX_TTL_SECS;
use omnikv_common::membership::parse_nodes;
use omnikv_common::{Client, Consistency};
use std::collections::HashMap;
use std::io::{BufRead, Write};

/// The prompt, printed only when stdin is a terminal.
pub const PROMPT: &str = "Type a command here <put/delete/get> <args>: ";

/// The `help` text.
pub const HELP: &str = "\
commands:
  put KEY VALUE [PORT]   write VALUE under KEY (VALUE: the rest of the line, words joined by single spaces)
  put KEY VALUE --if-absent [PORT]         only if KEY does not exist
  put KEY VALUE --if-value OLD [PORT]      only if KEY holds OLD
  put KEY VALUE --if-mod-revision N [PORT] only if KEY's mod_revision is N
  get KEY [PORT]         print the value of KEY
  get --prefix P [PORT]  print every key starting with P and its value
  get ... --local        read from the asked replica's own state (possibly stale; answers
                         without a majority), e.g. get a 8003 --local
  consistency [local|linearizable]  how reads are made from now on (alone: print it)
  delete KEY [PORT]      delete KEY (alias: del)
  delete --prefix P [PORT]  delete every key starting with P
  status [PORT]          status of a replica
  log [PORT]             the replica's recent decided log
  members [PORT]         the current configuration
  reconfigure N [PORT]   add node N to the members (config id: current + 1)
  reconfigure 1,2,4      change the members to exactly these
                         (either: OK, already in place, when these are the members)
  move-leader N [PORT]   make member N the leader
  txn [PORT]             a transaction: the lines that follow, up to a line `end`
                         (etcdctl's text: compares, blank line, success ops, blank line, failure ops)
  watch KEY | --prefix P [--rev N] [--count N] [PORT]
                         print changes (after N of them, back to the prompt)
  put KEY VALUE --lease ID [PORT]          attach KEY to lease ID (hex)
  lease grant TTL [PORT]                   grant a lease of TTL seconds
  lease keepalive ID [--once] [PORT]       renew every TTL/3 until it is gone (--once: once)
  lease revoke ID [PORT]                   revoke it, deleting its keys
  lease list [PORT]                        list the leases
  lease timetolive ID [--keys] [PORT]      its TTL and time left (and keys)
  help                   this text
  exit | quit            leave (so does end of input)
A trailing PORT (1-65535) sends the command only to the endpoint with that port; port 800N
(8001-8099) addresses replica N wherever it listens: the endpoint with port 800N, else, when
the replicas share one port (Kubernetes: 8000), the N-th endpoint.
";

/// One parsed shell line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    /// A request, and the port it is addressed to (`None`: the usual endpoints); `local`:
    /// read at [`Consistency::Local`] whatever the shell's consistency (`get ... --local`).
    Request {
        req: Request,
        port: Option<u16>,
        local: bool,
    },
    /// `txn`: the transaction is on the lines that follow, up to `end`.
    Txn {
        port: Option<u16>,
    },
    Watch {
        req: WatchRequest,
        count: Option<u64>,
        port: Option<u16>,
    },
    /// `consistency [local|linearizable]`: set how later reads are made (`None`: print it).
    Consistency(Option<Consistency>),
    Help,
    Exit,
}

/// The line that ends a shell transaction.
const TXN_END: &[u8] = b"end";

/// `watch KEY | --prefix P [--rev N] [--count N] [PORT]`.
fn watch_line(args: &[&[u8]]) -> Result<Option<ShellCommand>, String> {
    const USAGE: &str = "usage: watch KEY | --prefix P [--rev N] [--count N] [PORT]";
    let number = |w: Option<&&[u8]>| -> Result<u64, String> {
        w.and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| USAGE.to_string())
    };
    let (mut keys, mut rev, mut count, mut port) = (None, None, None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            b"--prefix" if keys.is_none() => {
                let p = args.get(i + 1).ok_or(USAGE)?;
                keys = Some(KeySet::Prefix(p.to_vec()));
                i += 1;
            }
            b"--rev" => {
                rev = Some(number(args.get(i + 1))?).filter(|&r| r > 0);
                if rev.is_none() {
                    return Err("watch: --rev must be at least 1".into());
                }
                i += 1;
            }
            b"--count" => {
                count = Some(number(args.get(i + 1))?);
                i += 1;
            }
            w if keys.is_none() && !w.starts_with(b"--") => keys = Some(KeySet::Key(w.to_vec())),
            w if keys.is_some() && i + 1 == args.len() && as_port(w).is_some() => port = as_port(w),
            _ => return Err(USAGE.into()),
        }
        i += 1;
    }
    let keys = keys.ok_or(USAGE)?;
    let req = WatchRequest {
        keys,
        start_revision: rev,
        prev_value: false,
        progress_ms: DEFAULT_WATCH_PROGRESS_MS,
        consistency: omnikv_common::Consistency::Linearizable,
    };
    Ok(Some(ShellCommand::Watch { req, count, port }))
}

fn as_port(word: &[u8]) -> Option<u16> {
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word)
        .ok()?
        .parse::<u16>()
        .ok()
        .filter(|&p| p >= 1)
}

/// Splits a trailing PORT off `args` when `args` has more than `required` words.
fn split_port<'a>(args: &'a [&'a [u8]], required: usize) -> (&'a [&'a [u8]], Option<u16>) {
    if args.len() > required {
        if let Some(port) = args.last().and_then(|w| as_port(w)) {
            return (&args[..args.len() - 1], Some(port));
        }
    }
    (args, None)
}

/// Parses one line. `Ok(None)` for a blank line; `Err` carries a usage message.
pub fn parse_line(line: &[u8]) -> Result<Option<ShellCommand>, String> {
    let words: Vec<&[u8]> = line
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Ok(None);
    };
    // `get ... --local`: the flag may stand anywhere after `get`.
    let local = cmd == b"get" && args.contains(&&b"--local"[..]);
    let kept: Vec<&[u8]>;
    let args = if local {
        kept = args.iter().copied().filter(|w| *w != b"--local").collect();
        &kept[..]
    } else {
        args
    };
    let request = |req, port| Ok(Some(ShellCommand::Request { req, port, local }));
    match cmd {
        b"put" => put_line(args),
        b"watch" => watch_line(args),
        b"lease" => lease_line(args),
        b"txn" => match args {
            [] => Ok(Some(ShellCommand::Txn { port: None })),
            [p] if as_port(p).is_some() => Ok(Some(ShellCommand::Txn { port: as_port(p) })),
            _ => Err("usage: txn [PORT], then the transaction's lines, then a line `end`".into()),
        },
        b"get" | b"delete" | b"del" if args.first() == Some(&&b"--prefix"[..]) => {
            let (args, port) = split_port(args, 2);
            let [_, prefix] = args else {
                let name = String::from_utf8_lossy(cmd);
                return Err(format!("usage: {name} --prefix P [PORT]"));
            };
            let keys = KeySet::Prefix(prefix.to_vec());
            let req = if cmd == b"get" {
                Request::Range {
                    keys,
                    list: List {
                        limit: None,
                        mode: ListMode::Values,
                        page_size: None,
                    },
                }
            } else {
                Request::DeleteRange { keys }
            };
            request(req, port)
        }
        b"get" | b"delete" | b"del" => {
            let (args, port) = split_port(args, 1);
            let [key] = args else {
                let name = String::from_utf8_lossy(cmd);
                return Err(format!("usage: {name} KEY [PORT]"));
            };
            let key = key.to_vec();
            let req = if cmd == b"get" {
                Request::Get { key }
            } else {
                Request::Delete { key }
            };
            request(req, port)
        }
        b"status" | b"log" | b"members" => {
            let (args, port) = split_port(args, 0);
            if !args.is_empty() {
                let name = String::from_utf8_lossy(cmd);
                return Err(format!("usage: {name} [PORT]"));
            }
            let req = match cmd {
                b"status" => Request::Status,
                b"members" => Request::Members,
                _ => Request::Log {
                    limit: DEFAULT_LOG_LIMIT,
                },
            };
            request(req, port)
        }
        b"reconfigure" => {
            let (args, port) = split_port(args, 1);
            let usage = || "usage: reconfigure NODE [PORT] (add NODE) or reconfigure 1,2,3,4".to_string();
            let [arg] = args else {
                return Err(usage());
            };
            let text = std::str::from_utf8(arg).map_err(|_| usage())?;
            let members = if text.contains(',') {
                Members::Exactly(parse_nodes(text).map_err(|e| e.to_string())?.0)
            } else {
                match text.parse::<u64>() {
                    Ok(pid) if pid >= 1 => Members::Add(pid),
                    _ => return Err(usage()),
                }
            };
            let change = Change {
                members,
                config_id: None,
                force: false,
                peers: Default::default(),
            };
            request(Request::Reconfigure(change), port)
        }
        b"move-leader" => {
            let (args, port) = split_port(args, 1);
            let usage = || "usage: move-leader NODE [PORT]".to_string();
            let [arg] = args else {
                return Err(usage());
            };
            match std::str::from_utf8(arg).ok().and_then(|t| t.parse::<u64>().ok()) {
                Some(to) if to >= 1 => request(Request::MoveLeader { to }, port),
                _ => Err(usage()),
            }
        }
        b"consistency" => match args {
            [] => Ok(Some(ShellCommand::Consistency(None))),
            [mode] => std::str::from_utf8(mode)
                .ok()
                .and_then(|m| m.parse().ok())
                .map(|c| Some(ShellCommand::Consistency(Some(c))))
                .ok_or_else(|| "usage: consistency [local|linearizable]".to_string()),
            _ => Err("usage: consistency [local|linearizable]".into()),
        },
        b"help" | b"?" => Ok(Some(ShellCommand::Help)),
        b"exit" | b"quit" => Ok(Some(ShellCommand::Exit)),
        other => Err(format!(
            "unknown command {:?} (commands: put, get, delete, status, log, members, reconfigure, move-leader, txn, watch, lease, consistency, help, exit)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// `lease grant TTL | keepalive ID [--once] | revoke ID | list | timetolive ID [--keys]
/// [PORT]`.
fn lease_line(args: &[&[u8]]) -> Result<Option<ShellCommand>, String> {
    const USAGE: &str = "usage: lease grant TTL | keepalive ID [--once] | revoke ID | list | timetolive ID [--keys] [PORT]";
    let Some((&verb, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    let (flag, required): (Option<&[u8]>, usize) = match verb {
        b"keepalive" => (Some(b"--once"), 1),
        b"timetolive" => (Some(b"--keys"), 1),
        b"grant" | b"revoke" => (None, 1),
        b"list" => (None, 0),
        _ => return Err(USAGE.into()),
    };
    let mut words = rest.to_vec();
    let flagged = match flag.and_then(|f| words.iter().position(|w| *w == f)) {
        Some(i) => {
            words.remove(i);
            true
        }
        None => false,
    };
    let (words, port) = split_port(&words, required);
    if words.len() != required {
        return Err(USAGE.into());
    }
    let arg = || std::str::from_utf8(words[0]).map_err(|_| USAGE.to_string());
    let id = || parse_lease_id(arg()?);
    let req = match verb {
        b"grant" => LeaseRequest::Grant {
            ttl: arg()?
                .parse()
                .ok()
                .filter(|&t| (1..=MAX_TTL_SECS).contains(&t))
                .ok_or("lease grant: TTL is a number of seconds from 1")?,
        },
        b"keepalive" => LeaseRequest::KeepAlive {
            id: id()?,
            once: flagged,
        },
        b"revoke" => LeaseRequest::Revoke { id: id()? },
        b"timetolive" => LeaseRequest::TimeToLive {
            id: id()?,
            keys: flagged,
        },
        _ => LeaseRequest::List,
    };
    Ok(Some(ShellCommand::Request {
        req: Request::Lease(req),
        port,
        local: false,
    }))
}

/// The words of a condition flag of `put`.
const CONDITIONS: [&[u8]; 3] = [b"--if-absent", b"--if-value", b"--if-mod-revision"];

/// `put KEY VALUE [CONDITION] [--lease ID] [PORT]`: `--lease ID` may stand anywhere after
/// VALUE's first word.
fn put_line(args: &[&[u8]]) -> Result<Option<ShellCommand>, String> {
    let usage = "usage: put KEY VALUE [--if-absent | --if-value OLD | --if-mod-revision N] [--lease ID] [PORT]";
    let mut args = args.to_vec();
    let lease = match args.iter().skip(2).position(|w| *w == b"--lease") {
        Some(i) => {
            let id = args.get(i + 3).ok_or(usage)?;
            let id = parse_lease_id(std::str::from_utf8(id).map_err(|_| usage)?)?;
            args.drain(i + 2..i + 4);
            Some(id)
        }
        None => None,
    };
    let args = args.as_slice();
    let flag_at = args
        .iter()
        .skip(1)
        .position(|w| CONDITIONS.contains(w))
        .map(|p| p + 1);
    let (words, condition, port) = match flag_at {
        None => {
            let (args, port) = split_port(args, 2);
            (args, None, port)
        }
        Some(i) => {
            let (flag, rest) = (args[i], &args[i + 1..]);
            let (condition, after) = match (flag, rest) {
                (b"--if-absent", after) => (Condition::Absent, after),
                (b"--if-value", [old, after @ ..]) => (Condition::Value(old.to_vec()), after),
                (b"--if-mod-revision", [n, after @ ..]) => {
                    let n = std::str::from_utf8(n)
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .ok_or("--if-mod-revision takes a number")?;
                    (Condition::ModRevision(n), after)
                }
                _ => return Err(usage.into()),
            };
            let port = match after {
                [] => None,
                [p] => Some(as_port(p).ok_or(usage)?),
                _ => return Err(usage.into()),
            };
            (&args[..i], Some(condition), port)
        }
    };
    if words.len() < 2 {
        return Err(usage.into());
    }
    let key = words[0].to_vec();
    let value = words[1..].join(&b' ');
    let req = match condition {
        None => Request::Put { key, value, lease },
        Some(condition) => Request::PutIf {
            key,
            value,
            lease,
            condition,
        },
    };
    Ok(Some(ShellCommand::Request {
        req,
        port,
        local: false,
    }))
}

/// Splits an endpoint into (scheme with `://` or empty, host, port if written).
fn split_endpoint(endpoint: &str) -> (&str, &str, Option<u16>) {
    let (scheme, rest) = match endpoint.find("://") {
        Some(i) => endpoint.split_at(i + 3),
        None => ("", endpoint),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (scheme, host, port.parse().ok()),
        _ => (scheme, authority, None),
    }
}

/// The client ports of the seed's port-to-server mapping: port 8000 + N is replica N's.
const REPLICA_PORTS: std::ops::RangeInclusive<u16> = 8001..=8099;

/// The endpoint a PORT addresses, in this order:
/// 1. the first of `endpoints` with exactly that port;
/// 2. for a port 800N of [`REPLICA_PORTS`], replica N wherever it listens: when no endpoint
///    uses such a port, the replicas are told apart by host (Kubernetes: every replica on
///    8000), and the N-th endpoint is replica N (an error when there are fewer); when they are
///    told apart by port and all on one host (the local cluster), that host at port 800N;
///    otherwise (compose: `sN:800N`) an error, since no endpoint is replica N;
/// 3. any other port: the first endpoint's host (and scheme) at that port.
///
/// The error says which endpoints there are; so does the one for an empty list.
pub fn endpoint_for_port(endpoints: &[String], port: u16) -> Result<String, String> {
    let parts: Vec<(&str, &str, Option<u16>)> =
        endpoints.iter().map(|e| split_endpoint(e.trim())).collect();
    let Some(&(scheme, host, _)) = parts.first() else {
        return Err("no endpoints given (--endpoints)".into());
    };
    if let Some(i) = parts.iter().position(|p| p.2 == Some(port)) {
        return Ok(endpoints[i].clone());
    }
    let at_port = format!("{scheme}{host}:{port}");
    if !REPLICA_PORTS.contains(&port) {
        return Ok(at_port);
    }
    let n = usize::from(port - 8000);
    let by_port = parts
        .iter()
        .any(|p| p.2.is_some_and(|q| REPLICA_PORTS.contains(&q)));
    if !by_port {
        return endpoints.get(n - 1).cloned().ok_or_else(|| {
            format!(
                "port {port} addresses replica {n}, but only {} endpoints are given (the N-th \
                 is replica N): add replica {n}'s to --endpoints / KVCTL_ENDPOINTS ({})",
                endpoints.len(),
                endpoints.join(",")
            )
        });
    }
    if parts.iter().all(|p| p.1 == host) {
        return Ok(at_port);
    }
    Err(format!(
        "port {port} addresses replica {n}, but no endpoint has port {port}: add replica \
         {n}'s to --endpoints / KVCTL_ENDPOINTS ({})",
        endpoints.join(",")
    ))
}

/// Reads commands from `input` until end of input or `exit`, printing results to `out` and
/// errors to `err`; a failed command does not end the shell. `prompt`: print [`PROMPT`]
/// before each line. Fails only on bad global flags or unreadable input.
pub async fn run(
    ctx: &Context,
    mut input: impl BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
    prompt: bool,
) -> Result<(), Error> {
    let default = ctx.client()?;
    // The shell's own settings: `consistency` changes them for the lines after it.
    let mut ctx = ctx.clone();
    let mut by_endpoint: HashMap<String, Client> = HashMap::new();
    let mut line = Vec::new();
    loop {
        if prompt {
            write!(out, "{PROMPT}").map_err(Error::stdout)?;
            out.flush().map_err(Error::stdout)?;
        }
        if read_line(&mut input, &mut line)? == 0 {
            if prompt {
                writeln!(out).map_err(Error::stdout)?;
            }
            return Ok(());
        }
        let result = match parse_line(&line) {
            Ok(None) => continue,
            Ok(Some(ShellCommand::Exit)) => return Ok(()),
            Ok(Some(ShellCommand::Help)) => out.write_all(HELP.as_bytes()).map_err(Error::stdout),
            Ok(Some(ShellCommand::Consistency(set))) => {
                if let Some(c) = set {
                    ctx.consistency = c;
                }
                writeln!(out, "{}", consistency_line(ctx.consistency)).map_err(Error::stdout)
            }
            Ok(Some(ShellCommand::Request { req, port, local })) => {
                match client_for(&ctx, &default, &mut by_endpoint, port) {
                    Ok(client) if local => {
                        let local_ctx = Context {
                            consistency: Consistency::Local,
                            ..ctx.clone()
                        };
                        commands::execute(&local_ctx, client, req, out).await
                    }
                    Ok(client) => commands::execute(&ctx, client, req, out).await,
                    Err(e) => Err(e),
                }
            }
            Ok(Some(ShellCommand::Txn { port })) => match read_txn(&mut input) {
                Ok(txn) => match client_for(&ctx, &default, &mut by_endpoint, port) {
                    Ok(client) => commands::execute(&ctx, client, Request::Txn(txn), out).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Ok(Some(ShellCommand::Watch { req, count, port })) => {
                let req = WatchRequest {
                    consistency: ctx.consistency,
                    ..req
                };
                match client_for(&ctx, &default, &mut by_endpoint, port) {
                    Ok(client) => {
                        commands::watch::run(client, req, count, ctx.output, out, err).await
                    }
                    Err(e) => Err(e),
                }
            }
            // Usage messages may say `usage: ...` themselves; the error prints it once.
            Err(msg) => Err(Error::Usage(match msg.strip_prefix("usage: ") {
                Some(rest) => rest.to_string(),
                None => msg,
            })),
        };
        out.flush().map_err(Error::stdout)?;
        if let Err(e) = result {
            output::write_error(err, ctx.output, &e);
        }
    }
}

/// What `consistency` prints: how reads are made now.
fn consistency_line(c: Consistency) -> &'static str {
    match c {
        Consistency::Linearizable => {
            "reads: linearizable (each sees every write acknowledged before it; needs a majority)"
        }
        Consistency::Local => {
            "reads: local (the asked replica's own state, possibly stale; answers without a majority)"
        }
    }
}

/// Reads the next line of input into `line` (cleared first); 0 at the end of input.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> Result<usize, Error> {
    line.clear();
    input.read_until(b'\n', line).map_err(|source| Error::Io {
        context: "cannot read stdin",
        source,
    })
}

/// The lines of a shell transaction, up to a line `end` (or the end of input), parsed as
/// `kvctl txn` parses its input.
fn read_txn(input: &mut impl BufRead) -> Result<omnikv_common::kv::TxnRequest, Error> {
    let mut text = Vec::new();
    let mut line = Vec::new();
    while read_line(input, &mut line)? > 0 && line.trim_ascii() != TXN_END {
        text.extend_from_slice(&line);
    }
    commands::txn::read(text.as_slice(), "txn")
}

fn client_for<'a>(
    ctx: &Context,
    default: &'a Client,
    cache: &'a mut HashMap<String, Client>,
    port: Option<u16>,
) -> Result<&'a Client, Error> {
    let Some(port) = port else {
        return Ok(default);
    };
    let endpoint = endpoint_for_port(&ctx.endpoints, port).map_err(Error::Usage)?;
    if !cache.contains_key(&endpoint) {
        let client = ctx.client_for(std::slice::from_ref(&endpoint))?;
        cache.insert(endpoint.clone(), client);
    }
    Ok(&cache[&endpoint])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> (Request, Option<u16>) {
        match parse_line(line.as_bytes()) {
            Ok(Some(ShellCommand::Request {
                req,
                port,
                local: false,
            })) => (req, port),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: v.into(),
            lease: None,
        }
    }

    fn get(k: &str) -> Request {
        Request::Get { key: k.into() }
    }

    #[test]
    fn seed_examples() {
        assert_eq!(req("put a 1"), (put("a", "1"), None));
        assert_eq!(req("get a 8001"), (get("a"), Some(8001)));
        assert_eq!(req("put a 2 8002\n"), (put("a", "2"), Some(8002)));
        assert_eq!(req("get a"), (get("a"), None));
    }

    #[test]
    fn trailing_port_only_after_required_args() {
        assert_eq!(req("get 8001"), (get("8001"), None));
        assert_eq!(req("put a 8001"), (put("a", "8001"), None));
        assert_eq!(req("put 8001 8002"), (put("8001", "8002"), None));
        assert_eq!(req("put a x 2"), (put("a", "x"), Some(2)));
        assert_eq!(req("put a 1 65535"), (put("a", "1"), Some(65535)));
        // Not plausible ports: part of the value.
        assert_eq!(req("put a 1 65536"), (put("a", "1 65536"), None));
        assert_eq!(req("put a 1 0"), (put("a", "1 0"), None));
        assert_eq!(req("put a 1 80x"), (put("a", "1 80x"), None));
        assert!(parse_line(b"get a 0").is_err());
        assert!(parse_line(b"get a b").is_err());
        assert!(parse_line(b"get a b 8001").is_err());
    }

    #[test]
    fn values_are_words_joined_by_single_spaces() {
        assert_eq!(
            req("  put  k  hello   big\tworld  "),
            (put("k", "hello big world"), None)
        );
        assert_eq!(
            req("put k hello world 8003\r\n"),
            (put("k", "hello world"), Some(8003))
        );
    }

    #[test]
    fn move_leader_takes_a_member_and_a_port() {
        assert_eq!(req("move-leader 2"), (Request::MoveLeader { to: 2 }, None));
        assert_eq!(
            req("move-leader 3 8001"),
            (Request::MoveLeader { to: 3 }, Some(8001))
        );
        for bad in [
            "move-leader",
            "move-leader 0",
            "move-leader x",
            "move-leader 1 2 3",
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_commands() {
        assert_eq!(req("del a"), (Request::Delete { key: "a".into() }, None));
        assert_eq!(
            req("delete a 8003"),
            (Request::Delete { key: "a".into() }, Some(8003))
        );
        assert_eq!(req("status"), (Request::Status, None));
        assert_eq!(req("status 8002"), (Request::Status, Some(8002)));
        assert_eq!(
            req("log 8001"),
            (
                Request::Log {
                    limit: DEFAULT_LOG_LIMIT
                },
                Some(8001)
            )
        );
        assert_eq!(parse_line(b"help").unwrap(), Some(ShellCommand::Help));
        assert_eq!(parse_line(b"exit\n").unwrap(), Some(ShellCommand::Exit));
        assert_eq!(parse_line(b"quit").unwrap(), Some(ShellCommand::Exit));
        assert_eq!(parse_line(b"   \n").unwrap(), None);
        assert_eq!(parse_line(b"").unwrap(), None);
        assert!(parse_line(b"status x").is_err());
        assert!(parse_line(b"put a").is_err());
        assert!(parse_line(b"get").is_err());
        assert!(parse_line(b"frob a")
            .unwrap_err()
            .contains("unknown command"));
    }

    #[test]
    fn ranges_and_conditional_puts() {
        let list = |p: &str| Request::Range {
            keys: KeySet::Prefix(p.into()),
            list: List {
                limit: None,
                mode: ListMode::Values,
                page_size: None,
            },
        };
        assert_eq!(req("get --prefix cfg/"), (list("cfg/"), None));
        assert_eq!(req("get --prefix 8001"), (list("8001"), None));
        assert_eq!(req("get --prefix cfg/ 8002"), (list("cfg/"), Some(8002)));
        assert_eq!(
            req("del --prefix cfg/ 8003"),
            (
                Request::DeleteRange {
                    keys: KeySet::Prefix(b"cfg/".to_vec())
                },
                Some(8003)
            )
        );
        assert!(parse_line(b"get --prefix").is_err());
        assert!(parse_line(b"delete --prefix a b").is_err());
        let put_if = |k: &str, v: &str, condition| Request::PutIf {
            key: k.into(),
            value: v.into(),
            lease: None,
            condition,
        };
        assert_eq!(
            req("put lock me --if-absent"),
            (put_if("lock", "me", Condition::Absent), None)
        );
        assert_eq!(
            req("put k two words --if-value 8001 8002"),
            (
                put_if("k", "two words", Condition::Value(b"8001".to_vec())),
                Some(8002)
            )
        );
        assert_eq!(
            req("put k v --if-mod-revision 7"),
            (put_if("k", "v", Condition::ModRevision(7)), None)
        );
        for bad in [
            "put k --if-absent",
            "put k v --if-value",
            "put k v --if-mod-revision x",
            "put k v --if-absent x",
            "put k v --if-absent 1 2",
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        // A flag word in KEY's place is a key, as before.
        assert_eq!(req("put --if-absent v"), (put("--if-absent", "v"), None));
    }

    #[test]
    fn lease_lines() {
        let lease = |r| Request::Lease(r);
        assert_eq!(
            req("lease grant 10"),
            (lease(LeaseRequest::Grant { ttl: 10 }), None)
        );
        assert_eq!(
            req("lease keepalive 1f --once 8002"),
            (
                lease(LeaseRequest::KeepAlive {
                    id: 0x1f,
                    once: true
                }),
                Some(8002)
            )
        );
        assert_eq!(
            req("lease keepalive 0x1f"),
            (
                lease(LeaseRequest::KeepAlive {
                    id: 0x1f,
                    once: false
                }),
                None
            )
        );
        assert_eq!(
            req("lease revoke 694d7a6f2bd1a504"),
            (
                lease(LeaseRequest::Revoke {
                    id: 0x694d7a6f2bd1a504
                }),
                None
            )
        );
        assert_eq!(
            req("lease list 8003"),
            (lease(LeaseRequest::List), Some(8003))
        );
        assert_eq!(
            req("lease timetolive 2a --keys"),
            (
                lease(LeaseRequest::TimeToLive {
                    id: 0x2a,
                    keys: true
                }),
                None
            )
        );
        for bad in [
            "lease",
            "lease grant",
            "lease grant 0",
            "lease grant x",
            "lease revoke 0",
            "lease revoke zz",
            "lease list x",
            "lease frob 1",
            "lease revoke 1 --once",
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        let leased = Request::Put {
            key: "k".into(),
            value: "two words".into(),
            lease: Some(0x1f),
        };
        assert_eq!(
            req("put k two words --lease 1f 8001"),
            (leased.clone(), Some(8001))
        );
        assert_eq!(req("put k two --lease 1f words"), (leased, None));
        assert_eq!(
            req("put k v --if-absent --lease 1f"),
            (
                Request::PutIf {
                    key: "k".into(),
                    value: "v".into(),
                    lease: Some(0x1f),
                    condition: Condition::Absent
                },
                None
            )
        );
        for bad in ["put k v --lease", "put k v --lease 0", "put k v --lease x"] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        // In VALUE's first place it is the value, as a condition's word is.
        assert_eq!(req("put k --lease 1f"), (put("k", "--lease 1f"), None));
    }

    #[test]
    fn watch_and_txn_lines() {
        let watch = |line: &str| match parse_line(line.as_bytes()) {
            Ok(Some(ShellCommand::Watch { req, count, port })) => {
                (req.keys, req.start_revision, count, port)
            }
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            watch("watch a"),
            (KeySet::Key(b"a".to_vec()), None, None, None)
        );
        assert_eq!(
            watch("watch --prefix cfg/ --rev 5 --count 2 8002"),
            (
                KeySet::Prefix(b"cfg/".to_vec()),
                Some(5),
                Some(2),
                Some(8002)
            )
        );
        // Without a key first, a number is the key; after it, a trailing number is a port.
        assert_eq!(
            watch("watch 8001"),
            (KeySet::Key(b"8001".to_vec()), None, None, None)
        );
        for bad in [
            "watch",
            "watch --prefix",
            "watch a b",
            "watch a --count",
            "watch a --count x",
            "watch a --rev 0",
            "watch a --bogus 1",
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            parse_line(b"txn"),
            Ok(Some(ShellCommand::Txn { port: None }))
        );
        assert_eq!(
            parse_line(b"txn 8003"),
            Ok(Some(ShellCommand::Txn { port: Some(8003) }))
        );
        assert!(parse_line(b"txn now").is_err());
    }

    /// The lines after `txn` up to `end` are the transaction; the shell goes on after it.
    #[test]
    fn a_shell_transaction_ends_at_end() {
        let mut input: &[u8] = b"mod(\"k\") = \"0\"\n\nput k v\n\nget k\nend\nget after\n";
        let txn = read_txn(&mut input).unwrap();
        assert_eq!(
            (txn.compare.len(), txn.success.len(), txn.failure.len()),
            (1, 1, 1)
        );
        assert_eq!(input, b"get after\n");
        let mut bad: &[u8] = b"frob(\"k\") = \"0\"\nend\n";
        assert!(read_txn(&mut bad).is_err());
    }

    #[test]
    fn binary_words() {
        let (r, _) = match parse_line(b"put \xff \xfe\x01") {
            Ok(Some(ShellCommand::Request {
                req,
                port,
                local: false,
            })) => (req, port),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            r,
            Request::Put {
                key: vec![0xff],
                value: vec![0xfe, 0x01],
                lease: None
            }
        );
    }

    fn strings(endpoints: &[&str]) -> Vec<String> {
        endpoints.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn ports_to_endpoints() {
        // Local and compose: each replica on its own port 800N.
        let eps = strings(&["127.0.0.1:8001", "http://10.0.0.2:8002/", "h3:8003"]);
        assert_eq!(endpoint_for_port(&eps, 8001).unwrap(), "127.0.0.1:8001");
        assert_eq!(
            endpoint_for_port(&eps, 8002).unwrap(),
            "http://10.0.0.2:8002/"
        );
        assert_eq!(endpoint_for_port(&eps, 8003).unwrap(), "h3:8003");
        // Not a replica port: the first endpoint's host at that port.
        assert_eq!(endpoint_for_port(&eps, 9000).unwrap(), "127.0.0.1:9000");
        // Replica 4 is none of three hosts.
        let e = endpoint_for_port(&eps, 8004).unwrap_err();
        assert!(e.contains("port 8004 addresses replica 4"), "{e}");
        assert!(
            e.contains("127.0.0.1:8001,http://10.0.0.2:8002/,h3:8003"),
            "{e}"
        );
        // The port's endpoint wins wherever it stands in the list.
        let eps = strings(&["s3:8003", "s1:8001", "s2:8002"]);
        assert_eq!(endpoint_for_port(&eps, 8001).unwrap(), "s1:8001");
        // All on one host (the local cluster): a replica added later is that host at 800N.
        let eps = strings(&["http://[::1]:8001"]);
        assert_eq!(endpoint_for_port(&eps, 8001).unwrap(), "http://[::1]:8001");
        assert_eq!(endpoint_for_port(&eps, 8004).unwrap(), "http://[::1]:8004");
        let eps = strings(&["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]);
        assert_eq!(endpoint_for_port(&eps, 8004).unwrap(), "127.0.0.1:8004");
        assert_eq!(endpoint_for_port(&eps, 8010).unwrap(), "127.0.0.1:8010");
        let eps = strings(&["http://example"]);
        assert_eq!(
            endpoint_for_port(&eps, 9004).unwrap(),
            "http://example:9004"
        );
        assert!(endpoint_for_port(&[], 8001)
            .unwrap_err()
            .contains("no endpoints"));
    }

    /// Kubernetes: every replica listens on 8000, told apart by host; port 800N is the N-th
    /// endpoint (pod kv-store-(N-1)).
    #[test]
    fn replica_ports_when_all_replicas_share_a_port() {
        let eps = strings(&[
            "kv-store-0.kv-store:8000",
            "kv-store-1.kv-store:8000",
            "https://kv-store-2.kv-store:8000",
            "kv-store-3.kv-store:8000",
        ]);
        for (port, want) in [
            (8001, "kv-store-0.kv-store:8000"),
            (8002, "kv-store-1.kv-store:8000"),
            (8003, "https://kv-store-2.kv-store:8000"),
            (8004, "kv-store-3.kv-store:8000"),
            // The port itself still wins.
            (8000, "kv-store-0.kv-store:8000"),
        ] {
            assert_eq!(endpoint_for_port(&eps, port).unwrap(), want, "{port}");
        }
        let e = endpoint_for_port(&eps, 8005).unwrap_err();
        assert!(
            e.starts_with("port 8005 addresses replica 5, but only 4 endpoints are given"),
            "{e}"
        );
        // Not a replica port: as before, the first host at that port.
        assert_eq!(
            endpoint_for_port(&eps, 9000).unwrap(),
            "kv-store-0.kv-store:9000"
        );
        // Endpoints without a port are told apart by host too.
        let eps = strings(&["http://a", "http://b"]);
        assert_eq!(endpoint_for_port(&eps, 8002).unwrap(), "http://b");
        // One service name on 8000: replica 1 is it, there is no replica 2 to address.
        let eps = strings(&["kv-client:8000"]);
        assert_eq!(endpoint_for_port(&eps, 8001).unwrap(), "kv-client:8000");
        assert!(endpoint_for_port(&eps, 8002).is_err());
    }

    #[test]
    fn local_reads_and_the_consistency_toggle() {
        let local = |line: &str| match parse_line(line.as_bytes()) {
            Ok(Some(ShellCommand::Request { req, port, local })) => (req, port, local),
            other => panic!("{line:?} parsed as {other:?}"),
        };
        // The seed's Demo 1 step 4, and the flag anywhere after `get`.
        assert_eq!(local("get a 8003 --local"), (get("a"), Some(8003), true));
        assert_eq!(local("get a --local 8003"), (get("a"), Some(8003), true));
        assert_eq!(local("get --local a"), (get("a"), None, true));
        assert_eq!(local("get a 8003"), (get("a"), Some(8003), false));
        let (req, port, is_local) = local("get --prefix cfg/ --local 8002");
        assert!(matches!(req, Request::Range { .. }), "{req:?}");
        assert_eq!((port, is_local), (Some(8002), true));
        // Only `get` reads: elsewhere the word is what it was (a value, a usage error).
        assert_eq!(local("put a --local"), (put("a", "--local"), None, false));
        assert!(parse_line(b"delete a --local").is_err());
        assert!(parse_line(b"get --local").is_err());
        assert!(parse_line(b"get a b --local").is_err());
        assert_eq!(
            parse_line(b"consistency"),
            Ok(Some(ShellCommand::Consistency(None)))
        );
        assert_eq!(
            parse_line(b"consistency local"),
            Ok(Some(ShellCommand::Consistency(Some(Consistency::Local))))
        );
        assert_eq!(
            parse_line(b"consistency linearizable\n"),
            Ok(Some(ShellCommand::Consistency(Some(
                Consistency::Linearizable
            ))))
        );
        for bad in ["consistency strong", "consistency local 8001"] {
            let e = parse_line(bad.as_bytes()).unwrap_err();
            assert!(e.starts_with("usage: consistency"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn shell_keeps_going_after_errors() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "kvctl",
            "--endpoints",
            "127.0.0.1:1",
            "--timeout",
            "200ms",
            "shell",
        ])
        .unwrap();
        let ctx = Context::new(&cli.global);
        let input: &[u8] = b"\nfrob\nhelp\nget a\nget a 1\nexit\nget never\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&ctx, input, &mut out, &mut err, false).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let err = String::from_utf8(err).unwrap();
        assert_eq!(out, HELP);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].starts_with("error: usage: unknown command"),
            "{err}"
        );
        assert!(lines[1].contains("0 of 1 replicas reachable"), "{err}");
        assert!(lines[2].contains("0 of 1 replicas reachable"), "{err}");
    }

    /// `consistency` switches how the lines after it read; a replica port past the list is
    /// refused before anything is sent.
    #[tokio::test]
    async fn shell_settings_and_unaddressable_replicas() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "kvctl",
            "--endpoints",
            "127.0.0.1:1,127.0.0.2:1",
            "--timeout",
            "200ms",
            "shell",
        ])
        .unwrap();
        let ctx = Context::new(&cli.global);
        let input: &[u8] = b"consistency\nconsistency local\nconsistency\nconsistency x\nget a 8003\nconsistency linearizable\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&ctx, input, &mut out, &mut err, false).await.unwrap();
        let (lin, loc) = (
            consistency_line(Consistency::Linearizable),
            consistency_line(Consistency::Local),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{lin}\n{loc}\n{loc}\n{lin}\n")
        );
        let err = String::from_utf8(err).unwrap();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].starts_with("error: usage: consistency"), "{err}");
        assert!(
            lines[1].contains("port 8003 addresses replica 3, but only 2 endpoints"),
            "{err}"
        );
    }
}
