//! kvd's log output, for the daemon and for `kvd restore`: `tracing` events to stderr, filtered
//! by `KVD_LOG` (env-filter syntax, default `info`), coloured only on a terminal.

/// Installs the subscriber; call once, first thing.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
