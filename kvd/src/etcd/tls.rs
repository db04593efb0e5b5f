//! etcd's API over TLS: the connections of the client API's HTTPS listener (`TlsListener`:
//! its certificate and client CA, reloaded when they change; `h2` offered for gRPC) as
//! tonic's incoming stream; each call carries the user its client certificate names.

use super::auth::CertUser;
use crate::tls::listener::TlsListener;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// One TLS connection to etcd's API.
pub struct TlsConn(TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = CertUser;

    /// The user its client certificate names (rustls keeps a client's certificates only once
    /// they verified against --client-ca-file).
    fn connect_info(&self) -> CertUser {
        CertUser(
            self.0
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::tls::common_name(cert)),
        )
    }
}

/// The connections of `listener`, as tonic takes them (the stream never ends).
pub fn incoming(
    listener: TlsListener,
) -> impl futures::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    futures::stream::unfold(listener, |mut listener| async move {
        let (conn, _) = listener.next().await;
        Some((Ok(TlsConn(conn)), listener))
    })
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
