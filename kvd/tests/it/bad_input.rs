//! Bad input from clients and from the peer port: clear errors, nothing stored, no panic.

use crate::harness::*;
use kvd::frame::{Hello, PeerFrame, MAGIC, PROTOCOL_VERSION};
use omnipaxos::messages::ballot_leader_election::{BLEMessage, HeartbeatMsg, HeartbeatRequest};
use omnipaxos::messages::Message;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// True once the server closed the connection (read reaches EOF or an error) within 5 s;
/// bytes before that (a handshake ack) are skipped.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_rejected_and_nothing_is_stored() {
    let c = Cluster::start(3, Opts::default()).await;
    let big = vec![b'x'; 64 * 1024 + 1];
    let out = c.kvctl_with(&c.endpoints().join(","), &["put", "big", "-"], Some(&big));
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"));
    assert_eq!(c.kvctl(&["get", "big"]).status.code(), Some(1));
    // At the cap exactly it is fine.
    let ok = vec![b'y'; 64 * 1024];
    let out = c.kvctl_with(&c.endpoints().join(","), &["put", "big", "-"], Some(&ok));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Keys: empty, oversized, binary, with slashes.
    let client = reqwest::Client::new();
    let base = format!("http://{}", c.endpoint(1));
    let r = client
        .put(format!("{base}/v1/kv/"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    let long_key = "k".repeat(1025);
    let r = client
        .put(format!("{base}/v1/kv/{long_key}"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client
        .put(format!("{base}/v1/kv/a%2Fb%FF"))
        .body("bin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/kv/a%2Fb%ff"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"bin");
    let r = client
        .get(format!("{base}/v1/kv/a%zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_closes_only_that_connection() {
    let c = Cluster::start(3, Opts::default()).await;
    let peer = format!("127.0.0.1:{}", c.nodes[&1].peer_port);
    // Random bytes.
    let mut s = TcpStream::connect(&peer).unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&junk);
    assert!(closed_by_server(&mut s));
    // A 1 GiB length prefix before the handshake.
    let mut s = TcpStream::connect(&peer).unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert!(closed_by_server(&mut s));
    // A valid handshake (as an unknown pid 9), then a 1 GiB length prefix.
    let cluster_id = u64::from_str_radix(&c.status(1).await.unwrap().cluster_id, 16).unwrap();
    let hello = PeerFrame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id,
        pid: 9,
        storage_id: 99,
    });
    let mut s = TcpStream::connect(&peer).unwrap();
    s.write_all(&frame(&hello.encode())).unwrap();
    // The handshake is acknowledged with one byte.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], kvd::frame::HELLO_ACK);
    // A consensus frame claiming pid 9, which is not a member: dropped, no panic.
    let msg: Message<kvd::command::LogCmd> = Message::BLE(BLEMessage {
        from: 9,
        to: 1,
        msg: HeartbeatMsg::Request(HeartbeatRequest { round: 1 }),
    });
    s.write_all(&frame(&PeerFrame::Paxos { config_id: 1, msg }.encode()))
        .unwrap();
    // A frame claiming to come from pid 2 over pid 9's session: dropped too.
    let msg: Message<kvd::command::LogCmd> = Message::BLE(BLEMessage {
        from: 2,
        to: 1,
        msg: HeartbeatMsg::Request(HeartbeatRequest { round: 1 }),
    });
    s.write_all(&frame(&PeerFrame::Paxos { config_id: 1, msg }.encode()))
        .unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    assert!(closed_by_server(&mut s));
    // A handshake for another cluster is refused.
    let wrong = PeerFrame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id: cluster_id ^ 1,
        pid: 2,
        storage_id: 1,
    });
    let mut s = TcpStream::connect(&peer).unwrap();
    s.write_all(&frame(&wrong.encode())).unwrap();
    assert!(closed_by_server(&mut s));
    // The replica keeps serving, and counted the dropped frames.
    let client = c.client_of(1, Duration::from_secs(5));
    client.put(b"still", b"here".to_vec()).await.unwrap();
    assert_eq!(get_from(&c, 1, "still").await.unwrap(), b"here");
    let metrics = reqwest::get(format!("http://{}/metrics", c.endpoint(1)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("omnikv_peer_frames_dropped_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped >= 2.0, "dropped = {dropped}");
    c.wait_converged(Duration::from_secs(10)).await;
}
