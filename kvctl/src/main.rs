//! kvctl binary: parse the command line, run it, exit with the code from `kvctl::exit`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kvctl::Cli::parse();
    match real_main(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(u8::try_from(kvctl::exit::USAGE).unwrap_or(2))
        }
    }
}

fn real_main(cli: kvctl::Cli) -> anyhow::Result<i32> {
    // One thread is plenty for a single request; the load generator uses every core (or
    // --threads) so that it is not the bottleneck.
    let mut builder = match &cli.command {
        kvctl::Command::Bench(args) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.threads {
                b.worker_threads(n as usize);
            }
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let code = runtime.block_on(kvctl::run(cli));
    // The answer is printed: do not wait for blocking threads still at work (a DNS lookup of
    // an endpoint that is down can take seconds to give up).
    runtime.shutdown_timeout(std::time::Duration::ZERO);
    Ok(code)
}
