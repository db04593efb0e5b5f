//! `reconfigure --nodes 1,2,3,4 [--config-id N] [--force] [--peer PID=ADDR]`, and the shell's
//! `reconfigure 4` (add node 4 to the current members).

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::{Client, ReconfigureRequest};
use std::collections::BTreeMap;
use std::io::Write;

/// Which members the change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Exactly these.
    Exactly(Vec<u64>),
    /// The current members plus this one (the seed's `reconfigure 4`).
    Add(u64),
}

/// A requested change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub members: Members,
    pub config_id: Option<u32>,
    pub force: bool,
    pub peers: BTreeMap<u64, String>,
}

/// A member list as one flag value (clap would take a bare `Vec` as repeated values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList(pub Vec<u64>);

pub fn parse_node_list(s: &str) -> Result<NodeList, String> {
    parse_nodes(s).map(NodeList)
}

/// Parses `1,2,3`, `[1, 2, 3]` or `1 2 3` into pids (>= 1, order kept, duplicates refused).
pub fn parse_nodes(s: &str) -> Result<Vec<u64>, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    for word in inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let pid: u64 = word
            .parse()
            .map_err(|_| format!("{word:?} is not a node id (want e.g. 1,2,3,4)"))?;
        if pid == 0 {
            return Err("node ids start at 1".into());
        }
        if out.contains(&pid) {
            return Err(format!("node {pid} is listed twice"));
        }
        out.push(pid);
    }
    if out.is_empty() {
        return Err("no node ids given (want e.g. 1,2,3,4)".into());
    }
    Ok(out)
}

/// Parses `PID=HOST:PORT`.
pub fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (pid, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want PID=HOST:PORT"))?;
    let pid: u64 = pid
        .trim()
        .parse()
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| format!("{s:?}: {pid:?} is not a node id"))?;
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(format!("{s:?}: {addr:?} is not HOST:PORT"));
    }
    Ok((pid, addr.to_string()))
}

/// Asks the leader among `client`'s endpoints for the change and prints the configuration
/// now in force.
pub async fn run(
    client: &Client,
    change: Change,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let (nodes, config_id) = match change.members {
        Members::Exactly(nodes) => (nodes, change.config_id),
        Members::Add(pid) => {
            let current = client.members().await?;
            let mut nodes: Vec<u64> = current.members.iter().map(|m| m.pid).collect();
            if nodes.contains(&pid) {
                return Err(Error::usage(format!(
                    "node {pid} is already a member of configuration {} ({nodes:?})",
                    current.config_id
                )));
            }
            nodes.push(pid);
            (nodes, change.config_id.or(Some(current.config_id + 1)))
        }
    };
    let request = ReconfigureRequest {
        nodes,
        config_id,
        force: change.force,
        peers: change.peers,
    };
    let result = client.reconfigure(&request).await?;
    output::write_reconfigured(out, format, &result).map_err(Error::stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_in_every_form() {
        assert_eq!(parse_nodes("1,2,3,4").unwrap(), [1, 2, 3, 4]);
        assert_eq!(parse_nodes("[1, 2, 4]").unwrap(), [1, 2, 4]);
        assert_eq!(parse_nodes(" 3 1 ").unwrap(), [3, 1]);
        assert!(parse_nodes("1,1").unwrap_err().contains("twice"));
        assert!(parse_nodes("0,1").is_err());
        assert!(parse_nodes("a,b").is_err());
        assert!(parse_nodes("[]").is_err());
    }

    #[test]
    fn peers_need_pid_host_and_port() {
        assert_eq!(
            parse_peer("4=127.0.0.1:7004").unwrap(),
            (4, "127.0.0.1:7004".to_string())
        );
        assert_eq!(
            parse_peer("4=kv-store-3.kv-store:7000").unwrap().1,
            "kv-store-3.kv-store:7000"
        );
        assert!(parse_peer("4").is_err());
        assert!(parse_peer("x=h:1").is_err());
        assert!(parse_peer("4=host").is_err());
        assert!(parse_peer("4=:7000").is_err());
    }
}
