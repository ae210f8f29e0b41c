//! The configuration: a TOML file (or, for one database and one tenant, environment variables)
//! parsed and validated here, once, into types that cannot hold an invalid value. Every error
//! names the key and the problem. Later code never re-checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::KeyHash;
use crate::pg::tls::ChannelBindingMode;
use crate::pg::{AuthPolicy, SslMode, Target, TlsConnector};

mod expand;
mod secrets;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// Shared so that a request holds its tenant's settings without copying them.
    pub tenants: Vec<Arc<TenantConfig>>,
    /// `[cluster]`: replicas share each upstream's `max_connections` through Postgres.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: several replicas with the same `name` divide each upstream's
/// `max_connections` (then a cluster-wide budget) among themselves (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// This replica's address as the other replicas reach it (shown in the admin view).
    pub advertise: Option<String>,
    /// Replica slots: at most this many replicas hold a share at once; more wait, unready.
    pub max_replicas: usize,
    /// How often membership and the other replicas' footprints are read.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The main listener: HTTPS when `tls` is set without its own `listen`, plain HTTP otherwise.
    pub listen: SocketAddr,
    pub tls: Option<ServerTls>,
    /// Where `/metrics` is served besides the main listener (which serves it too).
    pub metrics_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    /// Gateway-wide bound on bytes held for request bodies and buffered responses not yet
    /// sent; past it, requests wait for memory (then get 503 `overloaded`).
    pub max_buffered_bytes: usize,
    /// The longest SQL text (a statement or a script) sent to Postgres.
    pub max_sql_bytes: usize,
    pub admin_keys: Vec<KeyHash>,
    /// Longest wait for a client's request headers.
    pub header_read_timeout: Duration,
    /// Longest wait for a client's request body, once the headers are in.
    pub body_read_timeout: Duration,
    /// Longest a streaming (NDJSON) response waits for the client to take its next chunk
    /// before the statement is cancelled and the connection freed.
    pub stream_stall_timeout: Duration,
    /// How long a drain (SIGTERM) lets in-flight requests and transactions finish.
    pub shutdown_timeout: Duration,
    /// Failed authentications allowed per client address per minute before it gets 429s.
    pub auth_failures_per_minute: u32,
    pub log_format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a `RUST_LOG`-style filter); `RUST_LOG`
    /// overrides it.
    pub log_level: String,
    /// Bound of the in-memory log buffer; lines beyond it are dropped and counted.
    pub log_buffer_bytes: usize,
    /// Share of successful requests that get an access log line (errors always do).
    pub log_sample_rate: f64,
}

/// `[server] tls`: a certificate chain and key (PEM), and optionally a separate HTTPS address
/// so that plain HTTP (`listen`) and HTTPS serve side by side.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub listen: Option<SocketAddr>,
    /// A client must finish its handshake within this.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, beyond which new connections wait (within the timeout).
    pub max_handshakes: usize,
}

/// When a tenant's connection gets the session reset before it serves another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionReset {
    /// After statements the SQL lexer cannot prove harmless (`SET`, unknown functions, …).
    /// Effects no lexer can see — a trigger, a view, a column default calling `set_config` —
    /// can survive into the tenant's next request.
    #[default]
    Auto,
    /// After every one-shot statement (pipelined behind it), batch, script and transaction:
    /// nothing one request did to the session can survive, whatever ran.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub target: Target,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub tls: TlsConnector,
    /// The most connections this gateway holds to the server, all tenants together.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    pub statement_cache_size: usize,
    /// `allow_insecure_password_auth` and the URL's `channel_binding`.
    pub auth: AuthPolicy,
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub api_keys: Vec<KeyHash>,
    pub pool_size: usize,
    pub rate_per_second: u32,
    pub burst: u32,
    pub max_waiting: usize,
    pub queue_timeout: Duration,
    pub statement_timeout_ms: u64,
    pub max_transactions: usize,
    /// How many of the tenant's connections open transactions may hold at once, so one-shot
    /// queries always find one (default: all but one).
    pub max_transaction_connections: usize,
    pub transaction_idle_timeout: Duration,
    pub transaction_max: Duration,
    /// Session settings sent at connection start (DateStyle, TimeZone, … overrides).
    pub settings: BTreeMap<String, String>,
    pub session_reset: SessionReset,
    /// Browser origins allowed to call with this tenant's credentials (`cors`).
    pub cors: Option<crate::cors::CorsPolicy>,
    /// End users' tokens (`jwt`): role and claims per request.
    pub jwt: Option<Arc<crate::jwt::JwtConfig>>,
    /// Requests per second per token subject (`sub`), on top of `rate_per_second`.
    pub rate_per_second_per_subject: Option<u32>,
}

/// A configuration that cannot be used, with the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(key: impl std::fmt::Display, problem: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {problem}"))
}

// ---- The file as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    advertise: Option<String>,
    max_replicas: Option<usize>,
    poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls: Option<RawServerTls>,
    metrics_listen: Option<String>,
    max_body_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    max_buffered_bytes: Option<usize>,
    max_sql_bytes: Option<usize>,
    #[serde(default)]
    admin_keys: Vec<String>,
    /// More admin key hashes, one per line.
    admin_keys_file: Option<PathBuf>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    stream_stall_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    auth_failures_per_minute: Option<u32>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    log_buffer_bytes: Option<usize>,
    log_sample_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: PathBuf,
    key: PathBuf,
    listen: Option<String>,
    handshake_timeout_ms: Option<u64>,
    max_handshakes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: String,
    /// The password, from a file instead of the URL.
    password_file: Option<PathBuf>,
    max_connections: Option<usize>,
    connect_timeout_ms: Option<u64>,
    server_lifetime_ms: Option<u64>,
    server_idle_timeout_ms: Option<u64>,
    statement_cache_size: Option<usize>,
    allow_insecure_password_auth: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    upstream: Option<String>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    api_keys: Vec<String>,
    /// More key hashes, one per line.
    api_keys_file: Option<PathBuf>,
    pool_size: Option<usize>,
    rate_per_second: Option<u32>,
    burst: Option<u32>,
    max_waiting: Option<usize>,
    queue_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    max_transactions: Option<usize>,
    max_transaction_connections: Option<usize>,
    transaction_idle_timeout_ms: Option<u64>,
    transaction_max_ms: Option<u64>,
    #[serde(default)]
    settings: BTreeMap<String, String>,
    #[serde(default)]
    session_reset: SessionReset,
    cors: Option<crate::cors::RawCors>,
    jwt: Option<crate::jwt::RawJwt>,
    rate_per_second_per_subject: Option<u32>,
}

/// The defaults of API.md's configuration section.
pub mod defaults {
    pub const LISTEN: &str = "0.0.0.0:8080";
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    pub const MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;
    /// Or four times the larger of the two limits above, if that is more.
    pub const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
    pub const STREAM_STALL_TIMEOUT_MS: u64 = 30_000;
    /// As large as the default body: the limit matters when `max_body_bytes` is raised for
    /// large parameters, which should not let SQL text (parsed by Postgres before any
    /// statement timeout can act) grow with it.
    pub const MAX_SQL_BYTES: usize = 1024 * 1024;
    pub const MAX_CONNECTIONS: usize = 80;
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const SERVER_LIFETIME_MS: u64 = 3_600_000;
    pub const SERVER_IDLE_TIMEOUT_MS: u64 = 600_000;
    pub const STATEMENT_CACHE_SIZE: usize = 256;
    pub const POOL_SIZE: usize = 20;
    pub const RATE_PER_SECOND: u32 = 500;
    pub const BURST: u32 = 1_000;
    pub const MAX_WAITING: usize = 1_000;
    pub const QUEUE_TIMEOUT_MS: u64 = 5_000;
    pub const STATEMENT_TIMEOUT_MS: u64 = 15_000;
    pub const MAX_TRANSACTIONS: usize = 10;
    pub const TRANSACTION_IDLE_TIMEOUT_MS: u64 = 5_000;
    pub const TRANSACTION_MAX_MS: u64 = 30_000;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
    pub const AUTH_FAILURES_PER_MINUTE: u32 = 10;
    pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    pub const TLS_MAX_HANDSHAKES: usize = 256;
    pub const CLUSTER_MAX_REPLICAS: usize = 16;
    pub const CLUSTER_POLL_INTERVAL_MS: u64 = 1_000;
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }

    /// Parses and validates TOML text; relative file paths in it are relative to `base`.
    /// `${VAR}` references in string values are read from the process environment.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, base, &|name| std::env::var(name))
    }

    /// [`Config::from_toml`] with the environment given (tests).
    pub fn from_toml_with_env(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Config, ConfigError> {
        let invalid = |e: toml::de::Error| ConfigError(format!("invalid config: {e}"));
        let mut table: toml::Table = toml::from_str(text).map_err(invalid)?;
        let raw: RawConfig = if expand::expand_table(&mut table, text, env)? {
            toml::Value::Table(table).try_into().map_err(invalid)?
        } else {
            // Parsed from the text again so that errors keep their line and column.
            toml::from_str(text).map_err(invalid)?
        };
        raw.validate(base)
    }

    /// The environment-only mode: one database (`SLUICE_DATABASE_URL`) and one tenant
    /// (`default`) with the key `SLUICE_API_KEY` (the key itself, or its `sha256:` form).
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let url = vars
            .get("SLUICE_DATABASE_URL")
            .ok_or_else(|| err("SLUICE_DATABASE_URL", "not set (or pass --config)"))?;
        let key = vars
            .get("SLUICE_API_KEY")
            .ok_or_else(|| err("SLUICE_API_KEY", "not set"))?;
        let key_hash = if key.starts_with("sha256:") {
            key.clone()
        } else {
            KeyHash::of_key(key).to_string()
        };
        let max_connections = match vars.get("SLUICE_MAX_CONNECTIONS") {
            Some(value) => Some(
                value
                    .parse()
                    .map_err(|_| err("SLUICE_MAX_CONNECTIONS", "not a whole number"))?,
            ),
            None => None,
        };
        let raw = RawConfig {
            server: RawServer {
                listen: vars.get("SLUICE_LISTEN").cloned(),
                ..RawServer::default()
            },
            upstreams: vec![RawUpstream {
                name: "main".into(),
                url: url.clone(),
                password_file: None,
                max_connections,
                connect_timeout_ms: None,
                server_lifetime_ms: None,
                server_idle_timeout_ms: None,
                statement_cache_size: None,
                allow_insecure_password_auth: None,
            }],
            tenants: vec![RawTenant {
                id: "default".into(),
                upstream: Some("main".into()),
                database: None,
                user: None,
                password: None,
                password_file: None,
                api_keys: vec![key_hash],
                api_keys_file: None,
                pool_size: Some(
                    defaults::POOL_SIZE.min(max_connections.unwrap_or(defaults::MAX_CONNECTIONS)),
                ),
                rate_per_second: None,
                burst: None,
                max_waiting: None,
                queue_timeout_ms: None,
                statement_timeout_ms: None,
                max_transactions: None,
                max_transaction_connections: None,
                transaction_idle_timeout_ms: None,
                transaction_max_ms: None,
                settings: BTreeMap::new(),
                session_reset: SessionReset::default(),
                cors: None,
                jwt: None,
                rate_per_second_per_subject: None,
            }],
            cluster: None,
        };
        raw.validate(Path::new("."))
    }

    pub fn tenant_index(&self, id: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t.id == id)
    }
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let RawConfig {
            server,
            upstreams,
            tenants,
            cluster,
        } = self;
        let cluster = cluster.map(RawCluster::validate).transpose()?;
        let server = server.validate(base)?;
        if upstreams.is_empty() {
            return Err(ConfigError(
                "no [[upstreams]]: the config needs at least one Postgres server".into(),
            ));
        }
        let mut names = HashSet::new();
        let upstreams = upstreams
            .into_iter()
            .enumerate()
            .map(|(i, upstream)| {
                let key = format!("upstreams[{i}]");
                if !names.insert(upstream.name.clone()) {
                    return Err(err(
                        format!("{key}.name"),
                        format!("\"{}\" is used twice", upstream.name),
                    ));
                }
                upstream.validate(&key, base)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut ids = HashSet::new();
        let mut keys: HashMap<KeyHash, String> = server
            .admin_keys
            .iter()
            .map(|k| (*k, "server.admin_keys".to_owned()))
            .collect();
        let mut validated = Vec::with_capacity(tenants.len());
        for (i, tenant) in tenants.into_iter().enumerate() {
            let key = format!("tenants[{i}]");
            if !ids.insert(tenant.id.clone()) {
                return Err(err(
                    format!("{key}.id"),
                    format!("\"{}\" is used twice", tenant.id),
                ));
            }
            let tenant = tenant.validate(&key, &upstreams, base)?;
            for api_key in &tenant.api_keys {
                if let Some(owner) = keys.insert(*api_key, format!("tenants[{i}] ({})", tenant.id))
                {
                    return Err(err(
                        format!("{key}.api_keys"),
                        format!(
                            "{api_key:?} also belongs to {owner}; a key belongs to exactly one tenant"
                        ),
                    ));
                }
            }
            validated.push(Arc::new(tenant));
        }
        Ok(Config {
            server,
            upstreams,
            tenants: validated,
            cluster,
        })
    }
}

impl RawCluster {
    fn validate(self) -> Result<ClusterConfig, ConfigError> {
        check_identifier("cluster.name", &self.name)?;
        let max_replicas = self.max_replicas.unwrap_or(defaults::CLUSTER_MAX_REPLICAS);
        if !(1..=1024).contains(&max_replicas) {
            return Err(err(
                "cluster.max_replicas",
                format!("must be between 1 and 1024, found {max_replicas}"),
            ));
        }
        if let Some(advertise) = &self.advertise
            && (advertise.is_empty()
                || advertise.len() > 255
                || advertise.contains(char::is_whitespace))
        {
            return Err(err(
                "cluster.advertise",
                "must be a host:port without spaces, at most 255 characters",
            ));
        }
        Ok(ClusterConfig {
            name: self.name,
            advertise: self.advertise,
            max_replicas,
            poll_interval: millis(
                "cluster.poll_interval_ms",
                self.poll_interval_ms,
                defaults::CLUSTER_POLL_INTERVAL_MS,
            )?,
        })
    }
}

impl RawServer {
    fn validate(self, base: &Path) -> Result<ServerConfig, ConfigError> {
        let RawServer {
            listen,
            tls,
            metrics_listen,
            max_body_bytes,
            max_response_bytes,
            max_buffered_bytes,
            max_sql_bytes,
            mut admin_keys,
            admin_keys_file,
            header_read_timeout_ms,
            body_read_timeout_ms,
            stream_stall_timeout_ms,
            shutdown_timeout_ms,
            auth_failures_per_minute,
            log_format,
            log_level,
            log_buffer_bytes,
            log_sample_rate,
        } = self;
        if let Some(file) = admin_keys_file {
            admin_keys.extend(secrets::read_list(
                "server.admin_keys_file",
                &base.join(file),
            )?);
        }
        let listen = parse_addr(
            "server.listen",
            listen.as_deref().unwrap_or(defaults::LISTEN),
        )?;
        let tls = match tls {
            Some(RawServerTls {
                cert,
                key,
                listen,
                handshake_timeout_ms,
                max_handshakes,
            }) => Some(ServerTls {
                cert: base.join(cert),
                key: base.join(key),
                listen: listen
                    .map(|l| parse_addr("server.tls.listen", &l))
                    .transpose()?,
                handshake_timeout: millis(
                    "server.tls.handshake_timeout_ms",
                    handshake_timeout_ms,
                    defaults::TLS_HANDSHAKE_TIMEOUT_MS,
                )?,
                max_handshakes: at_least(
                    "server.tls.max_handshakes",
                    max_handshakes.unwrap_or(defaults::TLS_MAX_HANDSHAKES),
                    1,
                )?,
            }),
            None => None,
        };
        let metrics_listen = metrics_listen
            .map(|l| parse_addr("server.metrics_listen", &l))
            .transpose()?;
        let admin_keys = admin_keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyHash::parse(k).map_err(|e| err(format!("server.admin_keys[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let max_body_bytes = at_least(
            "server.max_body_bytes",
            max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            64,
        )?;
        let max_response_bytes = at_least(
            "server.max_response_bytes",
            max_response_bytes.unwrap_or(defaults::MAX_RESPONSE_BYTES),
            1024,
        )?;
        // One request's body must always fit (a response is charged once it exists, whatever
        // its size: see api::memory).
        let max_buffered_bytes = at_least(
            "server.max_buffered_bytes",
            max_buffered_bytes.unwrap_or(
                defaults::MAX_BUFFERED_BYTES.max(4 * max_body_bytes.max(max_response_bytes)),
            ),
            max_body_bytes,
        )?;
        Ok(ServerConfig {
            listen,
            tls,
            metrics_listen,
            max_body_bytes,
            max_response_bytes,
            max_buffered_bytes,
            max_sql_bytes: at_least(
                "server.max_sql_bytes",
                max_sql_bytes.unwrap_or(defaults::MAX_SQL_BYTES),
                64,
            )?,
            admin_keys,
            header_read_timeout: millis(
                "server.header_read_timeout_ms",
                header_read_timeout_ms,
                defaults::HEADER_READ_TIMEOUT_MS,
            )?,
            body_read_timeout: millis(
                "server.body_read_timeout_ms",
                body_read_timeout_ms,
                defaults::BODY_READ_TIMEOUT_MS,
            )?,
            stream_stall_timeout: millis(
                "server.stream_stall_timeout_ms",
                stream_stall_timeout_ms,
                defaults::STREAM_STALL_TIMEOUT_MS,
            )?,
            shutdown_timeout: millis(
                "server.shutdown_timeout_ms",
                shutdown_timeout_ms,
                defaults::SHUTDOWN_TIMEOUT_MS,
            )?,
            auth_failures_per_minute: at_least(
                "server.auth_failures_per_minute",
                auth_failures_per_minute.unwrap_or(defaults::AUTH_FAILURES_PER_MINUTE) as usize,
                1,
            )? as u32,
            log_format: log_format.unwrap_or(LogFormat::Text),
            log_level: match log_level {
                Some(level) if !is_log_filter(&level) => {
                    return Err(err(
                        "server.log_level",
                        format!(
                            "\"{level}\" is not a level or filter (error, warn, info, debug, trace)"
                        ),
                    ));
                }
                Some(level) => level,
                None => "info".to_owned(),
            },
            log_buffer_bytes: at_least(
                "server.log_buffer_bytes",
                log_buffer_bytes.unwrap_or(crate::logging::DEFAULT_BUFFER_BYTES),
                4096,
            )?,
            log_sample_rate: match log_sample_rate {
                None => 1.0,
                Some(rate) if rate > 0.0 && rate <= 1.0 => rate,
                Some(rate) => {
                    return Err(err(
                        "server.log_sample_rate",
                        format!("{rate} is not above 0 and at most 1"),
                    ));
                }
            },
        })
    }
}

impl RawUpstream {
    fn validate(self, key: &str, base: &Path) -> Result<UpstreamConfig, ConfigError> {
        let RawUpstream {
            name,
            url,
            password_file,
            max_connections,
            connect_timeout_ms,
            server_lifetime_ms,
            server_idle_timeout_ms,
            statement_cache_size,
            allow_insecure_password_auth,
        } = self;
        check_identifier(&format!("{key}.name"), &name)?;
        let mut url = PostgresUrl::parse(&url).map_err(|e| err(format!("{key}.url"), e))?;
        if let Some(file) = password_file {
            if url.password.is_some() {
                return Err(err(
                    format!("{key}.password_file"),
                    "the url has a password too; keep one of them",
                ));
            }
            url.password = Some(secrets::read_secret(
                &format!("{key}.password_file"),
                &base.join(file),
            )?);
        }
        let root_cert = url.sslrootcert.as_ref().map(|p| base.join(p));
        let tls = TlsConnector::new(url.sslmode, root_cert.as_deref())
            .map_err(|e| err(format!("{key}.url"), e))?;
        let auth = AuthPolicy {
            allow_insecure_password: allow_insecure_password_auth.unwrap_or(false),
            channel_binding: url.channel_binding,
        };
        Ok(UpstreamConfig {
            auth,
            name,
            target: url.target,
            user: url.user,
            password: url.password,
            database: url.database,
            tls,
            max_connections: at_least(
                &format!("{key}.max_connections"),
                max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
                1,
            )?,
            connect_timeout: millis(
                &format!("{key}.connect_timeout_ms"),
                connect_timeout_ms,
                defaults::CONNECT_TIMEOUT_MS,
            )?,
            server_lifetime: millis(
                &format!("{key}.server_lifetime_ms"),
                server_lifetime_ms,
                defaults::SERVER_LIFETIME_MS,
            )?,
            server_idle_timeout: millis(
                &format!("{key}.server_idle_timeout_ms"),
                server_idle_timeout_ms,
                defaults::SERVER_IDLE_TIMEOUT_MS,
            )?,
            statement_cache_size: at_least(
                &format!("{key}.statement_cache_size"),
                statement_cache_size.unwrap_or(defaults::STATEMENT_CACHE_SIZE),
                1,
            )?,
        })
    }
}

impl RawTenant {
    fn validate(
        self,
        key: &str,
        upstreams: &[UpstreamConfig],
        base: &Path,
    ) -> Result<TenantConfig, ConfigError> {
        let RawTenant {
            id,
            upstream,
            database,
            user,
            mut password,
            password_file,
            mut api_keys,
            api_keys_file,
            pool_size,
            rate_per_second,
            burst,
            max_waiting,
            queue_timeout_ms,
            statement_timeout_ms,
            max_transactions,
            max_transaction_connections,
            transaction_idle_timeout_ms,
            transaction_max_ms,
            settings,
            session_reset,
            cors,
            jwt,
            rate_per_second_per_subject,
        } = self;
        check_identifier(&format!("{key}.id"), &id)?;
        if let Some(file) = password_file {
            if password.is_some() {
                return Err(err(
                    format!("{key}.password_file"),
                    "password is set too; keep one of them",
                ));
            }
            password = Some(secrets::read_secret(
                &format!("{key}.password_file"),
                &base.join(file),
            )?);
        }
        if let Some(file) = api_keys_file {
            api_keys.extend(secrets::read_list(
                &format!("{key}.api_keys_file"),
                &base.join(file),
            )?);
        }
        let upstream = match upstream {
            Some(name) => upstreams
                .iter()
                .position(|u| u.name == name)
                .ok_or_else(|| {
                    err(
                        format!("{key}.upstream"),
                        format!("no [[upstreams]] is named \"{name}\""),
                    )
                })?,
            None if upstreams.len() == 1 => 0,
            None => {
                return Err(err(
                    format!("{key}.upstream"),
                    "required when there is more than one upstream",
                ));
            }
        };
        if api_keys.is_empty() && jwt.is_none() {
            return Err(err(
                format!("{key}.api_keys"),
                "a tenant needs at least one key (run `sluice key`) or a jwt table",
            ));
        }
        let jwt_only = api_keys.is_empty();
        let jwt = jwt
            .map(|jwt| jwt.validate(&format!("{key}.jwt"), base).map(Arc::new))
            .transpose()
            .map_err(ConfigError)?;
        let cors = cors
            .map(|cors| cors.validate(&format!("{key}.cors"), jwt_only))
            .transpose()
            .map_err(ConfigError)?;
        if rate_per_second_per_subject == Some(0) {
            return Err(err(
                format!("{key}.rate_per_second_per_subject"),
                "must be at least 1",
            ));
        }
        let api_keys = api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyHash::parse(k).map_err(|e| err(format!("{key}.api_keys[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let pool_size = at_least(
            &format!("{key}.pool_size"),
            pool_size.unwrap_or(defaults::POOL_SIZE),
            1,
        )?;
        let rate_per_second = at_least(
            &format!("{key}.rate_per_second"),
            rate_per_second.unwrap_or(defaults::RATE_PER_SECOND) as usize,
            1,
        )? as u32;
        let burst = at_least(
            &format!("{key}.burst"),
            burst.unwrap_or(defaults::BURST) as usize,
            1,
        )? as u32;
        let max_transactions = at_least(
            &format!("{key}.max_transactions"),
            max_transactions.unwrap_or(defaults::MAX_TRANSACTIONS),
            1,
        )?;
        let max_transaction_connections =
            max_transaction_connections.unwrap_or((pool_size - 1).max(1));
        if max_transaction_connections == 0 || max_transaction_connections > pool_size {
            return Err(err(
                format!("{key}.max_transaction_connections"),
                format!(
                    "must be between 1 and pool_size ({pool_size}), found {max_transaction_connections}"
                ),
            ));
        }
        let transaction_idle_timeout = millis(
            &format!("{key}.transaction_idle_timeout_ms"),
            transaction_idle_timeout_ms,
            defaults::TRANSACTION_IDLE_TIMEOUT_MS,
        )?;
        let transaction_max = millis(
            &format!("{key}.transaction_max_ms"),
            transaction_max_ms,
            defaults::TRANSACTION_MAX_MS,
        )?;
        if transaction_idle_timeout > transaction_max {
            return Err(err(
                format!("{key}.transaction_idle_timeout_ms"),
                "must not exceed transaction_max_ms",
            ));
        }
        for (name, value) in &settings {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
            {
                return Err(err(
                    format!("{key}.settings"),
                    format!("\"{name}\" is not a setting name"),
                ));
            }
            if value.contains('\0') {
                return Err(err(format!("{key}.settings.{name}"), "contains a NUL byte"));
            }
            if RESERVED_SETTINGS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            {
                return Err(err(
                    format!("{key}.settings.{name}"),
                    "is set by the gateway (use statement_timeout_ms for the statement timeout)",
                ));
            }
        }
        for (field, value) in [("database", &database), ("user", &user)] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.contains('\0'))
            {
                return Err(err(format!("{key}.{field}"), "must be a non-empty name"));
            }
        }
        let statement_timeout_ms = statement_timeout_ms.unwrap_or(defaults::STATEMENT_TIMEOUT_MS);
        if statement_timeout_ms == 0 {
            return Err(err(
                format!("{key}.statement_timeout_ms"),
                "must be above 0 (0 would mean no limit)",
            ));
        }
        let _ = &upstreams[upstream];
        Ok(TenantConfig {
            id,
            upstream,
            database,
            user,
            password,
            api_keys,
            pool_size,
            rate_per_second,
            burst,
            max_waiting: max_waiting.unwrap_or(defaults::MAX_WAITING),
            queue_timeout: millis(
                &format!("{key}.queue_timeout_ms"),
                queue_timeout_ms,
                defaults::QUEUE_TIMEOUT_MS,
            )?,
            statement_timeout_ms,
            max_transactions,
            max_transaction_connections,
            transaction_idle_timeout,
            transaction_max,
            settings,
            session_reset,
            cors,
            jwt,
            rate_per_second_per_subject,
        })
    }
}

/// Settings the gateway itself controls at connection start.
const RESERVED_SETTINGS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "client_encoding",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "replication",
];

fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("\"{value}\" must be 1 to 64 letters, digits, '_' or '-'"),
        ))
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        err(
            key,
            format!("\"{value}\" is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}

/// Whether `filter` is a level or a `RUST_LOG`-style filter. Filters name targets, levels and
/// fields, all ASCII; tracing-subscriber's directive parser panics on some multi-byte text
/// (found by the `config` fuzz target), so anything else is refused before it gets there, and
/// a panic in the parser all the same is a refusal, not a crash of the start or reload.
/// Field-value matchers (`target[span{field=value}]`) are refused too: tracing-subscriber
/// compiles each value as a regular expression, and a short one (a run of dots) took the
/// `config` fuzz target minutes and more than 2 GB to compile; span names and targets need no
/// field matchers.
fn is_log_filter(filter: &str) -> bool {
    filter.is_ascii()
        && !filter.contains('{')
        && std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(filter).is_ok())
            .unwrap_or(false)
}

fn at_least(key: &str, value: usize, minimum: usize) -> Result<usize, ConfigError> {
    if value < minimum {
        return Err(err(
            key,
            format!("must be at least {minimum}, found {value}"),
        ));
    }
    Ok(value)
}

fn millis(key: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value == 0 {
        return Err(err(key, "must be above 0"));
    }
    Ok(Duration::from_millis(value))
}

/// A `postgres://` URL, as libpq reads it (the parts sluice supports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    pub target: Target,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
}

impl PostgresUrl {
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("must start with postgres:// (or postgresql://)")?;
        let (authority_and_path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = authority_and_path
            .split_once('/')
            .unwrap_or((authority_and_path, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (percent_decode(user)?, Some(percent_decode(password)?)),
                None => (percent_decode(info)?, None),
            },
            None => (String::new(), None),
        };
        let (mut host, mut port) = split_host_port(hostport)?;
        let mut database = percent_decode(path)?;
        let mut user = user;
        let mut password = password;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut channel_binding = ChannelBindingMode::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("query parameter \"{pair}\" has no value"))?;
            let value = percent_decode(value)?;
            match name {
                "sslmode" => {
                    sslmode = Some(SslMode::parse(&value).ok_or_else(|| {
                        format!("sslmode \"{value}\" must be disable, prefer, require, verify-ca or verify-full")
                    })?)
                }
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "channel_binding" => {
                    channel_binding = ChannelBindingMode::parse(&value).ok_or_else(|| {
                        format!("channel_binding \"{value}\" must be disable, prefer or require")
                    })?
                }
                "host" => host = value,
                "port" => port = value.parse().map_err(|_| format!("port \"{value}\" is not a number"))?,
                "user" => user = value,
                "password" => password = Some(value),
                "dbname" => database = value,
                "application_name" | "connect_timeout" => {}
                other => return Err(format!("query parameter \"{other}\" is not supported")),
            }
        }
        if host.is_empty() {
            host = "localhost".into();
        }
        if user.is_empty() {
            return Err("no user name (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into());
        }
        if database.is_empty() {
            database = user.clone();
        }
        let unix = host.starts_with('/');
        let target = if unix {
            Target::Unix {
                path: format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/')),
            }
        } else {
            Target::Tcp {
                host: host.clone(),
                port,
            }
        };
        // Verified by default where a network is crossed; a local server rarely has TLS.
        let local = unix
            || host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let sslmode = sslmode.unwrap_or(if local {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        });
        Ok(PostgresUrl {
            target,
            user,
            password,
            database,
            sslmode,
            sslrootcert,
            channel_binding,
        })
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() => p
            .parse()
            .map_err(|_| format!("port \"{p}\" is not a number"))?,
        _ => 5432,
    };
    Ok((percent_decode(&host)?, port))
}

pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or("a % in the URL is not followed by two hex digits")?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| format!("%{hex} is not a valid escape"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn config(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/sluice"))
    }

    #[test]
    fn parses_the_api_example_with_defaults() {
        let config = config(&format!(
            r#"
            [server]
            listen = "127.0.0.1:8080"
            [[upstreams]]
            name = "main"
            url = "postgres://app:s%40cret@127.0.0.1:5432/app"
            max_connections = 80
            [[tenants]]
            id = "acme"
            api_keys = ["{KEY}"]
            pool_size = 20
            "#
        ))
        .unwrap();
        let upstream = &config.upstreams[0];
        assert_eq!(upstream.password.as_deref(), Some("s@cret"));
        assert_eq!(upstream.tls.mode(), SslMode::Prefer);
        let tenant = &config.tenants[0];
        assert_eq!(tenant.upstream, 0);
        assert_eq!(tenant.rate_per_second, 500);
        assert_eq!(tenant.max_transaction_connections, 19);
        assert_eq!(tenant.transaction_max, Duration::from_secs(30));
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    }

    /// Found by the `config` fuzz target: tracing-subscriber's filter parser panicked on a
    /// multi-byte character (`end byte index … is not a char boundary`), so a typo in
    /// A `log_level` with a field-value matcher made of dots compiled a regular expression for
    /// minutes, past 2 GB (found by the `config` fuzz target): the start or the reload that read
    /// it hung. Field matchers are refused; targets, spans and levels still work.
    #[test]
    fn a_log_level_with_a_field_matcher_is_refused_at_once() {
        let base = "[[upstreams]]\nname = \"main\"\nurl = \"postgres://u@h/d\"\n[[tenants]]\nid = \"t\"\n\
                    api_keys = [\"sha256:1111111111111111111111111111111111111111111111111111111111111111\"]\n";
        let dots = ".".repeat(200);
        for level in [
            format!("x[span{{field={dots}}}]=debug"),
            "sluice[request{tenant=acme}]=trace".to_owned(),
        ] {
            let started = std::time::Instant::now();
            let text = format!("[server]\nlog_level = {level:?}\n{base}");
            let error = Config::from_toml(&text, Path::new(".")).unwrap_err().0;
            assert!(error.starts_with("server.log_level"), "{error}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        for level in ["info", "sluice=debug,hyper=warn", "sluice[request]=debug"] {
            let text = format!("[server]\nlog_level = {level:?}\n{base}");
            let config = Config::from_toml(&text, Path::new(".")).unwrap();
            assert_eq!(config.server.log_level, level);
        }
    }

    /// `log_level` crashed the start, or the reload that read it.
    #[test]
    fn a_log_level_with_multibyte_text_is_refused_not_a_panic() {
        for level in [
            "info\u{fffd}",
            "  ent_timeout_m\u{fffd} = 149\u{fffd},4:1111",
            "é=debug",
        ] {
            let toml = format!(
                "[server]\nlog_level = {level:?}\n[[upstreams]]\nname = \"main\"\n\
                 url = \"postgres://u:p@127.0.0.1/db\"\n[[tenants]]\nid = \"a\"\n\
                 api_keys = [\"{KEY}\"]\n"
            );
            let error = config(&toml).unwrap_err().to_string();
            assert!(error.starts_with("server.log_level"), "{error}");
        }
        assert!(is_log_filter("info,sluice::request=warn"));
    }

    #[test]
    fn log_sample_rate_is_a_share_above_zero_and_log_buffer_bytes_has_a_floor() {
        let with = |line: &str| {
            config(&format!(
                "[server]\n{line}\n[[upstreams]]\nname = \"main\"\n\
                 url = \"postgres://u:p@127.0.0.1/db\"\n[[tenants]]\nid = \"a\"\n\
                 api_keys = [\"{KEY}\"]\n"
            ))
        };
        let defaults = with("").unwrap();
        assert_eq!(defaults.server.log_sample_rate, 1.0);
        assert_eq!(
            defaults.server.log_buffer_bytes,
            crate::logging::DEFAULT_BUFFER_BYTES
        );
        assert_eq!(
            with("log_sample_rate = 0.25")
                .unwrap()
                .server
                .log_sample_rate,
            0.25
        );
        for bad in ["0", "0.0", "-0.5", "1.5", "nan", "inf"] {
            let error = with(&format!("log_sample_rate = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("server.log_sample_rate"),
                "{bad}: {error}"
            );
        }
        let error = with("log_buffer_bytes = 100").unwrap_err().to_string();
        assert!(error.starts_with("server.log_buffer_bytes"), "{error}");
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let base = format!(
            "[[upstreams]]\nname = \"main\"\nurl = \"postgres://a@h/d\"\n[[tenants]]\nid = \"t\"\napi_keys = [\"{KEY}\"]\n"
        );
        let cases = [
            (
                format!("{base}pool_size = 0\n"),
                "tenants[0].pool_size: must be at least 1",
            ),
            (
                format!("{base}pool_sise = 3\n"),
                "unknown field `pool_sise`",
            ),
            (
                format!("{base}upstream = \"other\"\n"),
                "tenants[0].upstream: no [[upstreams]] is named \"other\"",
            ),
            (
                base.replace(KEY, "sha256:00"),
                "tenants[0].api_keys[0]: must have 64 hex digits",
            ),
            (
                base.replace("postgres://a@h/d", "mysql://x"),
                "upstreams[0].url: must start with postgres://",
            ),
            (
                format!("{base}[[tenants]]\nid = \"t\"\napi_keys = [\"{KEY}\"]\n"),
                "tenants[1].id: \"t\" is used twice",
            ),
            (
                format!("{base}[[tenants]]\nid = \"u\"\napi_keys = [\"{KEY}\"]\n"),
                "a key belongs to exactly one tenant",
            ),
            (
                format!("{base}settings = {{ statement_timeout = \"1\" }}\n"),
                "is set by the gateway",
            ),
            (
                "[server]\nlisten = \"nowhere\"\n".to_owned(),
                "server.listen: \"nowhere\" is not an address",
            ),
        ];
        for (text, expected) in cases {
            let error = config(&text).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
        }
    }

    #[test]
    fn variables_and_secret_files_fill_the_config() {
        let dir = std::env::temp_dir().join(format!("sluice-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pg-password"), "p@ss:word/1\n").unwrap();
        std::fs::write(dir.join("tenant-password"), "t0p").unwrap();
        std::fs::write(dir.join("keys"), format!("# storefront\n{KEY}\n")).unwrap();
        let env = |name: &str| match name {
            "PG_HOST" => Ok("db.internal".to_owned()),
            "TENANT" => Ok("shop".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        let text = r#"
            [[upstreams]]
            name = "main"
            url = "postgres://app@${PG_HOST}/app?sslmode=disable"
            password_file = "pg-password"
            [[tenants]]
            id = "${TENANT}"
            user = "$${literal}"
            password_file = "tenant-password"
            api_keys_file = "keys"
        "#;
        let config = Config::from_toml_with_env(text, &dir, &env).unwrap();
        let upstream = &config.upstreams[0];
        assert_eq!(upstream.password.as_deref(), Some("p@ss:word/1"));
        assert!(matches!(&upstream.target, Target::Tcp { host, .. } if host == "db.internal"));
        let tenant = &config.tenants[0];
        assert_eq!(tenant.id, "shop");
        assert_eq!(tenant.user.as_deref(), Some("${literal}"));
        assert_eq!(tenant.password.as_deref(), Some("t0p"));
        assert_eq!(tenant.api_keys.len(), 1);

        let unset = Config::from_toml_with_env(&text.replace("PG_HOST", "PG_HOST2"), &dir, &env)
            .unwrap_err()
            .to_string();
        assert!(
            unset.contains("upstreams[0].url (line 4)") && unset.contains("PG_HOST2 is not set"),
            "{unset}"
        );
        let both = Config::from_toml_with_env(&text.replace("app@", "app:inline@"), &dir, &env)
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("upstreams[0].password_file: the url has a password too"),
            "{both}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn postgres_urls() {
        let url =
            PostgresUrl::parse("postgresql://u:p@db.example.com:6543/app?sslmode=require").unwrap();
        assert_eq!(
            url.target,
            Target::Tcp {
                host: "db.example.com".into(),
                port: 6543
            }
        );
        assert_eq!(url.sslmode, SslMode::Require);
        let remote = PostgresUrl::parse("postgres://u@db.example.com/app").unwrap();
        assert_eq!(
            remote.sslmode,
            SslMode::VerifyFull,
            "remote servers are verified by default"
        );
        let socket = PostgresUrl::parse("postgres://u@/app?host=/var/run/postgresql").unwrap();
        assert_eq!(
            socket.target,
            Target::Unix {
                path: "/var/run/postgresql/.s.PGSQL.5432".into()
            }
        );
        let v6 = PostgresUrl::parse("postgres://u@[::1]:5433").unwrap();
        assert_eq!(
            v6.target,
            Target::Tcp {
                host: "::1".into(),
                port: 5433
            }
        );
        assert_eq!(v6.database, "u");
        assert!(PostgresUrl::parse("postgres://u@h/d?sslmode=maybe").is_err());
        assert!(PostgresUrl::parse("postgres://h/d").is_err());
    }

    #[test]
    fn environment_mode_builds_one_tenant() {
        let vars: HashMap<String, String> = [
            ("SLUICE_DATABASE_URL", "postgres://app:pw@127.0.0.1/app"),
            ("SLUICE_API_KEY", "secret"),
            ("SLUICE_MAX_CONNECTIONS", "10"),
            ("SLUICE_LISTEN", "127.0.0.1:9000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = Config::from_env(&vars).unwrap();
        assert_eq!(config.upstreams[0].max_connections, 10);
        assert_eq!(config.tenants[0].pool_size, 10);
        assert_eq!(config.tenants[0].api_keys[0].to_string(), KEY);
        assert_eq!(config.server.listen.port(), 9000);
    }
}
