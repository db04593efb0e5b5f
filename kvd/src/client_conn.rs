//! What the client API knows about a connection: the remote address and, over TLS with
//! client certificates, the user name its verified certificate names. Handlers and the auth
//! layer read it as `ConnectInfo<ClientConn>`.

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
