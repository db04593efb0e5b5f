//! `wait-serving [--max-wait 10m]`: waits until the replica at the (first) endpoint holds the
//! state and serves, showing its state transfer (`status.transfer`) as it goes: a progress bar
//! on a terminal, a plain line every two seconds otherwise (stderr). `just add-node` runs it
//! for the new replica.

use super::snapshot::mib;
use crate::exit::Error;
use crate::progress::Progress;
use omnikv_common::api::{Role, StatusView, TransferView};
use omnikv_common::{Client, ClientError};
use std::io::Write;
use std::time::{Duration, Instant};

/// How often the replica is asked.
const POLL: Duration = Duration::from_millis(200);

/// `12.0/118.3 MiB at 44.1 MiB/s, 2 s left`.
pub fn describe(t: &TransferView) -> String {
    let mut s = format!("{:.1}", mib(t.bytes));
    if t.bytes_total > 0 {
        s.push_str(&format!("/~{:.1}", mib(t.bytes_total)));
    }
    s.push_str(&format!(" MiB at {:.1} MiB/s", mib(t.rate_bytes_per_sec)));
    if let Some(ms) = t.eta_ms {
        s.push_str(&format!(", {} s left", ms.div_ceil(1000)));
    }
    if t.resumed_at_bytes > 0 {
        s.push_str(&format!(" (resumed at {:.1} MiB)", mib(t.resumed_at_bytes)));
    }
    s
}

/// Serving: a member with the state (not joining, not catching up).
fn serving(s: &StatusView) -> bool {
    matches!(
        s.role,
        Role::Leader | Role::Follower | Role::Candidate | Role::Standalone
    )
}

/// Polls `client`'s replica until it serves (exit 0), or fails with `unavailable` after
/// `max_wait` (0: no limit). Prints its role and key count once it serves.
pub async fn run(client: &Client, max_wait: Duration, out: &mut dyn Write) -> Result<(), Error> {
    let started = Instant::now();
    let mut progress: Option<Progress> = None;
    loop {
        match client.status().await {
            Ok(s) if serving(&s) => {
                if let Some(p) = &progress {
                    p.done();
                }
                writeln!(
                    out,
                    "replica {} serves as {} with {} keys (waited {:.1} s)",
                    s.pid,
                    s.role,
                    s.keys,
                    started.elapsed().as_secs_f64()
                )
                .map_err(Error::stdout)?;
                return Ok(());
            }
            Ok(s) => {
                if let Some(t) = &s.transfer {
                    progress
                        .get_or_insert_with(|| Progress::new("transfer", None))
                        .update(t.keys, t.keys_total, describe(t));
                }
            }
            Err(e @ ClientError::NotPermitted(_)) => return Err(Error::Client(e)),
            Err(_) => {} // starting, or busy: ask again
        }
        if !max_wait.is_zero() && started.elapsed() >= max_wait {
            if let Some(p) = &progress {
                p.done();
            }
            return Err(Error::Client(ClientError::Unavailable(format!(
                "the replica does not serve after {max_wait:?}"
            ))));
        }
        tokio::time::sleep(POLL).await;
    }
}
