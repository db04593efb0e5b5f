//! The replicated log's entry type. One entry carries a batch of operations (group commit:
//! everything proposed in one loop iteration), and the snapshot type is an empty marker:
//! no state ever comes from OmniPaxos snapshots (docs/architecture.md, "Design decisions").

use omnipaxos::storage::{Entry, Snapshot};
use serde::{Deserialize, Serialize};

/// Identifies a client write for deduplication. `ts_ms` is the proposer's wall clock when it
/// first received the request; retries reuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReqId {
    pub client: u64,
    pub seq: u64,
    pub ts_ms: u64,
}

/// One operation inside a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        req: ReqId,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        req: ReqId,
        key: Vec<u8>,
    },
    /// A read barrier: reads queued on `origin` before it was proposed are answered once it
    /// is applied.
    Barrier {
        origin: u64,
        id: u64,
    },
}

impl Op {
    /// Approximate encoded size, used to bound batches.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => 32 + key.len() + value.len(),
            Op::Delete { key, .. } => 32 + key.len(),
            Op::Barrier { .. } => 16,
        }
    }

    /// One-line rendering for `kvctl log` and the decided-entry log line.
    pub fn describe(&self) -> String {
        use omnikv_common::keys::display_bytes;
        match self {
            Op::Put { key, value, .. } => {
                format!("put {} {}", display_bytes(key), display_bytes(value))
            }
            Op::Delete { key, .. } => format!("delete {}", display_bytes(key)),
            Op::Barrier { .. } => "read-barrier".to_string(),
        }
    }
}

/// A log entry: the operations batched by one proposer in one loop iteration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCmd {
    pub ops: Vec<Op>,
}

impl Entry for LogCmd {
    type Snapshot = Marker;
}

/// The empty snapshot marker: `create` returns it, `merge` does nothing. The compacted
/// prefix's effects live in the state machine, never in this value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker;

impl Snapshot<LogCmd> for Marker {
    fn create(_entries: &[LogCmd]) -> Self {
        Marker
    }
    fn merge(&mut self, _delta: Self) {}
    fn use_snapshots() -> bool {
        true
    }
}
