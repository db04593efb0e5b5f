//! kvctl: omnikv's scriptable client (etcdctl-like) and the seed's interactive shell.
//! `main.rs` only parses and exits with the code [`run`] returns.

pub mod cli;
pub mod commands;
pub mod exit;
pub mod output;
pub mod shell;

pub use cli::{Cli, Command, GlobalOpts, OutputFormat};
pub use exit::Error;

use commands::Request;
use omnikv_common::{Client, Consistency};
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// The global settings every command runs with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The whole `--endpoints` list, in order.
    pub endpoints: Vec<String>,
    /// `--node`: 1-based index into `endpoints` (not yet range-checked).
    pub node: Option<usize>,
    pub consistency: Consistency,
    pub output: OutputFormat,
    /// Overall time per command.
    pub timeout: Duration,
}

impl Context {
    pub fn new(g: &GlobalOpts) -> Self {
        Context {
            endpoints: cli::split_endpoints(&g.endpoints),
            node: g.node,
            consistency: g.consistency,
            output: g.output,
            timeout: g.timeout,
        }
    }

    /// The endpoints to ask: all of them, or only the `--node` one (usage error when out of
    /// range).
    pub fn selected_endpoints(&self) -> Result<Vec<String>, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::usage("no endpoints given (--endpoints)"));
        }
        match self.node {
            None => Ok(self.endpoints.clone()),
            Some(n) if n >= 1 && n <= self.endpoints.len() => {
                Ok(vec![self.endpoints[n - 1].clone()])
            }
            Some(n) => Err(Error::usage(format!(
                "--node {n} is out of range: {} endpoint(s) given, numbered from 1",
                self.endpoints.len()
            ))),
        }
    }

    /// A client over the selected endpoints.
    pub fn client(&self) -> Result<Client, Error> {
        Ok(Client::new(&self.selected_endpoints()?, self.timeout)?)
    }
}

/// Runs a parsed command line with the process's stdin/stdout/stderr and returns the exit
/// code (see [`exit`]). Errors are printed to stderr in the chosen output format.
pub async fn run(cli: Cli) -> i32 {
    let ctx = Context::new(&cli.global);
    let mut stdout = io::stdout();
    let result = match run_command(&ctx, cli.command, &mut stdout).await {
        Ok(()) => stdout.flush().map_err(Error::stdout),
        Err(e) => {
            let _ = stdout.flush();
            Err(e)
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            output::write_error(&mut io::stderr(), ctx.output, &e);
            e.exit_code()
        }
    }
}

async fn run_command(ctx: &Context, command: Command, out: &mut dyn Write) -> Result<(), Error> {
    let req = match command {
        Command::Shell => {
            let stdin = io::stdin();
            let prompt = stdin.is_terminal();
            return shell::run(ctx, stdin.lock(), out, &mut io::stderr(), prompt).await;
        }
        Command::Status { all: true } => {
            let endpoints = ctx.selected_endpoints()?;
            return commands::status::run_all(&endpoints, ctx.timeout, ctx.output, out).await;
        }
        Command::Bench(args) => return commands::bench::run(ctx, &args, out).await,
        Command::Put { key, value } => {
            // Check the flags before consuming stdin.
            ctx.selected_endpoints()?;
            let value = commands::put::value_from_arg(&value, io::stdin().lock())?;
            Request::Put {
                key: key.as_bytes().to_vec(),
                value,
            }
        }
        Command::Get { key } => Request::Get {
            key: key.as_bytes().to_vec(),
        },
        Command::Delete { key } => Request::Delete {
            key: key.as_bytes().to_vec(),
        },
        Command::Status { all: false } => Request::Status,
        Command::Log { limit } => Request::Log { limit },
        Command::Members => Request::Members,
        Command::Reconfigure {
            nodes,
            config_id,
            force,
            peers,
        } => Request::Reconfigure(commands::reconfigure::Change {
            members: commands::reconfigure::Members::Exactly(nodes.0),
            config_id,
            force,
            peers: peers.into_iter().collect(),
        }),
    };
    let client = ctx.client()?;
    commands::execute(ctx, &client, req, out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn ctx(args: &[&str]) -> Context {
        let cli = Cli::try_parse_from(["kvctl"].iter().chain(args).chain(&["status"])).unwrap();
        Context::new(&cli.global)
    }

    #[test]
    fn node_selects_one_endpoint() {
        let c = ctx(&["--endpoints", "a:1,b:2,c:3", "--node", "2"]);
        assert_eq!(c.selected_endpoints().unwrap(), ["b:2"]);
        let c = ctx(&["--endpoints", "a:1,b:2,c:3"]);
        assert_eq!(c.selected_endpoints().unwrap(), ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn node_out_of_range_is_usage() {
        for n in ["0", "4"] {
            let c = ctx(&["--endpoints", "a:1,b:2,c:3", "--node", n]);
            let e = c.selected_endpoints().unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE);
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        let c = ctx(&["--endpoints", " , "]);
        assert_eq!(c.selected_endpoints().unwrap_err().exit_code(), exit::USAGE);
    }

    #[test]
    fn bad_endpoint_is_usage() {
        let c = ctx(&["--endpoints", "http://[::1"]);
        assert_eq!(c.client().err().unwrap().exit_code(), exit::USAGE);
    }
}
