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
