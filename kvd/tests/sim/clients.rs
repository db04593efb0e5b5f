//! Simulated clients: a few client processes, each with at most one operation in flight,
//! talking to replicas through the loop's own inbox types (`ClientRequest` with one-shot
//! replies). Writes keep their (client, seq) across retries, as kvctl's do, so a retried write
//! is applied once. A compare-and-swap is a transaction (`WriteKind::Txn`): compare the value
//! (or, for "absent", the create revision or version with 0), then put. A compaction is etcd's
//! (`WriteKind::Compact`): the change history below a revision is freed. A client may hold a
//! lease: it grants one, puts a key of its own under it, keeps it alive and sometimes revokes
//! it (`HeldLease` says how long no replica may end it). Every operation on the other keys is
//! recorded for the linearizability checker shared with the integration tests
//! (`kvd/tests/it/linearizability.rs`).

use crate::linearizability::{KvInput, KvOutput, Operation, Outcome};
use kvd::command::{Compare, CompareOp, CompareTarget, KeyRange, LeaseOp, ReadOpts, Txn, TxnOp};
use kvd::inbox::{ClientRequest, ReadAnswer, WriteAnswer, WriteKind};
use kvd::state_machine::Outcome as Applied;
use omnikv_common::api::ApiError;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::oneshot;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
        linearizable: bool,
    },
    /// Put `value` if the key holds `expect` (`None`: if it is absent, compared as
    /// `Version(0)` when `by_version`, else as `CreateRevision(0)`).
    Cas {
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
        by_version: bool,
    },
    /// Compact the change history at `revision` (refused, not applied, when it is above the
    /// store's revision or not above the compact revision).
    Compact {
        revision: u64,
    },
    /// A lease operation; a grant names id 0, and the loop names the lease from the request
    /// id (`omnikv_wire::request::lease_id_for`), the same on every retry.
    Lease(LeaseOp),
    /// Put a key of the client's own under its lease (nothing is written when the lease is
    /// gone).
    PutLeased {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    },
}

/// A reply on its way back.
pub enum Waiting {
    Write(oneshot::Receiver<Result<WriteAnswer, ApiError>>),
    Read(oneshot::Receiver<Result<ReadAnswer, ApiError>>),
}

/// How one attempt ended, once it has.
pub enum Answer {
    /// A write was applied (for a compare-and-swap: `succeeded` says whether it swapped).
    Written(Applied),
    Read(Option<Vec<u8>>),
    Failed(ApiError),
    /// The replica went away (crash) with the request.
    Lost,
}

impl Waiting {
    /// The answer, if it has come.
    pub fn poll(&mut self) -> Option<Answer> {
        use oneshot::error::TryRecvError;
        match self {
            Waiting::Write(rx) => match rx.try_recv() {
                Ok(Ok(a)) => Some(Answer::Written(a.outcome)),
                Ok(Err(e)) => Some(Answer::Failed(e)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => Some(Answer::Lost),
            },
            Waiting::Read(rx) => match rx.try_recv() {
                Ok(Ok(v)) => Some(Answer::Read(
                    v.result.kvs.into_iter().next().map(|kv| kv.value),
                )),
                Ok(Err(e)) => Some(Answer::Failed(e)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => Some(Answer::Lost),
            },
        }
    }
}

/// The request for one attempt of `op` as client `client`, with its reply channel.
pub fn request(op: &ClientOp, id: (u64, u64), deadline: Instant) -> (ClientRequest, Waiting) {
    let write = |kind| {
        let (reply, rx) = oneshot::channel();
        let r = ClientRequest::Write {
            kind,
            id: Some(id),
            deadline,
            reply,
        };
        (r, Waiting::Write(rx))
    };
    match op {
        ClientOp::Put { key, value } => write(WriteKind::Put {
            key: key.clone(),
            value: value.clone(),
        }),
        ClientOp::Delete { key } => write(WriteKind::Delete { key: key.clone() }),
        ClientOp::Cas {
            key,
            expect,
            value,
            by_version,
        } => {
            let target = match expect {
                Some(v) => CompareTarget::Value(v.clone()),
                None if *by_version => CompareTarget::Version(0),
                None => CompareTarget::CreateRevision(0),
            };
            write(WriteKind::Txn(Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target,
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                }],
                failure: vec![],
            }))
        }
        ClientOp::Compact { revision } => write(WriteKind::Compact {
            revision: *revision,
        }),
        ClientOp::Lease(op) => write(WriteKind::Lease(*op)),
        ClientOp::PutLeased { key, value, lease } => write(WriteKind::PutLeased {
            key: key.clone(),
            value: value.clone(),
            lease: *lease,
        }),
        ClientOp::Get { key, linearizable } => {
            let (reply, rx) = oneshot::channel();
            let r = ClientRequest::Read {
                range: KeyRange::Key(key.clone()),
                opts: ReadOpts::default(),
                linearizable: *linearizable,
                deadline,
                reply,
            };
            (r, Waiting::Read(rx))
        }
    }
}

/// One operation in flight.
pub struct InFlight {
    pub op: ClientOp,
    pub seq: u64,
    /// Event time of the call (`2 * step`).
    pub call: u64,
    /// The step after which the client gives up (the outcome is then unknown).
    pub give_up: u64,
    /// The attempt under way: the replica asked and the reply channel.
    pub attempt: Option<(u64, Waiting)>,
    /// When to try (again) when no attempt is under way.
    pub next_try: u64,
    pub attempts: u32,
    /// The replica the first attempt goes to (scripted scenarios); else one drawn.
    pub first_to: Option<u64>,
    /// An attempt ended in something other than `unavailable` (which promises the write
    /// was not applied): the write may have taken effect.
    pub maybe_applied: bool,
}

pub struct Client {
    pub id: u64,
    pub next_seq: u64,
    pub op: Option<InFlight>,
    /// The lease the client holds, as far as it knows.
    pub lease: Option<HeldLease>,
}

/// A client's lease. A lease lives its TTL from when a replica applies its grant or
/// keepalive, which is after the client sent it: so until `protected_until` no replica may
/// have ended it.
pub struct HeldLease {
    pub id: u64,
    pub ttl_steps: u64,
    /// The step the acknowledged grant or keepalive sent last was sent in, plus the TTL.
    pub protected_until: u64,
    /// The key put under it, and the revision the put was answered with.
    pub key: Option<(Vec<u8>, u64)>,
}

/// What the clients saw, for the checks.
#[derive(Default)]
pub struct History {
    /// Puts, deletes and linearizable gets, for the linearizability checker.
    pub ops: Vec<Operation<KvInput, KvOutput>>,
    /// Writes that failed with `unavailable` on every attempt: never applied, so they are
    /// left out of the history (a read of their value is then a violation).
    pub not_applied: u64,
    /// Acknowledged puts of keys written once: present on every replica at the end.
    pub acked_unique: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every value ever written per key (local reads must return one of them, or nothing).
    pub written: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Acknowledged writes that changed a key, with the revision they were answered with:
    /// (revision, key, the value put or `None` for a delete). The stored change histories
    /// must hold each at its revision.
    pub changes: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    pub local_reads: u64,
    pub lin_reads: u64,
    pub writes_acked: u64,
    /// Compare-and-swaps answered, and how many of them swapped.
    pub cas_answered: u64,
    pub cas_swapped: u64,
    /// Compactions answered, how many of them raised the compact revision, and the highest
    /// revision one raised it to: every member's history must start at or above it.
    pub compacts_answered: u64,
    pub compacts_raised: u64,
    pub compacted_to: u64,
    /// The highest store revision any write was answered with (compactions aim below it).
    pub highest_revision: u64,
    pub unknown: u64,
}

impl History {
    pub fn record(&mut self, client: u64, f: &InFlight, outcome: Option<(u64, Answer)>) {
        if let Some((_, Answer::Written(applied))) = &outcome {
            self.highest_revision = self.highest_revision.max(applied.revision);
        }
        if let ClientOp::PutLeased { key, value, .. } = &f.op {
            // Not in the linearizability history (the key goes when its lease does); the put
            // must be in the change history at its revision.
            if let Some((_, Answer::Written(applied))) = &outcome {
                if applied.succeeded {
                    self.changes
                        .push((applied.revision, key.clone(), Some(value.clone())));
                }
            }
            return;
        }
        if let ClientOp::Lease(_) = f.op {
            return;
        }
        if let ClientOp::Compact { revision } = f.op {
            // Not a key operation: checked against the members' histories at the end.
            if let Some((_, Answer::Written(applied))) = &outcome {
                self.compacts_answered += 1;
                if applied.succeeded {
                    self.compacts_raised += 1;
                    self.compacted_to = self.compacted_to.max(revision);
                }
            }
            return;
        }
        let is_write = !matches!(f.op, ClientOp::Get { .. });
        if is_write && outcome.is_none() && !f.maybe_applied {
            self.not_applied += 1;
            return;
        }
        let input = match &f.op {
            ClientOp::Put { key, value } => KvInput::Put {
                key: key.clone(),
                value: value.clone(),
            },
            ClientOp::Delete { key } => KvInput::Delete { key: key.clone() },
            ClientOp::Get {
                key,
                linearizable: true,
            } => KvInput::Get { key: key.clone() },
            ClientOp::Get { .. }
            | ClientOp::Compact { .. }
            | ClientOp::Lease(_)
            | ClientOp::PutLeased { .. } => return,
            ClientOp::Cas {
                key, expect, value, ..
            } => KvInput::Cas {
                key: key.clone(),
                expect: expect.clone(),
                value: value.clone(),
            },
        };
        let outcome = match outcome {
            Some((ret, Answer::Written(applied))) => {
                self.writes_acked += 1;
                let change = match &input {
                    KvInput::Put { key, value } => Some((key, Some(value))),
                    KvInput::Delete { key } if applied.existed => Some((key, None)),
                    KvInput::Cas { key, value, .. } if applied.succeeded => {
                        Some((key, Some(value)))
                    }
                    _ => None,
                };
                if let Some((key, value)) = change {
                    self.changes
                        .push((applied.revision, key.clone(), value.cloned()));
                }
                let output = if let KvInput::Cas { .. } = input {
                    self.cas_answered += 1;
                    self.cas_swapped += u64::from(applied.succeeded);
                    KvOutput::Swapped(applied.succeeded)
                } else {
                    KvOutput::Written
                };
                Outcome::Returned { ret, output }
            }
            Some((ret, Answer::Read(v))) => {
                self.lin_reads += 1;
                Outcome::Returned {
                    ret,
                    output: KvOutput::Read(v),
                }
            }
            _ => {
                self.unknown += 1;
                Outcome::Unknown
            }
        };
        self.ops.push(Operation {
            client,
            call: f.call,
            input,
            outcome,
        });
    }
}
