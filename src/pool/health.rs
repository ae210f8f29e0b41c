//! Whether an upstream can be reached, and how long to wait before trying again.
//!
//! After a failed connection attempt the upstream backs off (exponentially, with jitter, capped
//! at one second so service resumes about a second after Postgres accepts connections again);
//! while backing off, requests that no live connection can serve fail fast with
//! `upstream_unavailable` and a `Retry-After`, instead of queueing until their deadline or
//! hammering a server that is down.

use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A budget that does not fit the server is re-checked this often (the server's
/// `max_connections` only changes with a restart).
const MISCONFIGURED_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
pub(crate) struct Health {
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// Set when the upstream's budget does not fit the server's connection limit.
    misconfigured: Option<String>,
    /// The server's connection limit has been read and the budget fits it.
    pub(crate) limit_checked: bool,
    /// The limit as last read, to check a reloaded budget against.
    server_limit: Option<ServerLimit>,
    pub(crate) ever_connected: bool,
}

impl Health {
    /// `Some((retry_after, reason))` while new connections must not be attempted.
    pub(crate) fn unavailable(&self, now: Instant) -> Option<(Duration, String)> {
        let retry_at = self.retry_at?;
        if retry_at <= now {
            return None;
        }
        let reason = self
            .misconfigured
            .clone()
            .or_else(|| self.last_error.clone())
            .unwrap_or_else(|| "the upstream is unavailable".into());
        Some((retry_at - now, reason))
    }

    pub(crate) fn in_backoff(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| at > now)
    }

    pub(crate) fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.retry_at = None;
        self.last_error = None;
        self.ever_connected = true;
    }

    /// `jitter` (0.5..=1, drawn by the caller so this stays deterministic) scales the wait.
    pub(crate) fn record_failure(&mut self, error: String, now: Instant, jitter: f64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let exponent = self.consecutive_failures.saturating_sub(1).min(16);
        let ceiling = FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF);
        // "Equal jitter": at least half the ceiling, so a crowd of gateways spreads out without
        // any of them retrying immediately.
        let jitter = jitter.clamp(0.5, 1.0);
        self.retry_at = Some(now + ceiling.mul_f64(jitter));
        self.last_error = Some(error);
    }

    pub(crate) fn record_misconfigured(&mut self, problem: String, now: Instant) {
        self.retry_at = Some(now + MISCONFIGURED_RETRY);
        self.misconfigured = Some(problem);
        self.limit_checked = false;
    }

    pub(crate) fn record_limit_ok(&mut self, limit: ServerLimit) {
        self.misconfigured = None;
        self.limit_checked = true;
        self.server_limit = Some(limit);
    }

    pub(crate) fn server_limit(&self) -> Option<ServerLimit> {
        self.server_limit
    }

    pub(crate) fn misconfigured(&self) -> Option<&str> {
        self.misconfigured.as_deref()
    }

    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// The server's connection limit, as read from its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimit {
    pub max_connections: usize,
    pub superuser_reserved: usize,
    /// `reserved_connections` (PostgreSQL 16+), 0 before.
    pub reserved: usize,
}

impl ServerLimit {
    /// What the server lets ordinary roles open.
    pub fn allowed(&self) -> usize {
        self.max_connections
            .saturating_sub(self.superuser_reserved + self.reserved)
    }

    /// `Err` with a message naming both numbers when a budget of `budget` cannot fit.
    pub fn check(&self, upstream: &str, budget: usize) -> Result<(), String> {
        let allowed = self.allowed();
        if budget < allowed {
            return Ok(());
        }
        Err(format!(
            "upstream \"{upstream}\": max_connections = {budget} does not fit the server, which allows \
             {allowed} (its max_connections {} minus {} reserved: superuser_reserved_connections {}, \
             reserved_connections {}); set the upstream's max_connections below {allowed}",
            self.max_connections,
            self.superuser_reserved + self.reserved,
            self.superuser_reserved,
            self.reserved,
        ))
    }

    /// Like [`ServerLimit::check`] for an upstream whose server also serves other upstreams
    /// of the gateway: `total` is the sum of their budgets, this one's included.
    pub fn check_shared(&self, upstream: &str, budget: usize, total: usize) -> Result<(), String> {
        if total <= budget {
            return self.check(upstream, budget);
        }
        let allowed = self.allowed();
        if total < allowed {
            return Ok(());
        }
        Err(format!(
            "upstream \"{upstream}\": the upstreams on this server have max_connections {total} \
             together (this one {budget}), which does not fit the server, which allows {allowed} \
             (its max_connections {} minus {} reserved); lower them to sum below {allowed}",
            self.max_connections,
            self.superuser_reserved + self.reserved,
        ))
    }

    /// The settings query's answer: `max_connections`, `superuser_reserved_connections`,
    /// `reserved_connections` (NULL before PostgreSQL 16).
    pub fn from_row(row: &[Option<String>]) -> Option<ServerLimit> {
        let number = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<usize>().ok())
        };
        Some(ServerLimit {
            max_connections: number(0)?,
            superuser_reserved: number(1).unwrap_or(0),
            reserved: number(2).unwrap_or(0),
        })
    }
}

/// Reads the server's connection limit.
pub const SERVER_LIMIT_SQL: &str = "select pg_catalog.current_setting('max_connections'), \
     pg_catalog.current_setting('superuser_reserved_connections'), \
     pg_catalog.current_setting('reserved_connections', true)";

/// Reads the server's connection limit on `pg`.
pub(crate) async fn read_limit(pg: &mut crate::pg::PgConnection) -> Result<ServerLimit, String> {
    let rows = pg
        .fetch_text(SERVER_LIMIT_SQL, &[])
        .await
        .map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|row| ServerLimit::from_row(row))
        .ok_or_else(|| "the server did not report max_connections".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_at_a_second() {
        let mut health = Health::default();
        let now = Instant::now();
        let mut previous_ceiling = Duration::ZERO;
        for _ in 0..20 {
            health.record_failure("refused".into(), now, 1.0);
            let (wait, reason) = health.unavailable(now).unwrap();
            assert!(wait <= MAX_BACKOFF);
            assert_eq!(reason, "refused");
            previous_ceiling = previous_ceiling.max(wait);
        }
        assert!(previous_ceiling >= MAX_BACKOFF / 2);
        health.record_success();
        assert!(health.unavailable(now).is_none());
    }

    #[test]
    fn a_budget_must_stay_below_what_the_server_allows() {
        let limit = ServerLimit::from_row(&[Some("100".into()), Some("3".into()), None]).unwrap();
        assert_eq!(limit.allowed(), 97);
        assert!(limit.check("main", 96).is_ok());
        let message = limit.check("main", 97).unwrap_err();
        assert!(
            message.contains("max_connections = 97") && message.contains("allows 97"),
            "{message}"
        );
        let pg16 = ServerLimit::from_row(&[Some("30".into()), Some("3".into()), Some("2".into())])
            .unwrap();
        assert_eq!(pg16.allowed(), 25);
    }
}
