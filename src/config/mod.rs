//! The configuration: a TOML file (or, for one database and one tenant, environment variables)
//! parsed and validated here, once, into types that cannot hold an invalid value. Every error
//! names the key and the problem. Later code never re-checks. This module owns the validated
//! model and the entry points; the file as written and its validation are in [`raw`] and the
//! sections' modules, the environment-only mode in [`env`], `postgres://` URLs in [`url`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::KeyHash;
use crate::pg::{AuthPolicy, Target, TlsConnector};

mod env;
mod expand;
mod raw;
mod secrets;
mod server;
mod tenant;
mod upstream;
mod url;

use self::raw::RawConfig;
pub use self::url::PostgresUrl;
pub(crate) use self::url::percent_decode;

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
/// `max_connections` (then a cluster-wide budget) among themselves (see the `cluster` module).
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
    /// The log buffer's bound: lines past it are dropped (and counted) until the writer
    /// catches up.
    pub const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;
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

    pub fn tenant_index(&self, id: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::SslMode;

    pub(super) const KEY: &str =
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    pub(super) fn config(text: &str) -> Result<Config, ConfigError> {
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
}
