//! The environment-only mode: one database and one tenant from `SLUICE_*` variables, built as
//! the file's raw form and validated like a file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::raw::{RawConfig, RawServer, RawTenant, RawUpstream};
use super::{Config, ConfigError, SessionReset, defaults, err};
use crate::auth::KeyHash;

impl Config {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::KEY;

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
