//! The consensus loop's view of the network: the one interface through which it reaches its
//! peers. kvd implements it over TCP sessions (`transport::TcpPeers`); the deterministic
//! simulator over its seeded network. Sending never blocks and may lose a frame: consensus
//! tolerates loss (OmniPaxos resends, the loop retries its own requests).

use crate::checkpoint::Resume;
use crate::frame::PeerFrame;
use crate::storage::Db;

pub trait Peers {
    /// Opens an outbound session to `pid` at `addr` unless one exists. A session, once
    /// opened, lives (reconnecting as needed) as long as the loop.
    fn connect(&mut self, pid: u64, addr: &str);

    /// Whether a session to `pid` was opened (up or not).
    fn has_link(&self, pid: u64) -> bool;

    /// Whether the session to `pid` is up: its handshake was acknowledged.
    fn is_connected(&self, pid: u64) -> bool;

    /// Queues `frame` for `to`. False when it was dropped at once (no session, queue full).
    fn send(&mut self, to: u64, frame: PeerFrame) -> bool;

    /// Streams a checkpoint of `db`'s current state (KV, dedup table, position) to `to` as
    /// stream `id`, without holding up the loop: from a copy frozen now, or (`resume`) the
    /// rest of stream `id` from the copy frozen for it. A newer stream to the same peer
    /// supersedes a running one.
    fn stream_checkpoint(&mut self, to: u64, id: u64, db: &Db, resume: Option<Resume>);

    /// `to` wrote chunk `seq` of stream `id`: the stream may send further (its window).
    fn checkpoint_acked(&mut self, to: u64, id: u64, seq: u64) {
        let _ = (to, id, seq);
    }

    /// A joiner learned (and verified) its cluster id: sessions present it from now on.
    fn set_cluster_id(&mut self, cluster_id: u64);
}
