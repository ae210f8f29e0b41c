//! The socket under a connection and the byte-level exchange on it: writing what is queued
//! (and the fault seam that cuts a write), reading one message within the read deadline,
//! noticing parameter changes, and the small `expect_*` readers the other parts share.

use super::PgConnection;
use super::TxStatus;
use super::lost;
use super::message_name;
use crate::pg::error::DbError;
use crate::pg::error::QueryError;
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// How far past the statement timeout the gateway still waits for the server (see
/// `PgConnection::read_deadline`): the timeout again, within these bounds.
pub(super) const READ_DEADLINE_MARGIN_MIN: Duration = Duration::from_secs(1);
pub(super) const READ_DEADLINE_MARGIN_MAX: Duration = Duration::from_secs(10);
/// A connection's read buffer to start with.
pub(super) const READ_BUF_CAPACITY: usize = 16 * 1024;
/// Buffers grown past this by one large message are replaced once the exchange is over.
pub(super) const SHRINK_ABOVE: usize = 1024 * 1024;

impl PgConnection {
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        self.write_interrupted = true;
        let result = if crate::pg::faults::strikes(
            &self.cancel.target,
            crate::pg::faults::Fault::WriteCut,
        ) {
            self.write_cut().await
        } else {
            self.stream.write_all(&self.write_buf).await
        };
        self.write_buf.clear();
        match result {
            Ok(()) => {
                self.write_interrupted = false;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// [`Fault::WriteCut`](crate::pg::faults::Fault::WriteCut): half the pending bytes reach the
    /// server, then the socket is shut down.
    pub(super) async fn write_cut(&mut self) -> io::Result<()> {
        let half = self.write_buf.len().div_ceil(2);
        self.stream.write_all(&self.write_buf[..half]).await?;
        self.stream.shutdown_now();
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the socket closed in the middle of a message (injected fault)",
        ))
    }

    /// The next message that concerns the current exchange; notices, notifications and
    /// parameter changes are absorbed here.
    pub(super) async fn recv(&mut self) -> io::Result<Message> {
        loop {
            match Message::parse(&mut self.read_buf) {
                Ok(Some(message)) => match message {
                    // Close is only ever sent for statements the gateway is done with.
                    Message::NoticeResponse(_)
                    | Message::NotificationResponse(_)
                    | Message::CloseComplete => continue,
                    Message::ParameterStatus(body) => {
                        self.note_parameter(&body);
                        continue;
                    }
                    Message::ReadyForQuery(body) => {
                        self.pending_syncs = self.pending_syncs.saturating_sub(1);
                        self.tx_status = match body.status() {
                            b'T' => TxStatus::InTransaction,
                            b'E' => TxStatus::Failed,
                            _ => TxStatus::Idle,
                        };
                        if self.tx_status == TxStatus::Idle {
                            self.local_timeout_ms = None;
                        }
                        // One huge row (a 300 MB value) grew the buffer to its size; a
                        // pooled connection must not keep that for the rest of its life.
                        if self.read_buf.is_empty() && self.read_buf.capacity() > SHRINK_ABOVE {
                            self.read_buf = BytesMut::with_capacity(READ_BUF_CAPACITY);
                        }
                        if self.write_buf.is_empty() && self.write_buf.capacity() > SHRINK_ABOVE {
                            self.write_buf = BytesMut::new();
                        }
                        return Ok(Message::ReadyForQuery(body));
                    }
                    Message::ErrorResponse(body) => {
                        // A FATAL error ends the session: the server closes the socket next.
                        if DbError::parse(body.fields()).is_ok_and(|e| e.is_fatal()) {
                            self.broken = true;
                        }
                        return Ok(Message::ErrorResponse(body));
                    }
                    message => return Ok(message),
                },
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(16 * 1024);
            }
            let read = match self.read_deadline() {
                Some(wait) => {
                    let deadline = tokio::time::Instant::now() + wait;
                    let timer = &mut self.read_timer;
                    let mut read = std::pin::pin!(self.stream.read_buf(&mut self.read_buf));
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(read) = read.as_mut().poll(cx) {
                            return Poll::Ready(read);
                        }
                        timer.poll_expired(deadline, cx).map(|()| {
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "the server sent nothing for {} s, past the statement \
                                     timeout: the connection is given up",
                                    wait.as_secs()
                                ),
                            ))
                        })
                    })
                    .await
                }
                None => self.stream.read_buf(&mut self.read_buf).await,
            };
            match read {
                Ok(0) => {
                    self.broken = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ));
                }
                Ok(read) => {
                    if crate::pg::faults::strikes(
                        &self.cancel.target,
                        crate::pg::faults::Fault::ReadCut,
                    ) {
                        // Whatever message the last byte belonged to is now incomplete.
                        let keep = self.read_buf.len() - read.min(1);
                        self.read_buf.truncate(keep);
                        self.stream.shutdown_now();
                    }
                }
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
    }

    /// The longest the gateway waits for the server's next message: Postgres itself ends any
    /// statement at its `statement_timeout`, so silence well past it means a statement that
    /// cannot be cancelled (a pathological parse), a session whose timeout was switched off
    /// from inside (a script's `SET statement_timeout = 0`), or a server that hangs. Either
    /// way the request is answered instead of waiting forever. `None` when no timeout is set.
    pub(super) fn read_deadline(&self) -> Option<Duration> {
        let timeout_ms = self
            .statement_timeout_ms
            .max(self.local_timeout_ms.unwrap_or(0));
        (timeout_ms > 0).then(|| {
            let timeout = Duration::from_millis(timeout_ms);
            timeout + timeout.clamp(READ_DEADLINE_MARGIN_MIN, READ_DEADLINE_MARGIN_MAX)
        })
    }

    pub(super) fn note_parameter(
        &mut self,
        body: &postgres_protocol::message::backend::ParameterStatusBody,
    ) {
        let (Ok(name), Ok(value)) = (body.name(), body.value()) else {
            return;
        };
        if name == "server_version" {
            self.server_version = value.to_owned();
        }
        if self.starting {
            self.startup_settings
                .push((name.to_owned(), value.to_owned()));
        } else if let Some((_, baseline)) = self.startup_settings.iter().find(|(n, _)| n == name)
            && baseline != value
        {
            self.session_dirty = true;
        }
    }

    pub(super) async fn expect_ready(&mut self) -> io::Result<()> {
        loop {
            if let Message::ReadyForQuery(_) = self.recv().await? {
                return Ok(());
            }
        }
    }

    /// Reads up to the next ReadyForQuery; the error the server sent on the way, if any
    /// (boxed: held across reads, 360 bytes would weigh on every caller's future).
    async fn error_until_ready(&mut self) -> Result<Option<Box<DbError>>, QueryError> {
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::ErrorResponse(body) => {
                    error = Some(Box::new(DbError::parse(body.fields()).map_err(lost)?))
                }
                Message::ReadyForQuery(_) => return Ok(error),
                _ => {}
            }
        }
    }

    /// Reads the answer to one simple-protocol command of the gateway's own; any error is the
    /// gateway's, and the connection is no longer trusted.
    pub(super) async fn expect_command_ok(&mut self) -> Result<(), QueryError> {
        match self.error_until_ready().await? {
            Some(error) => {
                self.broken = true;
                Err(QueryError::Gateway(error.to_string()))
            }
            None => Ok(()),
        }
    }

    /// Reads the answer to a request's `begin` (`BEGIN …`, then an end user's claims and
    /// `SET LOCAL ROLE`). Postgres refusing it — a role that does not exist, or that the
    /// login role was not granted — is a configuration error the client must see as
    /// Postgres's (`database`), and the connection is fine: the transaction is open and
    /// aborted, so what was pipelined behind fails and the trailing `COMMIT` rolls it back.
    /// Only a begin that failed without opening the transaction (never expected: `BEGIN`
    /// comes first and the rest is quoted) leaves statements running outside it: that
    /// connection is not trusted again.
    pub(super) async fn expect_begin(&mut self) -> Result<Option<DbError>, QueryError> {
        match self.error_until_ready().await? {
            Some(error) if self.tx_status != TxStatus::Failed => {
                self.broken = true;
                Err(QueryError::Gateway(format!(
                    "the request's BEGIN failed outside a transaction: {error}"
                )))
            }
            error => Ok(error.map(|error| *error)),
        }
    }

    pub(super) async fn expect_session_reset(&mut self) -> Result<(), QueryError> {
        self.expect_command_ok().await?;
        self.session_dirty = false;
        self.statement_timeout_ms = self.default_statement_timeout_ms;
        Ok(())
    }

    pub(super) async fn refuse_copy_in(&mut self) -> Result<(), QueryError> {
        frontend::copy_fail(
            "COPY FROM STDIN is not supported over HTTP; use INSERT with parameters",
            &mut self.write_buf,
        )
        .map_err(lost)?;
        self.flush().await.map_err(lost)
    }

    /// An unexpected message means the gateway and the server disagree about the exchange:
    /// the connection cannot be trusted again.
    pub(super) fn desync(&mut self, message: &Message) -> QueryError {
        self.broken = true;
        QueryError::ConnectionLost(format!(
            "unexpected {} from the server",
            message_name(message)
        ))
    }
}
