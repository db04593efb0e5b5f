//! The seed corpus: representative valid inputs for every target, so mutation starts from
//! deep inside each format. `fuzz --gen-seeds` writes them to `fuzz/corpus/TARGET/seed-*`.

use omnikv_wire::command::{
    Compare, CompareOp, CompareTarget, KeyRange, LeaseOp, LogCmd, Op, ReadOpts, ReqId, Txn, TxnOp,
};
use omnikv_wire::frame::{
    Announcement, CheckpointItem, Hello, PeerFrame, Transition, MAGIC, PROTOCOL_VERSION,
};
use omnikv_wire::state::{Position, SmMeta};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::ballot_leader_election::{
    BLEMessage, HeartbeatMsg, HeartbeatReply, HeartbeatRequest,
};
use omnipaxos::messages::sequence_paxos::{AcceptDecide, Decide, PaxosMessage, PaxosMsg, Prepare};
use omnipaxos::messages::Message;
use omnipaxos::util::SequenceNumber;

fn ballot(n: u32, pid: u64) -> Ballot {
    Ballot {
        config_id: 1,
        n,
        priority: 0,
        pid,
    }
}

fn ops() -> Vec<Op> {
    let req = ReqId {
        client: 0x1234_5678_9abc,
        seq: 7,
        ts_ms: 1_700_000_000_000,
    };
    vec![
        Op::Put {
            req,
            key: b"k1".to_vec(),
            value: b"value".to_vec(),
        },
        Op::Delete {
            req,
            key: b"\xff/odd key".to_vec(),
        },
        Op::Barrier { origin: 2, id: 99 },
        Op::Txn {
            req,
            txn: Txn {
                compares: vec![Compare {
                    key: b"lock".to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::CreateRevision(0),
                }],
                success: vec![
                    TxnOp::Put {
                        key: b"lock".to_vec(),
                        value: b"me".to_vec(),
                    },
                    TxnOp::Delete {
                        range: KeyRange::prefix(b"tmp/"),
                    },
                ],
                failure: vec![TxnOp::Get {
                    range: KeyRange::Key(b"lock".to_vec()),
                    opts: ReadOpts {
                        limit: 1,
                        keys_only: false,
                        count_only: false,
                    },
                }],
            },
        },
        Op::PutLeased {
            req,
            key: b"svc/a".to_vec(),
            value: b"up".to_vec(),
            lease: 0x694d_1a2b,
        },
        Op::Lease {
            req,
            op: LeaseOp::Grant {
                id: 0,
                ttl_ms: 10_000,
            },
        },
        Op::LeaseExpire {
            id: 0x694d_1a2b,
            renewals: 3,
        },
        Op::LeaseCheckpoint {
            leases: vec![(0x694d_1a2b, 7_000)],
        },
        Op::Compact { req, revision: 42 },
        Op::LeaseCheckpointAt {
            leases: vec![(0x694d_1a2b, 7_000, 3)],
        },
    ]
}

/// Peer frame bodies of every kind.
pub fn peer_frames() -> Vec<Vec<u8>> {
    let paxos = |msg| PeerFrame::Paxos { config_id: 1, msg };
    let frames = vec![
        PeerFrame::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: 0xdead_beef_cafe,
            pid: 2,
            storage_id: 77,
        }),
        paxos(Message::BLE(BLEMessage {
            from: 2,
            to: 1,
            msg: HeartbeatMsg::Request(HeartbeatRequest { round: 3 }),
        })),
        paxos(Message::BLE(BLEMessage {
            from: 2,
            to: 1,
            msg: HeartbeatMsg::Reply(HeartbeatReply {
                round: 3,
                ballot: ballot(4, 2),
                leader: ballot(4, 3),
                happy: true,
            }),
        })),
        paxos(Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::Prepare(Prepare {
                n: ballot(5, 2),
                decided_idx: 10,
                n_accepted: ballot(4, 3),
                accepted_idx: 12,
            }),
        })),
        paxos(Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::AcceptDecide(AcceptDecide {
                n: ballot(5, 2),
                seq_num: SequenceNumber {
                    session: 1,
                    counter: 4,
                },
                decided_idx: 11,
                entries: vec![LogCmd { ops: ops() }],
            }),
        })),
        paxos(Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::Decide(Decide {
                n: ballot(5, 2),
                seq_num: SequenceNumber {
                    session: 1,
                    counter: 5,
                },
                decided_idx: 12,
            }),
        })),
        PeerFrame::FetchEntries {
            config_id: 2,
            from: 5,
            to: 900,
        },
        PeerFrame::Entries {
            config_id: 2,
            from: 5,
            entries: vec![LogCmd { ops: ops() }, LogCmd { ops: vec![] }],
        },
        PeerFrame::EntriesUnavailable {
            config_id: 2,
            from: 5,
            compacted: 100,
            applied: 90,
        },
        PeerFrame::CheckpointRequest {
            id: 9,
            config_id: 3,
        },
        PeerFrame::CheckpointChunk {
            id: 9,
            seq: 0,
            items: vec![
                CheckpointItem {
                    cf: 0,
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                CheckpointItem {
                    cf: 1,
                    key: vec![0; 16],
                    value: vec![1, 2, 3],
                },
            ],
        },
        PeerFrame::CheckpointDone {
            id: 9,
            chunks: 1,
            crc: 0x1234_5678,
            meta: SmMeta {
                applied: Position {
                    config_id: 2,
                    index: 44,
                },
                clock_ms: 1_700_000_000_000,
                horizon_ms: 5,
                keys: 3,
                hash: 0xfeed,
                revision: 41,
            },
        },
        PeerFrame::CheckpointRefused {
            id: 9,
            reason: "busy".into(),
        },
        PeerFrame::CheckpointStart {
            id: 9,
            keys: 3,
            bytes: 1 << 20,
        },
        PeerFrame::CheckpointAck { id: 9, seq: 4 },
        PeerFrame::CheckpointResume {
            id: 9,
            config_id: 3,
            next_seq: 5,
            crc: 0x1234_5678,
            after: Some((0, b"a".to_vec())),
        },
        PeerFrame::NewConfig(Announcement {
            cluster_id: 0xdead_beef_cafe,
            genesis_config_id: 1,
            genesis_members: vec![1, 2, 3],
            transition: Transition {
                from_config: 1,
                end_idx: 500,
                config_id: 2,
                members: vec![1, 2, 3, 4],
                addrs: [(4, "127.0.0.1:7004".to_string())].into_iter().collect(),
            },
        }),
        PeerFrame::NewConfigAck {
            config_id: 2,
            holds_state: true,
        },
    ];
    frames.iter().map(PeerFrame::encode).collect()
}

pub fn keys() -> Vec<Vec<u8>> {
    [
        &b"plain"[..],
        b"a%2Fb%FF",
        b"%41%42",
        b"with space",
        b"%",
        b"%4",
        b"%zz",
        b"\xff\x00\x01",
        "h\u{e9}llo".as_bytes(),
        b"-._~",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect()
}

pub fn headers() -> Vec<Vec<u8>> {
    [
        &b"42\x0043\x001500\x00idem"[..],
        b"\x01\x00\x01\x00 2000 \x00\x01",
        b"0\x001\x0018446744073709551615\x00",
        b"\x01\x00\x01\x00\x01\x00key-\xff",
        b"+7\x00007\x00\t10\t\x00k",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect()
}

pub fn reconfigure_bodies() -> Vec<Vec<u8>> {
    [
        &br#"{"nodes":[1,2,3,4]}"#[..],
        br#"{"nodes":[1,2,4],"config_id":2,"force":false,"peers":{"4":"127.0.0.1:7004"}}"#,
        br#"{"nodes":[],"config_id":4294967295,"force":true}"#,
        br#"{"nodes":[18446744073709551615,0,0]}"#,
        br#"{"nodes":[1],"peers":{"1":""}}"#,
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect()
}

/// Seeds by target name.
pub fn for_target(name: &str) -> Vec<Vec<u8>> {
    match name {
        "peer_frame" => peer_frames(),
        "key" => keys(),
        "headers" => headers(),
        "reconfigure_body" => reconfigure_bodies(),
        _ => vec![],
    }
}
