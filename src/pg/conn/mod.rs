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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::error::{ConnectError, DbError, QueryError};
use super::params;
use super::sql::{GATEWAY_STATEMENT_PREFIX, SessionEffect};
use super::statement::{ColumnSource, CommandTag, Field, Statement, StatementCache};
use super::tls::{self, ChannelBindingMode, SslMode, TlsConnector};
use super::types::{PgType, TYPE_LOOKUP_SQL, TypeRegistry, TypeRow};

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

/// A server address: TCP host and port, or a Unix socket file
/// (`host=/var/run/postgresql` and port 5432 give `/var/run/postgresql/.s.PGSQL.5432`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { path } => write!(f, "{path}"),
        }
    }
}

/// The socket under a connection.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Shuts the socket down in both directions at once (a fault seam: the connection dies the
    /// way a cut link does, without a Terminate).
    fn shutdown_now(&self) {
        let result = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Both),
            Stream::Tls(s) => {
                socket2::SockRef::from(s.get_ref().0).shutdown(std::net::Shutdown::Both)
            }
        };
        let _ = result;
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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

/// A statement as Describe reports it: parameter type OIDs, and result columns (name, OID,
/// where the column comes from).
type Description = (Vec<u32>, Vec<(String, u32, ColumnSource)>);

/// See [`PgConnection::checkpoint`].
#[derive(Clone, Copy)]
struct Checkpoint {
    write_len: usize,
    pending_syncs: usize,
    statement_timeout_ms: u64,
    local_timeout_ms: Option<u64>,
}

/// One statement of a pipeline.
pub struct PipelineStatement<'a> {
    pub sql: &'a str,
    pub params: &'a [&'a RawValue],
    pub session_effect: SessionEffect,
}

/// Receives a pipeline's results as they arrive.
pub trait ResultSink {
    /// Statement `index` produced its first message; its rows follow.
    fn begin_statement(&mut self, index: usize, statement: &Arc<Statement>);
    fn row(&mut self, row: &DataRowBody) -> io::Result<()>;
    fn end_statement(&mut self, tag: &CommandTag);
}

/// A pipeline that failed: which statement (none when COMMIT failed), and why.
#[derive(Debug)]
pub struct PipelineError {
    pub statement_index: Option<usize>,
    pub error: QueryError,
}

/// Everything needed to cancel the statement running on a connection, from another task.
#[derive(Debug, Clone)]
pub struct CancelToken {
    target: Target,
    tls: TlsConnector,
    process_id: i32,
    secret_key: i32,
}

/// Sent after a statement that may have changed the session: back to the start-up state,
/// keeping only the gateway's own prepared statements (`DEALLOCATE ALL` would drop those too).
/// The equivalent of `DISCARD ALL` minus `DEALLOCATE ALL` and `DISCARD PLANS`, plus a fresh
/// random seed: `DISCARD ALL` leaves a `setseed()` in place, which would make the next
/// tenant's `random()` predictable. The seed comes from `gen_random_uuid()` (the strong
/// random source, which `setseed` does not touch). Every name and operator is
/// schema-qualified: a role's own `search_path` (restored by `RESET ALL`) must not be able to
/// put a tenant's function or operator into the gateway's reset.
const SESSION_RESET_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
    UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
    SELECT pg_catalog.setseed(pg_catalog.hashtext(pg_catalog.gen_random_uuid()::pg_catalog.text)\
    ::pg_catalog.float8 OPERATOR(pg_catalog./) 2147483648); \
    DO $sluice$DECLARE s record; BEGIN FOR s IN SELECT name FROM pg_catalog.pg_prepared_statements \
    WHERE from_sql LOOP EXECUTE pg_catalog.format('DEALLOCATE %I', s.name); END LOOP; END$sluice$";

/// How far past the statement timeout the gateway still waits for the server (see
/// `PgConnection::read_deadline`): the timeout again, within these bounds.
const READ_DEADLINE_MARGIN_MIN: Duration = Duration::from_secs(1);
const READ_DEADLINE_MARGIN_MAX: Duration = Duration::from_secs(10);
/// A connection's read buffer to start with.
const READ_BUF_CAPACITY: usize = 16 * 1024;
/// Buffers grown past this by one large message are replaced once the exchange is over.
const SHRINK_ABOVE: usize = 1024 * 1024;

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

/// Where the SCRAM exchange of a start-up stands.
enum Sasl {
    NotStarted,
    /// Started; `bound` when with channel binding (SCRAM-SHA-256-PLUS).
    InProgress {
        scram: Box<ScramSha256>,
        bound: bool,
    },
    /// The server proved it knows the password.
    Verified {
        bound: bool,
    },
}

/// The first pause before a cancel is sent again while its statement is still running, and
/// the longest (the pause doubles in between).
const FIRST_CANCEL_RETRY: Duration = Duration::from_millis(100);
const MAX_CANCEL_RETRY: Duration = Duration::from_secs(5);

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
}

impl PgConnection {
    /// Connects, negotiates TLS, authenticates and waits for the server to be ready.
    pub async fn connect(config: &ConnectConfig) -> Result<PgConnection, ConnectError> {
        let timeout_ms = config.connect_timeout.as_millis() as u64;
        match tokio::time::timeout(config.connect_timeout, Self::connect_inner(config)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(timeout_ms)),
        }
    }

    async fn connect_inner(config: &ConnectConfig) -> Result<PgConnection, ConnectError> {
        let stream = open_stream(&config.target, &config.tls).await?;
        let mut conn = PgConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_BUF_CAPACITY),
            write_buf: BytesMut::with_capacity(4 * 1024),
            pending_syncs: 1,
            write_interrupted: false,
            broken: false,
            tx_status: TxStatus::Idle,
            session_dirty: false,
            retire: false,
            statement_timeout_ms: config.statement_timeout_ms,
            default_statement_timeout_ms: config.statement_timeout_ms,
            local_timeout_ms: None,
            cancel: CancelToken {
                target: config.target.clone(),
                tls: config.tls.clone(),
                process_id: 0,
                secret_key: 0,
            },
            statements: StatementCache::new(config.statement_cache_size),
            next_statement: 0,
            startup_settings: Vec::new(),
            starting: true,
            server_version: String::new(),
        };
        conn.startup(config).await?;
        Ok(conn)
    }

    async fn startup(&mut self, config: &ConnectConfig) -> Result<(), ConnectError> {
        let mut parameters: Vec<(&str, &str)> = vec![
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
        ];
        parameters.extend(
            config
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let on_tls = matches!(self.stream, Stream::Tls(_));
        if config.auth.channel_binding == ChannelBindingMode::Require && !on_tls {
            return Err(ConnectError::Tls(
                "channel_binding=require needs TLS, but this connection is not encrypted: set \
                 sslmode=verify-full (or require) in the upstream URL and enable ssl on the server"
                    .into(),
            ));
        }
        frontend::startup_message(parameters, &mut self.write_buf)?;
        self.flush().await?;

        let mut sasl = Sasl::NotStarted;
        loop {
            match self.recv().await? {
                Message::AuthenticationOk => {
                    if let Sasl::InProgress { .. } = sasl {
                        return Err(ConnectError::Unsupported(
                            "the server reported the login successful before proving it knows \
                             the password (AuthenticationOk in the middle of SCRAM): it is not \
                             the server it claims to be, or a proxy between us interferes"
                                .into(),
                        ));
                    }
                    if config.auth.channel_binding == ChannelBindingMode::Require
                        && !matches!(sasl, Sasl::Verified { bound: true })
                    {
                        return Err(ConnectError::Unsupported(format!(
                            "channel_binding=require, but the server let user \"{}\" in \
                             without SCRAM channel binding: configure scram-sha-256 for this user \
                             in pg_hba.conf, or set channel_binding=prefer in the upstream URL",
                            config.user
                        )));
                    }
                }
                Message::AuthenticationCleartextPassword => {
                    self.check_insecure_password(config, "in the clear")?;
                    let password = require_password(config)?;
                    frontend::password_message(password.as_bytes(), &mut self.write_buf)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    self.check_insecure_password(config, "as an MD5 hash")?;
                    let password = require_password(config)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = require_password(config)?;
                    let mut mechanisms = body.mechanisms();
                    let (mut has_scram, mut has_plus) = (false, false);
                    while let Some(mechanism) = mechanisms.next()? {
                        has_scram |= mechanism == sasl::SCRAM_SHA_256;
                        has_plus |= mechanism == sasl::SCRAM_SHA_256_PLUS;
                    }
                    let (mechanism, binding) = self.channel_binding(config, has_scram, has_plus)?;
                    let state = ScramSha256::new(password.as_bytes(), binding);
                    frontend::sasl_initial_response(
                        mechanism,
                        state.message(),
                        &mut self.write_buf,
                    )?;
                    sasl = Sasl::InProgress {
                        scram: Box::new(state),
                        bound: mechanism == sasl::SCRAM_SHA_256_PLUS,
                    };
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let Sasl::InProgress {
                        scram: state,
                        bound,
                    } = std::mem::replace(&mut sasl, Sasl::NotStarted)
                    else {
                        return Err(protocol("SASL continue without SASL start"));
                    };
                    let mut state = *state;
                    // Salting the password is deliberately slow (PBKDF2); keep it off the
                    // runtime's worker threads.
                    let data = body.data().to_vec();
                    let state =
                        tokio::task::spawn_blocking(move || state.update(&data).map(|()| state))
                            .await
                            .map_err(|e| protocol(&e.to_string()))??;
                    frontend::sasl_response(state.message(), &mut self.write_buf)?;
                    sasl = Sasl::InProgress {
                        scram: Box::new(state),
                        bound,
                    };
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let Sasl::InProgress {
                        scram: mut state,
                        bound,
                    } = std::mem::replace(&mut sasl, Sasl::NotStarted)
                    else {
                        return Err(protocol("SASL final without SASL start"));
                    };
                    state.finish(body.data()).map_err(|e| {
                        ConnectError::Protocol(format!(
                            "the server's SCRAM signature did not verify: {e}"
                        ))
                    })?;
                    sasl = Sasl::Verified { bound };
                }
                Message::BackendKeyData(body) => {
                    self.cancel.process_id = body.process_id();
                    self.cancel.secret_key = body.secret_key();
                }
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields())?;
                    // pg_hba.conf has only `hostssl` lines for us: say what to change.
                    if error.code == "28000"
                        && error.message.contains("no encryption")
                        && config.tls.mode() == SslMode::Disable
                    {
                        return Err(ConnectError::Tls(format!(
                            "the server accepts only TLS connections ({}): set sslmode=require, verify-ca or \
                             verify-full in the upstream URL",
                            error.message
                        )));
                    }
                    return Err(ConnectError::Rejected(Box::new(error)));
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(ConnectError::Unsupported(
                        "the server asks for Kerberos/GSSAPI/SSPI authentication; configure \
                         scram-sha-256 or md5 for the gateway's user in pg_hba.conf"
                            .into(),
                    ));
                }
                other => {
                    return Err(protocol(&format!(
                        "unexpected message {}",
                        message_name(&other)
                    )));
                }
            }
        }
        // From now on, changes to these mean the session was altered.
        self.startup_settings
            .retain(|(name, _)| WATCHED_SETTINGS.contains(&name.as_str()));
        self.starting = false;
        Ok(())
    }

    /// A password in the clear or as MD5 goes only to a verified peer (TLS with a checked
    /// certificate, or a Unix socket), unless the upstream allows otherwise.
    fn check_insecure_password(
        &self,
        config: &ConnectConfig,
        how: &str,
    ) -> Result<(), ConnectError> {
        if config.auth.channel_binding == ChannelBindingMode::Require {
            return Err(ConnectError::Unsupported(format!(
                "channel_binding=require, but the server asks for user \"{}\"'s password {how}: \
                 configure scram-sha-256 for this user in pg_hba.conf",
                config.user
            )));
        }
        let verified = match self.stream {
            Stream::Unix(_) => true,
            Stream::Tls(_) => config.tls.verifies_peer(),
            Stream::Tcp(_) => false,
        };
        if verified || config.auth.allow_insecure_password {
            return Ok(());
        }
        Err(ConnectError::Unsupported(format!(
            "the server asks for user \"{}\"'s password {how}, and the gateway has not verified \
             who the server is (sslmode={}): configure scram-sha-256 for this user in \
             pg_hba.conf (with password_encryption = scram-sha-256 and the password set again), \
             or use sslmode=verify-full or verify-ca, or set allow_insecure_password_auth = true \
             on the upstream",
            config.user,
            config.tls.mode().as_str()
        )))
    }

    /// The SCRAM mechanism and channel binding for `channel_binding` and what the server
    /// offers.
    fn channel_binding(
        &self,
        config: &ConnectConfig,
        has_scram: bool,
        has_plus: bool,
    ) -> Result<(&'static str, ChannelBinding), ConnectError> {
        let on_tls = matches!(self.stream, Stream::Tls(_));
        let end_point = || tls::server_end_point(&self.stream);
        let unsupported = || {
            ConnectError::Unsupported(
                "the server offers no SASL mechanism the gateway supports (SCRAM-SHA-256)".into(),
            )
        };
        match config.auth.channel_binding {
            ChannelBindingMode::Require => {
                if !has_plus {
                    return Err(ConnectError::Unsupported(
                        "channel_binding=require, but the server does not offer \
                         SCRAM-SHA-256-PLUS (is ssl on, and the connection TLS?): set \
                         channel_binding=prefer in the upstream URL"
                            .into(),
                    ));
                }
                let hash = end_point().ok_or_else(|| {
                    ConnectError::Unsupported(
                        "channel_binding=require, but the server certificate's signature \
                         algorithm has no tls-server-end-point hash (Ed25519, RSA-PSS): use an \
                         ECDSA or RSA certificate, or set channel_binding=prefer"
                            .into(),
                    )
                })?;
                Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash),
                ))
            }
            ChannelBindingMode::Prefer if on_tls && has_plus => match end_point() {
                Some(hash) => Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash),
                )),
                // 'n': we cannot bind; 'y' would make the server suspect a downgrade.
                None if has_scram => Ok((sasl::SCRAM_SHA_256, ChannelBinding::unsupported())),
                None => Err(unsupported()),
            },
            // 'y' on TLS: we could bind but the server does not offer it, so a server that
            // does (and sees 'y') knows someone stripped SCRAM-SHA-256-PLUS from the offer.
            ChannelBindingMode::Prefer if has_scram && on_tls => {
                Ok((sasl::SCRAM_SHA_256, ChannelBinding::unrequested()))
            }
            ChannelBindingMode::Prefer | ChannelBindingMode::Disable if has_scram => {
                Ok((sasl::SCRAM_SHA_256, ChannelBinding::unsupported()))
            }
            ChannelBindingMode::Prefer | ChannelBindingMode::Disable => Err(unsupported()),
        }
    }

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

    /// Marks the session as needing a reset before reuse (used when the gateway cannot tell).
    pub fn mark_session_dirty(&mut self) {
        self.session_dirty = true;
    }

    /// Marks the connection to be closed after the current request, instead of reset and
    /// reused: what ran on it left state no reset can undo.
    pub fn retire(&mut self) {
        self.retire = true;
    }

    /// Whether the connection is to be closed after the current request.
    pub fn is_retiring(&self) -> bool {
        self.retire
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
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

    /// Runs one statement with parameters and returns its rows as a stream.
    pub async fn query<'c>(
        &'c mut self,
        sql: &str,
        params: &[&RawValue],
        options: &QueryOptions<'_>,
    ) -> Result<Rows<'c>, QueryError> {
        self.ensure_in_sync()?;
        let mut retried = false;
        let mut recovered_cache = false;
        loop {
            let statement = match self.statements.get(sql) {
                Some(statement) => statement,
                None => self.prepare(sql, options).await?,
            };
            if statement.params.len() != params.len() {
                return Err(QueryError::Rejected(format!(
                    "the statement has {} parameter placeholder(s) but {} parameter(s) were given",
                    statement.params.len(),
                    params.len()
                )));
            }
            // Encoded before anything is queued, so a parameter error leaves nothing half-sent.
            let bind = self.encode_bind(&statement, params)?;
            let checkpoint = self.checkpoint();
            let set_timeout = self.queue_statement_timeout(options.statement_timeout_ms);
            self.write_buf.unsplit(bind);
            frontend::execute("", 0, &mut self.write_buf)
                .map_err(|e| self.rewind(checkpoint, e))?;
            frontend::sync(&mut self.write_buf);
            self.pending_syncs += 1;
            if options.session_effect == SessionEffect::Unresettable {
                self.retire = true;
            }
            // Inside a transaction the reset waits for its end (it would become part of it).
            let may_change = options.session_effect != SessionEffect::None;
            let reset = may_change && self.tx_status == TxStatus::Idle;
            if reset {
                self.queue_session_reset();
            } else if may_change {
                self.session_dirty = true;
            }
            self.flush().await.map_err(lost)?;
            if set_timeout {
                self.expect_command_ok().await?;
            }
            match self.recv().await.map_err(lost)? {
                Message::BindComplete => {
                    return Ok(Rows {
                        conn: self,
                        statement,
                        reset_pending: reset,
                        done: None,
                        copy_out: false,
                    });
                }
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields()).map_err(lost)?;
                    self.expect_ready().await.map_err(lost)?;
                    if reset {
                        self.expect_session_reset().await?;
                    }
                    // A table altered under a cached statement: nothing ran, so prepare the
                    // statement afresh once.
                    if !retried && error.code == "0A000" && error.message.contains("cached plan") {
                        retried = true;
                        self.statements.remove(sql);
                        self.queue_close(&statement.name);
                        continue;
                    }
                    // The gateway's statement is gone (DEALLOCATE ALL or DISCARD ALL hidden in
                    // a function): the cache no longer matches the server. Nothing ran, so
                    // outside a transaction (which the error has failed) start over with an
                    // empty cache, once.
                    if self.lost_gateway_statement(&error)
                        && !recovered_cache
                        && self.tx_status == TxStatus::Idle
                    {
                        recovered_cache = true;
                        continue;
                    }
                    return Err(QueryError::db(error));
                }
                other => return Err(self.desync(&other)),
            }
        }
    }

    /// Parse + Describe + Sync for one statement, then learns any type it does not know.
    async fn prepare(
        &mut self,
        sql: &str,
        options: &QueryOptions<'_>,
    ) -> Result<Arc<Statement>, QueryError> {
        let mut prepared = self
            .prepare_many(&[sql], options)
            .await
            .map_err(|(_, e)| e)?;
        Ok(prepared.remove(0))
    }

    /// Prepares several statements in one round trip (Parse + Describe each, one Sync) and
    /// caches them; `Err((i, error))` names the first one that failed.
    async fn prepare_many(
        &mut self,
        sqls: &[&str],
        options: &QueryOptions<'_>,
    ) -> Result<Vec<Arc<Statement>>, (usize, QueryError)> {
        let mut names = Vec::with_capacity(sqls.len());
        let checkpoint = self.checkpoint();
        for (i, sql) in sqls.iter().enumerate() {
            self.next_statement += 1;
            let name = format!("{GATEWAY_STATEMENT_PREFIX}{}", self.next_statement);
            frontend::parse(&name, sql, std::iter::empty(), &mut self.write_buf)
                .and_then(|()| frontend::describe(b'S', &name, &mut self.write_buf))
                .map_err(|e| (i, self.rewind(checkpoint, e)))?;
            names.push(name);
        }
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        self.flush().await.map_err(|e| (0, lost(e)))?;

        // Each statement answers ParseComplete, ParameterDescription, RowDescription or
        // NoData; an error ends the exchange and belongs to the statement being described.
        let mut described: Vec<Description> = Vec::with_capacity(sqls.len());
        let mut current: Option<Description> = None;
        let mut error = None;
        loop {
            match self.recv().await.map_err(|e| (described.len(), lost(e)))? {
                Message::ParseComplete => current = Some((Vec::new(), Vec::new())),
                Message::ParameterDescription(body) => {
                    let oids = body
                        .parameters()
                        .collect()
                        .map_err(|e| (described.len(), lost(e)))?;
                    if let Some(entry) = current.as_mut() {
                        entry.0 = oids;
                    }
                }
                Message::RowDescription(body) => {
                    let mut columns = Vec::new();
                    let mut fields = body.fields();
                    while let Some(field) = fields.next().map_err(|e| (described.len(), lost(e)))? {
                        let source = ColumnSource {
                            table_oid: field.table_oid(),
                            column_id: field.column_id(),
                            type_size: field.type_size(),
                            type_modifier: field.type_modifier(),
                        };
                        columns.push((field.name().to_owned(), field.type_oid(), source));
                    }
                    described.extend(current.take().map(|(params, _)| (params, columns)));
                }
                Message::NoData => described.extend(current.take()),
                Message::ErrorResponse(body) => {
                    error = Some(
                        DbError::parse(body.fields()).map_err(|e| (described.len(), lost(e)))?,
                    )
                }
                Message::ReadyForQuery(_) => break,
                other => return Err((described.len(), self.desync(&other))),
            }
        }
        if let Some(error) = error {
            let index = described.len();
            // A statement of the client's holds one of the gateway's names: the connection
            // cannot prepare safely any more, so it goes after this request.
            if error.code == "42P05" && error.message.contains(GATEWAY_STATEMENT_PREFIX) {
                self.retire = true;
            }
            if error.code == "42601" && error.message.contains("multiple commands") {
                let message = "a statement holds more than one command; send each as its own statement (or use /v1/batch)";
                return Err((index, QueryError::Rejected(message.into())));
            }
            return Err((index, QueryError::db(error)));
        }
        if described.len() != sqls.len() {
            return Err((
                described.len(),
                QueryError::ConnectionLost("incomplete statement description".into()),
            ));
        }

        let mut unknown: Vec<u32> = described
            .iter()
            .flat_map(|(params, columns)| {
                params
                    .iter()
                    .copied()
                    .chain(columns.iter().map(|(_, oid, _)| *oid))
            })
            .filter(|oid| options.types.get(*oid).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            self.learn_types(&unknown, options.types)
                .await
                .map_err(|e| (0, e))?;
        }
        let resolve = |oid: u32| {
            options
                .types
                .get(oid)
                .unwrap_or_else(|| PgType::unknown(oid))
        };
        let mut statements = Vec::with_capacity(sqls.len());
        for ((sql, name), (params, columns)) in sqls.iter().zip(names).zip(described) {
            let statement = Arc::new(Statement {
                name,
                params: params.into_iter().map(resolve).collect(),
                fields: columns
                    .into_iter()
                    .map(|(name, oid, source)| Field::new(name, resolve(oid)).with_source(source))
                    .collect(),
            });
            for evicted in self.statements.insert(sql, statement.clone()) {
                self.queue_close(&evicted.name);
            }
            statements.push(statement);
        }
        Ok(statements)
    }

    /// Runs `statements` in one pipeline: their Bind/Execute messages and a single Sync —
    /// wrapped in `begin` … `COMMIT` when `begin` is given (a `/v1/batch`), bare inside an
    /// interactive transaction. Statements not yet prepared cost one more round trip first.
    /// Results reach `sink` as they arrive. On failure the error names the statement
    /// (`None` when COMMIT itself failed), and a wrapped transaction is over either way.
    pub async fn pipeline(
        &mut self,
        statements: &[PipelineStatement<'_>],
        begin: Option<&str>,
        options: &QueryOptions<'_>,
        sink: &mut impl ResultSink,
    ) -> Result<Option<CommandTag>, PipelineError> {
        let failed = |index: Option<usize>| {
            move |error: QueryError| PipelineError {
                statement_index: index,
                error,
            }
        };
        self.ensure_in_sync().map_err(failed(None))?;
        self.statements.protect();
        let result = self
            .pipeline_protected(statements, begin, options, sink)
            .await;
        self.statements.unprotect();
        result
    }

    async fn pipeline_protected(
        &mut self,
        statements: &[PipelineStatement<'_>],
        begin: Option<&str>,
        options: &QueryOptions<'_>,
        sink: &mut impl ResultSink,
    ) -> Result<Option<CommandTag>, PipelineError> {
        let at = |index: usize| {
            move |error: QueryError| PipelineError {
                statement_index: Some(index),
                error,
            }
        };
        // Prepare what the cache lacks, all at once.
        let mut prepared: Vec<Option<Arc<Statement>>> = statements
            .iter()
            .map(|s| self.statements.get(s.sql))
            .collect();
        let mut missing: Vec<&str> = statements
            .iter()
            .zip(&prepared)
            .filter(|(_, p)| p.is_none())
            .map(|(s, _)| s.sql)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let fresh = self
                .prepare_many(&missing, options)
                .await
                .map_err(|(i, error)| {
                    let index = statements
                        .iter()
                        .position(|s| s.sql == missing[i.min(missing.len() - 1)]);
                    PipelineError {
                        statement_index: index,
                        error,
                    }
                })?;
            for (slot, statement) in prepared.iter_mut().zip(statements) {
                if slot.is_none() {
                    *slot = missing
                        .iter()
                        .position(|sql| *sql == statement.sql)
                        .map(|i| fresh[i].clone());
                }
            }
        }
        let prepared: Vec<Arc<Statement>> = prepared
            .into_iter()
            .map(|p| p.expect("every statement is prepared"))
            .collect();

        // Everything encoded before anything is queued, so a parameter error sends nothing.
        let mut binds = Vec::with_capacity(statements.len());
        for (index, (statement, request)) in prepared.iter().zip(statements).enumerate() {
            if statement.params.len() != request.params.len() {
                return Err(at(index)(QueryError::Rejected(format!(
                    "the statement has {} parameter placeholder(s) but {} parameter(s) were given",
                    statement.params.len(),
                    request.params.len()
                ))));
            }
            binds.push(
                self.encode_bind(statement, request.params)
                    .map_err(at(index))?,
            );
        }
        let checkpoint = self.checkpoint();
        let set_timeout = self.queue_statement_timeout(options.statement_timeout_ms);
        if let Some(begin) = begin {
            frontend::query(begin, &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        for bind in binds {
            self.write_buf.unsplit(bind);
            frontend::execute("", 0, &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
        }
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        if begin.is_some() {
            // On a failed transaction COMMIT rolls back and answers "ROLLBACK": no extra round
            // trip either way.
            frontend::query("COMMIT", &mut self.write_buf)
                .map_err(|e| at(0)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        let effect = statements
            .iter()
            .map(|s| s.session_effect)
            .max()
            .unwrap_or(SessionEffect::None)
            .max(options.session_effect);
        if effect != SessionEffect::None {
            self.session_dirty = true;
        }
        if effect == SessionEffect::Unresettable {
            self.retire = true;
        }
        self.flush().await.map_err(|e| at(0)(lost(e)))?;

        if set_timeout {
            self.expect_command_ok().await.map_err(at(0))?;
        }
        let mut failure: Option<PipelineError> = None;
        if begin.is_some()
            && let Some(error) = self.expect_begin().await.map_err(at(0))?
        {
            // The statements behind it fail in the aborted transaction and COMMIT rolls it
            // back: read on, and answer with the begin's error (it is no statement's).
            failure = Some(PipelineError {
                statement_index: None,
                error: QueryError::db(error),
            });
        }
        let mut index = 0;
        let mut started = false;
        loop {
            let message = self.recv().await.map_err(|e| at(index)(lost(e)))?;
            match message {
                Message::BindComplete => {
                    sink.begin_statement(index, &prepared[index]);
                    started = true;
                }
                Message::DataRow(row) if started => sink.row(&row).map_err(|e| {
                    self.broken = true;
                    at(index)(QueryError::ConnectionLost(format!(
                        "malformed row from the server: {e}"
                    )))
                })?,
                Message::CommandComplete(body) if started => {
                    let tag = CommandTag::parse(body.tag().map_err(|e| at(index)(lost(e)))?);
                    sink.end_statement(&tag);
                    started = false;
                    index += 1;
                }
                Message::EmptyQueryResponse if started => {
                    sink.end_statement(&CommandTag::default());
                    started = false;
                    index += 1;
                }
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields()).map_err(|e| at(index)(lost(e)))?;
                    // A Bind that found the gateway's statement gone: the batch fails, and the
                    // cache is emptied so the next request prepares afresh.
                    if !started {
                        self.lost_gateway_statement(&error);
                    }
                    // The first error is the cause; later ones follow from it.
                    if failure.is_none() {
                        failure = Some(at(index)(QueryError::db(error)));
                    }
                }
                Message::CopyInResponse(_) => {
                    self.refuse_copy_in().await.map_err(at(index))?;
                    frontend::sync(&mut self.write_buf);
                    self.flush().await.map_err(|e| at(index)(lost(e)))?;
                }
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(at(index)(self.desync(&other))),
            }
        }
        let mut commit_tag = None;
        if begin.is_some() {
            let mut commit_error = None;
            loop {
                match self.recv().await.map_err(|e| at(index)(lost(e)))? {
                    Message::CommandComplete(body) => {
                        commit_tag = Some(CommandTag::parse(
                            body.tag().map_err(|e| at(index)(lost(e)))?,
                        ));
                    }
                    Message::ErrorResponse(body) => {
                        commit_error =
                            Some(DbError::parse(body.fields()).map_err(|e| at(index)(lost(e)))?);
                    }
                    Message::ReadyForQuery(_) => break,
                    other => return Err(at(index)(self.desync(&other))),
                }
            }
            if failure.is_none()
                && let Some(error) = commit_error
            {
                failure = Some(PipelineError {
                    statement_index: None,
                    error: QueryError::db(error),
                });
            }
        }
        match failure {
            Some(failure) => Err(failure),
            None => Ok(commit_tag),
        }
    }

    /// Runs a multi-statement script with the simple query protocol (no parameters), inside
    /// `begin` … `COMMIT` when `begin` is given, and returns each statement's command tag.
    /// A failure names the statement by its position in the script.
    pub async fn script(
        &mut self,
        script: &str,
        begin: Option<&str>,
        statement_timeout_ms: u64,
    ) -> Result<Vec<CommandTag>, PipelineError> {
        let at = |index: Option<usize>| {
            move |error: QueryError| PipelineError {
                statement_index: index,
                error,
            }
        };
        self.ensure_in_sync().map_err(at(None))?;
        let checkpoint = self.checkpoint();
        let set_timeout = self.queue_statement_timeout(statement_timeout_ms);
        for sql in [begin, Some(script), begin.map(|_| "COMMIT")]
            .into_iter()
            .flatten()
        {
            frontend::query(sql, &mut self.write_buf)
                .map_err(|e| at(None)(self.rewind(checkpoint, e)))?;
            self.pending_syncs += 1;
        }
        // Scripts are for DDL and migrations: reset the session before the connection is reused.
        self.session_dirty = true;
        self.flush().await.map_err(|e| at(None)(lost(e)))?;
        if set_timeout {
            self.expect_command_ok().await.map_err(at(None))?;
        }
        let mut tags = Vec::new();
        let mut failure = None;
        if begin.is_some()
            && let Some(error) = self.expect_begin().await.map_err(at(None))?
        {
            // As in `pipeline`: the script fails in the aborted transaction, COMMIT rolls back.
            failure = Some(at(None)(QueryError::db(error)));
        }
        loop {
            match self
                .recv()
                .await
                .map_err(|e| at(Some(tags.len()))(lost(e)))?
            {
                Message::CommandComplete(body) => {
                    tags.push(CommandTag::parse(
                        body.tag().map_err(|e| at(Some(tags.len()))(lost(e)))?,
                    ));
                }
                Message::EmptyQueryResponse | Message::RowDescription(_) | Message::DataRow(_) => {}
                Message::CopyInResponse(_) => {
                    self.refuse_copy_in().await.map_err(at(Some(tags.len())))?
                }
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ErrorResponse(body) => {
                    let error =
                        DbError::parse(body.fields()).map_err(|e| at(Some(tags.len()))(lost(e)))?;
                    if failure.is_none() {
                        failure = Some(at(Some(tags.len()))(QueryError::db(error)));
                    }
                }
                Message::ReadyForQuery(_) => break,
                other => return Err(at(Some(tags.len()))(self.desync(&other))),
            }
        }
        if begin.is_some() {
            let mut commit_error = None;
            loop {
                match self.recv().await.map_err(|e| at(None)(lost(e)))? {
                    Message::ErrorResponse(body) => {
                        commit_error =
                            Some(DbError::parse(body.fields()).map_err(|e| at(None)(lost(e)))?)
                    }
                    Message::ReadyForQuery(_) => break,
                    _ => {}
                }
            }
            if failure.is_none()
                && let Some(error) = commit_error
            {
                failure = Some(at(None)(QueryError::db(error)));
            }
        }
        match failure {
            Some(failure) => Err(failure),
            None => Ok(tags),
        }
    }

    /// Looks up types the registry does not know (extension, enum, domain, composite types).
    async fn learn_types(
        &mut self,
        oids: &[u32],
        registry: &TypeRegistry,
    ) -> Result<(), QueryError> {
        let mut list = String::from("{");
        for (i, oid) in oids.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&oid.to_string());
        }
        list.push('}');
        let rows =
            self.fetch_text(TYPE_LOOKUP_SQL, &[&list])
                .await
                .map_err(|error| match error {
                    QueryError::Gateway(reason) => QueryError::Catalog(reason),
                    other => other,
                })?;
        let parsed: Vec<TypeRow> = rows
            .iter()
            .filter_map(|row| TypeRow::from_text(row))
            .collect();
        registry.learn(&parsed);
        Ok(())
    }

    /// Runs the gateway's own statement (unnamed, text parameters) and returns its rows as text.
    pub async fn fetch_text(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        self.ensure_in_sync()?;
        let checkpoint = self.checkpoint();
        frontend::parse("", sql, std::iter::empty(), &mut self.write_buf)
            .map_err(|e| self.rewind(checkpoint, e))?;
        let bound = frontend::bind(
            "",
            "",
            [0i16],
            params.iter(),
            |param, buf| {
                buf.put_slice(param.as_bytes());
                Ok(IsNull::No)
            },
            [0i16],
            &mut self.write_buf,
        );
        if bound.is_err() {
            self.rewind(checkpoint, io::Error::other("unencodable parameter"));
            return Err(QueryError::Gateway("cannot encode the type lookup".into()));
        }
        frontend::execute("", 0, &mut self.write_buf).map_err(|e| self.rewind(checkpoint, e))?;
        frontend::sync(&mut self.write_buf);
        self.pending_syncs += 1;
        self.flush().await.map_err(lost)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::ParseComplete | Message::BindComplete | Message::CommandComplete(_) => {}
                Message::DataRow(body) => rows.push(row_to_strings(&body).map_err(lost)?),
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::ReadyForQuery(_) => break,
                other => return Err(self.desync(&other)),
            }
        }
        match error {
            Some(error) => Err(QueryError::Gateway(error.to_string())),
            None => Ok(rows),
        }
    }

    /// Runs SQL with the simple query protocol (several statements, no parameters) and returns
    /// each statement's command tag. Used for scripts and for the gateway's own resets.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<CommandTag>, QueryError> {
        self.ensure_in_sync()?;
        let checkpoint = self.checkpoint();
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.rewind(checkpoint, e))?;
        self.pending_syncs += 1;
        self.flush().await.map_err(lost)?;
        let mut tags = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::CommandComplete(body) => {
                    tags.push(CommandTag::parse(body.tag().map_err(lost)?))
                }
                Message::EmptyQueryResponse | Message::RowDescription(_) | Message::DataRow(_) => {}
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::CopyInResponse(_) => self.refuse_copy_in().await?,
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(self.desync(&other)),
            }
        }
        match error {
            Some(error) => Err(QueryError::db(error)),
            None => Ok(tags),
        }
    }

    /// Brings the connection back to a clean state after whatever happened to it: settles
    /// the exchange (see [`PgConnection::settle`]), rolls back an open transaction and resets
    /// the session. Returns false when the connection cannot be trusted any more and must be
    /// closed.
    pub async fn recover(&mut self, deadline: Duration) -> bool {
        if self.retire {
            return false;
        }
        let result = tokio::time::timeout(deadline, async {
            self.settle_inner().await?;
            if self.tx_status != TxStatus::Idle || self.session_dirty {
                self.reset_session().await?;
            }
            Ok::<(), QueryError>(())
        })
        .await;
        matches!(result, Ok(Ok(()))) && self.is_clean()
    }

    /// Brings the protocol back in sync after an exchange was abandoned halfway (the client
    /// vanished): asks Postgres to cancel a statement still running and reads what is still
    /// owed. A transaction stays open (failed, if its statement was cancelled). Returns false
    /// when the connection cannot be trusted any more.
    pub async fn settle(&mut self, deadline: Duration) -> bool {
        let result = tokio::time::timeout(deadline, self.settle_inner()).await;
        matches!(result, Ok(Ok(()))) && self.is_in_sync()
    }

    async fn settle_inner(&mut self) -> Result<(), QueryError> {
        if self.is_broken() {
            return Err(QueryError::ConnectionLost(
                "the connection is broken".into(),
            ));
        }
        if self.pending_syncs > 0 {
            // The cancel is complete (the server has signalled the backend) when its socket
            // closes, so a late cancel cannot hit the next statement on this connection.
            let _ = self.cancel.cancel().await;
            // A cancel that reached the backend before the statement started is ignored:
            // while the answer is still owed, the cancel is sent again, backing off.
            let mut pause = FIRST_CANCEL_RETRY;
            while self.pending_syncs > 0 {
                match tokio::time::timeout(pause, self.recv()).await {
                    Ok(message) => {
                        if let Message::CopyInResponse(_) = message.map_err(lost)? {
                            self.refuse_copy_in().await?;
                        }
                    }
                    Err(_) => {
                        let _ = self.cancel.cancel().await;
                        pause = (pause * 2).min(MAX_CANCEL_RETRY);
                    }
                }
            }
        }
        Ok(())
    }

    /// Rolls back any transaction and resets the session (one round trip).
    pub async fn reset_session(&mut self) -> Result<(), QueryError> {
        self.ensure_in_sync()?;
        if self.tx_status != TxStatus::Idle {
            let checkpoint = self.checkpoint();
            frontend::query("ROLLBACK", &mut self.write_buf)
                .map_err(|e| self.rewind(checkpoint, e))?;
            self.pending_syncs += 1;
        }
        self.queue_session_reset();
        self.flush().await.map_err(lost)?;
        if self.pending_syncs > 1 {
            self.expect_command_ok().await?;
        }
        self.expect_session_reset().await
    }

    /// Ends the session politely and waits (at most `wait`) until the server has closed its
    /// side: only then has the backend left `pg_stat_activity`.
    pub async fn terminate(self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.close_until_gone(wait, || {})).await;
    }

    /// Ends the session and returns only once the server has closed the socket (or the socket
    /// failed): the backend is gone, so a budget slot freed after this is really free. Sends
    /// Terminate when the protocol stream is intact, then half-closes (a backend reading a
    /// half-written message sees the end of input instead). While the backend is still busy
    /// — a statement running, perhaps one that started after an earlier cancel arrived — the
    /// cancel is re-sent, backing off; `on_stuck` runs once if that takes longer than
    /// `stuck_after`.
    pub async fn close_until_gone(mut self, stuck_after: Duration, on_stuck: impl FnOnce()) {
        let started = tokio::time::Instant::now();
        let mut on_stuck = Some(on_stuck);
        while super::faults::armed(&self.cancel.target, super::faults::Fault::CloseHangs) {
            tokio::time::sleep(FIRST_CANCEL_RETRY).await;
            if started.elapsed() >= stuck_after
                && let Some(report) = on_stuck.take()
            {
                report();
            }
        }
        if !self.is_broken() {
            frontend::terminate(&mut self.write_buf);
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
        let mut pause = FIRST_CANCEL_RETRY;
        let mut sink = [0u8; 4096];
        loop {
            match tokio::time::timeout(pause, self.stream.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => {
                    if started.elapsed() >= stuck_after
                        && let Some(report) = on_stuck.take()
                    {
                        report();
                    }
                    let _ = self.cancel.cancel().await;
                    pause = (pause * 2).min(MAX_CANCEL_RETRY);
                }
            }
        }
    }

    /// Every operation starts here. It also lifts a statement-cache protection left behind by
    /// a pipeline whose future was dropped mid-way (its client vanished): protection never
    /// outlives the operation that set it, whatever way that operation ended.
    fn ensure_in_sync(&mut self) -> Result<(), QueryError> {
        self.statements.unprotect();
        if self.is_in_sync() {
            Ok(())
        } else {
            Err(QueryError::ConnectionLost(
                "connection is not ready for a statement".into(),
            ))
        }
    }

    /// Pipelines `SET statement_timeout` in front of the statement when this call's timeout
    /// differs from the session's (one message, no extra round trip). Inside a transaction it
    /// is `SET LOCAL`, which ends with the transaction and leaves the session value alone.
    /// In a failed transaction nothing is sent (it would fail; statements there fail anyway,
    /// except `ROLLBACK TO SAVEPOINT`, which needs no timeout).
    fn queue_statement_timeout(&mut self, timeout_ms: u64) -> bool {
        let sql = match self.tx_status {
            TxStatus::Idle if timeout_ms != self.statement_timeout_ms => {
                self.statement_timeout_ms = timeout_ms;
                format!("SET statement_timeout = {timeout_ms}")
            }
            TxStatus::InTransaction
                if timeout_ms != self.local_timeout_ms.unwrap_or(self.statement_timeout_ms) =>
            {
                self.local_timeout_ms = Some(timeout_ms);
                format!("SET LOCAL statement_timeout = {timeout_ms}")
            }
            _ => return false,
        };
        self.queue_gateway_query(&sql);
        true
    }

    fn queue_session_reset(&mut self) {
        self.queue_gateway_query(SESSION_RESET_SQL);
        self.session_dirty = true;
    }

    /// Queues the gateway's own simple query (answered by one ReadyForQuery). Its text is the
    /// gateway's and always encodes; were it ever not to, the connection is given up rather
    /// than left owing an answer that will never come.
    fn queue_gateway_query(&mut self, sql: &str) {
        let checkpoint = self.checkpoint();
        match frontend::query(sql, &mut self.write_buf) {
            Ok(()) => self.pending_syncs += 1,
            Err(error) => {
                self.rewind(checkpoint, error);
                self.broken = true;
            }
        }
    }

    fn queue_close(&mut self, name: &str) {
        // Answered by CloseComplete before the next statement's responses; `recv` callers skip it.
        let checkpoint = self.checkpoint();
        if let Err(error) = frontend::close(b'S', name, &mut self.write_buf) {
            self.rewind(checkpoint, error);
            self.broken = true;
        }
    }

    /// If `error` says one of the gateway's prepared statements no longer exists (a
    /// `DEALLOCATE ALL` or `DISCARD ALL` the API could not see, in a function), forgets every
    /// cached statement (closing them: some may still exist, and closing a missing one is no
    /// error) so that later requests prepare afresh. Returns whether it did.
    fn lost_gateway_statement(&mut self, error: &DbError) -> bool {
        let lost = error.code == "26000"
            && error
                .message
                .contains(&format!("\"{GATEWAY_STATEMENT_PREFIX}"));
        if lost {
            for statement in self.statements.clear() {
                self.queue_close(&statement.name);
            }
        }
        lost
    }

    /// Where the write buffer and the exchange's bookkeeping stand before a request queues
    /// its messages; see [`PgConnection::rewind`].
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            write_len: self.write_buf.len(),
            pending_syncs: self.pending_syncs,
            statement_timeout_ms: self.statement_timeout_ms,
            local_timeout_ms: self.local_timeout_ms,
        }
    }

    /// A message could not be encoded (a NUL in a string, a message over 1 GiB): takes back
    /// everything queued since `at`, so no half-written message is ever sent and the
    /// connection stays in sync with nothing owed. The request is refused as the client's.
    fn rewind(&mut self, at: Checkpoint, error: io::Error) -> QueryError {
        self.write_buf.truncate(at.write_len);
        self.pending_syncs = at.pending_syncs;
        self.statement_timeout_ms = at.statement_timeout_ms;
        self.local_timeout_ms = at.local_timeout_ms;
        QueryError::Rejected(format!("the request cannot be sent to Postgres: {error}"))
    }

    fn encode_bind(
        &mut self,
        statement: &Statement,
        params: &[&RawValue],
    ) -> Result<BytesMut, QueryError> {
        let mut buf = self.write_buf.split_off(self.write_buf.len());
        let mut failure: Option<(usize, String)> = None;
        let mut index = 0;
        let result = frontend::bind(
            "",
            &statement.name,
            [0i16],
            params.iter().zip(statement.params.iter()),
            |(param, ty), buf| {
                index += 1;
                match params::encode(param, Some(ty), buf) {
                    Ok(true) => Ok(IsNull::No),
                    Ok(false) => Ok(IsNull::Yes),
                    Err(reason) => {
                        failure = Some((index, reason.clone()));
                        Err(reason.into())
                    }
                }
            },
            [0i16],
            &mut buf,
        );
        if result.is_err() {
            return Err(match failure {
                Some((index, reason)) => {
                    QueryError::Rejected(format!("parameter ${index}: {reason}"))
                }
                None => QueryError::Rejected("too many parameters (at most 65535)".into()),
            });
        }
        Ok(buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        self.write_interrupted = true;
        let result = if super::faults::strikes(&self.cancel.target, super::faults::Fault::WriteCut)
        {
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

    /// [`Fault::WriteCut`](super::faults::Fault::WriteCut): half the pending bytes reach the
    /// server, then the socket is shut down.
    async fn write_cut(&mut self) -> io::Result<()> {
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
    async fn recv(&mut self) -> io::Result<Message> {
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
                Some(wait) => tokio::time::timeout(wait, self.stream.read_buf(&mut self.read_buf))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the server sent nothing for {} s, past the statement timeout: \
                                 the connection is given up",
                                wait.as_secs()
                            ),
                        ))
                    }),
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
                    if super::faults::strikes(&self.cancel.target, super::faults::Fault::ReadCut) {
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
    fn read_deadline(&self) -> Option<Duration> {
        let timeout_ms = self
            .statement_timeout_ms
            .max(self.local_timeout_ms.unwrap_or(0));
        (timeout_ms > 0).then(|| {
            let timeout = Duration::from_millis(timeout_ms);
            timeout + timeout.clamp(READ_DEADLINE_MARGIN_MIN, READ_DEADLINE_MARGIN_MAX)
        })
    }

    fn note_parameter(&mut self, body: &postgres_protocol::message::backend::ParameterStatusBody) {
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

    async fn expect_ready(&mut self) -> io::Result<()> {
        loop {
            if let Message::ReadyForQuery(_) = self.recv().await? {
                return Ok(());
            }
        }
    }

    /// Reads the answer to one simple-protocol command of the gateway's own; any error is the
    /// gateway's, and the connection is no longer trusted.
    async fn expect_command_ok(&mut self) -> Result<(), QueryError> {
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
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
    async fn expect_begin(&mut self) -> Result<Option<DbError>, QueryError> {
        let mut error = None;
        loop {
            match self.recv().await.map_err(lost)? {
                Message::ErrorResponse(body) => {
                    error = Some(DbError::parse(body.fields()).map_err(lost)?)
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(error) if self.tx_status != TxStatus::Failed => {
                self.broken = true;
                Err(QueryError::Gateway(format!(
                    "the request's BEGIN failed outside a transaction: {error}"
                )))
            }
            error => Ok(error),
        }
    }

    async fn expect_session_reset(&mut self) -> Result<(), QueryError> {
        self.expect_command_ok().await?;
        self.session_dirty = false;
        self.statement_timeout_ms = self.default_statement_timeout_ms;
        Ok(())
    }

    async fn refuse_copy_in(&mut self) -> Result<(), QueryError> {
        frontend::copy_fail(
            "COPY FROM STDIN is not supported over HTTP; use INSERT with parameters",
            &mut self.write_buf,
        )
        .map_err(lost)?;
        self.flush().await.map_err(lost)
    }

    /// An unexpected message means the gateway and the server disagree about the exchange:
    /// the connection cannot be trusted again.
    fn desync(&mut self, message: &Message) -> QueryError {
        self.broken = true;
        QueryError::ConnectionLost(format!(
            "unexpected {} from the server",
            message_name(message)
        ))
    }
}

/// The rows of one statement, read as the server sends them. Dropping it before the end leaves
/// the connection owing responses; [`PgConnection::recover`] settles that.
pub struct Rows<'c> {
    conn: &'c mut PgConnection,
    statement: Arc<Statement>,
    reset_pending: bool,
    /// Set once the statement has finished; its command tag.
    done: Option<CommandTag>,
    copy_out: bool,
}

impl Rows<'_> {
    pub fn fields(&self) -> &[Field] {
        &self.statement.fields
    }

    /// The statement, for encoders that outlive a borrow of the rows.
    pub fn statement(&self) -> Arc<Statement> {
        self.statement.clone()
    }

    /// Whether the next message has already arrived: when it has not, a streaming encoder
    /// should send what it has before waiting for Postgres.
    pub fn next_is_buffered(&self) -> bool {
        let buf = &self.conn.read_buf;
        buf.len() >= 5 && {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            buf.len() > len
        }
    }

    /// The next row, or `None` with the command tag available from [`Rows::finish`].
    pub async fn next(&mut self) -> Result<Option<DataRowBody>, QueryError> {
        self.step().await.map(|step| match step {
            Step::Row(row) => Some(row),
            Step::Done(_) => None,
        })
    }

    /// Reads (and discards) what is left and returns the command tag.
    pub async fn finish(mut self) -> Result<CommandTag, QueryError> {
        loop {
            if let Step::Done(tag) = self.step().await? {
                return Ok(tag);
            }
        }
    }

    async fn step(&mut self) -> Result<Step, QueryError> {
        if let Some(tag) = &self.done {
            return Ok(Step::Done(tag.clone()));
        }
        loop {
            match self.conn.recv().await.map_err(lost)? {
                Message::DataRow(row) => return Ok(Step::Row(row)),
                Message::CommandComplete(body) => {
                    let tag = CommandTag::parse(body.tag().map_err(lost)?);
                    self.done = Some(tag.clone());
                    self.settle().await?;
                    if self.copy_out {
                        return Err(QueryError::Rejected(
                            "COPY TO STDOUT is not supported over HTTP; use SELECT (with NDJSON streaming for large results)".into(),
                        ));
                    }
                    return Ok(Step::Done(tag));
                }
                Message::EmptyQueryResponse => {
                    self.done = Some(CommandTag::default());
                    self.settle().await?;
                    return Ok(Step::Done(CommandTag::default()));
                }
                Message::ErrorResponse(body) => {
                    let error = DbError::parse(body.fields()).map_err(lost)?;
                    self.done = Some(CommandTag::default());
                    self.settle().await?;
                    return Err(QueryError::db(error));
                }
                Message::CopyInResponse(_) => {
                    // Copy-in mode swallowed the Sync already sent; the server now waits for
                    // another after the error, and owes one ReadyForQuery as before.
                    self.conn.refuse_copy_in().await?;
                    frontend::sync(&mut self.conn.write_buf);
                    self.conn.flush().await.map_err(lost)?;
                }
                Message::CopyOutResponse(_) => self.copy_out = true,
                Message::CopyData(_) | Message::CopyDone => {}
                other => return Err(self.conn.desync(&other)),
            }
        }
    }

    /// After the statement's last message: its ReadyForQuery and, if one was pipelined, the
    /// session reset's answer.
    async fn settle(&mut self) -> Result<(), QueryError> {
        self.conn.expect_ready().await.map_err(lost)?;
        if self.reset_pending {
            self.reset_pending = false;
            // The statement's outcome stands; a reset that fails only means this connection
            // is closed instead of reused (`expect_command_ok` marked it broken).
            if let Err(error) = self.conn.expect_session_reset().await {
                tracing::warn!(%error, "session reset failed; the connection will be closed");
            }
        }
        Ok(())
    }
}

enum Step {
    Row(DataRowBody),
    Done(CommandTag),
}

impl CancelToken {
    /// Asks the server to cancel whatever the connection is running, over a new socket, and
    /// waits until the server has acted on it (it closes the socket after signalling).
    pub async fn cancel(&self) -> io::Result<()> {
        if super::faults::strikes(&self.target, super::faults::Fault::CancelLost) {
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

async fn open_stream(target: &Target, tls: &TlsConnector) -> Result<Stream, ConnectError> {
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

fn require_password(config: &ConnectConfig) -> Result<&str, ConnectError> {
    config.password.as_deref().ok_or_else(|| {
        ConnectError::Rejected(Box::new(DbError::new(
            "28P01",
            format!(
                "the server asks for a password for user \"{}\" but none is configured",
                config.user
            ),
        )))
    })
}

fn row_to_strings(row: &DataRowBody) -> io::Result<Vec<Option<String>>> {
    let buffer = row.buffer();
    row.ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()
}

fn lost(error: io::Error) -> QueryError {
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
