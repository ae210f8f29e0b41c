//! Opening the socket to a server: TCP (no Nagle, with keepalives) and TLS as the connector
//! says, or a Unix socket. Connection start-up and cancel requests both open one.

use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use super::Target;
use crate::pg::error::ConnectError;
use crate::pg::stream::Stream;
use crate::pg::tls::{self, TlsConnector};

/// A new socket to `target`, TLS negotiated as `tls` says.
pub(super) async fn open_stream(
    target: &Target,
    tls: &TlsConnector,
) -> Result<Stream, ConnectError> {
    match target {
        Target::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            // Keepalives find a dead server (or a dropped NAT mapping) under an idle connection.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            tls::negotiate(tcp, host, tls).await
        }
        Target::Unix { path } => Ok(Stream::Unix(UnixStream::connect(path).await?)),
    }
}
