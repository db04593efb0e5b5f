//! Where a loop iteration's time went: named phases timed with the real clock, kept for the
//! current iteration only, so that the longest iteration can say what it did.

use crate::frame::PeerFrame;
use crate::inbox::Input;
use omnipaxos::messages::sequence_paxos::PaxosMsg;
use omnipaxos::messages::Message;
use std::time::{Duration, Instant};

/// Distinct phase names kept per iteration; a name beyond them is not counted.
const SLOTS: usize = 32;

/// The time spent in each named phase of the current iteration, and how often it ran.
pub(super) struct Phases {
    last: Instant,
    spent: Vec<(&'static str, Duration, u32)>,
}

impl Phases {
    pub(super) fn new() -> Phases {
        Phases {
            last: Instant::now(),
            spent: Vec::with_capacity(SLOTS),
        }
    }

    /// Starts the account of a new iteration.
    pub(super) fn begin(&mut self) {
        self.spent.clear();
        self.last = Instant::now();
    }

    /// Charges the time since the last mark (or `begin`) to phase `name`.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.last);
        self.last = now;
        if let Some(slot) = self.spent.iter_mut().find(|s| s.0 == name) {
            slot.1 += took;
            slot.2 += 1;
        } else if self.spent.len() < SLOTS {
            self.spent.push((name, took, 1));
        }
    }

    /// The phases that took at least 0.1 ms, longest first: `name=12.3ms` (`x4` when it ran
    /// more than once).
    pub(super) fn describe(&self) -> String {
        let mut v: Vec<_> = self
            .spent
            .iter()
            .filter(|s| s.1 >= Duration::from_micros(100))
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.1));
        let parts: Vec<String> = v
            .iter()
            .map(|(name, took, n)| {
                let ms = took.as_secs_f64() * 1e3;
                match n {
                    1 => format!("{name}={ms:.1}ms"),
                    _ => format!("{name}={ms:.1}ms x{n}"),
                }
            })
            .collect();
        parts.join(" ")
    }
}

/// The phase name of handling `input`.
pub(super) fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Peer { frame, .. } => frame_kind(frame),
        Input::PeerUp(_) => "peer-up",
        Input::Client(_) => "client",
        Input::Drain { .. } => "drain",
        Input::Shutdown => "shutdown",
    }
}

fn frame_kind(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Paxos { msg, .. } => paxos_kind(msg),
        PeerFrame::CheckpointChunk { .. } => "in:checkpoint-chunk",
        PeerFrame::CheckpointDone { .. } => "in:checkpoint-done",
        PeerFrame::Entries { .. } => "in:entries",
        PeerFrame::FetchEntries { .. } => "in:fetch-entries",
        PeerFrame::ReadProbe { .. } | PeerFrame::ReadProbeAck { .. } => "in:read-probe",
        _ => "in:other",
    }
}

fn paxos_kind(msg: &Message<crate::command::LogCmd>) -> &'static str {
    let Message::SequencePaxos(m) = msg else {
        return "in:ble";
    };
    match &m.msg {
        PaxosMsg::PrepareReq(_) | PaxosMsg::Prepare(_) | PaxosMsg::Promise(_) => "in:prepare",
        PaxosMsg::AcceptSync(_) => "in:accept-sync",
        PaxosMsg::AcceptDecide(_) => "in:accept-decide",
        PaxosMsg::Accepted(_) => "in:accepted",
        PaxosMsg::Decide(_) => "in:decide",
        PaxosMsg::Compaction(_) => "in:compaction",
        _ => "in:paxos-other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_by_name_longest_first() {
        let mut p = Phases::new();
        p.begin();
        // "sync" sleeps 100 ms and "apply" 1 ms: a margin no late wake-up on a busy machine
        // closes (describe leaves out phases under 0.1 ms, so "apply" needs a sleep too).
        std::thread::sleep(Duration::from_millis(100));
        p.mark("sync");
        p.mark("apply");
        std::thread::sleep(Duration::from_millis(1));
        p.mark("apply");
        let d = p.describe();
        assert!(d.starts_with("sync="), "{d}");
        assert!(d.contains("apply=") && d.ends_with(" x2"), "{d}");
        p.begin();
        assert_eq!(p.describe(), "");
    }
}
