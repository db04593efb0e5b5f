//! The simulated network: FIFO links between replicas that drop and delay frames, cut links,
//! down replicas, and the replicas' `Peers` over it (`SimPeers`). A frame sent in step `s`
//! arrives in step `s + 1 + delay` at the earliest, never before an earlier frame on its link
//! (kvd's peer sessions are TCP). Checkpoint streams run inline through the same links.

use kvd::checkpoint::{self, ChunkSink, Resume};
use kvd::frame::PeerFrame;
use kvd::peers::Peers;
use kvd::storage::Db;
use omnipaxos::messages::sequence_paxos::PaxosMsg;
use omnipaxos::messages::Message;
use rand::rngs::StdRng;
use rand::Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// A frame in flight.
#[derive(Clone, Debug)]
pub struct Msg {
    pub at: u64,
    pub seq: u64,
    pub from: u64,
    pub to: u64,
    pub frame: PeerFrame,
}

impl Msg {
    pub fn is_decide(&self) -> bool {
        matches!(&self.frame, PeerFrame::Paxos { msg: Message::SequencePaxos(m), .. }
            if matches!(m.msg, PaxosMsg::Decide(_)))
    }

    pub fn is_announcement(&self) -> bool {
        matches!(self.frame, PeerFrame::NewConfig(_))
    }

    /// The configuration id the frame carries, if it carries one.
    pub fn config(&self) -> Option<u32> {
        self.frame.config_id()
    }

    pub fn describe(&self) -> String {
        let what = match &self.frame {
            PeerFrame::Paxos {
                msg: Message::SequencePaxos(m),
                ..
            } => {
                let mut s = format!("{:?}", m.msg);
                s.truncate(if std::env::var("OMNIKV_SIM_LONG").is_ok() {
                    4000
                } else {
                    90
                });
                s
            }
            PeerFrame::Paxos {
                msg: Message::BLE(m),
                ..
            } => {
                let mut s = format!("BLE {:?}", m.msg);
                s.truncate(60);
                s
            }
            PeerFrame::FetchEntries { from, to, .. } => format!("Fetch [{from},{to})"),
            PeerFrame::Entries { from, entries, .. } => {
                format!("Entries {from}+{}", entries.len())
            }
            PeerFrame::EntriesUnavailable { from, applied, .. } => {
                format!("Unavailable from {from} (applied {applied})")
            }
            PeerFrame::CheckpointRequest { id, config_id } => {
                format!("CkptRequest {id:x} c{config_id}")
            }
            PeerFrame::CheckpointChunk { id, seq, items } => {
                format!("CkptChunk {id:x} #{seq} ({} items)", items.len())
            }
            PeerFrame::CheckpointDone { id, meta, .. } => {
                format!("CkptDone {id:x} at {:?}", meta.applied)
            }
            PeerFrame::CheckpointStart { id, keys, .. } => format!("CkptStart {id:x} {keys} keys"),
            PeerFrame::CheckpointAck { id, seq } => format!("CkptAck {id:x} #{seq}"),
            PeerFrame::CheckpointResume { id, next_seq, .. } => {
                format!("CkptResume {id:x} from #{next_seq}")
            }
            PeerFrame::CheckpointRefused { id, .. } => format!("CkptRefused {id:x}"),
            PeerFrame::NewConfig(a) => format!(
                "NewConfig c{}->c{}@{} {:?}",
                a.transition.from_config,
                a.transition.config_id,
                a.transition.end_idx,
                a.transition.members
            ),
            PeerFrame::NewConfigAck {
                config_id,
                holds_state,
            } => format!("NewConfigAck c{config_id} holds={holds_state}"),
            PeerFrame::Hello(_) => "Hello".into(),
            PeerFrame::TakeLeadership { accepted_idx, .. } => {
                format!("TakeLeadership at {accepted_idx}")
            }
            PeerFrame::LeadershipRefused { reason, .. } => format!("LeadershipRefused: {reason}"),
            PeerFrame::ReadProbe { ballot, seq, .. } => format!("ReadProbe #{seq} n{}", ballot.n),
            PeerFrame::ReadProbeAck { ballot, seq, .. } => {
                format!("ReadProbeAck #{seq} n{}", ballot.n)
            }
            PeerFrame::ReadIndexRequest { id, .. } => format!("ReadIndexRequest {id:x}"),
            PeerFrame::ReadIndexReply { id, index, .. } => {
                format!("ReadIndexReply {id:x} {index:?}")
            }
        };
        let c = self.config().map_or(String::new(), |c| format!(" c{c}"));
        format!("{}->{}{c} {what}", self.from, self.to)
    }
}

/// A scripted drop rule: true = drop the frame.
pub type Filter = Box<dyn FnMut(&Msg) -> bool>;

/// Network counters.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub checkpoint_streams: u64,
}

/// The network and the replicas' liveness as the network sees it.
pub struct Net {
    pub step: u64,
    pub rng: StdRng,
    pub p_drop: f64,
    pub max_delay: u64,
    queue: Vec<Msg>,
    seq: u64,
    /// Latest delivery step scheduled per directed link (FIFO links).
    link_last: BTreeMap<(u64, u64), u64>,
    /// Cut links, as (low pid, high pid).
    pub cut: BTreeSet<(u64, u64)>,
    /// Replicas up (index = pid).
    pub up: Vec<bool>,
    /// (to, peer): sessions that came (back) up, delivered as `Input::PeerUp` next step.
    pub peer_up: Vec<(u64, u64)>,
    pub filter: Option<Filter>,
    /// Items per checkpoint chunk are bounded by this many bytes (small: several chunks).
    pub chunk_bytes: usize,
    pub stats: NetStats,
    pub verbose: bool,
    pub trace: Rc<RefCell<Vec<String>>>,
}

pub type SharedNet = Rc<RefCell<Net>>;

impl Net {
    pub fn new(max_pid: u64, rng: StdRng, trace: Rc<RefCell<Vec<String>>>, verbose: bool) -> Net {
        Net {
            step: 0,
            rng,
            p_drop: 0.0,
            max_delay: 1,
            queue: Vec::new(),
            seq: 0,
            link_last: BTreeMap::new(),
            cut: BTreeSet::new(),
            up: vec![false; max_pid as usize + 1],
            peer_up: Vec::new(),
            filter: None,
            chunk_bytes: 512,
            stats: NetStats::default(),
            verbose,
            trace,
        }
    }

    pub fn log(&self, line: impl AsRef<str>) {
        let mut t = self.trace.borrow_mut();
        if t.len() < 200_000 {
            t.push(format!("[{:>4}] {}", self.step, line.as_ref()));
        }
    }

    pub fn link_ok(&self, a: u64, b: u64) -> bool {
        a == b || !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Whether a session between `a` and `b` can be up now.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        a != b && self.up[a as usize] && self.up[b as usize] && self.link_ok(a, b)
    }

    pub fn send(&mut self, from: u64, to: u64, frame: PeerFrame) -> bool {
        self.stats.sent += 1;
        let lost = self.p_drop > 0.0 && self.rng.random_bool(self.p_drop);
        if lost || !self.connected(from, to) {
            self.stats.dropped += 1;
            if self.verbose {
                let m = Msg {
                    at: 0,
                    seq: 0,
                    from,
                    to,
                    frame,
                };
                self.log(format!("drop {}", m.describe()));
            }
            return !lost && self.link_ok(from, to);
        }
        let delay = if self.max_delay == 0 {
            0
        } else {
            self.rng.random_range(0..=self.max_delay)
        };
        self.seq += 1;
        let last = self.link_last.entry((from, to)).or_insert(0);
        let at = (self.step + 1 + delay).max(*last);
        *last = at;
        let m = Msg {
            at,
            seq: self.seq,
            from,
            to,
            frame,
        };
        if let Some(f) = &mut self.filter {
            if f(&m) {
                self.stats.dropped += 1;
                if self.verbose {
                    self.log(format!("filtered {}", m.describe()));
                }
                return true;
            }
        }
        self.queue.push(m);
        true
    }

    /// Takes the frames due by `step`, in delivery order, except those to a paused replica
    /// (they wait in its socket). A frame whose link was cut (or whose receiver went down)
    /// while it was in flight is lost; one whose sender went down after sending it still
    /// arrives (it had left: the receiver reads a dead session's frames before its end).
    pub fn due(&mut self, step: u64, paused: &BTreeSet<u64>) -> Vec<Msg> {
        let (mut due, later): (Vec<Msg>, Vec<Msg>) = self
            .queue
            .drain(..)
            .partition(|m| m.at <= step && !paused.contains(&m.to));
        self.queue = later;
        due.sort_by_key(|m| (m.at, m.seq));
        let (live, lost): (Vec<Msg>, Vec<Msg>) = due
            .into_iter()
            .partition(|m| self.up[m.to as usize] && self.link_ok(m.from, m.to));
        self.stats.dropped += lost.len() as u64;
        self.stats.delivered += live.len() as u64;
        live
    }

    /// Both ends of every live pair among `pids` learn that their session is up.
    pub fn sessions_up(&mut self, pid: u64, others: impl Iterator<Item = u64>) {
        for q in others {
            if self.connected(pid, q) {
                self.peer_up.push((pid, q));
                self.peer_up.push((q, pid));
            }
        }
    }

    /// Frames to a replica that went down are lost with its sessions (frames it sent before
    /// are already on their way).
    pub fn forget(&mut self, pid: u64) {
        self.queue.retain(|m| m.to != pid);
        self.peer_up.retain(|&(a, b)| a != pid && b != pid);
    }
}

/// One replica's `Peers` over the simulated network.
pub struct SimPeers {
    pid: u64,
    net: SharedNet,
    links: BTreeSet<u64>,
}

impl SimPeers {
    pub fn new(pid: u64, net: SharedNet) -> SimPeers {
        SimPeers {
            pid,
            net,
            links: BTreeSet::new(),
        }
    }
}

/// A checkpoint stream's sink: frames go on the link like any other.
struct StreamSink<'a> {
    from: u64,
    to: u64,
    net: &'a SharedNet,
}

impl ChunkSink for StreamSink<'_> {
    fn send_bulk(&self, frame: PeerFrame) -> bool {
        // The totals only feed progress reports; sending them would move every seeded
        // schedule that streams a checkpoint (the seeds the mutation tests name).
        if matches!(frame, PeerFrame::CheckpointStart { .. }) {
            return true;
        }
        self.net.borrow_mut().send(self.from, self.to, frame)
    }
}

impl Peers for SimPeers {
    fn connect(&mut self, pid: u64, _addr: &str) {
        if self.links.insert(pid) {
            // The dial succeeds at once when the peer is reachable.
            let mut net = self.net.borrow_mut();
            if net.connected(self.pid, pid) {
                net.peer_up.push((self.pid, pid));
            }
        }
    }

    fn has_link(&self, pid: u64) -> bool {
        self.links.contains(&pid)
    }

    fn is_connected(&self, pid: u64) -> bool {
        self.links.contains(&pid) && self.net.borrow().connected(self.pid, pid)
    }

    fn send(&mut self, to: u64, frame: PeerFrame) -> bool {
        if !self.links.contains(&to) {
            return false;
        }
        if matches!(frame, PeerFrame::CheckpointAck { .. }) {
            // Streams run inline, all at once: nothing here waits for acknowledgements, and
            // carrying them would move every seeded schedule that streams a checkpoint.
            return true;
        }
        self.net.borrow_mut().send(self.pid, to, frame)
    }

    fn stream_checkpoint(&mut self, to: u64, id: u64, db: &Db, resume: Option<Resume>) {
        let chunk_bytes = {
            let mut net = self.net.borrow_mut();
            net.stats.checkpoint_streams += 1;
            net.chunk_bytes
        };
        let sink = StreamSink {
            from: self.pid,
            to,
            net: &self.net,
        };
        checkpoint::stream(db, &sink, to, id, chunk_bytes, resume);
    }

    fn set_cluster_id(&mut self, _cluster_id: u64) {}
}
