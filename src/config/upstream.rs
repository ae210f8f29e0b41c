//! Validation of `[[upstreams]]`: the server's URL, its password, TLS and pool limits.

use std::path::Path;

use super::raw::{RawUpstream, at_least, check_identifier, millis};
use super::url::PostgresUrl;
use super::{ConfigError, UpstreamConfig, defaults, err, secrets};
use crate::pg::{AuthPolicy, TlsConnector};

impl RawUpstream {
    pub(super) fn validate(self, key: &str, base: &Path) -> Result<UpstreamConfig, ConfigError> {
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
