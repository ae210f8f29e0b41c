//! What the accounting tells without changing: counts for the admin view and metrics, the
//! expected wait for `Retry-After`, whether the upstream is usable.

use std::time::{Duration, Instant};

use super::*;

impl Budget {
    pub(crate) fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Slots held: connections connecting, idle, in use and closing (until confirmed gone).
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    pub(crate) fn has_connected(&self) -> bool {
        self.health.ever_connected && self.health.limit_checked
    }

    pub(crate) fn misconfigured(&self) -> Option<&str> {
        self.health.misconfigured()
    }

    /// Whether new limits fit the server, as far as the gateway knows its limit.
    pub(crate) fn check_budget(&self, limits: &Limits) -> Result<(), String> {
        match self.health.server_limit() {
            Some(limit) => limit.check_shared(&self.name, limits.budget, limits.server_budget),
            None => Ok(()),
        }
    }

    /// The server's limit as last read.
    pub(crate) fn server_limit(&self) -> Option<ServerLimit> {
        self.health.server_limit()
    }

    /// When a request joining the queue now can expect a connection: the queue ahead of it,
    /// drained by the tenant's connections at the rate they have been returned.
    pub(crate) fn estimate_wait(&self, tenant: usize) -> Duration {
        let t = &self.tenants[tenant];
        let serving = (t.open - t.connecting).max(1) as u32;
        let hold = Duration::from_micros(t.hold_micros).max(Duration::from_millis(1));
        hold.saturating_mul(t.waiters.len() as u32 + 1) / serving
    }

    pub(crate) fn tenant_status(&self, tenant: usize, now: Instant) -> TenantPoolStatus {
        let t = &self.tenants[tenant];
        TenantPoolStatus {
            open: t.open,
            connecting: t.connecting,
            idle: t.idle.len(),
            in_use: t.in_use(),
            waiting: t.waiters.len(),
            longest_wait: t
                .waiters
                .front()
                .map_or(Duration::ZERO, |(_, since)| now.duration_since(*since)),
        }
    }

    pub(crate) fn status(&self, now: Instant) -> UpstreamStatus {
        UpstreamStatus {
            budget: self.limits.budget,
            open: self.slots,
            connecting: self.connecting,
            closing: self.closing,
            stuck: self.stuck,
            available: self.health.unavailable(now).is_none()
                && self.health.misconfigured().is_none(),
            last_error: self
                .health
                .misconfigured()
                .or(self.health.last_error())
                .map(str::to_owned),
            tenants: (0..self.tenants.len())
                .filter(|&t| !self.tenants[t].retired || self.tenants[t].open > 0)
                .map(|t| {
                    (
                        self.tenants[t].spec.id.to_string(),
                        self.tenant_status(t, now),
                    )
                })
                .collect(),
        }
    }
}
