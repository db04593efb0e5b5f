//! Peer transport over TCP. Each replica dials every peer (an outbound, send-only session)
//! and accepts their dials (inbound, receive-only). Sessions start with a `Hello` checked
//! against our cluster identity; frames then go to the consensus loop's inbox. `TcpPeers`
//! is the loop's `Peers` over these sessions.
//!
//! With peer TLS (`crate::tls::peer`), every session runs over mutual TLS: the dialer checks
//! that the server's certificate names the pid it dialed, the acceptor that the Hello's pid
//! is the one its client certificate names; a session failing either is closed before any
//! frame reaches the inbox. Without it, sessions are plaintext TCP.
//!
//! Limits: the Hello frame is at most `HELLO_MAX_BYTES`; later frames at most the configured
//! peer-frame limit; a frame that is too large or does not decode closes the connection.
//! Inbound frames are never allowed to block: when the inbox is full they are dropped
//! (consensus tolerates loss; OmniPaxos resends).

use crate::checkpoint::{self, ChunkSink};
use crate::frame::{Hello, PeerFrame, HELLO_ACK, HELLO_MAX_BYTES, MAGIC, PROTOCOL_VERSION};
use crate::inbox::Input;
use crate::membership::{disk_pinned, peer_storage_key};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::storage::{Db, CF_META};
use crate::tls::peer::PeerTls;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::{debug, info, warn};

/// Frames queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 16 * 1024;
/// Bulk frames (checkpoint chunks of up to 1 MiB) queued per peer: bounds a stream's memory.
const BULK_QUEUE: usize = 4;
/// Most concurrent inbound peer connections.
const MAX_INBOUND: usize = 256;
/// A TLS handshake on the peer wire must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who we are on the peer wire.
#[derive(Clone)]
pub struct Identity {
    pub pid: u64,
    pub cluster_id: u64,
    pub storage_id: u64,
}

/// Shared state of the transport.
pub struct TransportCtx {
    pub me: Identity,
    /// Our cluster id; 0 while a joiner has not learned it yet (it then accepts the Hello of
    /// any cluster: what it is told is checked against the cluster token before it is used).
    cluster_id: AtomicU64,
    pub max_frame: usize,
    pub inbox: SyncSender<Input>,
    pub metrics: Arc<Metrics>,
    pub db: Db,
    /// Serialises the check and recording of peers' storage ids (`check_storage`).
    storage_check: Mutex<()>,
    /// Mutual TLS for every session; `None`: plaintext.
    pub tls: Option<PeerTls>,
    /// The IP our dials leave from: that of the peer listen address when it names one
    /// (not 0.0.0.0 or ::), so peers see us at the address we serve on; else the system's
    /// choice.
    source_ip: Option<std::net::IpAddr>,
}

impl TransportCtx {
    pub fn new(
        me: Identity,
        max_frame: usize,
        inbox: SyncSender<Input>,
        metrics: Arc<Metrics>,
        db: Db,
        tls: Option<PeerTls>,
        listen: std::net::SocketAddr,
    ) -> Arc<TransportCtx> {
        Arc::new(TransportCtx {
            cluster_id: AtomicU64::new(me.cluster_id),
            me,
            max_frame,
            inbox,
            metrics,
            db,
            storage_check: Mutex::new(()),
            tls,
            source_ip: (!listen.ip().is_unspecified()).then_some(listen.ip()),
        })
    }

    /// Opens a TCP connection to `addr`, from `source_ip` when there is one (an address of
    /// the other family is dialed from the system's choice).
    async fn dial(&self, addr: &str) -> std::io::Result<TcpStream> {
        let Some(source) = self.source_ip else {
            return TcpStream::connect(addr).await;
        };
        let mut last = std::io::Error::other(format!("{addr} resolves to no address"));
        for target in tokio::net::lookup_host(addr).await? {
            let socket = match target {
                std::net::SocketAddr::V4(_) if source.is_ipv4() => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) if source.is_ipv6() => tokio::net::TcpSocket::new_v6()?,
                _ => match TcpStream::connect(target).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        last = e;
                        continue;
                    }
                },
            };
            if let Err(e) = socket.bind(std::net::SocketAddr::new(source, 0)) {
                last = e;
                continue;
            }
            match socket.connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sets the cluster id a joiner learned (and verified).
    pub fn set_cluster_id(&self, id: u64) {
        self.cluster_id.store(id, Ordering::Relaxed);
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Accepts `pid` presenting `storage_id` and remembers it (in `meta`, so across
    /// restarts): a member presenting another disk than the one remembered is refused (a
    /// wiped disk must come back as a new member, never silently under its old pid). A pid
    /// that is no member (`membership::disk_pinned`) may bring another disk: it can only
    /// join as new. A change that removes a pid forgets its disk (`release_disks`).
    fn check_storage(&self, pid: u64, storage_id: u64) -> Result<(), String> {
        let _serial = self.storage_check.lock().expect("lock");
        let seen = self
            .db
            .get(CF_META, &peer_storage_key(pid))
            .map_err(|e| e.to_string())?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes));
        match seen {
            Some(s) if s == storage_id => return Ok(()),
            Some(s) if disk_pinned(&self.db, pid).map_err(|e| e.to_string())? => {
                return Err(format!(
                    "pid {pid} presents storage id {storage_id:x}, but we know it as {s:x}: its \
                     disk was replaced; remove it and add it back as a new member"
                ))
            }
            Some(s) => info!(
                peer = pid,
                "pid {pid} is no member and comes back with another disk ({s:x} -> \
                 {storage_id:x}): it can only join as new"
            ),
            None => {}
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_META),
            peer_storage_key(pid),
            storage_id.to_be_bytes(),
        );
        self.db.write_synced(batch).map_err(|e| e.to_string())
    }

    fn to_inbox(&self, input: Input) {
        match self.inbox.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.peer_frames_dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Our end of an outbound session to one peer.
#[derive(Clone)]
pub struct PeerLink {
    pub pid: u64,
    tx: mpsc::Sender<PeerFrame>,
    bulk: mpsc::Sender<PeerFrame>,
    connected: Arc<AtomicBool>,
}

impl PeerLink {
    /// Queues a frame; drops it when the queue is full (never blocks the consensus loop).
    pub fn send(&self, frame: PeerFrame) -> bool {
        self.tx.try_send(frame).is_ok()
    }

    /// Queues a bulk frame, waiting for room in the small bulk queue (for checkpoint
    /// streams on their own thread: memory stays bounded and consensus frames go first).
    pub fn send_bulk_blocking(&self, frame: PeerFrame) -> bool {
        self.bulk.blocking_send(frame).is_ok()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max)
        .new_codec()
}

/// Starts the outbound session task to `pid` at `addr` (re-resolved on every dial, so DNS
/// names of pods that come and go work).
pub fn spawn_outbound(
    rt: &tokio::runtime::Handle,
    ctx: Arc<TransportCtx>,
    pid: u64,
    addr: String,
) -> PeerLink {
    let (tx, rx) = mpsc::channel(PEER_QUEUE);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
    let connected = Arc::new(AtomicBool::new(false));
    let link = PeerLink {
        pid,
        tx,
        bulk,
        connected: connected.clone(),
    };
    rt.spawn(outbound_loop(ctx, pid, addr, rx, bulk_rx, connected));
    link
}

async fn outbound_loop(
    ctx: Arc<TransportCtx>,
    pid: u64,
    addr: String,
    mut rx: mpsc::Receiver<PeerFrame>,
    mut bulk: mpsc::Receiver<PeerFrame>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    // The last TLS failure logged: a repeated one is logged at debug level only.
    let mut last_tls_failure: Option<String> = None;
    loop {
        let hello = PeerFrame::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: ctx.cluster_id(),
            pid: ctx.me.pid,
            storage_id: ctx.me.storage_id,
        });
        let dial = tokio::time::timeout(Duration::from_secs(1), ctx.dial(&addr)).await;
        let session = Session {
            ctx: &ctx,
            pid,
            addr: &addr,
            hello,
            rx: &mut rx,
            bulk: &mut bulk,
            connected: &connected,
        };
        let ended = match (dial, &ctx.tls) {
            (Ok(Ok(stream)), None) => {
                let _ = stream.set_nodelay(true);
                let (read_half, write_half) = stream.into_split();
                session.run(read_half, write_half).await
            }
            (Ok(Ok(stream)), Some(tls)) => {
                let _ = stream.set_nodelay(true);
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.connect(stream, &addr, pid))
                        .await
                        .unwrap_or_else(|_| Err(format!("TLS handshake with {addr} timed out")));
                match handshake {
                    Ok(stream) => {
                        last_tls_failure = None;
                        let (read_half, write_half) = tokio::io::split(stream);
                        session.run(read_half, write_half).await
                    }
                    Err(reason) => {
                        if last_tls_failure.as_ref() != Some(&reason) {
                            warn!(peer = pid, %addr, %reason, "peer refused");
                            last_tls_failure = Some(reason);
                        } else {
                            debug!(peer = pid, %addr, %reason, "peer refused");
                        }
                        SessionEnd::Down
                    }
                }
            }
            _ => {
                debug!(peer = pid, %addr, "dial failed");
                SessionEnd::Down
            }
        };
        match ended {
            SessionEnd::Stopped => return, // the loop is gone: shutting down
            SessionEnd::Served => backoff = Duration::from_millis(50),
            SessionEnd::Down => {}
        }
        // Frames queued while down are stale: drop them rather than burst them later.
        while rx.try_recv().is_ok() {}
        while bulk.try_recv().is_ok() {}
        if rx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// How an outbound session ended.
enum SessionEnd {
    /// The frame queues closed: the consensus loop is gone.
    Stopped,
    /// The session was up, then failed.
    Served,
    /// The handshake failed.
    Down,
}

/// One outbound session's state, over whatever stream halves the dial produced.
struct Session<'a> {
    ctx: &'a TransportCtx,
    pid: u64,
    addr: &'a str,
    hello: PeerFrame,
    rx: &'a mut mpsc::Receiver<PeerFrame>,
    bulk: &'a mut mpsc::Receiver<PeerFrame>,
    connected: &'a AtomicBool,
}

impl Session<'_> {
    async fn run<R, W>(self, mut read_half: R, write_half: W) -> SessionEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (ctx, pid, addr) = (self.ctx, self.pid, self.addr);
        let mut framed = FramedWrite::new(write_half, codec(ctx.max_frame));
        // The session is up only once the peer acknowledged our Hello (it refuses other
        // clusters and replaced disks by closing instead).
        let acked = async {
            framed.send(Bytes::from(self.hello.encode())).await.ok()?;
            let mut ack = [0u8; 1];
            let read =
                tokio::time::timeout(Duration::from_secs(5), read_half.read_exact(&mut ack)).await;
            matches!(read, Ok(Ok(_)) if ack[0] == HELLO_ACK).then_some(())
        };
        if acked.await.is_none() {
            debug!(peer = pid, %addr, "handshake not acknowledged");
            return SessionEnd::Down;
        }
        info!(peer = pid, %addr, "peer session up");
        self.connected.store(true, Ordering::Relaxed);
        ctx.to_inbox(Input::PeerUp(pid));
        // The peer never writes after the ack: a readable socket means it closed.
        let mut probe = [0u8; 1];
        let result = tokio::select! {
            r = pump(&mut framed, self.rx, self.bulk) => r,
            _ = read_half.read(&mut probe) => Err(std::io::Error::other("closed by peer")),
        };
        self.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => SessionEnd::Stopped,
            Err(e) => {
                info!(peer = pid, error = %e, "peer session down");
                SessionEnd::Served
            }
        }
    }
}

/// Writes queued frames until the queues close (Ok) or the socket fails (Err). Consensus
/// frames go first; bulk frames (checkpoint chunks) fill the gaps.
async fn pump<W: AsyncWrite + Unpin>(
    framed: &mut FramedWrite<W, LengthDelimitedCodec>,
    rx: &mut mpsc::Receiver<PeerFrame>,
    bulk: &mut mpsc::Receiver<PeerFrame>,
) -> std::io::Result<()> {
    loop {
        let frame = tokio::select! {
            biased;
            f = rx.recv() => f,
            Some(f) = bulk.recv() => Some(f),
        };
        let Some(frame) = frame else { return Ok(()) };
        framed.feed(Bytes::from(frame.encode())).await?;
        // Coalesce whatever else is queued into the same flush.
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(f) => framed.feed(Bytes::from(f.encode())).await?,
                Err(_) => break,
            }
        }
        SinkExt::<Bytes>::flush(framed).await?;
    }
}

/// Accepts inbound peer sessions until the listener fails.
pub async fn serve_inbound(listener: TcpListener, ctx: Arc<TransportCtx>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%remote, "too many peer connections; closing");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let ended = match &ctx.tls {
                None => {
                    let (read_half, write_half) = stream.into_split();
                    inbound_session(read_half, write_half, None, &ctx).await
                }
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok((stream, cert_pid))) => {
                            let (read_half, write_half) = tokio::io::split(stream);
                            inbound_session(read_half, write_half, Some(cert_pid), &ctx).await
                        }
                        Ok(Err(reason)) => Err(format!("refused: {reason}")),
                        Err(_) => Err("refused: TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(reason) = ended {
                warn!(%remote, %reason, "peer connection closed");
            }
            drop(permit);
        });
    }
}

/// One inbound session. `cert_pid`: the pid the peer's verified certificate names (peer
/// TLS); the Hello must claim that pid.
async fn inbound_session<R, W>(
    read_half: R,
    mut write_half: W,
    cert_pid: Option<u64>,
    ctx: &TransportCtx,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Receive-only session; the write half only carries the one-byte handshake ack and must
    // stay open for the session's life (closing it tells the dialer we hung up).
    let mut framed = FramedRead::new(read_half, codec(HELLO_MAX_BYTES));
    let first = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| "no handshake within 5s".to_string())?
        .ok_or("closed before handshake")?
        .map_err(|e| format!("bad handshake frame: {e}"))?;
    let hello = match PeerFrame::decode(&first) {
        Ok(PeerFrame::Hello(h)) => h,
        Ok(_) => return Err("first frame is not a Hello".into()),
        Err(e) => return Err(format!("undecodable handshake: {e}")),
    };
    if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "unknown protocol (magic {:x}, version {})",
            hello.magic, hello.version
        ));
    }
    if let Some(cert_pid) = cert_pid {
        if hello.pid != cert_pid {
            return Err(format!(
                "refused: peer claims pid {} but its certificate is for replica {cert_pid}",
                hello.pid
            ));
        }
    }
    let ours = ctx.cluster_id();
    if ours != 0 && hello.cluster_id != ours {
        return Err(format!(
            "peer {} belongs to cluster {:016x}, we are {:016x}",
            hello.pid, hello.cluster_id, ours
        ));
    }
    if hello.pid == 0 || hello.pid == ctx.me.pid {
        return Err(format!("peer claims pid {}", hello.pid));
    }
    // First contact with a pid writes (and syncs) its storage id: keep that off the runtime.
    // A replica that knows no cluster yet (a joiner) pins no peer's disk: the peer may belong
    // to another cluster (a pod started with the wrong CONFIG_ID) and be recreated empty;
    // the first session after this replica adopts a cluster id pins it.
    if ours != 0 {
        tokio::task::block_in_place(|| ctx.check_storage(hello.pid, hello.storage_id))?;
    }
    let ack = async {
        write_half.write_all(&[HELLO_ACK]).await?;
        write_half.flush().await
    };
    ack.await
        .map_err(|e| format!("peer {}: cannot acknowledge handshake: {e}", hello.pid))?;
    let from = hello.pid;
    framed.decoder_mut().set_max_frame_length(ctx.max_frame);
    debug!(peer = from, "inbound peer session up");
    while let Some(frame) = framed.next().await {
        let bytes = frame.map_err(|e| format!("peer {from}: {e}"))?;
        let frame = PeerFrame::decode(&bytes)
            .map_err(|e| format!("peer {from}: undecodable frame: {e}"))?;
        match &frame {
            PeerFrame::Hello(_) => return Err(format!("peer {from}: second Hello")),
            // The session is authenticated as `from`; a message claiming another sender or
            // meant for another replica is dropped.
            PeerFrame::Paxos { msg, .. }
                if msg.get_sender() != from || msg.get_receiver() != ctx.me.pid =>
            {
                ctx.metrics.peer_frames_dropped.inc();
                continue;
            }
            _ => {}
        }
        ctx.to_inbox(Input::Peer { from, frame });
    }
    Ok(())
}

/// The consensus loop's `Peers` over TCP sessions: one outbound session per peer, opened on
/// demand, and checkpoint streams on their own threads (one per peer: a newer request or a
/// resumption supersedes a running stream).
pub struct TcpPeers {
    rt: tokio::runtime::Handle,
    ctx: Arc<TransportCtx>,
    sessions: HashMap<u64, PeerLink>,
    /// The checkpoint stream each peer currently wants from us.
    streams: HashMap<u64, Arc<StreamCtl>>,
}

/// A peer's current checkpoint stream: which run of it (a resumption is a new run of the
/// same stream id), and how many of its chunks the receiver acknowledged.
#[derive(Default)]
struct StreamCtl {
    run: AtomicU64,
    id: AtomicU64,
    /// Chunks acknowledged: the receiver wrote every chunk below this.
    acked: AtomicU64,
}

/// How long a stream waits for the receiver to acknowledge a chunk before it pauses (its
/// frozen copy is kept for a resumption).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

impl TcpPeers {
    /// Sessions opened on `rt`, on demand: members appear with membership changes.
    pub fn new(rt: tokio::runtime::Handle, ctx: Arc<TransportCtx>) -> TcpPeers {
        TcpPeers {
            rt,
            ctx,
            sessions: HashMap::new(),
            streams: HashMap::new(),
        }
    }
}

/// A checkpoint stream's sink: the bulk queue of one session, while the stream is current,
/// at most `checkpoint::WINDOW` chunks beyond the receiver's acknowledgements.
struct StreamSink {
    link: PeerLink,
    run: u64,
    ctl: Arc<StreamCtl>,
}

impl ChunkSink for StreamSink {
    fn send_bulk(&self, frame: PeerFrame) -> bool {
        self.link.send_bulk_blocking(frame)
    }

    fn wanted(&self) -> bool {
        self.ctl.run.load(Ordering::Relaxed) == self.run
    }

    fn window_open(&self, seq: u64) -> bool {
        let mut acked = self.ctl.acked.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        while seq >= acked + checkpoint::WINDOW {
            if !self.wanted() || since.elapsed() > ACK_TIMEOUT {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
            let now = self.ctl.acked.load(Ordering::Relaxed);
            if now != acked {
                (acked, since) = (now, std::time::Instant::now());
            }
        }
        true
    }
}

impl Peers for TcpPeers {
    fn connect(&mut self, pid: u64, addr: &str) {
        if !self.sessions.contains_key(&pid) {
            let link = spawn_outbound(&self.rt, self.ctx.clone(), pid, addr.to_string());
            self.sessions.insert(pid, link);
        }
    }

    fn has_link(&self, pid: u64) -> bool {
        self.sessions.contains_key(&pid)
    }

    fn is_connected(&self, pid: u64) -> bool {
        self.sessions.get(&pid).is_some_and(PeerLink::is_connected)
    }

    fn send(&mut self, to: u64, frame: PeerFrame) -> bool {
        self.sessions.get(&to).is_some_and(|l| l.send(frame))
    }

    fn stream_checkpoint(&mut self, to: u64, id: u64, db: &Db, resume: Option<checkpoint::Resume>) {
        let Some(link) = self.sessions.get(&to).cloned() else {
            return;
        };
        let ctl = self.streams.entry(to).or_default().clone();
        let run = ctl.run.fetch_add(1, Ordering::Relaxed) + 1;
        ctl.id.store(id, Ordering::Relaxed);
        let first = resume.as_ref().map_or(0, |r| r.next_seq);
        ctl.acked.store(first, Ordering::Relaxed);
        let db = db.clone();
        let sink = StreamSink { link, run, ctl };
        std::thread::Builder::new()
            .name("checkpoint-send".into())
            .spawn(move || checkpoint::stream(&db, &sink, to, id, checkpoint::CHUNK_BYTES, resume))
            .expect("spawn checkpoint thread");
    }

    fn checkpoint_acked(&mut self, to: u64, id: u64, seq: u64) {
        if let Some(ctl) = self.streams.get(&to) {
            if ctl.id.load(Ordering::Relaxed) == id {
                ctl.acked
                    .fetch_max(seq.saturating_add(1), Ordering::Relaxed);
            }
        }
    }

    fn set_cluster_id(&mut self, cluster_id: u64) {
        self.ctx.set_cluster_id(cluster_id);
    }
}
