//! Cancelling the statement running on a connection from another task, over a new socket.

use super::Target;
use super::socket::open_stream;
use crate::pg::tls::TlsConnector;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// Everything needed to cancel the statement running on a connection, from another task.
#[derive(Debug, Clone)]
pub struct CancelToken {
    pub(super) target: Target,
    pub(super) tls: TlsConnector,
    pub(super) process_id: i32,
    pub(super) secret_key: i32,
}

impl CancelToken {
    /// Asks the server to cancel whatever the connection is running, over a new socket, and
    /// waits until the server has acted on it (it closes the socket after signalling).
    pub async fn cancel(&self) -> io::Result<()> {
        if crate::pg::faults::strikes(&self.target, crate::pg::faults::Fault::CancelLost) {
            return Ok(());
        }
        let attempt = async {
            let mut stream = open_stream(&self.target, &self.tls)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            let mut buf = BytesMut::new();
            frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
            stream.write_all(&buf).await?;
            stream.flush().await?;
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await? > 0 {}
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "cancel request timed out",
                ))
            })
    }

    pub fn process_id(&self) -> i32 {
        self.process_id
    }
}
