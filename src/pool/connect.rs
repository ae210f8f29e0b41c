//! How the gateway logs in to an upstream: a tenant's connection settings (the upstream's URL
//! with the tenant's overrides, and the session settings every connection starts with), the
//! upstream's own for sessions that are no tenant's (cluster control, `sluice check`), and
//! the one-off connections `sluice check` makes outside any pool.

use std::time::Duration;

use super::health::{ServerLimit, read_limit};
use crate::config::{TenantConfig, UpstreamConfig};
use crate::pg::{ConnectConfig, PgConnection};

/// How the gateway connects for a tenant: the upstream's URL with the tenant's overrides, and
/// the session settings every connection starts with.
pub(super) fn connect_config(upstream: &UpstreamConfig, tenant: &TenantConfig) -> ConnectConfig {
    let mut settings: Vec<(String, String)> = vec![
        ("application_name".into(), format!("sluice/{}", tenant.id)),
        ("client_encoding".into(), "UTF8".into()),
        ("DateStyle".into(), "ISO, MDY".into()),
        ("IntervalStyle".into(), "postgres".into()),
        ("TimeZone".into(), "UTC".into()),
        (
            "statement_timeout".into(),
            tenant.statement_timeout_ms.to_string(),
        ),
        // A backstop: the gateway rolls back idle transactions itself, well before this.
        (
            "idle_in_transaction_session_timeout".into(),
            (tenant.transaction_idle_timeout.as_millis() as u64 + 10_000).to_string(),
        ),
    ];
    for (name, value) in &tenant.settings {
        match settings
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(existing) => existing.1 = value.clone(),
            None => settings.push((name.clone(), value.clone())),
        }
    }
    ConnectConfig {
        target: upstream.target.clone(),
        user: tenant.user.clone().unwrap_or_else(|| upstream.user.clone()),
        password: tenant
            .password
            .clone()
            .or_else(|| upstream.password.clone()),
        database: tenant
            .database
            .clone()
            .unwrap_or_else(|| upstream.database.clone()),
        tls: upstream.tls.clone(),
        connect_timeout: upstream.connect_timeout,
        settings,
        statement_timeout_ms: tenant.statement_timeout_ms,
        statement_cache_size: upstream.statement_cache_size,
        auth: upstream.auth,
    }
}

/// For `sluice check`: whether the tenant's login role can take each of `roles` as an end
/// user's request does (`BEGIN; SET LOCAL ROLE`, rolled back at once). Per role, Postgres's
/// refusal, if any (a role that does not exist, or one not granted to the login role).
pub async fn check_roles(
    upstream: &UpstreamConfig,
    tenant: &TenantConfig,
    roles: &[&str],
) -> Result<Vec<Option<String>>, String> {
    let mut config = connect_config(upstream, tenant);
    config
        .settings
        .retain(|(name, _)| name != "application_name");
    config
        .settings
        .push(("application_name".into(), "sluice check".into()));
    let mut conn = PgConnection::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut refusals = Vec::with_capacity(roles.len());
    let mut failure = None;
    for role in roles {
        let sql = format!("BEGIN; SET LOCAL ROLE \"{}\"", role.replace('"', "\"\""));
        let result = conn.simple_query(&sql).await;
        let rollback = conn.simple_query("ROLLBACK").await;
        match (result, rollback) {
            (Ok(_), Ok(_)) => refusals.push(None),
            (Err(crate::pg::QueryError::Db(error)), Ok(_)) => {
                refusals.push(Some(format!("{} ({})", error.message, error.code)))
            }
            (Err(error), _) | (_, Err(error)) => {
                failure = Some(error.to_string());
                break;
            }
        }
    }
    conn.terminate(Duration::from_secs(1)).await;
    match failure {
        Some(error) => Err(error),
        None => Ok(refusals),
    }
}

/// Connects once with the upstream's own credentials and reads the server's connection limit
/// (for `sluice check`, which runs outside any pool).
pub async fn read_server_limit(upstream: &UpstreamConfig) -> Result<ServerLimit, String> {
    let config = own_connect_config(upstream, "sluice check".into());
    let mut conn = PgConnection::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    let limit = read_limit(&mut conn).await;
    conn.terminate(Duration::from_secs(1)).await;
    limit
}

/// A session as the upstream's own user, in its own database, named `application_name`:
/// not a tenant's, so no statement timeout and a single cached statement.
pub(super) fn own_connect_config(
    upstream: &UpstreamConfig,
    application_name: String,
) -> ConnectConfig {
    ConnectConfig {
        target: upstream.target.clone(),
        user: upstream.user.clone(),
        password: upstream.password.clone(),
        database: upstream.database.clone(),
        tls: upstream.tls.clone(),
        connect_timeout: upstream.connect_timeout,
        settings: vec![("application_name".into(), application_name)],
        statement_timeout_ms: 0,
        statement_cache_size: 1,
        auth: upstream.auth,
    }
}
