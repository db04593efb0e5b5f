//! The consensus loop's inbox vocabulary: everything the loop reacts to (`Input`) and the
//! client requests it answers through one-shot replies. The API, the transport and the
//! simulator speak it; none of them needs the loop itself.

use crate::command::{KeyRange, LeaseOp, ReadOpts, Txn};
use crate::frame::PeerFrame;
use crate::state_machine::{OpResult, Outcome, RangeResult};
use omnikv_common::api::{
    ApiError, LogView, MembersView, ReconfigureRequest, ReconfigureResult, StatusView,
};
use omnikv_common::MoveLeaderResult;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Everything the consensus loop reacts to.
pub enum Input {
    /// A frame from peer `from` (its session authenticated it as `from`).
    Peer {
        from: u64,
        frame: PeerFrame,
    },
    /// Our outbound session to this peer came (back) up.
    PeerUp(u64),
    Client(ClientRequest),
    /// The process is about to stop: refuse new client requests (unavailable) and, when
    /// leading, hand leadership to the most up-to-date connected member, by `deadline`.
    /// Answered once that is done or cannot be.
    Drain {
        deadline: Instant,
        reply: oneshot::Sender<Drained>,
    },
    Shutdown,
}

/// How a drain ended (`Input::Drain`'s answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// This replica did not lead: nothing to hand over.
    NotLeading,
    /// Member `to` leads now.
    HandedTo { to: u64, elapsed: Duration },
    /// No member took over; the cluster elects one once this replica is gone.
    Failed(String),
}

pub enum WriteKind {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Txn(Txn),
    /// A put attached to a lease.
    PutLeased {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    },
    /// A grant (id 0: the loop picks one), keepalive or revoke.
    Lease(LeaseOp),
    /// etcd's `Compact` at `revision` (`Op::Compact`).
    Compact {
        revision: u64,
    },
}

/// One lease as the answering replica sees it.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    /// By this replica's lease clock (exact on the leader, which decides expiry).
    pub remaining_ms: u64,
    /// The keys it holds, when asked.
    pub keys: Option<Vec<Vec<u8>>>,
}

/// The leases asked for, and the revision they were read at.
#[derive(Debug)]
pub struct LeasesAnswer {
    pub leases: Vec<LeaseInfo>,
    pub revision: u64,
}

/// How a write was applied.
#[derive(Clone, Debug)]
pub struct WriteAnswer {
    pub outcome: Outcome,
    /// What each operation did; `None` when the write had been applied before (a retry
    /// answered from the remembered outcome, which keeps no values).
    pub results: Option<Vec<OpResult>>,
}

/// A read's answer, and the applied position and revision it was read at.
#[derive(Debug)]
pub struct ReadAnswer {
    pub result: RangeResult,
    pub index: u64,
    pub revision: u64,
}

/// Where the loop answers a request: exactly once, possibly with an error.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum ClientRequest {
    Write {
        kind: WriteKind,
        /// (client id, seq) from the caller; None = kvd picks a fresh one.
        id: Option<(u64, u64)>,
        deadline: Instant,
        reply: Reply<WriteAnswer>,
    },
    /// A read of one key (`KeyRange::Key`) or a range.
    Read {
        range: KeyRange,
        opts: ReadOpts,
        linearizable: bool,
        deadline: Instant,
        reply: Reply<ReadAnswer>,
    },
    Status {
        reply: oneshot::Sender<StatusView>,
    },
    Log {
        limit: usize,
        reply: oneshot::Sender<LogView>,
    },
    Reconfigure {
        request: ReconfigureRequest,
        deadline: Instant,
        reply: Reply<ReconfigureResult>,
    },
    Members {
        reply: oneshot::Sender<MembersView>,
    },
    /// Every lease (`id: None`) or one, from this replica's applied state.
    Leases {
        id: Option<u64>,
        keys: bool,
        reply: Reply<LeasesAnswer>,
    },
    /// Make member `to` the leader (asked of the leader).
    MoveLeader {
        to: u64,
        deadline: Instant,
        reply: Reply<MoveLeaderResult>,
    },
}
