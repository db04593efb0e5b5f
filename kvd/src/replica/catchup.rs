//! Catching up in the loop: a replica whose apply cursor fell below the compacted index
//! fetches the missing decided entries from a peer that still holds them, and only when none
//! does takes a streamed checkpoint; a joiner always takes a checkpoint. Also the serving side
//! of both: answering FetchEntries and CheckpointRequest.

use super::{Replica, FETCH_BYTES};
use crate::checkpoint;
use crate::command::{LogCmd, Op};
use crate::frame::PeerFrame;
use crate::membership::{stored_stopsign, Lifecycle};
use crate::peers::Peers;
use crate::state_machine::{Position, SmMeta};
use crate::storage::read_log_range;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Instant;
use tracing::{debug, info, warn};

pub(super) enum CatchUp {
    Fetching {
        /// The peer asked last (0: none yet).
        asked: u64,
        /// When to ask (again): the last request timed out, or an answer came.
        next_ask: Instant,
        /// Peers that answered they lack the entries, with their applied index.
        unavailable: BTreeMap<u64, u64>,
    },
    Checkpoint {
        rx: checkpoint::Receiver,
        last_progress: Instant,
        started: Instant,
    },
}

impl<P: Peers> Replica<P> {
    /// True while a checkpoint is being received: the local state is about to be replaced.
    pub(super) fn installing_checkpoint(&self) -> bool {
        matches!(self.catchup, Some(CatchUp::Checkpoint { .. }))
    }

    /// The members (of the configuration this replica runs) it has a live session to.
    pub(super) fn connected_peers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .meta
            .members
            .iter()
            .copied()
            .filter(|&p| p != self.cfg.pid && self.peers.is_connected(p))
            .collect();
        v.sort_unstable();
        v
    }

    pub(super) fn start_joining_catchup(&mut self) {
        self.metrics.catching_up.set(1);
        self.restart_catchup();
    }

    pub(super) fn start_catchup(&mut self) {
        info!(
            applied = self.sm.applied().index,
            compacted = self.compacted_idx(),
            "catching up: entries below the compacted index are missing"
        );
        self.metrics.catching_up.set(1);
        self.metrics.catchups.inc();
        self.restart_catchup();
        self.catchup_tick();
    }

    fn restart_catchup(&mut self) {
        self.catchup = Some(CatchUp::Fetching {
            asked: 0,
            next_ask: self.now,
            unavailable: BTreeMap::new(),
        });
    }

    fn finish_catchup(&mut self) {
        info!(applied = self.sm.applied().index, "caught up");
        self.catchup = None;
        self.metrics.catching_up.set(0);
    }

    /// Drives catch-up: asks a (next) peer when the last request timed out.
    pub(super) fn catchup_tick(&mut self) {
        if self.meta.lifecycle == Lifecycle::Joining {
            self.joining_catchup_tick();
            return;
        }
        let applied = self.sm.applied().index;
        if applied >= self.compacted_idx() && !self.installing_checkpoint() {
            self.finish_catchup();
            return;
        }
        let now = self.now;
        let timeout = self.cfg.timers.catchup;
        let peers = self.connected_peers();
        let decided = self.decided_idx();
        match &mut self.catchup {
            Some(CatchUp::Fetching {
                asked,
                next_ask,
                unavailable,
            }) => {
                if now < *next_ask {
                    return;
                }
                unavailable.retain(|p, _| peers.contains(p));
                let candidates: Vec<u64> = peers
                    .iter()
                    .copied()
                    .filter(|p| !unavailable.contains_key(p))
                    .collect();
                if candidates.is_empty() {
                    // Nobody holds the entries: take a checkpoint from the most advanced peer.
                    if let Some((&from, _)) = unavailable
                        .iter()
                        .filter(|(_, &a)| a > applied)
                        .max_by_key(|(&p, &a)| (a, p))
                    {
                        info!(peer = from, "catching up from a checkpoint");
                        self.request_checkpoint(from);
                    } else {
                        unavailable.clear();
                        *next_ask = now + timeout;
                    }
                    return;
                }
                self.rr = self.rr.wrapping_add(1);
                let peer = candidates[self.rr % candidates.len()];
                *asked = peer;
                *next_ask = now + timeout;
                let frame = PeerFrame::FetchEntries {
                    config_id: self.meta.config_id,
                    from: applied,
                    to: decided.max(applied + 1),
                };
                self.peers.send(peer, frame);
            }
            Some(CatchUp::Checkpoint {
                rx, last_progress, ..
            }) if now.saturating_duration_since(*last_progress) > timeout * 2 => {
                warn!(peer = rx.from, "checkpoint stalled; starting over");
                self.restart_catchup();
            }
            Some(CatchUp::Checkpoint { .. }) | None => {}
        }
    }

    /// A joiner asks the next connected member for a checkpoint, or a replica that
    /// announced the change to it: one that left the old configuration holds exactly the
    /// state the new one starts from, and may be the only one (every member of the new
    /// configuration joined without state).
    fn joining_catchup_tick(&mut self) {
        let now = self.now;
        let timeout = self.cfg.timers.catchup;
        let mut peers: Vec<u64> = self.connected_peers();
        let holders: Vec<u64> = self
            .announcers
            .iter()
            .copied()
            .filter(|&p| !peers.contains(&p) && self.peers.is_connected(p))
            .collect();
        peers.extend(holders);
        match &mut self.catchup {
            Some(CatchUp::Fetching { next_ask, .. }) if now >= *next_ask => {
                if peers.is_empty() {
                    return; // sessions to the members are still coming up: ask once one is
                }
                *next_ask = now + timeout;
                self.rr = self.rr.wrapping_add(1);
                let from = peers[self.rr % peers.len()];
                info!(
                    peer = from,
                    config_id = self.meta.config_id,
                    "asking for the state (checkpoint)"
                );
                self.request_checkpoint(from);
            }
            Some(CatchUp::Checkpoint {
                rx, last_progress, ..
            }) if now.saturating_duration_since(*last_progress) > timeout * 2 => {
                warn!(peer = rx.from, "checkpoint stalled; asking again");
                self.restart_catchup();
            }
            _ => {}
        }
    }

    /// Asks `from` for a checkpoint of the current configuration's state, staged as it comes.
    fn request_checkpoint(&mut self, from: u64) {
        let id = self.rng.random::<u64>();
        let rx = checkpoint::Receiver::start(&self.db, from, id)
            .unwrap_or_else(|e| panic!("staging checkpoint: {e}"));
        self.peers.send(
            from,
            PeerFrame::CheckpointRequest {
                id,
                config_id: self.meta.config_id,
            },
        );
        self.catchup = Some(CatchUp::Checkpoint {
            rx,
            last_progress: self.now,
            started: self.now,
        });
    }

    /// Answers a peer's FetchEntries with decided entries we still hold.
    pub(super) fn serve_fetch(&mut self, peer: u64, start: u64, to: u64) {
        let compacted = self.compacted_idx();
        let decided = self.decided_idx();
        let unavailable = PeerFrame::EntriesUnavailable {
            config_id: self.meta.config_id,
            from: start,
            compacted,
            applied: self.sm.applied().index,
        };
        // A decided StopSign counts in the decided index but is no log entry: serve the
        // entries before it (a range up to the decided index would miss one and be refused).
        let end = match stored_stopsign(&self.db, self.meta.config_id) {
            Ok(Some((_, ss_idx))) => decided.min(ss_idx),
            _ => decided,
        };
        if start < compacted || start >= end {
            self.peers.send(peer, unavailable);
            return;
        }
        let end = to.min(end).min(start + self.cfg.max_apply as u64);
        match read_log_range(&self.db, self.meta.config_id, start as usize, end as usize) {
            Ok(Some(mut entries)) => {
                let mut size = 0;
                let keep = entries
                    .iter()
                    .take_while(|e| {
                        size += e.ops.iter().map(Op::size).sum::<usize>();
                        size <= FETCH_BYTES
                    })
                    .count()
                    .max(1);
                entries.truncate(keep);
                let frame = PeerFrame::Entries {
                    config_id: self.meta.config_id,
                    from: start,
                    entries,
                };
                self.peers.send(peer, frame);
            }
            _ => {
                self.peers.send(peer, unavailable);
            }
        }
    }

    pub(super) fn on_entries(&mut self, from: u64, start: u64, entries: Vec<LogCmd>) {
        let now = self.now;
        let Some(CatchUp::Fetching { next_ask, .. }) = &mut self.catchup else {
            return;
        };
        if start != self.sm.applied().index || entries.is_empty() {
            return;
        }
        *next_ask = now; // ask again at once
        debug!(
            peer = from,
            start,
            n = entries.len(),
            "catch-up entries received"
        );
        self.metrics.fetched_entries.inc_by(entries.len() as u64);
        self.apply_entries(&entries);
        self.catchup_tick();
    }

    pub(super) fn on_entries_unavailable(&mut self, from: u64, start: u64, applied: u64) {
        let now = self.now;
        if let Some(CatchUp::Fetching {
            unavailable,
            next_ask,
            asked,
        }) = &mut self.catchup
        {
            if start == self.sm.applied().index {
                unavailable.insert(from, applied);
                if *asked == from {
                    *next_ask = now;
                }
            }
        }
        self.catchup_tick();
    }

    /// The position this replica's state is at, as the start of configuration `config_id`:
    /// its state is that configuration's, or (removed, leaving) exactly the state it
    /// started from.
    fn holds_state_of(&self, config_id: u32) -> bool {
        match self.meta.lifecycle {
            Lifecycle::Serving => {
                self.catchup.is_none()
                    && self.meta.config_id == config_id
                    && self.sm.applied().config_id == config_id
            }
            Lifecycle::Leaving => {
                self.catchup.is_none()
                    && self.meta.last_transition.as_ref().is_some_and(|t| {
                        t.config_id == config_id && self.sm.applied() == t.ends_at()
                    })
            }
            Lifecycle::Joining | Lifecycle::Removed => false,
        }
    }

    pub(super) fn on_checkpoint_request(&mut self, from: u64, id: u64, config_id: u32) {
        if !self.holds_state_of(config_id) {
            let reason = format!(
                "replica {} holds no state of configuration {config_id}",
                self.cfg.pid
            );
            self.peers
                .send(from, PeerFrame::CheckpointRefused { id, reason });
            return;
        }
        if self.peers.has_link(from) {
            info!(peer = from, "streaming a checkpoint");
            self.peers.stream_checkpoint(from, id, &self.db);
        }
    }

    pub(super) fn on_checkpoint_chunk(
        &mut self,
        from: u64,
        id: u64,
        seq: u64,
        items: &[crate::frame::CheckpointItem],
    ) {
        let now = self.now;
        let Some(CatchUp::Checkpoint {
            rx, last_progress, ..
        }) = &mut self.catchup
        else {
            return;
        };
        if rx.id != id || rx.from != from {
            return;
        }
        let before = rx.bytes;
        if let Err(e) = rx.chunk(&self.db, seq, items) {
            warn!(error = %e, "checkpoint chunk refused; starting over");
            self.restart_catchup();
            return;
        }
        *last_progress = now;
        let got = rx.bytes - before;
        self.metrics.checkpoint_bytes_received.inc_by(got);
    }

    pub(super) fn on_checkpoint_done(
        &mut self,
        from: u64,
        id: u64,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    ) {
        let Some(CatchUp::Checkpoint { rx, .. }) = &self.catchup else {
            return;
        };
        if rx.id != id || rx.from != from {
            return;
        }
        let Some(CatchUp::Checkpoint { rx, .. }) = self.catchup.take() else {
            unreachable!()
        };
        // The state of this configuration, or the state it started from (from a replica that
        // left the configuration before).
        let start = self
            .meta
            .last_transition
            .as_ref()
            .filter(|t| t.config_id == self.meta.config_id)
            .map(|t| t.ends_at());
        if meta.applied.config_id != self.meta.config_id && Some(meta.applied) != start {
            warn!("checkpoint from another configuration; ignoring");
            self.restart_catchup();
            return;
        }
        match rx.finish(&self.db, chunks, crc, meta) {
            Ok(m) => {
                self.sm
                    .reload()
                    .unwrap_or_else(|e| panic!("reloading state after checkpoint: {e}"));
                self.lease_clock.reload(self.sm.leases().iter(), self.now);
                if self.sm.applied().config_id != self.meta.config_id {
                    // The end of the previous configuration is this one's start.
                    let start = Position {
                        config_id: self.meta.config_id,
                        index: 0,
                    };
                    self.sm
                        .set_applied(start)
                        .unwrap_or_else(|e| panic!("setting the applied position: {e}"));
                }
                self.metrics.checkpoints_installed.inc();
                let (first, revision) = (self.sm.history().first, self.sm.meta().revision);
                self.metrics.revision.set(revision as i64);
                self.metrics.history_first_revision.set(first as i64);
                self.cfg.watch_hub.reset(first);
                self.answer_from_checkpoint();
                info!(
                    index = m.applied.index,
                    keys = m.keys,
                    "state replaced by checkpoint"
                );
                if self.meta.lifecycle == Lifecycle::Joining {
                    self.meta.lifecycle = Lifecycle::Serving;
                    self.meta
                        .save_synced(&self.db)
                        .unwrap_or_else(|e| panic!("persisting membership: {e}"));
                    info!(
                        config_id = self.meta.config_id,
                        "joined: holds the state and serves"
                    );
                    self.tell_announcers_we_hold_the_state();
                }
                self.restart_catchup();
                self.catchup_tick();
            }
            Err(e) => {
                warn!(error = %e, "checkpoint rejected; starting over");
                self.restart_catchup();
            }
        }
    }

    pub(super) fn on_checkpoint_refused(&mut self, from: u64, id: u64, reason: &str) {
        let Some(CatchUp::Checkpoint { rx, .. }) = &self.catchup else {
            return;
        };
        if rx.id != id {
            return;
        }
        info!(peer = from, %reason, "checkpoint refused; asking another member");
        self.restart_catchup();
        let retry_at = self.now + self.cfg.timers.checkpoint_retry;
        if let Some(CatchUp::Fetching { next_ask, .. }) = &mut self.catchup {
            *next_ask = retry_at;
        }
    }
}
