//! The client API's HTTPS listener: an `axum::serve::Listener` that accepts TCP connections
//! and runs their TLS handshakes on their own tasks (at most `MAX_HANDSHAKES` at once, each
//! within `HANDSHAKE_TIMEOUT`), handing finished streams to `accept` through a bounded
//! channel. Each handshake uses the server configuration current when the connection came
//! in, so a reloaded certificate serves new connections while old ones keep theirs. A
//! connection whose first byte is not a TLS handshake record gets a plain HTTP 400
//! `tls_required` answer and is closed.

use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// Handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;
/// A connection that has not finished its handshake by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that has sent nothing by then is closed: idle connections cannot hold the
/// handshake slots for long (a probe or a client needs only milliseconds).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Finished handshakes waiting for the server to take them.
const READY: usize = 64;
/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// Most bytes of a plaintext request read (for its Host header) before it is answered.
const PLAIN_HEAD_MAX: usize = 8 * 1024;

/// An HTTPS listener for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `tcp` with the configuration `config` holds at each connection.
    pub fn new(
        tcp: TcpListener,
        config: watch::Receiver<Arc<ServerConfig>>,
    ) -> std::io::Result<TlsListener> {
        TlsListener::with_alpn(tcp, config, None)
    }

    /// Like `new`, offering the application protocols `alpn` instead of the configuration's
    /// (etcd's gRPC API: `h2`).
    pub fn with_alpn(
        tcp: TcpListener,
        config: watch::Receiver<Arc<ServerConfig>>,
        alpn: Option<Vec<Vec<u8>>>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let acceptor = tokio::spawn(accept_loop(tcp, config, alpn, tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops taking connections; handshakes under way find the channel closed.
        self.acceptor.abort();
    }
}

impl TlsListener {
    /// The next connection whose handshake finished.
    pub async fn next(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    alpn: Option<Vec<Vec<u8>>>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let local = tcp.local_addr().ok();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                use std::io::ErrorKind::*;
                if !matches!(
                    e.kind(),
                    ConnectionRefused | ConnectionAborted | ConnectionReset
                ) {
                    // Out of file descriptors and the like: give connections time to close.
                    warn!(error = %e, "client accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let current = config.borrow().clone();
        let acceptor = TlsAcceptor::from(match &alpn {
            None => current,
            Some(protocols) => {
                let mut with = (*current).clone();
                with.alpn_protocols = protocols.clone();
                Arc::new(with)
            }
        });
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, acceptor, local)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, remote)).await;
                }
                Ok(Err(reason)) => debug!(%remote, %reason, "client TLS connection refused"),
                Err(_) => debug!(%remote, "client TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}

async fn handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    local: Option<SocketAddr>,
) -> Result<TlsStream<TcpStream>, String> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
        Err(_) => return Err("nothing sent within the first-byte timeout".into()),
        Ok(Ok(0)) => return Err("closed before the handshake".into()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
    }
    if first[0] != TLS_HANDSHAKE {
        refuse_plaintext(stream, local).await;
        return Err("plaintext request on the TLS port: answered 400 tls_required".into());
    }
    acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// Answers a plaintext HTTP request with 400 `tls_required` and closes. The request head
/// is read first (bounded) so that closing does not reset the connection before the client
/// has read the answer, and so that the answer can name the address the client used.
async fn refuse_plaintext(mut stream: TcpStream, local: Option<SocketAddr>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while head.len() < PLAIN_HEAD_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let host = host_header(&head).or_else(|| local.map(|a| a.to_string()));
    let body = tls_required_body(host.as_deref().unwrap_or("<host:port>"));
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Let the client read the answer before the socket goes (unread input would reset it).
    let drain = async {
        let mut total = 0usize;
        while total < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The JSON error body of the `tls_required` answer (the API's error shape).
pub fn tls_required_body(host: &str) -> String {
    serde_json::json!({
        "error": {
            "code": "tls_required",
            "message": format!("this endpoint serves HTTPS: use https://{host} (and --cacert)"),
        }
    })
    .to_string()
}

/// The Host header of a request head, if it is a plausible host[:port].
fn host_header(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let value = text.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim())
    })?;
    let plausible = !value.is_empty()
        && value.len() <= 255
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
    plausible.then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_read_and_checked() {
        let head = b"GET /v1/status HTTP/1.1\r\nhost: 127.0.0.1:8001\r\naccept: */*\r\n\r\n";
        assert_eq!(host_header(head).as_deref(), Some("127.0.0.1:8001"));
        assert_eq!(host_header(b"GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n"), None);
        assert_eq!(host_header(b"GET / HTTP/1.1\r\n\r\n"), None);
        let body: serde_json::Value = serde_json::from_str(&tls_required_body("h:1")).unwrap();
        assert_eq!(body["error"]["code"], "tls_required");
        assert_eq!(
            body["error"]["message"],
            "this endpoint serves HTTPS: use https://h:1 (and --cacert)"
        );
    }
}
