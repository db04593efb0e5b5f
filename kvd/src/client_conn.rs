//! What the client API knows about a connection: the remote address and, over TLS with
//! client certificates, the user name its verified certificate names. Handlers and the auth
//! layer read it as `ConnectInfo<ClientConn>`.

use crate::tls::listener::TlsListener;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// One client connection as the API sees it.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub remote: SocketAddr,
    /// The common name of a client certificate that verified against --client-ca-file;
    /// `None` over plaintext or when the client presented none.
    pub cert_user: Option<String>,
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientConn {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientConn {
            remote: *stream.remote_addr(),
            cert_user: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientConn {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        // rustls keeps a client's certificates only once they verified against the CA.
        let cert_user = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::tls::common_name(cert));
        let remote = *stream.remote_addr();
        if let Some(user) = &cert_user {
            tracing::debug!(%remote, user, "TLS client certificate verified");
        }
        ClientConn { remote, cert_user }
    }
}
