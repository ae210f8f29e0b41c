//! Opening a connection: the socket (TCP with keepalives, or a Unix socket), TLS negotiation,
//! the start-up packet, authentication (cleartext/MD5 only when allowed, SCRAM with or without
//! channel binding) and the parameters the server reports while starting.

use super::ConnectConfig;
use super::PgConnection;
use super::TxStatus;
use super::WATCHED_SETTINGS;
use super::cancel::CancelToken;
use super::io::READ_BUF_CAPACITY;
use super::message_name;
use super::protocol;
use super::socket::open_stream;
use crate::pg::error::ConnectError;
use crate::pg::error::DbError;
use crate::pg::statement::StatementCache;
use crate::pg::stream::Stream;
use crate::pg::tls;
use crate::pg::tls::ChannelBindingMode;
use crate::pg::tls::SslMode;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl;
use postgres_protocol::authentication::sasl::ChannelBinding;
use postgres_protocol::authentication::sasl::ScramSha256;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

/// Where the SCRAM exchange of a start-up stands.
pub(super) enum Sasl {
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

impl PgConnection {
    /// Connects, negotiates TLS, authenticates and waits for the server to be ready.
    pub async fn connect(config: &ConnectConfig) -> Result<PgConnection, ConnectError> {
        let timeout_ms = config.connect_timeout.as_millis() as u64;
        match tokio::time::timeout(config.connect_timeout, Self::connect_inner(config)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(timeout_ms)),
        }
    }

    pub(super) async fn connect_inner(
        config: &ConnectConfig,
    ) -> Result<PgConnection, ConnectError> {
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
            read_timer: Default::default(),
        };
        conn.startup(config).await?;
        Ok(conn)
    }

    pub(super) async fn startup(&mut self, config: &ConnectConfig) -> Result<(), ConnectError> {
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
    pub(super) fn check_insecure_password(
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
    pub(super) fn channel_binding(
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
}

pub(super) fn require_password(config: &ConnectConfig) -> Result<&str, ConnectError> {
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
