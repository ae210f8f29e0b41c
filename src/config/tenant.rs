//! Validation of `[[tenants]]`: keys, upstream, limits, session settings, CORS and JWT.

use std::path::Path;
use std::sync::Arc;

use super::raw::{RawTenant, at_least, check_identifier, millis};
use super::{ConfigError, TenantConfig, UpstreamConfig, defaults, err, secrets};
use crate::auth::KeyHash;

impl RawTenant {
    pub(super) fn validate(
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
