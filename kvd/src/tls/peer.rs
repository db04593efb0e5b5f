//! Mutual TLS on the peer wire. The dialer verifies the server's certificate against the
//! peer CA with the dialed host as server name, then that its URI SAN names the pid it
//! dialed; the acceptor requires a client certificate chained to the peer CA and returns
//! the pid it names, which the transport compares with the Hello's pid. Configurations are
//! rebuilt when the three files change (`reload`).

use super::reload::watch_files;
use super::{peer_client_config, peer_server_config, replica_pid, TlsError};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// Both ends' configurations, built from the same files.
pub struct PeerConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// The peer wire's TLS settings, current as of the last good read of the files.
#[derive(Clone)]
pub struct PeerTls {
    configs: watch::Receiver<Arc<PeerConfigs>>,
}

impl PeerTls {
    /// Reads the files (an unusable one is an error naming it) and watches them.
    pub fn start(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<PeerTls, TlsError> {
        let configs = watch_files("peer TLS", vec![cert, key, ca], |f| {
            Ok(PeerConfigs {
                server: Arc::new(peer_server_config(&f[0], &f[1], &f[2])?),
                client: Arc::new(peer_client_config(&f[0], &f[1], &f[2])?),
            })
        })?;
        Ok(PeerTls { configs })
    }

    /// The client handshake to `pid` at `addr` over `stream`: the certificate must chain to
    /// the peer CA, be valid for `addr`'s host, and name `pid`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
        pid: u64,
    ) -> Result<client::TlsStream<TcpStream>, String> {
        let name = server_name(addr)?;
        let config = self.configs.borrow().client.clone();
        let tls = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        let named = presented_pid(tls.get_ref().1.peer_certificates())?;
        if named != pid {
            return Err(format!(
                "{addr} presents a certificate for replica {named}, not {pid}"
            ));
        }
        Ok(tls)
    }

    /// The server handshake: returns the stream and the pid its client certificate names.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, u64), String> {
        let config = self.configs.borrow().server.clone();
        let tls = TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let pid = presented_pid(tls.get_ref().1.peer_certificates())?;
        Ok((tls, pid))
    }
}

/// The replica pid named by the (verified) certificate chain a peer presented.
fn presented_pid(chain: Option<&[CertificateDer<'static>]>) -> Result<u64, String> {
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or("the peer presented no certificate")?;
    replica_pid(leaf)
}

/// The server name (DNS name or IP address) of a `host:port` peer address.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("peer address {addr}: {host:?} is not a server name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_peer_addresses() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1:7001").unwrap(), ip("127.0.0.1"));
        assert_eq!(server_name("[::1]:7001").unwrap(), ip("::1"));
        assert_eq!(
            server_name("kv-store-0.kv-store:7000").unwrap(),
            ServerName::try_from("kv-store-0.kv-store").unwrap()
        );
        assert!(server_name("bad host:7000").is_err());
    }
}
