//! kvctl: omnikv's scriptable client (etcdctl-like: keys, ranges, conditional puts,
//! transactions, watch), the seed's interactive shell, and a load generator. `main.rs` only parses and exits with the code [`run`] returns.
//!
//! Each module uses only modules listed before it here: `exit` (the error type and exit
//! codes), `cli` (the clap definition), `context` (the settings from the global flags),
//! `output` (the printers), `commands` (one per request), `shell`, `bench`.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod context;
pub mod exit;
pub mod output;
pub mod progress;
pub mod shell;

pub use cli::{Cli, Command, GlobalOpts, OutputFormat};
pub use context::Context;
pub use exit::Error;

use cli::LeaseCommand;
use commands::lease::LeaseRequest;
use commands::Request;
use omnikv_common::client::{KeySet, WatchRequest};
use output::ListMode;
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;

/// Runs a parsed command line with the process's stdin/stdout/stderr and returns the exit
/// code (see [`exit`]). Errors are printed to stderr in the chosen output format.
pub async fn run(cli: Cli) -> i32 {
    let ctx = Context::new(&cli.global);
    let mut stdout = io::stdout();
    // lock and elect exit with a code of their own (the command's status, a signal's).
    let result = match run_long(&ctx, &cli.command, &mut stdout).await {
        Some(Ok(code)) => return code,
        Some(Err(e)) => Err(e),
        None => run_command(&ctx, cli.command, &mut stdout).await,
    };
    let result = match result {
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

/// `lock` and `elect`, which hold something while they run and pick their exit code: `None`
/// for the other commands.
async fn run_long(
    ctx: &Context,
    command: &Command,
    out: &mut dyn Write,
) -> Option<Result<i32, Error>> {
    let client = || ctx.client();
    Some(match command {
        Command::Lock {
            name,
            ttl,
            kill_grace,
            command,
        } => {
            let args = commands::lock::LockArgs {
                name: name.as_bytes().to_vec(),
                ttl: *ttl,
                kill_grace: *kill_grace,
                command: command.clone(),
            };
            match client() {
                Ok(c) => commands::lock::run(&c, &args, ctx.output, out, &mut io::stderr()).await,
                Err(e) => Err(e),
            }
        }
        Command::Elect {
            name,
            value: Some(value),
            ttl,
            ..
        } => match client() {
            Ok(c) => {
                let (name, value) = (name.as_bytes(), value.as_bytes());
                commands::elect::run(&c, name, value, *ttl, ctx.output, out, &mut io::stderr())
                    .await
            }
            Err(e) => Err(e),
        },
        Command::Elect { name, .. } => match client() {
            Ok(c) => commands::elect::observe(&c, name.as_bytes(), ctx.output, out)
                .await
                .map(|()| exit::OK),
            Err(e) => Err(e),
        },
        _ => return None,
    })
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
            return commands::status::run_all(ctx, &endpoints, out).await;
        }
        Command::WaitServing { max_wait } => {
            let client = ctx.client()?;
            return commands::wait_serving::run(&client, max_wait, out).await;
        }
        Command::Bench(args) => return bench::run(ctx, &args, out).await,
        Command::Certs(command) => return commands::certs::run(command, ctx.output, out),
        Command::Token(command) => return commands::token::run(command, ctx.output, out),
        Command::Snapshot(cli::SnapshotCommand::Save { file, attempts }) => {
            let client = ctx.client()?;
            return commands::snapshot::save(
                &client,
                &file,
                attempts,
                ctx.consistency,
                ctx.output,
                out,
            )
            .await;
        }
        Command::Snapshot(cli::SnapshotCommand::Status { file }) => {
            return commands::snapshot::status(&file, ctx.output, out);
        }
        Command::Put {
            key,
            value,
            condition,
            lease,
        } => {
            // Check the flags before consuming stdin.
            ctx.selected_endpoints()?;
            let value = commands::put::value_from_arg(&value, io::stdin().lock())?;
            let key = key.as_bytes().to_vec();
            match commands::put::Condition::from_flags(&condition) {
                Some(condition) => Request::PutIf {
                    key,
                    value,
                    lease,
                    condition,
                },
                None => Request::Put { key, value, lease },
            }
        }
        Command::Get { key, range, list } => {
            let key = key.as_ref().map(|k| k.as_bytes());
            match commands::range::key_set(key, &range)? {
                KeySet::Key(key) => Request::Get { key },
                keys => Request::Range {
                    keys,
                    list: commands::range::List {
                        limit: list.limit,
                        mode: if list.count_only {
                            ListMode::CountOnly
                        } else if list.keys_only {
                            ListMode::KeysOnly
                        } else {
                            ListMode::Values
                        },
                        page_size: list.page_size,
                    },
                },
            }
        }
        Command::Delete { key, range } => {
            match commands::range::key_set(key.as_ref().map(|k| k.as_bytes()), &range)? {
                KeySet::Key(key) => Request::Delete { key },
                keys => Request::DeleteRange { keys },
            }
        }
        Command::Txn { file } => {
            ctx.selected_endpoints()?;
            let txn = match file {
                Some(f) if f != "-" => {
                    let name = f.to_string_lossy().into_owned();
                    let file = std::fs::File::open(&f).map_err(|source| Error::Io {
                        context: "cannot open the transaction file",
                        source,
                    })?;
                    commands::txn::read(file, &name)?
                }
                _ => commands::txn::read(io::stdin().lock(), "stdin")?,
            };
            Request::Txn(txn)
        }
        Command::Watch {
            key,
            range,
            rev,
            prev_value,
            count,
            progress_ms,
        } => {
            let keys = commands::range::key_set(key.as_ref().map(|k| k.as_bytes()), &range)?;
            let req = WatchRequest {
                keys,
                start_revision: rev,
                prev_value,
                progress_ms,
                consistency: ctx.consistency,
            };
            let client = ctx.client()?;
            return commands::watch::run(&client, req, count, ctx.output, out, &mut io::stderr())
                .await;
        }
        Command::Lease { command } => Request::Lease(match command {
            LeaseCommand::Grant { ttl } => LeaseRequest::Grant { ttl },
            LeaseCommand::Keepalive { id, once } => LeaseRequest::KeepAlive { id, once },
            LeaseCommand::Revoke { id } => LeaseRequest::Revoke { id },
            LeaseCommand::List => LeaseRequest::List,
            LeaseCommand::Timetolive { id, keys } => LeaseRequest::TimeToLive { id, keys },
        }),
        Command::Lock { .. } | Command::Elect { .. } => {
            return Err(Error::usage("lock and elect run through run_long"))
        }
        Command::Status { all: false } => Request::Status,
        Command::Log { limit } => Request::Log { limit },
        Command::Members => Request::Members,
        Command::MoveLeader { to } => Request::MoveLeader { to },
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
