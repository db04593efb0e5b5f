//! omnikv-bench: drives omnikv or etcd, each as its users run it (omnikv over its HTTP API,
//! etcd over its native gRPC API with the `etcd-client` crate), with kvctl bench's load
//! generator: the same closed loop, key space, value size, connection count and histogram
//! for both. Workloads: `kv` (puts and gets, as `kvctl bench`), `range` (a range read of a
//! prefix), `cas` (compare-and-swap on the mod revision), `watch` (fan-out of one writer's
//! puts to many watchers); `load` writes `kv`'s key space in batches first (a large data
//! set in little time). One JSON object per run with `-o json` (bench/*.py read it).

mod conn;
mod failover;
mod load;
mod rolling_restart;
mod watch;
mod workload;

use clap::{Parser, Subcommand};
use conn::{Conn, Dial, Target};
use kvctl::bench::{connections, measure, Plan};
use kvctl::cli::BenchArgs;
use kvctl::{Context, Error, GlobalOpts, OutputFormat};
use omnikv_common::ClientError;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use workload::{Kind, Load};

#[derive(Debug, Parser)]
#[command(name = "omnikv-bench", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// The system under load.
    #[arg(long, value_enum, default_value_t = Target::Omnikv, global = true)]
    target: Target,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Puts and gets of single keys (--read-ratio), exactly as `kvctl bench`.
    Kv(BenchArgs),
    /// Range reads (--read-ratio ignored) of every key under --prefix, which holds
    /// --range-keys keys (written first when it does not).
    Range {
        #[command(flatten)]
        bench: BenchArgs,
        #[arg(long, default_value_t = 1000)]
        range_keys: usize,
        #[arg(long, default_value = "range/")]
        prefix: String,
    },
    /// Compare-and-swap writes (--read-ratio ignored): a transaction that puts the drawn key
    /// if its mod revision is the last one any client saw (the keys' mod revisions are read
    /// before the run), else reads it back; a failed compare counts as a success in `misses`
    /// (`cas_failed`).
    Cas(BenchArgs),
    /// Writes the data set bench-0 .. bench-<N-1> (the `kv` keys) once, in transactions of
    /// --batch puts, --clients in flight: how long it took.
    Load(load::LoadArgs),
    /// Watch fan-out: watchers of one prefix, a writer at a fixed rate; events delivered per
    /// second and the delay from each put's acknowledgement to its delivery.
    Watch(watch::WatchArgs),
    /// Rolling-restart load: writers of unique keys that fail over to the next member on
    /// any error, until stdin closes; prints the longest time without an acknowledged write
    /// and writes the acknowledged keys to --acks (bench/rolling_restart.py).
    Writes(rolling_restart::WritesArgs),
    /// Reads back every key of a `writes` run's --acks file: how many are missing.
    Verify(rolling_restart::VerifyArgs),
    /// Failover probe (bench/run.py): warms a connection to every endpoint, prints `ready`,
    /// waits for a line on stdin, then puts through the endpoints in turn until one
    /// acknowledges: the seconds from that line.
    FirstWrite(failover::FirstWriteArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Cmd::Kv(b) | Cmd::Cas(b) | Cmd::Range { bench: b, .. } => b.threads.map(|t| t as usize),
        Cmd::Watch(w) => w.threads,
        Cmd::Load(l) => l.threads,
        Cmd::Writes(_) | Cmd::Verify(_) | Cmd::FirstWrite(_) => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = Context::new(&cli.global);
    let mut out = std::io::stdout();
    match runtime.block_on(run(&ctx, cli.target, cli.command, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            kvctl::output::write_error(&mut std::io::stderr(), ctx.output, &e);
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

async fn run(ctx: &Context, target: Target, cmd: Cmd, out: &mut dyn Write) -> Result<(), Error> {
    let dial = &Dial {
        timeout: ctx.timeout,
        credentials: ctx.credentials()?,
    };
    let endpoints = ctx.selected_endpoints()?;
    let (name, args, kind) = match cmd {
        Cmd::Watch(w) => {
            let r = watch::run(target, &endpoints, dial, &w).await?;
            let written = match ctx.output {
                OutputFormat::Json => kvctl::output::json_line(out, &r),
                OutputFormat::Text => out.write_all(r.text().as_bytes()),
            };
            written.map_err(Error::stdout)?;
            if r.events == 0 {
                return Err(Error::Client(ClientError::Unavailable(format!(
                    "no event delivered ({})",
                    r.first_error.as_deref().unwrap_or("no error seen")
                ))));
            }
            return Ok(());
        }
        Cmd::Load(l) => {
            let r = load::run(target, &endpoints, dial, &l).await?;
            let written = match ctx.output {
                OutputFormat::Json => kvctl::output::json_line(out, &r),
                OutputFormat::Text => out.write_all(r.text().as_bytes()),
            };
            return written.map_err(Error::stdout);
        }
        Cmd::Writes(_) | Cmd::Verify(_) | Cmd::FirstWrite(_) if !dial.credentials.is_empty() => {
            return Err(Error::usage(
                "writes, verify and first-write run plaintext and anonymous only",
            ));
        }
        Cmd::FirstWrite(f) => {
            let r = failover::run(target, &endpoints, &f, out).await?;
            kvctl::output::json_line(out, &r).map_err(Error::stdout)?;
            if r.seconds.is_none() {
                return Err(Error::Client(ClientError::Unavailable(format!(
                    "no write acknowledged within {:?}",
                    f.within
                ))));
            }
            return Ok(());
        }
        Cmd::Writes(w) => {
            let r = rolling_restart::writes(target, &endpoints, &w)
                .await
                .map_err(Error::usage)?;
            return kvctl::output::json_line(out, &r).map_err(Error::stdout);
        }
        Cmd::Verify(v) => {
            let r = rolling_restart::verify(target, &endpoints, &v)
                .await
                .map_err(Error::usage)?;
            return kvctl::output::json_line(out, &r).map_err(Error::stdout);
        }
        Cmd::Kv(b) => ("kv", b, Kind::Kv),
        Cmd::Cas(mut b) => {
            b.read_ratio = 0.0;
            let conn = Conn::connect(target, &endpoints, dial).await?;
            ("cas", b, Kind::cas(conn.mod_revisions(b"bench-").await?))
        }
        Cmd::Range {
            mut bench,
            range_keys,
            prefix,
        } => {
            bench.read_ratio = 1.0;
            let conn = Conn::connect(target, &endpoints, dial).await?;
            load_prefix(&conn, prefix.as_bytes(), range_keys, bench.value_size).await?;
            let kind = Kind::Range {
                prefix: prefix.into_bytes(),
                keys: range_keys,
            };
            ("range", bench, kind)
        }
    };
    let plan = Plan::from_args(&args)?;
    let kind = Arc::new(kind);
    let eps = connections(&plan, &endpoints, |e| Ok::<_, ClientError>(e.to_vec()))?;
    let mut loads = Vec::with_capacity(eps.len());
    for e in eps {
        let conn = Conn::connect(target, &e, dial).await?;
        loads.push(Arc::new(Load {
            conn,
            kind: kind.clone(),
        }));
    }
    let report = measure(target.as_str(), &plan, ctx.consistency, loads).await;
    match ctx.output {
        OutputFormat::Json => {
            let mut j = serde_json::to_value(&report).expect("a report serializes");
            j["workload"] = name.into();
            if let Kind::Range { keys, .. } = &*kind {
                j["range_keys"] = (*keys).into();
            }
            if name == "cas" {
                j["cas_failed"] = report.misses.into();
            }
            kvctl::output::json_line(out, &j)
        }
        OutputFormat::Text => writeln!(
            out,
            "running:    {name} ({})\n{}",
            target.as_str(),
            report.text()
        ),
    }
    .map_err(Error::stdout)?;
    report.check()
}

/// Writes `keys` keys PREFIX0000.. under `prefix` unless a range of it already returns
/// exactly that many (64 puts in flight).
async fn load_prefix(
    conn: &Conn,
    prefix: &[u8],
    keys: usize,
    value_size: usize,
) -> Result<(), Error> {
    if conn.range(prefix, Default::default()).await? == keys {
        return Ok(());
    }
    let value = vec![b'v'; value_size];
    let width = keys.to_string().len();
    let mut next = 0;
    while next < keys {
        let batch: Vec<_> = (next..keys.min(next + 64))
            .map(|i| {
                let mut k = prefix.to_vec();
                k.extend_from_slice(format!("{i:0width$}").as_bytes());
                k
            })
            .collect();
        next += batch.len();
        let puts = batch.iter().map(|k| conn.put(k, &value));
        for outcome in futures::future::join_all(puts).await {
            if let kvctl::bench::Outcome::Err(e) = outcome {
                return Err(Error::Client(e));
            }
        }
    }
    let n = conn.range(prefix, Default::default()).await?;
    if n != keys {
        return Err(Error::usage(format!(
            "{} holds {n} keys, not {keys}: other keys share the prefix",
            String::from_utf8_lossy(prefix)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
