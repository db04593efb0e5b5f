//! The consensus thread: drives the sans-IO `Replica` with the real clock and the loop's
//! inbox. It waits for an input or the next tick, handles what is queued (up to a bound), and
//! ends the iteration; the watchdog reads its heartbeat. Each iteration's duration goes to the
//! metrics (`loop_iteration_seconds`, the longest in `loop_longest_iteration_microseconds`).

use crate::inbox::Input;
use crate::peers::Peers;
use crate::replica::Replica;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// Most inputs handled per iteration before the loop syncs and answers.
const MAX_DRAIN: usize = 8192;

/// Runs `replica` until `Shutdown` or until every sender is gone. `heartbeat` gets the
/// milliseconds since `started` at each iteration (read by the watchdog).
pub fn run<P: Peers>(
    mut replica: Replica<P>,
    inbox: Receiver<Input>,
    heartbeat: Arc<AtomicU64>,
    started: Instant,
) {
    let status = replica.status();
    info!(pid = status.pid, config_id = status.config_id, members = ?status.members,
          applied = status.applied_idx, decided = status.decided_idx, "consensus loop started");
    loop {
        heartbeat.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let wait = replica
            .next_wakeup()
            .saturating_duration_since(Instant::now());
        let mut began = None;
        match inbox.recv_timeout(wait) {
            Ok(Input::Shutdown) => break,
            Ok(input) => {
                began = Some(Instant::now());
                replica.begin_iteration();
                replica.handle(Instant::now(), input);
                for _ in 0..MAX_DRAIN {
                    match inbox.try_recv() {
                        Ok(Input::Shutdown) => {
                            replica.finish_iteration(Instant::now());
                            replica.shutdown();
                            return;
                        }
                        Ok(input) => replica.handle(Instant::now(), input),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let began = began.unwrap_or_else(|| {
            replica.begin_iteration();
            Instant::now()
        });
        replica.finish_iteration(Instant::now());
        replica.observe_iteration(began.elapsed());
    }
    replica.shutdown();
}
