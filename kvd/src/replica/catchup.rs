//! Catching up in the loop: a replica whose apply cursor fell below the compacted index
//! fetches the missing decided entries from a peer that still holds them, and only when none
//! does takes a streamed checkpoint; a joiner always takes a checkpoint. Also the serving side
//! of both: answering FetchEntries, CheckpointRequest and CheckpointResume.
//!
//! A checkpoint is written by the installer (`checkpoint::Installer`, off the loop): the loop
//! only hands it the chunks, acknowledges the ones it made durable (the sender's window),
//! reports progress, and makes the installed state the state machine's at the end. From the
//! first chunk staged until the install, the old state counts as superseded
//! (`state_replaced`; the switch empties it): catch-up then only resumes or restarts a
//! checkpoint, and after a crash the loop resumes it from the persisted progress.

use super::{Replica, FETCH_BYTES};
use crate::checkpoint::{self, Job, Outcome, Progress};
use crate::command::{LogCmd, Op};
use crate::frame::{CheckpointItem, PeerFrame};
use crate::membership::{stored_stopsign, Lifecycle};
use crate::peers::Peers;
use crate::state_machine::{Position, SmMeta};
use crate::storage::read_log_range;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
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
    Checkpoint(Box<Transfer>),
}

/// A checkpoint being received.
pub(super) struct Transfer {
    /// The next chunk expected from the sender (handed to the installer once it comes).
    next_seq: u64,
    /// What the installer made durable so far.
    pub(super) progress: Progress,
    /// When this stream (or its resumption) started, and the bytes and keys held then: the
    /// rate counts only what this stream brought.
    pub(super) started: Instant,
    pub(super) base_bytes: u64,
    pub(super) base_keys: u64,
    last_progress: Instant,
    last_logged: Instant,
}

impl Transfer {
    /// Bytes per second since this stream started.
    pub(super) fn rate(&self, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.progress.bytes.saturating_sub(self.base_bytes) as f64 / secs
    }

    /// Whether the stream is interrupted, and says why: the session to its sender is down (a
    /// crashed or restarting sender: the receiver waits for it to resume, rather than for
    /// the stall timer), or nothing came for `2 x catchup` (a silent sender, a lost chunk).
    fn interrupted(&self, peers: &impl Peers, now: Instant, catchup: Duration) -> bool {
        let from = self.progress.from;
        if !peers.is_connected(from) {
            warn!(
                peer = from,
                "checkpoint interrupted: its sender's session is down"
            );
            return true;
        }
        if now.saturating_duration_since(self.last_progress) > catchup * 2 {
            warn!(peer = from, "checkpoint stalled");
            return true;
        }
        false
    }

    /// Time left at this stream's key rate so far (None before any key came).
    pub(super) fn eta(&self, now: Instant) -> Option<Duration> {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let got = self.progress.keys.saturating_sub(self.base_keys);
        if got == 0 || secs <= 0.0 || self.progress.keys_total == 0 {
            return None;
        }
        let left = self.progress.keys_total.saturating_sub(self.progress.keys);
        Some(Duration::from_secs_f64(left as f64 * secs / got as f64))
    }
}

impl<P: Peers> Replica<P> {
    /// True while a checkpoint is being received or its state is incomplete: the local state
    /// is about to be replaced, or is being.
    pub(super) fn installing_checkpoint(&self) -> bool {
        self.receiving_checkpoint() || self.state_replaced
    }

    /// True while a checkpoint stream is under way.
    fn receiving_checkpoint(&self) -> bool {
        matches!(self.catchup, Some(CatchUp::Checkpoint(_)))
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
        self.poll_installer();
        if self.meta.lifecycle == Lifecycle::Joining || self.catchup.is_none() {
            return; // joined or caught up by what the installer finished
        }
        let applied = self.sm.applied().index;
        if applied >= self.compacted_idx() && !self.installing_checkpoint() {
            self.finish_catchup();
            return;
        }
        if self.state_replaced && !self.receiving_checkpoint() {
            // The old state is gone: only a checkpoint brings one back.
            if matches!(&self.catchup, Some(CatchUp::Fetching { next_ask, .. }) if self.now >= *next_ask)
            {
                self.checkpoint_again();
            }
            return;
        }
        let now = self.now;
        let timeout = self.cfg.timers.catchup;
        let peers = self.connected_peers();
        let decided = self.decided_idx();
        let batch = self.apply_batch();
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
                    to: decided.min(applied + batch).max(applied + 1),
                };
                self.peers.send(peer, frame);
            }
            Some(CatchUp::Checkpoint(t)) if t.interrupted(&self.peers, now, timeout) => {
                self.checkpoint_again();
            }
            Some(CatchUp::Checkpoint(_)) | None => {}
        }
    }

    /// The members (and the replicas that announced the change we are joining) with a live
    /// session: who can send a checkpoint.
    fn checkpoint_sources(&self) -> Vec<u64> {
        let mut peers: Vec<u64> = self.connected_peers();
        let holders: Vec<u64> = self
            .announcers
            .iter()
            .copied()
            .filter(|&p| !peers.contains(&p) && self.peers.is_connected(p))
            .collect();
        peers.extend(holders);
        peers
    }

    /// Asks for a checkpoint (again): resumes the transfer where the installer stopped when
    /// one is under way (waiting a while for its sender's session), otherwise asks the next
    /// source from the start. False: no source is connected yet.
    fn checkpoint_again(&mut self) -> bool {
        let stored = Progress::load(&self.db).unwrap_or_else(|e| panic!("reading progress: {e}"));
        if let Some(p) = stored.filter(|p| p.next_seq > 0 && p.config_id == self.meta.config_id) {
            if self.peers.is_connected(p.from) {
                self.resume_deadline = None;
                self.resume_checkpoint(p);
                return true;
            }
            let deadline = *self
                .resume_deadline
                .get_or_insert(self.now + self.cfg.timers.catchup * 2);
            if self.now < deadline {
                self.restart_catchup();
                return false; // its sender may come back (a restart): wait for it a while
            }
            self.resume_deadline = None;
            info!(
                peer = p.from,
                "the sender of the interrupted checkpoint is gone"
            );
        }
        let peers = self.checkpoint_sources();
        if peers.is_empty() {
            self.restart_catchup();
            return false; // sessions are still coming up: ask once one is
        }
        self.rr = self.rr.wrapping_add(1);
        let from = peers[self.rr % peers.len()];
        info!(
            peer = from,
            config_id = self.meta.config_id,
            "asking for the state (checkpoint)"
        );
        self.request_checkpoint(from);
        true
    }

    /// A joiner asks the next connected member for a checkpoint, or a replica that
    /// announced the change to it: one that left the old configuration holds exactly the
    /// state the new one starts from, and may be the only one (every member of the new
    /// configuration joined without state).
    fn joining_catchup_tick(&mut self) {
        self.poll_installer();
        if self.meta.lifecycle != Lifecycle::Joining {
            return; // the installer finished: joined
        }
        let now = self.now;
        let timeout = self.cfg.timers.catchup;
        match &mut self.catchup {
            Some(CatchUp::Fetching { next_ask, .. }) if now >= *next_ask => {
                self.checkpoint_again();
            }
            Some(CatchUp::Checkpoint(t)) if t.interrupted(&self.peers, now, timeout) => {
                self.checkpoint_again();
            }
            _ => {}
        }
    }

    /// Asks `from` for a checkpoint of the current configuration's state, staged as it comes.
    fn request_checkpoint(&mut self, from: u64) {
        let id = self.rng.random::<u64>();
        let config_id = self.meta.config_id;
        self.installer.submit(Job::Begin {
            from,
            id,
            config_id,
            resume: false,
        });
        self.peers
            .send(from, PeerFrame::CheckpointRequest { id, config_id });
        let progress = Progress {
            from,
            id,
            config_id,
            ..Progress::default()
        };
        self.start_transfer(progress);
    }

    /// Asks the sender of an interrupted transfer for the rest of it, from the same state.
    fn resume_checkpoint(&mut self, p: Progress) {
        info!(
            peer = p.from,
            chunk = p.next_seq,
            bytes = p.bytes,
            keys = p.keys,
            "resuming the checkpoint transfer where it stopped"
        );
        self.metrics.checkpoints_resumed.inc();
        self.installer.submit(Job::Begin {
            from: p.from,
            id: p.id,
            config_id: p.config_id,
            resume: true,
        });
        let r = p.resume();
        self.peers.send(
            p.from,
            PeerFrame::CheckpointResume {
                id: p.id,
                config_id: p.config_id,
                next_seq: r.next_seq,
                crc: r.crc,
                after: r.after,
            },
        );
        self.start_transfer(p);
    }

    /// Whether the checkpoint being received is stream `id`.
    fn receiving_stream(&self, id: u64) -> bool {
        matches!(&self.catchup, Some(CatchUp::Checkpoint(t)) if t.progress.id == id)
    }

    fn start_transfer(&mut self, progress: Progress) {
        self.metrics.catching_up.set(1);
        self.catchup = Some(CatchUp::Checkpoint(Box::new(Transfer {
            next_seq: progress.next_seq,
            base_bytes: progress.bytes,
            base_keys: progress.keys,
            progress,
            started: self.now,
            last_progress: self.now,
            last_logged: self.now,
        })));
        self.export_transfer();
    }

    /// Progress gauges of the transfer under way (zeros when none).
    fn export_transfer(&self) {
        let m = &self.metrics;
        match &self.catchup {
            Some(CatchUp::Checkpoint(t)) => {
                let p = &t.progress;
                m.transfer_bytes.set(p.bytes as i64);
                m.transfer_bytes_total.set(p.bytes_total as i64);
                m.transfer_keys.set(p.keys as i64);
                m.transfer_keys_total.set(p.keys_total as i64);
                m.transfer_rate.set(t.rate(self.now) as i64);
                m.transfer_eta_seconds
                    .set(t.eta(self.now).map_or(-1, |d| d.as_secs() as i64));
            }
            _ => {
                for g in [
                    &m.transfer_bytes,
                    &m.transfer_bytes_total,
                    &m.transfer_keys,
                    &m.transfer_keys_total,
                    &m.transfer_rate,
                ] {
                    g.set(0);
                }
                m.transfer_eta_seconds.set(-1);
            }
        }
    }

    /// Takes what the installer finished: acknowledges written chunks to the sender (its
    /// window), reports progress, and completes an install.
    pub(super) fn poll_installer(&mut self) {
        while let Some(outcome) = self.installer.poll() {
            match outcome {
                Outcome::Written { id, seq, progress } => {
                    let now = self.now;
                    let Some(CatchUp::Checkpoint(t)) = &mut self.catchup else {
                        continue;
                    };
                    if t.progress.id != id {
                        continue;
                    }
                    self.state_replaced = true;
                    let got = progress.bytes.saturating_sub(t.progress.bytes);
                    t.progress = *progress;
                    t.last_progress = now;
                    let (from, log) = (
                        t.progress.from,
                        now.saturating_duration_since(t.last_logged),
                    );
                    self.metrics.checkpoint_bytes_received.inc_by(got);
                    self.peers.send(from, PeerFrame::CheckpointAck { id, seq });
                    if log >= Duration::from_secs(2) {
                        self.log_transfer();
                    }
                }
                Outcome::Installed { id, meta, sm } => {
                    let current = self.receiving_stream(id);
                    if current {
                        self.installed(meta, sm.0);
                    }
                }
                Outcome::Failed { id, error } => {
                    let current = self.receiving_stream(id);
                    if current {
                        warn!(%error, "checkpoint failed; asking for a new one");
                        // Its progress no longer describes the state: start from scratch.
                        self.catchup = None;
                        self.checkpoint_fresh();
                    }
                }
            }
        }
        self.export_transfer();
    }

    /// A new checkpoint from the start, never a resumption of the last one.
    fn checkpoint_fresh(&mut self) {
        self.forget_progress();
        self.checkpoint_again();
    }

    /// Makes the persisted progress describe no transfer to resume, keeping the record while
    /// the state is incomplete (the old one is gone: only a checkpoint brings one back).
    fn forget_progress(&mut self) {
        let cf = self.db.cf(crate::storage::CF_META);
        let mut b = rocksdb::WriteBatch::default();
        if self.state_replaced {
            let wiped = Progress {
                config_id: self.meta.config_id,
                ..Progress::default()
            };
            b.put_cf(cf, checkpoint::META_RECEIVING, crate::codec::encode(&wiped));
        } else {
            b.delete_cf(cf, checkpoint::META_RECEIVING);
        }
        self.db
            .write(b)
            .unwrap_or_else(|e| panic!("resetting checkpoint progress: {e}"));
    }

    fn log_transfer(&mut self) {
        let now = self.now;
        let Some(CatchUp::Checkpoint(t)) = &mut self.catchup else {
            return;
        };
        t.last_logged = now;
        let p = &t.progress;
        info!(
            peer = t.progress.from,
            bytes = p.bytes,
            bytes_total = p.bytes_total,
            keys = p.keys,
            keys_total = p.keys_total,
            rate_mb_s = format!("{:.1}", t.rate(now) / 1e6),
            eta_s = t.eta(now).map(|d| d.as_secs()),
            "checkpoint transfer progress"
        );
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
            self.peers.stream_checkpoint(from, id, &self.db, None);
        }
    }

    /// A receiver asks for the rest of stream `id`: served from the copy frozen for it, if
    /// still kept (the stream refuses otherwise).
    pub(super) fn on_checkpoint_resume(&mut self, from: u64, id: u64, resume: checkpoint::Resume) {
        if self.peers.has_link(from) {
            info!(
                peer = from,
                chunk = resume.next_seq,
                "resuming a checkpoint stream"
            );
            self.peers
                .stream_checkpoint(from, id, &self.db, Some(resume));
        }
    }

    /// The receiver of stream `id` wrote chunk `seq` (or, `u64::MAX`, installed it all).
    pub(super) fn on_checkpoint_ack(&mut self, from: u64, id: u64, seq: u64) {
        self.peers.checkpoint_acked(from, id, seq);
        if seq == u64::MAX {
            checkpoint::remove_outgoing(&self.db, Some(from), None);
        }
    }

    fn transfer_from(&mut self, from: u64, id: u64) -> Option<&mut Transfer> {
        match &mut self.catchup {
            Some(CatchUp::Checkpoint(t)) if t.progress.id == id && t.progress.from == from => {
                Some(t)
            }
            _ => None,
        }
    }

    pub(super) fn on_checkpoint_start(&mut self, from: u64, id: u64, keys: u64, bytes: u64) {
        let Some(t) = self.transfer_from(from, id) else {
            return;
        };
        t.progress.keys_total = keys;
        t.progress.bytes_total = bytes;
        let held = t.progress.bytes;
        self.installer.submit(Job::Totals { id, keys, bytes });
        info!(
            peer = from,
            keys,
            bytes,
            from_bytes = held,
            "checkpoint transfer started"
        );
    }

    pub(super) fn on_checkpoint_chunk(
        &mut self,
        from: u64,
        id: u64,
        seq: u64,
        items: Vec<CheckpointItem>,
    ) {
        let now = self.now;
        let Some(t) = self.transfer_from(from, id) else {
            return;
        };
        if seq != t.next_seq {
            // A repeat after a resumption, or a gap (a dropped chunk): the stall timeout
            // resumes from what the installer wrote.
            debug!(
                seq,
                expected = t.next_seq,
                "checkpoint chunk out of order; ignored"
            );
            return;
        }
        t.next_seq += 1;
        t.last_progress = now;
        if !self.installer.submit(Job::Chunk { id, seq, items }) {
            warn!(
                seq,
                "checkpoint installer full (sender beyond its window); chunk dropped"
            );
        }
    }

    pub(super) fn on_checkpoint_done(
        &mut self,
        from: u64,
        id: u64,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    ) {
        if self.transfer_from(from, id).is_none() {
            return;
        }
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
            self.catchup = None;
            self.checkpoint_fresh();
            return;
        }
        self.installer.submit(Job::Done {
            id,
            chunks,
            crc,
            meta,
        });
    }

    /// The installer made the received state durable and loaded a state machine over it
    /// (off the loop: reading a large dedup table takes a while): it becomes ours.
    fn installed(&mut self, m: SmMeta, mut sm: Box<crate::state_machine::StateMachine>) {
        let (from, id, started, bytes) = match &self.catchup {
            Some(CatchUp::Checkpoint(t)) => {
                (t.progress.from, t.progress.id, t.started, t.progress.bytes)
            }
            _ => return,
        };
        self.phases.mark("catchup");
        self.catchup = None;
        self.state_replaced = false;
        self.peers
            .send(from, PeerFrame::CheckpointAck { id, seq: u64::MAX });
        sm.set_ignore_dedup(self.cfg.defect == Some(super::Defect::ApplyIgnoresDedup));
        self.sm = *sm;
        self.phases.mark("install:swap-state-machine");
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
            bytes,
            elapsed_ms = self.now.saturating_duration_since(started).as_millis() as u64,
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
        self.phases.mark("install:rest");
        self.restart_catchup();
        self.catchup_tick();
    }

    pub(super) fn on_checkpoint_refused(&mut self, from: u64, id: u64, reason: &str) {
        if !self.receiving_stream(id) {
            return;
        }
        info!(peer = from, %reason, "checkpoint refused; asking again");
        // A refused resumption (the sender no longer keeps that state) starts over.
        if Progress::load(&self.db)
            .ok()
            .flatten()
            .is_some_and(|p| p.id == id)
        {
            self.forget_progress();
        }
        self.restart_catchup();
        let retry_at = self.now + self.cfg.timers.checkpoint_retry;
        if let Some(CatchUp::Fetching { next_ask, .. }) = &mut self.catchup {
            *next_ask = retry_at;
        }
    }
}
