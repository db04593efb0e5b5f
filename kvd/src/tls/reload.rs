//! Files re-read when their content changes: a set of files is read at start (an error then
//! is fatal and names the file) and polled once a second; when any file's bytes differ from
//! the last read, a new value is built from all of them and published on a watch channel.
//! A value that cannot be built (a bad or half-written file) is logged and the last good one
//! stays in use. Polling stops once every receiver is gone.

use super::{PemFile, TlsError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the files are read again.
pub const POLL: Duration = Duration::from_secs(1);

/// Builds a value from `paths` now and rebuilds it whenever their content changes (on a task
/// of the current tokio runtime). `what` names the value in logs.
pub fn watch_files<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    build: F,
) -> Result<watch::Receiver<Arc<T>>, TlsError>
where
    T: Send + Sync + 'static,
    F: Fn(&[PemFile]) -> Result<T, TlsError> + Send + 'static,
{
    let files = paths
        .iter()
        .map(|p| PemFile::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let value = build(&files)?;
    let (tx, rx) = watch::channel(Arc::new(value));
    let mut seen: Vec<Vec<u8>> = files.into_iter().map(|f| f.bytes).collect();
    tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(POLL).await;
            if tx.is_closed() {
                return;
            }
            let mut files = Vec::with_capacity(paths.len());
            let mut read_error = None;
            for path in &paths {
                match tokio::fs::read(path).await {
                    Ok(bytes) => files.push(PemFile {
                        path: path.clone(),
                        bytes,
                    }),
                    Err(e) => {
                        read_error = Some(format!("cannot read {}: {e}", path.display()));
                        break;
                    }
                }
            }
            if let Some(e) = read_error {
                if last_error.as_ref() != Some(&e) {
                    warn!(what, error = %e, "keeping the current TLS configuration");
                    last_error = Some(e);
                }
                continue;
            }
            if files.iter().map(|f| &f.bytes).eq(seen.iter()) {
                continue;
            }
            seen = files.iter().map(|f| f.bytes.clone()).collect();
            match build(&files) {
                Ok(value) => {
                    tx.send_replace(Arc::new(value));
                    last_error = None;
                    info!(
                        what,
                        "TLS files changed: new configuration in use for new connections"
                    );
                }
                Err(e) => {
                    warn!(what, error = %e, "TLS files changed but are not usable; keeping the current configuration");
                    last_error = Some(e.to_string());
                }
            }
        }
    });
    Ok(rx)
}
