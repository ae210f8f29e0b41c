//! One Postgres connection, spoken to directly in the wire protocol (message encoding from
//! `postgres-protocol`).
//!
//! The gateway needs things a general-purpose driver hides: results in Postgres's own text format
//! for every type, parameters sent as text with their types inferred by the server, the
//! transaction status of every ReadyForQuery (to know when a connection is clean), pipelining a
//! session reset behind a statement in the same round trip, and a precise count of the responses
//! still owed, so that a request dropped halfway (the HTTP client vanished) can be cancelled and
//! the connection brought back in sync instead of thrown away.
//!
//! A `PgConnection` is owned by one task at a time. Every `.await` in here may be the last one
//! (the future dropped): `pending_syncs` and `write_interrupted` always say what the
//! server still owes us, and [`PgConnection::recover`] finishes the job later.
//!
//! This file holds the configuration, the connection's state and its cheap accessors; the
//! jobs live beside it, each adding its own `impl PgConnection` block: [`startup`] (connect,
//! TLS, authentication), [`io`] (the socket, flush/recv, read deadline), [`extended`] (one
//! statement, the statement cache), [`pipeline`] (several statements in one round trip),
//! [`reset`] (settling, session reset, closing), [`rows`] (reading results) and [`cancel`].

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, ReadBuf};

use super::error::{ConnectError, QueryError};
use super::sql::SessionEffect;
use super::statement::StatementCache;
use super::tls::{ChannelBindingMode, TlsConnector};
use super::types::TypeRegistry;

mod cancel;
mod extended;
mod io;
mod pipeline;
mod reset;
mod rows;
mod socket;
mod startup;

use crate::pg::stream::Stream;
pub use crate::pg::target::Target;
pub use cancel::CancelToken;
pub use pipeline::{PipelineError, PipelineStatement, ResultSink};
pub use rows::Rows;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub target: Target,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub tls: TlsConnector,
    pub connect_timeout: Duration,
    /// Session settings sent in the start-up packet (application_name, DateStyle, TimeZone, …).
    /// `RESET ALL` returns to these values, which is what makes them safe defaults.
    pub settings: Vec<(String, String)>,
    /// The statement timeout the session starts with (also in `settings`).
    pub statement_timeout_ms: u64,
    /// Prepared statements kept per connection.
    pub statement_cache_size: usize,
    /// Which ways of proving the password the gateway accepts.
    pub auth: AuthPolicy,
}

/// How the gateway may authenticate to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Send the password in the clear or as MD5 when the server asks, even though the peer is
    /// not verified (no TLS with `verify-ca`/`verify-full`, not a Unix socket). Off by default:
    /// whoever answers at the server's address would learn the password (or a hash that
    /// logs in as well).
    pub allow_insecure_password: bool,
    pub channel_binding: ChannelBindingMode,
}

/// The transaction status of the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

/// What a request needs from the gateway beyond the SQL and parameters.
pub struct QueryOptions<'a> {
    /// The statement timeout for this call.
    pub statement_timeout_ms: u64,
    /// From the SQL lexer: whether the session must be reset after this statement.
    pub session_effect: SessionEffect,
    pub types: &'a TypeRegistry,
}

/// Server-reported settings that the gateway fixes at start-up; a change to one of them after
/// start-up (a function calling `set_config`) marks the session dirty.
const WATCHED_SETTINGS: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "client_encoding",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
];

pub struct PgConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// ReadyForQuery messages the server still owes (one per Sync or simple Query sent).
    pending_syncs: usize,
    /// Set while a write is in progress: a write cut short leaves a partial message behind.
    write_interrupted: bool,
    /// The socket failed or the server ended the session.
    broken: bool,
    tx_status: TxStatus,
    /// Session state may differ from the start-up state (a reset is owed or in flight).
    session_dirty: bool,
    /// The session holds something no reset undoes (see [`SessionEffect::Unresettable`]), or
    /// a prepared statement in the gateway's namespace that is not the gateway's: the
    /// connection is closed once its request is over, never reused.
    retire: bool,
    statement_timeout_ms: u64,
    default_statement_timeout_ms: u64,
    /// A `SET LOCAL statement_timeout` of the transaction in progress.
    local_timeout_ms: Option<u64>,
    cancel: CancelToken,
    statements: StatementCache,
    next_statement: u64,
    /// Values of [`WATCHED_SETTINGS`] as the session started.
    startup_settings: Vec<(String, String)>,
    /// Still in the start-up exchange (parameter reports are the baseline, not changes).
    starting: bool,
    server_version: String,
    /// The read deadline's timer, kept across reads (see [`crate::deadline`]).
    read_timer: crate::deadline::DeadlineTimer,
}

impl PgConnection {
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn tx_status(&self) -> TxStatus {
        self.tx_status
    }

    /// Whether the connection is in sync, idle and in its start-up session state: safe to hand
    /// to another request as it is.
    pub fn is_clean(&self) -> bool {
        self.is_in_sync() && self.tx_status == TxStatus::Idle && !self.session_dirty && !self.retire
    }

    /// No response is owed and the protocol stream is intact.
    pub fn is_in_sync(&self) -> bool {
        !self.broken && !self.write_interrupted && self.pending_syncs == 0
    }

    pub fn is_broken(&self) -> bool {
        self.broken || self.write_interrupted
    }

    /// Marks the connection to be closed after the current request, instead of reset and
    /// reused: what ran on it left state no reset can undo.
    pub fn retire(&mut self) {
        self.retire = true;
    }

    /// Checks, without waiting, whether the server has closed the connection or sent something
    /// while it sat idle (a FATAL "terminating connection" when Postgres restarts). Costs no
    /// round trip, so it runs on every check-out.
    pub fn poll_alive(&mut self) -> bool {
        if self.is_broken() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            self.read_buf.reserve(1024);
            let mut read_buf = ReadBuf::uninit(self.read_buf.spare_capacity_mut());
            match Pin::new(&mut self.stream).poll_read(&mut cx, &mut read_buf) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => {
                    self.broken = true;
                    return false;
                }
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.broken = true;
                        return false;
                    }
                    // SAFETY: poll_read initialised the first `n` bytes of the spare capacity.
                    unsafe { self.read_buf.set_len(self.read_buf.len() + n) };
                }
            }
        }
        // Unsolicited messages: notices and parameter changes are harmless; an error while idle
        // is the server ending the session.
        while let Ok(Some(message)) = Message::parse(&mut self.read_buf) {
            match message {
                Message::ErrorResponse(_) => self.broken = true,
                Message::ParameterStatus(body) => self.note_parameter(&body),
                _ => {}
            }
        }
        !self.broken
    }

    /// One round trip (a bare Sync), to prove a connection that sat idle a long time still works.
    pub async fn ping(&mut self) -> Result<(), QueryError> {
        self.ensure_in_sync()?;
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        self.flush().await.map_err(lost)?;
        self.expect_ready().await.map_err(lost)?;
        Ok(())
    }
}

fn lost(error: std::io::Error) -> QueryError {
    QueryError::ConnectionLost(error.to_string())
}

fn protocol(message: &str) -> ConnectError {
    ConnectError::Protocol(message.to_owned())
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "message",
    }
}
