//! The network nemesis: one TCP proxy in front of every replica's peer port, and the link
//! table it obeys.
//!
//! Every replica's KVD_PEERS (and the `--peer` address of a joiner) points at the proxy of
//! the destination, so every replica dials the same address for a pid. The proxy learns who
//! is dialing from the session's first frame (the `Hello`, which names the sender's pid), so
//! one listener per destination is enough to control each directed link `src -> dst`.
//!
//! kvd sends on the connections it dials and only receives on the ones it accepts, so the
//! connection `src` dials to `dst` carries every message `src -> dst` (and one ack byte
//! back). A link is therefore cut per direction at message level, as a real one-way loss of
//! a TCP path would cut it (no data, no acks). A cut is either:
//! - `Blackhole`: bytes stop flowing, connections stay open (the sender's buffers fill, its
//!   handshakes time out); on heal the held bytes flow again, as after a TCP stall;
//! - `Reset`: current connections are closed and new ones closed on accept.
//!
//! TCP never drops bytes inside a live stream, so "packet loss" is modelled the way TCP shows
//! it: delivery stalls (retransmission timeouts) and, sometimes, a connection reset.

use kvd::frame::{PeerFrame, HELLO_MAX_BYTES};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type Pid = u64;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cut {
    /// Bytes flow.
    #[default]
    Up,
    /// Bytes are held until the link heals; connections stay open.
    Blackhole,
    /// Connections are closed; new ones are closed on accept.
    Reset,
}

/// The state of one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub cut: Cut,
    /// Added one-way latency, in milliseconds.
    pub delay_ms: u64,
    /// Extra random latency up to this many milliseconds.
    pub jitter_ms: u64,
    /// Per mille of reads that stall 200 ms, as a lost segment's retransmission would.
    pub stall_permille: u32,
    /// Per mille of reads after which the connection is reset.
    pub reset_permille: u32,
}

/// Counters over the whole run.
#[derive(Default, Debug)]
pub struct NetStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes: AtomicU64,
}

struct Shared {
    links: Mutex<HashMap<(Pid, Pid), Link>>,
    generation: watch::Sender<u64>,
    stats: NetStats,
    seed: AtomicU64,
}

impl Shared {
    fn link(&self, src: Pid, dst: Pid) -> Link {
        self.links
            .lock()
            .unwrap()
            .get(&(src, dst))
            .copied()
            .unwrap_or_default()
    }
}

/// The proxies and their link table.
pub struct Net {
    shared: Arc<Shared>,
    proxies: BTreeMap<Pid, (String, JoinHandle<()>)>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        let (generation, _) = watch::channel(0);
        Net {
            shared: Arc::new(Shared {
                links: Mutex::new(HashMap::new()),
                generation,
                stats: NetStats::default(),
                seed: AtomicU64::new(seed),
            }),
            proxies: BTreeMap::new(),
        }
    }

    /// Starts the proxy in front of `dst`, whose real peer address is `target`; returns the
    /// address the other replicas must dial.
    pub async fn add_proxy(&mut self, dst: Pid, target: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                let (shared, target) = (shared.clone(), target.clone());
                tokio::spawn(async move {
                    let _ = proxy_conn(inbound, dst, target, shared).await;
                });
            }
        });
        self.proxies.insert(dst, (addr.clone(), task));
        addr
    }

    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<(Pid, Pid), Link>)) {
        f(&mut self.shared.links.lock().unwrap());
        self.shared.generation.send_modify(|g| *g += 1);
    }

    pub fn set(&self, src: Pid, dst: Pid, link: Link) {
        self.update(|l| {
            l.insert((src, dst), link);
        });
    }

    /// Cuts `src -> dst` (one direction).
    pub fn cut(&self, src: Pid, dst: Pid, cut: Cut) {
        self.set(
            src,
            dst,
            Link {
                cut,
                ..Link::default()
            },
        );
    }

    /// Cuts every link between a member of `a` and a member of `b`, both directions.
    pub fn partition(&self, a: &[Pid], b: &[Pid], cut: Cut) {
        self.update(|l| {
            for &x in a {
                for &y in b {
                    l.insert(
                        (x, y),
                        Link {
                            cut,
                            ..Link::default()
                        },
                    );
                    l.insert(
                        (y, x),
                        Link {
                            cut,
                            ..Link::default()
                        },
                    );
                }
            }
        });
    }

    /// Applies `link` to every directed link among `pids`.
    pub fn all_links(&self, pids: &[Pid], link: Link) {
        self.update(|l| {
            for &x in pids {
                for &y in pids {
                    if x != y {
                        l.insert((x, y), link);
                    }
                }
            }
        });
    }

    pub fn heal_all(&self) {
        self.update(HashMap::clear);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, task) in self.proxies.values() {
            task.abort();
        }
    }
}

/// One proxied connection: read the Hello to learn the sender, then forward both ways under
/// the link `src -> dst`.
async fn proxy_conn(
    mut inbound: TcpStream,
    dst: Pid,
    target: String,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let _ = inbound.set_nodelay(true);
    // Over TLS the Hello is encrypted: the sender is told by the address it dials from
    // (`Opts::peer_ip_per_pid`), and the bytes are forwarded untouched.
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), inbound.peek(&mut first))
        .await
        .map_err(|_| std::io::Error::other("no hello"))??;
    if first[0] == TLS_HANDSHAKE {
        let src = crate::harness::pid_of_peer_ip(inbound.peer_addr()?.ip()).unwrap_or(0);
        return forward(inbound, src, dst, target, shared, &[]).await;
    }
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), inbound.read_exact(&mut len))
        .await
        .map_err(|_| std::io::Error::other("no hello"))??;
    let n = u32::from_be_bytes(len) as usize;
    if n > HELLO_MAX_BYTES {
        return Ok(());
    }
    let mut hello = vec![0u8; n];
    inbound.read_exact(&mut hello).await?;
    // Not a Hello: forwarded as pid 0, whose links are always up (kvd must refuse it).
    let src = match PeerFrame::decode(&hello) {
        Ok(PeerFrame::Hello(h)) => h.pid,
        _ => 0,
    };
    let mut head = len.to_vec();
    head.extend_from_slice(&hello);
    forward(inbound, src, dst, target, shared, &head).await
}

/// Forwards the connection `src -> dst` both ways under its link, `head` (bytes already
/// read from `inbound`) first.
async fn forward(
    inbound: TcpStream,
    src: Pid,
    dst: Pid,
    target: String,
    shared: Arc<Shared>,
    head: &[u8],
) -> std::io::Result<()> {
    let mut generation = shared.generation.subscribe();
    loop {
        match shared.link(src, dst).cut {
            Cut::Up => break,
            Cut::Reset => {
                shared.stats.resets.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Cut::Blackhole => {
                if generation.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let mut upstream = TcpStream::connect(&target).await?;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(head).await?;
    let (ir, iw) = inbound.into_split();
    let (ur, uw) = upstream.into_split();
    let salt = shared.seed.fetch_add(1, Ordering::Relaxed);
    let forward = pump(ir, uw, src, dst, shared.clone(), salt);
    let back = pump(ur, iw, src, dst, shared.clone(), salt ^ 0x5555);
    // Either side ending ends the session: dropping both halves closes both sockets.
    tokio::select! {
        _ = forward => {}
        _ = back => {}
    }
    Ok(())
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    src: Pid,
    dst: Pid,
    shared: Arc<Shared>,
    salt: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(salt);
    let mut generation = shared.generation.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                if shared.link(src, dst).cut == Cut::Reset {
                    shared.stats.resets.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                continue;
            }
        };
        let link = loop {
            let link = shared.link(src, dst);
            match link.cut {
                Cut::Up => break link,
                Cut::Reset => {
                    shared.stats.resets.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Cut::Blackhole => {
                    if generation.changed().await.is_err() {
                        return;
                    }
                }
            }
        };
        if link.reset_permille > 0 && rng.random_range(0..1000) < link.reset_permille {
            shared.stats.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut delay = link.delay_ms;
        if link.jitter_ms > 0 {
            delay += rng.random_range(0..=link.jitter_ms);
        }
        if link.stall_permille > 0 && rng.random_range(0..1000) < link.stall_permille {
            delay += 200;
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        shared.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
