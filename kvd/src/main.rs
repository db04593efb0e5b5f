//! kvd's entry point: parse the config, set up logging, bind, run until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use kvd::Config;
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    // `kvd restore ...` seeds a data dir and exits (kvd/src/backup/cli.rs).
    if std::env::args_os().nth(1).is_some_and(|a| a == "restore") {
        std::process::exit(kvd::backup::cli::run(std::env::args_os().skip(1)));
    }
    let cfg = Config::parse();
    kvd::logging::init();
    // A panic anywhere (the consensus loop above all) ends the process: never a zombie that
    // still answers /healthz. Storage errors panic inside OmniPaxos by design.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(%info, "panic: aborting");
        std::process::abort();
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.io_threads as usize)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = TcpListener::bind(&cfg.client_addr)
            .await
            .with_context(|| format!("binding the client address {}", cfg.client_addr))?;
        let peer = TcpListener::bind(&cfg.peer_addr)
            .await
            .with_context(|| format!("binding the peer address {}", cfg.peer_addr))?;
        kvd::serve(cfg, client, peer, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested");
}
