//! The membership vocabulary kvd, kvctl and the watcher share: member lists (`NODES`), peer
//! addresses (`PID=HOST:PORT`), peer address templates, and the quorum rules a change keeps.

use std::collections::BTreeMap;

/// Why a member list, a peer address or a template was refused. Each message names the text
/// at fault and what was expected; callers add where it came from (a flag, a ConfigMap key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a node id (want a list like 1,2,3)")]
    NotANodeId(String),
    #[error("pid 0 is not a valid node id (pids start at 1)")]
    ZeroPid,
    #[error("node {0} is listed twice")]
    Duplicate(u64),
    #[error("no node ids given (want a list like 1,2,3)")]
    NoNodes,
    #[error("{0:?}: unbalanced brackets (want 1,2,3 or [1, 2, 3])")]
    Brackets(String),
    #[error("peer {0:?}: want PID=HOST:PORT")]
    PeerSyntax(String),
    #[error("peer {input:?}: {pid:?} is not a node id (pids start at 1)")]
    PeerId { input: String, pid: String },
    #[error("peer {input:?}: {addr:?} is not HOST:PORT")]
    PeerAddr { input: String, addr: String },
    #[error("peer {0} is given twice")]
    DuplicatePeer(u64),
    #[error("template {template:?}: {found:?} is not a placeholder (want {{pid}} or {{ordinal}})")]
    Placeholder { template: String, found: String },
    #[error("template {0:?} names neither {{pid}} nor {{ordinal}}: every replica would get the same address")]
    ConstantTemplate(String),
}

/// A member list as parsed by [`parse_nodes`]: sorted, distinct pids >= 1, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes(pub Vec<u64>);

/// Parses a member list, the way NODES, `kvctl reconfigure --nodes` and the shell write it:
/// - each pid is a decimal number (ASCII digits only) >= 1;
/// - pids are separated by commas, whitespace or both (`1,2,3`, `1 2 3`, `1, 2, 3`); empty
///   items between separators are skipped (`1,,2`, `1,2,`);
/// - the whole list may be wrapped in one pair of square brackets (`[1, 2, 3]`, as the seed's
///   ConfigMap writes it); whitespace around the list and inside the brackets is ignored;
/// - at least one pid, none twice.
///
/// The pids come back sorted.
pub fn parse_nodes(s: &str) -> Result<Nodes, ParseError> {
    let trimmed = s.trim();
    let inner = match (trimmed.strip_prefix('['), trimmed.ends_with(']')) {
        (Some(rest), true) => &rest[..rest.len() - 1],
        (None, false) => trimmed,
        _ => return Err(ParseError::Brackets(s.to_string())),
    };
    let mut nodes = Vec::new();
    for word in inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let pid = parse_pid(word).ok_or_else(|| ParseError::NotANodeId(word.to_string()))?;
        if pid == 0 {
            return Err(ParseError::ZeroPid);
        }
        if nodes.contains(&pid) {
            return Err(ParseError::Duplicate(pid));
        }
        nodes.push(pid);
    }
    if nodes.is_empty() {
        return Err(ParseError::NoNodes);
    }
    nodes.sort_unstable();
    Ok(Nodes(nodes))
}

/// ASCII digits as a u64 (`str::parse` would also take a leading `+`).
fn parse_pid(word: &str) -> Option<u64> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

/// Parses one peer address, `PID=HOST:PORT`: a pid >= 1; a non-empty host of letters, digits
/// and `.-_` (or an IPv6 literal in brackets: `[::1]`); a port (0..=65535) after the last
/// colon. Whitespace around either side of the `=` is ignored.
pub fn parse_peer(s: &str) -> Result<(u64, String), ParseError> {
    let (pid, addr) = s
        .split_once('=')
        .ok_or_else(|| ParseError::PeerSyntax(s.to_string()))?;
    let (pid, addr) = (pid.trim(), addr.trim());
    let pid = parse_pid(pid)
        .filter(|&p| p >= 1)
        .ok_or_else(|| ParseError::PeerId {
            input: s.to_string(),
            pid: pid.to_string(),
        })?;
    let host_port = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| is_host(h) && p.parse::<u16>().is_ok());
    if !host_port {
        return Err(ParseError::PeerAddr {
            input: s.to_string(),
            addr: addr.to_string(),
        });
    }
    Ok((pid, addr.to_string()))
}

/// A host name, an IPv4 address, or an IPv6 address in brackets (with a `%zone` perhaps).
fn is_host(h: &str) -> bool {
    let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    match h.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| name(c) || matches!(c, ':' | '%')),
        None => !h.is_empty() && h.chars().all(name),
    }
}

/// Explicit peer addresses by pid, as parsed by [`parse_peer_map`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMap(pub BTreeMap<u64, String>);

/// Parses a comma-separated list of [`parse_peer`] items (`1=h1:7000,2=h2:7000`); blank items
/// are skipped, so the empty string is the empty map. A pid given twice is refused.
pub fn parse_peer_map(s: &str) -> Result<PeerMap, ParseError> {
    let mut map = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let (pid, addr) = parse_peer(item.trim())?;
        if map.insert(pid, addr).is_some() {
            return Err(ParseError::DuplicatePeer(pid));
        }
    }
    Ok(PeerMap(map))
}

/// Checks an address template for [`from_template`]: it names `{pid}` or `{ordinal}` at least
/// once, and no other `{...}` nor a stray brace. Returns it unchanged (a clap value parser).
pub fn parse_template(s: &str) -> Result<String, ParseError> {
    expand(s, 1).map(|_| s.to_string())
}

/// The address (or URL) of `pid` from `template`: `{ordinal}` becomes pid - 1 (a StatefulSet
/// pod's ordinal), `{pid}` the pid. `None` when [`parse_template`] refuses the template.
pub fn from_template(template: &str, pid: u64) -> Option<String> {
    expand(template, pid).ok()
}

fn expand(template: &str, pid: u64) -> Result<String, ParseError> {
    let bad = |found: &str| ParseError::Placeholder {
        template: template.to_string(),
        found: found.to_string(),
    };
    let mut out = String::with_capacity(template.len() + 8);
    let mut placeholders = 0;
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let close = if rest.starts_with('{') {
            rest.find('}')
        } else {
            None
        };
        let Some(close) = close else {
            // A stray `}`, or a `{` never closed (then everything after it is shown).
            return Err(bad(if rest.starts_with('}') { "}" } else { rest }));
        };
        match &rest[..=close] {
            "{pid}" => out.push_str(&pid.to_string()),
            "{ordinal}" => out.push_str(&pid.saturating_sub(1).to_string()),
            other => return Err(bad(other)),
        }
        placeholders += 1;
        rest = &rest[close + 1..];
    }
    if placeholders == 0 {
        return Err(ParseError::ConstantTemplate(template.to_string()));
    }
    out.push_str(rest);
    Ok(out)
}

/// The smallest majority of `n` members.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// True when `acked` members of `members` (those that hold the state) are a majority.
pub fn majority_holds(members: &[u64], acked: usize) -> bool {
    acked >= majority(members.len())
}

/// Most members a single server grows to in one change (see [`check_change`]).
pub const MAX_GROWTH: usize = 3;

/// True when a change from `current` grows a single server (standalone) into a cluster.
pub fn grows_from_one(current: &[u64]) -> bool {
    current.len() == 1
}

/// The guards a change from `current` to the member list `next` must pass before anything is
/// proposed: valid, distinct pids; at least two members; a different set; and the members
/// kept (which hold the state) a majority of both configurations, so that any quorum of
/// either intersects them. The message says what to do instead.
///
/// **Growing from one member** (`current` is a single server) is the one exception to the
/// majority rule: the kept set {1} is not a majority of {1,2,3}. Such a change must keep
/// that member (the only one holding the state) and go to at most [`MAX_GROWTH`] members.
/// What makes it safe, as kvd keeps it:
/// - the old configuration is closed by its only member: the StopSign is decided when it is
///   stored, before the switch, so nothing is ever decided in it afterwards;
/// - no replica applies an entry of the new configuration on anything but the state at that
///   StopSign: the kept member switches with it, every other member starts empty and takes it
///   by checkpoint before it applies (or serves) anything;
/// - **the grown configuration accepts no write until a majority of it holds that state**:
///   until then its members hold client writes back (reads go on), so every write it
///   acknowledges is decided by a majority of which, with a majority holding the state, any
///   single lost disk leaves both the state and the entry on the others. With at most three
///   members, a member that installed the state and the member it came from are that
///   majority; the kept member learns it from the joiners' acknowledgements.
pub fn check_change(current: &[u64], next: &[u64]) -> Result<(), String> {
    if next.contains(&0) {
        return Err("pid 0 is not a valid node id (pids start at 1)".into());
    }
    let mut sorted = next.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != next.len() {
        return Err(format!("duplicate node ids in {next:?}"));
    }
    if next.len() < 2 {
        return Err(format!(
            "a configuration needs at least two members (asked for {next:?}); one-node \
             clusters run only as standalone replicas from the start"
        ));
    }
    let mut now = current.to_vec();
    now.sort_unstable();
    if sorted == now {
        return Err(format!("{next:?} are already the members"));
    }
    if let [single] = current {
        if !next.contains(single) {
            return Err(format!(
                "{current:?} -> {next:?} leaves out replica {single}, the only one holding the \
                 state: growing a single server must keep it"
            ));
        }
        if next.len() > MAX_GROWTH {
            return Err(format!(
                "{current:?} -> {next:?}: a single server grows to at most {MAX_GROWTH} members \
                 in one change (then add more in ordinary steps)"
            ));
        }
        return Ok(());
    }
    let kept = next.iter().filter(|p| current.contains(p)).count();
    if kept < majority(current.len()) || kept < majority(next.len()) {
        return Err(format!(
            "{current:?} -> {next:?} replaces a majority at once ({kept} members kept): the \
             members that hold the state must stay a majority of both configurations; do it \
             in steps (add, then remove)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(s: &str) -> Result<Vec<u64>, ParseError> {
        parse_nodes(s).map(|n| n.0)
    }

    #[test]
    fn nodes_in_every_form() {
        for s in [
            "1,2,3",
            "[1,2,3]",
            "[1, 2, 3]",
            " [ 1 , 2 , 3 ] ",
            "1 2 3",
            "1\t2\n3",
            "3,1,2",
            "1,,2,3,",
            ",1, 2 3",
        ] {
            assert_eq!(nodes(s), Ok(vec![1, 2, 3]), "{s:?}");
        }
        assert_eq!(nodes("[1]"), Ok(vec![1]));
        assert_eq!(nodes("18446744073709551615"), Ok(vec![u64::MAX]));
    }

    #[test]
    fn nodes_refused_with_the_reason() {
        assert_eq!(nodes("1,2,1"), Err(ParseError::Duplicate(1)));
        assert_eq!(nodes("[0, 1]"), Err(ParseError::ZeroPid));
        assert_eq!(nodes("00"), Err(ParseError::ZeroPid));
        for empty in ["", " ", "[]", "[ ]", ",", " , ,"] {
            assert_eq!(nodes(empty), Err(ParseError::NoNodes), "{empty:?}");
        }
        for word in ["x", "+1", "-1", "1.5", "1;2", "18446744073709551616"] {
            assert_eq!(
                nodes(&format!("1,{word}")),
                Err(ParseError::NotANodeId(word.into())),
                "{word:?}"
            );
        }
        for unbalanced in ["[1,2", "1,2]", "[[1]", "]1["] {
            assert!(
                matches!(
                    nodes(unbalanced),
                    Err(ParseError::Brackets(_)) | Err(ParseError::NotANodeId(_))
                ),
                "{unbalanced:?}: {:?}",
                nodes(unbalanced)
            );
        }
        assert_eq!(nodes("[1,2"), Err(ParseError::Brackets("[1,2".into())));
        assert_eq!(
            nodes("a").unwrap_err().to_string(),
            "\"a\" is not a node id (want a list like 1,2,3)"
        );
        assert_eq!(
            nodes("2 2").unwrap_err().to_string(),
            "node 2 is listed twice"
        );
    }

    #[test]
    fn peers_need_pid_host_and_port() {
        assert_eq!(
            parse_peer("4=127.0.0.1:7004"),
            Ok((4, "127.0.0.1:7004".to_string()))
        );
        assert_eq!(
            parse_peer(" 4 = kv-store-3.kv-store:7000 ").unwrap().1,
            "kv-store-3.kv-store:7000"
        );
        assert_eq!(parse_peer("1=[::1]:7000").unwrap().1, "[::1]:7000");
        for bad in [
            "4",
            "",
            "=h:1",
            "x=h:1",
            "0=h:1",
            "+4=h:1",
            "4=host",
            "4=:7000",
            "4=h:",
            "4=h:x",
            "4=h:70000",
            "4=a b:1",
            "4=h/x:1",
            "4=[::1:1",
            "4=[]:1",
            "4=::1:7000",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_peer("0=h:1").unwrap_err().to_string(),
            "peer \"0=h:1\": \"0\" is not a node id (pids start at 1)"
        );
        assert_eq!(
            parse_peer("4=host").unwrap_err().to_string(),
            "peer \"4=host\": \"host\" is not HOST:PORT"
        );
    }

    #[test]
    fn peer_maps() {
        assert_eq!(parse_peer_map(""), Ok(PeerMap::default()));
        assert_eq!(parse_peer_map(" , "), Ok(PeerMap::default()));
        let m = parse_peer_map("2=10.0.0.2:7000, 1=h1:7001,").unwrap();
        assert_eq!(
            m.0,
            BTreeMap::from([(1, "h1:7001".into()), (2, "10.0.0.2:7000".into())])
        );
        assert_eq!(
            parse_peer_map("1=a:1,1=b:2"),
            Err(ParseError::DuplicatePeer(1))
        );
        assert!(parse_peer_map("x").is_err());
        assert!(parse_peer_map("0=a:1").is_err());
        assert!(parse_peer_map("1=a:1;2=b:2").is_err());
    }

    #[test]
    fn templates() {
        let t = "kv-store-{ordinal}.kv-store:7000";
        assert_eq!(parse_template(t).as_deref(), Ok(t));
        assert_eq!(from_template(t, 3).unwrap(), "kv-store-2.kv-store:7000");
        assert_eq!(
            from_template("http://127.0.0.{pid}:80{pid}/", 4).unwrap(),
            "http://127.0.0.4:804/"
        );
        assert_eq!(
            from_template("s{pid}-{ordinal}:7000", 1).unwrap(),
            "s1-0:7000"
        );
        for bad in [
            "kv-store:7000",
            "",
            "h{id}:7000",
            "h{pid:7000",
            "h}{pid}:7000",
            "h{pid}}:7000",
            "h{{pid}}:7000",
            "h{PID}:7000",
            "h{ pid }:7000",
        ] {
            assert!(parse_template(bad).is_err(), "{bad:?}");
            assert_eq!(from_template(bad, 2), None, "{bad:?}");
        }
        assert_eq!(
            parse_template("h{id}:7").unwrap_err().to_string(),
            "template \"h{id}:7\": \"{id}\" is not a placeholder (want {pid} or {ordinal})"
        );
        assert!(parse_template("h:7000")
            .unwrap_err()
            .to_string()
            .contains("the same address"));
    }

    #[test]
    fn majorities() {
        let m: Vec<usize> = (0..=6).map(majority).collect();
        assert_eq!(m, [1, 1, 2, 2, 3, 3, 4]);
        assert!(majority_holds(&[1, 2, 3], 2));
        assert!(!majority_holds(&[1, 2, 3, 4], 2));
        assert!(majority_holds(&[1, 2, 3, 4], 3));
    }

    #[test]
    fn guards_refuse_what_the_design_forbids() {
        assert!(check_change(&[1, 2, 3], &[1, 2, 3, 4]).is_ok());
        assert!(check_change(&[1, 2, 3, 4], &[1, 2, 3]).is_ok());
        assert!(check_change(&[1, 2, 3], &[1, 2, 4]).is_ok());
        assert!(check_change(&[1, 2, 3], &[4, 1, 2]).is_ok());
        assert!(check_change(&[1, 2, 3], &[1, 2, 3, 4, 5]).is_ok());
        let e = check_change(&[1, 2, 3], &[1, 4, 5]).unwrap_err();
        assert_eq!(
            e,
            "[1, 2, 3] -> [1, 4, 5] replaces a majority at once (1 members kept): the members \
             that hold the state must stay a majority of both configurations; do it in steps \
             (add, then remove)"
        );
        assert!(check_change(&[1, 2, 3], &[4, 5, 6]).is_err());
        // Adding more new members than the old ones can outvote.
        assert!(check_change(&[1, 2], &[1, 2, 3, 4, 5]).is_err());
        // Shrinking by more than a minority at once.
        assert!(check_change(&[1, 2, 3, 4, 5], &[1, 2]).is_err());
        assert!(check_change(&[1, 2, 3], &[1]).unwrap_err().contains("two"));
        assert_eq!(
            check_change(&[1, 2, 3], &[3, 2, 1]).unwrap_err(),
            "[3, 2, 1] are already the members"
        );
        assert!(check_change(&[3, 1, 2], &[1, 2, 3])
            .unwrap_err()
            .contains("already"));
        assert!(check_change(&[1, 2, 3], &[1, 2, 2])
            .unwrap_err()
            .contains("duplicate"));
        assert!(check_change(&[1, 2, 3], &[0, 1, 2])
            .unwrap_err()
            .contains("pid 0"));
    }

    #[test]
    fn a_single_server_grows_keeping_itself_to_at_most_three() {
        assert!(check_change(&[1], &[1, 2, 3]).is_ok());
        assert!(check_change(&[1], &[1, 2]).is_ok());
        assert!(check_change(&[2], &[3, 2, 1]).is_ok());
        // The kept member is not a majority of the new configuration: only growth may do it.
        assert!(check_change(&[1, 2], &[1, 3, 4]).is_err());
        assert_eq!(
            check_change(&[1], &[2, 3]).unwrap_err(),
            "[1] -> [2, 3] leaves out replica 1, the only one holding the state: growing a \
             single server must keep it"
        );
        assert!(check_change(&[1], &[1, 2, 3, 4])
            .unwrap_err()
            .contains("at most 3 members"));
        assert!(check_change(&[1], &[1]).unwrap_err().contains("two"));
        assert!(check_change(&[1], &[1, 1, 2])
            .unwrap_err()
            .contains("duplicate"));
        assert!(grows_from_one(&[1]));
        assert!(!grows_from_one(&[1, 2]));
    }
}
