//! Read-only answers of the loop: status, members, the reconfiguration in progress, the
//! recent decided log (for demos).

use super::catchup::CatchUp;
use super::{Log, Replica};
use crate::command::Op;
use crate::membership::{stored_stopsign, Lifecycle};
use crate::peers::Peers;
use crate::storage::read_log_range;
use omnikv_common::api::{
    LogEntryView, LogView, MemberView, MembersView, Phase, ReconfigView, Role, StatusView,
    TransferView,
};

impl<P: Peers> Replica<P> {
    pub(super) fn members_view(&self) -> MembersView {
        MembersView {
            config_id: self.meta.config_id,
            leader: self.current_leader(),
            members: self
                .meta
                .members
                .iter()
                .map(|&pid| MemberView {
                    pid,
                    peer_addr: self.meta.addrs.get(&pid).cloned(),
                })
                .collect(),
        }
    }

    fn reconfig_view(&self) -> Option<ReconfigView> {
        if self.meta.lifecycle == Lifecycle::Leaving {
            let t = self.meta.last_transition.as_ref()?;
            return Some(ReconfigView {
                config_id: t.config_id,
                members: t.members.clone(),
                phase: Phase::Leaving,
            });
        }
        if let Some(r) = &self.reconfig {
            return Some(ReconfigView {
                config_id: self.meta.config_id + 1,
                members: r.nodes.clone(),
                phase: Phase::Proposed,
            });
        }
        if let Log::Paxos(op) = &self.log {
            let decided = op.get_decided_idx() as u64;
            // One read: decided = stored and the decided index past it (decided_stopsign).
            if let Ok(Some((ss, end))) = stored_stopsign(&self.db, self.meta.config_id) {
                let phase = if decided > end {
                    Phase::Decided
                } else {
                    Phase::Proposed
                };
                return Some(ReconfigView {
                    config_id: ss.next_config.configuration_id,
                    members: ss.next_config.nodes.clone(),
                    phase,
                });
            }
        }
        None
    }

    fn role(&self) -> Role {
        match self.meta.lifecycle {
            Lifecycle::Joining => return Role::Joining,
            Lifecycle::Leaving => return Role::Leaving,
            Lifecycle::Removed => return Role::Removed,
            Lifecycle::Serving => {}
        }
        if self.catchup.is_some() {
            return Role::CatchingUp;
        }
        match (&self.log, self.current_leader()) {
            (Log::Local(_), _) => Role::Standalone,
            (Log::None, _) => Role::Removed,
            (_, Some(l)) if l == self.cfg.pid => Role::Leader,
            (_, Some(_)) => Role::Follower,
            (_, None) => Role::Candidate,
        }
    }

    pub fn status(&self) -> StatusView {
        let meta = self.sm.meta();
        StatusView {
            pid: self.cfg.pid,
            role: self.role(),
            leader: self.current_leader(),
            config_id: self.meta.config_id,
            members: self.meta.members.clone(),
            decided_idx: self.decided_idx(),
            applied_idx: meta.applied.index,
            compacted_idx: self.compacted_idx(),
            keys: meta.keys,
            state_hash: format!("{:016x}", meta.hash),
            revision: meta.revision,
            cluster_id: format!("{:016x}", self.meta.cluster_id),
            connected_peers: self.connected_peers(),
            reconfiguration: self.reconfig_view(),
            transfer: match &self.catchup {
                Some(CatchUp::Checkpoint(t)) => Some(TransferView {
                    from: t.progress.from,
                    bytes: t.progress.bytes,
                    items: t.progress.items,
                    elapsed_ms: self.now.saturating_duration_since(t.started).as_millis() as u64,
                    keys: t.progress.keys,
                    keys_total: t.progress.keys_total,
                    bytes_total: t.progress.bytes_total,
                    rate_bytes_per_sec: t.rate(self.now) as u64,
                    eta_ms: t.eta(self.now).map(|d| d.as_millis() as u64),
                    resumed_at_bytes: t.base_bytes,
                }),
                _ => None,
            },
        }
    }

    pub(super) fn log_view(&self, limit: usize) -> LogView {
        let mut decided = self.decided_idx();
        if let Ok(Some((_, end))) = stored_stopsign(&self.db, self.meta.config_id) {
            decided = decided.min(end);
        }
        let compacted = self.compacted_idx();
        let start = decided.saturating_sub(limit as u64).max(compacted);
        let mut entries = Vec::new();
        if compacted > 0 {
            entries.push(LogEntryView::Snapshot { upto: compacted });
        }
        if let Ok(Some(cmds)) = read_log_range(
            &self.db,
            self.meta.config_id,
            start as usize,
            decided as usize,
        ) {
            for (i, c) in cmds.iter().enumerate() {
                entries.push(LogEntryView::Entry {
                    index: start + i as u64,
                    ops: c.ops.iter().map(Op::describe).collect(),
                });
            }
        }
        LogView {
            config_id: self.meta.config_id,
            decided_idx: decided,
            compacted_idx: compacted,
            entries,
        }
    }
}
