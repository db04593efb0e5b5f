//! Peer wire frames: a u32 big-endian length, then one bincode-encoded `PeerFrame`.
//! Before the handshake a frame may be at most `HELLO_MAX_BYTES`; after it, the configured
//! peer-frame limit. Anything that does not decode closes the connection.

use crate::codec;
use crate::command::LogCmd;
use crate::state::SmMeta;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::Message;
use serde::{Deserialize, Serialize};

/// "OMKV": the first bytes of every handshake.
pub const MAGIC: u32 = 0x4f4d_4b56;
pub const PROTOCOL_VERSION: u16 = 1;
/// The one byte an accepting replica writes back once it accepted a Hello (the inbound
/// side is otherwise receive-only).
pub const HELLO_ACK: u8 = 0x06;
/// Limit for the first frame (the Hello).
pub const HELLO_MAX_BYTES: usize = 4096;

/// The handshake: who is speaking, for which cluster, from which disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    pub cluster_id: u64,
    pub pid: u64,
    pub storage_id: u64,
}

/// One item of a streamed checkpoint: a record of one state column family. `cf` indexes
/// kvd's `storage::STATE_CFS` (0 `kv`, 1 `dedup`, 2 `lease`); bincode encodes it as one byte,
/// exactly as it encoded the variant of the earlier `enum { Kv, Dedup }`, so a kv or dedup
/// item is the same bytes as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointItem {
    pub cf: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(Hello),
    /// An OmniPaxos message of configuration `config_id`.
    Paxos {
        config_id: u32,
        msg: Message<LogCmd>,
    },
    /// Catch-up: send me decided entries `[from, to)` of `config_id`.
    FetchEntries {
        config_id: u32,
        from: u64,
        to: u64,
    },
    /// Decided entries starting at `from`.
    Entries {
        config_id: u32,
        from: u64,
        entries: Vec<LogCmd>,
    },
    /// I no longer hold entry `from` (compacted), or have not decided it.
    EntriesUnavailable {
        config_id: u32,
        from: u64,
        compacted: u64,
        applied: u64,
    },
    /// Catch-up when no peer holds the entries (or a joiner without state): stream me your
    /// state as of configuration `config_id`.
    CheckpointRequest {
        id: u64,
        config_id: u32,
    },
    CheckpointChunk {
        id: u64,
        seq: u64,
        items: Vec<CheckpointItem>,
    },
    /// End of a checkpoint: `chunks` chunks whose items have CRC-32 `crc`, at `meta`.
    CheckpointDone {
        id: u64,
        chunks: u64,
        crc: u32,
        meta: SmMeta,
    },
    CheckpointRefused {
        id: u64,
        reason: String,
    },
    /// A decided membership change, pushed by the replicas that saw it to the members of the
    /// new configuration (retried until acknowledged with state) and to stragglers.
    NewConfig(Announcement),
    /// Answer to `NewConfig`: the sender runs configuration `config_id`; `holds_state` once
    /// it has the state as of the change (applied the old log to its end, or installed a
    /// checkpoint).
    NewConfigAck {
        config_id: u32,
        holds_state: bool,
    },
    // Variants are appended only below this line: bincode numbers them by position, so a
    // frame of an older replica keeps decoding as what it was.
    /// Leader hand-off: the leader of `config_id` asks the receiver to take over (OmniPaxos's
    /// `try_become_leader`). `accepted_idx` is the leader's accepted index when it asked; it
    /// holds new proposals meanwhile, so a receiver that holds its log that far loses nothing.
    TakeLeadership {
        config_id: u32,
        accepted_idx: u64,
    },
    /// Answer to `TakeLeadership` from a member that will not take over, and why.
    LeadershipRefused {
        config_id: u32,
        reason: String,
    },
    /// Linearizable reads: the leader of `config_id` asks whether the receiver still follows
    /// `ballot` (its promise is exactly that ballot). Sent after the reads of round `seq`
    /// arrived; an answer confirms every round up to `seq`. `nonce` names the leader's run
    /// (drawn at its start) and comes back in the answer.
    ReadProbe {
        config_id: u32,
        ballot: Ballot,
        nonce: u64,
        seq: u64,
    },
    /// Answer to `ReadProbe`: the sender's promise was `ballot` when the probe arrived.
    ReadProbeAck {
        config_id: u32,
        ballot: Ballot,
        nonce: u64,
        seq: u64,
    },
    /// A follower asks the leader of `config_id` for a read index for its reads waiting
    /// under `id`.
    ReadIndexRequest {
        config_id: u32,
        id: u64,
    },
    /// The leader's answer to `ReadIndexRequest` `id`: after a quorum confirmed its
    /// leadership, the reads may be served once the asker applied up to `index` (exclusive);
    /// `None` when the receiver is not a leader able to answer (ask again).
    ReadIndexReply {
        config_id: u32,
        id: u64,
        index: Option<u64>,
    },
    /// First frame of a checkpoint stream (and of a resumed one): what the whole state holds,
    /// so the receiver can report progress. `bytes` is the sum of every item's key and value
    /// lengths; `keys` the KV keys (the meta's key count).
    CheckpointStart {
        id: u64,
        keys: u64,
        bytes: u64,
    },
    /// The receiver wrote chunk `seq` of checkpoint `id` (durably): the sender may have up
    /// to its window of chunks beyond it in flight. `seq == u64::MAX`: the checkpoint is
    /// installed; the sender may drop what it kept to resume it.
    CheckpointAck {
        id: u64,
        seq: u64,
    },
    /// A receiver that holds the chunks before `next_seq` of checkpoint `id` (the last item
    /// it wrote is `after`: a state family's index and a key) asks for the rest, from the
    /// same state. `crc` is the CRC-32 of the items it holds, which the sender continues.
    CheckpointResume {
        id: u64,
        config_id: u32,
        next_seq: u64,
        crc: u32,
        after: Option<(u8, Vec<u8>)>,
    },
}

/// What a decided StopSign says, with what a joiner needs to trust it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster_id: u64,
    /// The initial configuration: with the cluster token it proves `cluster_id`.
    pub genesis_config_id: u32,
    pub genesis_members: Vec<u64>,
    pub transition: Transition,
}

/// A decided change from configuration `from_config` (whose log ends with the StopSign at
/// `end_idx`) to `config_id` with `members` (peer addresses in `addrs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from_config: u32,
    pub end_idx: u64,
    pub config_id: u32,
    pub members: Vec<u64>,
    pub addrs: std::collections::BTreeMap<u64, String>,
}

impl Transition {
    /// The applied position where the old configuration ends: the state the new one starts
    /// from.
    pub fn ends_at(&self) -> crate::state::Position {
        crate::state::Position {
            config_id: self.from_config,
            index: self.end_idx,
        }
    }
}

impl PeerFrame {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, bincode::Error> {
        codec::decode(bytes)
    }

    /// Which configuration this frame belongs to, if any.
    pub fn config_id(&self) -> Option<u32> {
        match self {
            PeerFrame::Paxos { config_id, .. }
            | PeerFrame::FetchEntries { config_id, .. }
            | PeerFrame::Entries { config_id, .. }
            | PeerFrame::EntriesUnavailable { config_id, .. }
            | PeerFrame::TakeLeadership { config_id, .. }
            | PeerFrame::LeadershipRefused { config_id, .. }
            | PeerFrame::ReadProbe { config_id, .. }
            | PeerFrame::ReadProbeAck { config_id, .. }
            | PeerFrame::ReadIndexRequest { config_id, .. }
            | PeerFrame::ReadIndexReply { config_id, .. } => Some(*config_id),
            _ => None,
        }
    }
}

/// Feeds checkpoint items into a running CRC-32, in a canonical byte form.
pub fn crc_items(h: &mut crc32fast::Hasher, items: &[CheckpointItem]) {
    for item in items {
        h.update(&[item.cf]);
        h.update(&(item.key.len() as u64).to_be_bytes());
        h.update(&item.key);
        h.update(&(item.value.len() as u64).to_be_bytes());
        h.update(&item.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kv or dedup item travels as the same bytes as the enum it replaced, so replicas of
    /// both builds exchange checkpoints of those families.
    #[test]
    fn checkpoint_items_encode_as_the_enum_they_replaced() {
        #[derive(Serialize)]
        enum Before {
            Kv(Vec<u8>, Vec<u8>),
            Dedup(Vec<u8>, Vec<u8>),
        }
        let item = |cf: u8| CheckpointItem {
            cf,
            key: b"key".to_vec(),
            value: vec![7; 300],
        };
        let (k, v) = (b"key".to_vec(), vec![7; 300]);
        assert_eq!(
            codec::encode(&item(0)),
            codec::encode(&Before::Kv(k.clone(), v.clone()))
        );
        assert_eq!(codec::encode(&item(1)), codec::encode(&Before::Dedup(k, v)));
    }

    #[test]
    fn garbage_never_decodes_into_a_huge_allocation() {
        // Malformed or absurd claims inside a tiny frame must fail, never allocate.
        // FetchEntries whose config id starts with 0xff, a reserved varint marker.
        let mut bytes = vec![2u8];
        bytes.extend_from_slice(&[0xff; 16]);
        assert!(PeerFrame::decode(&bytes).is_err());
        // Entries { config_id: 1, from: 0 } claiming a Vec of 2^60 elements.
        let mut entries = vec![3u8, 1, 0];
        entries.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(PeerFrame::decode(&entries).is_err());
    }

    #[test]
    fn hand_off_frames_come_after_every_older_variant() {
        // NewConfigAck (variant 10) was last before the hand-off: an older replica's frames
        // keep their numbers.
        let ack = PeerFrame::NewConfigAck {
            config_id: 4,
            holds_state: true,
        };
        let bytes = ack.encode();
        assert_eq!(bytes[0], 10, "NewConfigAck keeps its position");
        let take = PeerFrame::TakeLeadership {
            config_id: 4,
            accepted_idx: 77,
        };
        let bytes = take.encode();
        assert_eq!(bytes[0], 11, "hand-off frames come after NewConfigAck");
        assert!(matches!(
            PeerFrame::decode(&bytes).unwrap(),
            PeerFrame::TakeLeadership {
                config_id: 4,
                accepted_idx: 77
            }
        ));
        assert_eq!(take.config_id(), Some(4));
    }

    #[test]
    fn round_trip() {
        let f = PeerFrame::FetchEntries {
            config_id: 1,
            from: 5,
            to: 9,
        };
        let back = PeerFrame::decode(&f.encode()).unwrap();
        assert!(matches!(
            back,
            PeerFrame::FetchEntries {
                config_id: 1,
                from: 5,
                to: 9
            }
        ));
    }
}
