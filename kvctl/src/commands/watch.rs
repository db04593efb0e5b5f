//! `watch KEY | --prefix P | --from A [--to B]`: one line per change, resuming by itself
//! (the common client's `Watch`); notes about resumption go to stderr (`watch: resumed on
//! ...`, with `-o json` a `{"resumed": {...}}` line).

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::client::{WatchError, WatchItem, WatchRequest};
use omnikv_common::Client;
use std::io::Write;

/// Prints changes until `count` of them (for ever without it) or a failure.
pub async fn run(
    client: &Client,
    req: WatchRequest,
    count: Option<u64>,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Error> {
    let mut watch = client.watch(req);
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match watch.next().await {
            Ok(WatchItem::Event(e)) => {
                output::write_watch_event(out, format, &e).map_err(Error::stdout)?;
                out.flush().map_err(Error::stdout)?;
                seen += 1;
            }
            Ok(WatchItem::Resumed {
                endpoint,
                revision,
                reason,
            }) => {
                // Diagnostics only: failing to print them must not end the watch.
                let _ = match format {
                    OutputFormat::Text => writeln!(
                        err,
                        "watch: resumed on {endpoint} at revision {revision} ({reason})"
                    ),
                    OutputFormat::Json => output::json_line(
                        err,
                        &serde_json::json!({"resumed": {
                            "endpoint": endpoint, "revision": revision, "reason": reason
                        }}),
                    ),
                };
            }
            Err(WatchError::Client(e)) => return Err(e.into()),
            Err(e @ WatchError::Compacted { .. }) => return Err(Error::Compacted(e.to_string())),
        }
    }
    Ok(())
}
