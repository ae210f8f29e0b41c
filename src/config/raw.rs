//! The configuration file as written: the serde `Raw*` structs (unknown keys refused), the
//! checks across sections (names and keys used twice), and the small validators every section
//! uses. Each section's own validation is in [`super::server`], [`super::upstream`] and
//! [`super::tenant`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, LogFormat, SessionReset, err};
use crate::auth::KeyHash;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub(super) tenants: Vec<RawTenant>,
    pub(super) cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: String,
    pub(super) advertise: Option<String>,
    pub(super) max_replicas: Option<usize>,
    pub(super) poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) tls: Option<RawServerTls>,
    pub(super) metrics_listen: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) max_response_bytes: Option<usize>,
    pub(super) max_buffered_bytes: Option<usize>,
    pub(super) max_sql_bytes: Option<usize>,
    #[serde(default)]
    pub(super) admin_keys: Vec<String>,
    /// More admin key hashes, one per line.
    pub(super) admin_keys_file: Option<PathBuf>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) body_read_timeout_ms: Option<u64>,
    pub(super) stream_stall_timeout_ms: Option<u64>,
    pub(super) shutdown_timeout_ms: Option<u64>,
    pub(super) auth_failures_per_minute: Option<u32>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) log_level: Option<String>,
    pub(super) log_buffer_bytes: Option<usize>,
    pub(super) log_sample_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) listen: Option<String>,
    pub(super) handshake_timeout_ms: Option<u64>,
    pub(super) max_handshakes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) url: String,
    /// The password, from a file instead of the URL.
    pub(super) password_file: Option<PathBuf>,
    pub(super) max_connections: Option<usize>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) server_lifetime_ms: Option<u64>,
    pub(super) server_idle_timeout_ms: Option<u64>,
    pub(super) statement_cache_size: Option<usize>,
    pub(super) allow_insecure_password_auth: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub(super) id: String,
    pub(super) upstream: Option<String>,
    pub(super) database: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) api_keys: Vec<String>,
    /// More key hashes, one per line.
    pub(super) api_keys_file: Option<PathBuf>,
    pub(super) pool_size: Option<usize>,
    pub(super) rate_per_second: Option<u32>,
    pub(super) burst: Option<u32>,
    pub(super) max_waiting: Option<usize>,
    pub(super) queue_timeout_ms: Option<u64>,
    pub(super) statement_timeout_ms: Option<u64>,
    pub(super) max_transactions: Option<usize>,
    pub(super) max_transaction_connections: Option<usize>,
    pub(super) transaction_idle_timeout_ms: Option<u64>,
    pub(super) transaction_max_ms: Option<u64>,
    #[serde(default)]
    pub(super) settings: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) session_reset: SessionReset,
    pub(super) cors: Option<crate::cors::RawCors>,
    pub(super) jwt: Option<crate::jwt::RawJwt>,
    pub(super) rate_per_second_per_subject: Option<u32>,
}

impl RawConfig {
    pub(super) fn validate(self, base: &Path) -> Result<Config, ConfigError> {
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

pub(super) fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
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

pub(super) fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        err(
            key,
            format!("\"{value}\" is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}

pub(super) fn at_least(key: &str, value: usize, minimum: usize) -> Result<usize, ConfigError> {
    if value < minimum {
        return Err(err(
            key,
            format!("must be at least {minimum}, found {value}"),
        ));
    }
    Ok(value)
}

pub(super) fn millis(key: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value == 0 {
        return Err(err(key, "must be above 0"));
    }
    Ok(Duration::from_millis(value))
}
