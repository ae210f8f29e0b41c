//! The gateway's Prometheus metrics. Counters and histograms move where things happen (a
//! request answered, a connection opened or closed); gauges of pool state are read from the
//! pools when `/metrics` is scraped (the caller hands [`Metrics::render`] a [`Gauges`]
//! snapshot), so they can never drift from the truth. Label values are bounded: tenant and
//! upstream ids come from the config, routes and outcomes from fixed lists.
//!
//! This module knows nothing of what it measures: the pool and the transactions record
//! through narrow traits of their own, which the API layer implements on [`Metrics`].

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod histogram;
pub use self::histogram::LatencyHistogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    pub route: &'static str,
    /// `ok` or an API error kind.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub tenant: String,
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub upstream: String,
    pub tenant: String,
    /// `idle`, `in_use` or `connecting`.
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectLabels {
    pub upstream: String,
    /// `ok`, `error` or `misconfigured`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `http1` or `h2`.
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The gauges of pool and transaction state at one moment, per upstream as the pools list
/// them: what [`Metrics::render`] exports besides the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    pub upstreams: Vec<UpstreamGauges>,
}

#[derive(Debug, Default)]
pub struct UpstreamGauges {
    pub upstream: String,
    pub budget: usize,
    /// Connections held to the upstream, counting those opening and closing.
    pub open: usize,
    pub stuck: usize,
    /// Cluster mode: the live members this replica sees; `None` outside cluster mode.
    pub cluster_members: Option<usize>,
    pub tenants: Vec<TenantGauges>,
}

#[derive(Debug, Default)]
pub struct TenantGauges {
    pub tenant: String,
    pub idle: usize,
    pub in_use: usize,
    pub connecting: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
    pub transactions_open: usize,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, LatencyHistogram>,
    pub queue_wait: Family<TenantLabel, LatencyHistogram>,
    queue_waiting: Family<TenantLabel, Gauge>,
    pool_connections: Family<PoolLabels, Gauge>,
    upstream_budget: Family<UpstreamLabel, Gauge>,
    upstream_connections: Family<UpstreamLabel, Gauge>,
    upstream_stuck: Family<UpstreamLabel, Gauge>,
    pub upstream_connects: Family<ConnectLabels, Counter>,
    pub connections_closed: Family<ClosedLabels, Counter>,
    transactions_open: Family<TenantLabel, Gauge>,
    pub transactions_expired: Family<TenantLabel, Counter>,
    pub rate_limited: Family<TenantLabel, Counter>,
    pub auth_failures: Counter,
    /// Cluster mode: transaction calls this replica forwarded to their owner, by tenant.
    pub transaction_calls_forwarded: Family<TenantLabel, Counter>,
    /// Cluster mode: the members this replica sees, by upstream.
    cluster_members: Family<UpstreamLabel, Gauge>,
    pub http_connections: Family<ProtocolLabel, Gauge>,
    /// Plain HTTP/1.1 connections parked between requests (a subset of `http_connections`).
    pub http_connections_parked: Gauge,
    /// Per tenant and outcome, for the admin view (not exported: `requests` has the detail).
    outcomes: Family<OutcomeLabels, Counter>,
    /// The per-request series, resolved once per tenant (see [`TenantHandles`]). Read on every
    /// request without a lock (an `ArcSwap` load: a shared `RwLock` made both cores write its
    /// cache line); replaced whole by [`Metrics::resolve`] the few times a tenant, route or
    /// outcome is first seen.
    handles: ArcSwap<HandleMap>,
    resolving: Mutex<()>,
}

/// Tenant id → its handles. Fx-hashed: the keys come from the config, not from clients.
type HandleMap = FxHashMap<String, TenantHandles>;

/// One tenant's per-request series, looked up by the tenant's id without building label sets:
/// `Family::get_or_create` takes owned labels (a `String` per label set, three per request).
/// Counters and histograms are shared handles, so updating these updates the families.
#[derive(Default, Clone)]
struct TenantHandles {
    /// (route, outcome) → (`requests`, `outcomes`).
    counters: FxHashMap<(&'static str, &'static str), (Counter, Counter)>,
    duration: FxHashMap<&'static str, LatencyHistogram>,
    queue_wait: Option<LatencyHistogram>,
}

/// A request's series: its two counters, its duration, and its queue wait when it waited.
type RequestSeries<'h> = (
    &'h (Counter, Counter),
    &'h LatencyHistogram,
    Option<&'h LatencyHistogram>,
);

impl TenantHandles {
    /// The series of a request on `route` with `outcome`, if all are resolved.
    fn series(
        &self,
        route: &'static str,
        outcome: &'static str,
        waited: bool,
    ) -> Option<RequestSeries<'_>> {
        let counters = self.counters.get(&(route, outcome))?;
        let duration = self.duration.get(route)?;
        let queue_wait = match waited {
            true => Some(self.queue_wait.as_ref()?),
            false => None,
        };
        Some((counters, duration, queue_wait))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tenant: String,
    outcome: &'static str,
}

/// Every outcome a request can have: `ok` and API.md's error kinds.
pub const OUTCOMES: [&str; 18] = [
    "ok",
    "bad_request",
    "database",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "transaction_not_found",
    "transaction_busy",
    "payload_too_large",
    "response_too_large",
    "rate_limited",
    "pool_timeout",
    "queue_full",
    "too_many_transactions",
    "upstream_unavailable",
    "connection_lost",
    "internal",
];

impl Metrics {
    /// The metrics, with `log_lines_dropped` (the log writer's process-wide counter) exported
    /// among them.
    pub fn new(log_lines_dropped: Counter) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::default(),
            queue_wait: Family::default(),
            queue_waiting: Family::default(),
            pool_connections: Family::default(),
            upstream_budget: Family::default(),
            upstream_connections: Family::default(),
            upstream_stuck: Family::default(),
            upstream_connects: Family::default(),
            connections_closed: Family::default(),
            transactions_open: Family::default(),
            transactions_expired: Family::default(),
            rate_limited: Family::default(),
            auth_failures: Counter::default(),
            transaction_calls_forwarded: Family::default(),
            cluster_members: Family::default(),
            http_connections: Family::default(),
            http_connections_parked: Gauge::default(),
            outcomes: Family::default(),
            handles: ArcSwap::default(),
            resolving: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by tenant, route and outcome (ok or the error kind)",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response, by tenant and route",
            metrics.request_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time requests waited for a connection, by tenant",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "queue_waiting",
            "Requests waiting for a connection now, by tenant",
            metrics.queue_waiting.clone(),
        );
        registry.register(
            "pool_connections",
            "Connections by upstream, tenant and state (idle, in_use, connecting)",
            metrics.pool_connections.clone(),
        );
        registry.register(
            "upstream_budget",
            "The most connections the gateway holds to the upstream",
            metrics.upstream_budget.clone(),
        );
        registry.register(
            "upstream_connections",
            "Connections held to the upstream now, counting those opening and closing",
            metrics.upstream_connections.clone(),
        );
        registry.register(
            "upstream_stuck_connections",
            "Connections being closed whose backend has not ended within the close wait (each keeps its budget slot until it does)",
            metrics.upstream_stuck.clone(),
        );
        registry.register(
            "upstream_connect",
            "Connection attempts, by upstream and outcome",
            metrics.upstream_connects.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed, by upstream and reason",
            metrics.connections_closed.clone(),
        );
        registry.register(
            "transactions_open",
            "Interactive transactions open now, by tenant",
            metrics.transactions_open.clone(),
        );
        registry.register(
            "transactions_expired",
            "Interactive transactions rolled back by their idle or lifetime timeout",
            metrics.transactions_expired.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the tenant's rate limit",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests with a missing or unknown API key",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "transaction_calls_forwarded",
            "Cluster mode: calls on interactive transactions forwarded to the replica that owns them, by tenant",
            metrics.transaction_calls_forwarded.clone(),
        );
        registry.register(
            "cluster_members",
            "Cluster mode: live replicas as this one last read them (its share is upstream_budget), by upstream",
            metrics.cluster_members.clone(),
        );
        registry.register(
            "http_connections",
            "Client connections open now, by protocol",
            metrics.http_connections.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log buffer was full (stderr not keeping up)",
            log_lines_dropped,
        );
        registry.register(
            "http_connections_parked",
            "Plain HTTP/1.1 connections parked (idle, down to their socket) between requests",
            metrics.http_connections_parked.clone(),
        );
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The gateway's version", build_info);
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// The metrics in Prometheus text format, with the pool and transaction gauges of
    /// `gauges` (read by the caller just now).
    pub fn render(&self, gauges: &Gauges) -> String {
        self.queue_waiting.clear();
        self.pool_connections.clear();
        self.upstream_budget.clear();
        self.upstream_connections.clear();
        self.upstream_stuck.clear();
        self.transactions_open.clear();
        self.cluster_members.clear();
        for upstream in &gauges.upstreams {
            let label = UpstreamLabel {
                upstream: upstream.upstream.clone(),
            };
            if let Some(members) = upstream.cluster_members {
                self.cluster_members
                    .get_or_create(&label)
                    .set(members as i64);
            }
            self.upstream_budget
                .get_or_create(&label)
                .set(upstream.budget as i64);
            self.upstream_connections
                .get_or_create(&label)
                .set(upstream.open as i64);
            self.upstream_stuck
                .get_or_create(&label)
                .set(upstream.stuck as i64);
            for tenant in &upstream.tenants {
                let pool_gauge = |state| PoolLabels {
                    upstream: upstream.upstream.clone(),
                    tenant: tenant.tenant.clone(),
                    state,
                };
                self.pool_connections
                    .get_or_create(&pool_gauge("idle"))
                    .set(tenant.idle as i64);
                self.pool_connections
                    .get_or_create(&pool_gauge("in_use"))
                    .set(tenant.in_use as i64);
                self.pool_connections
                    .get_or_create(&pool_gauge("connecting"))
                    .set(tenant.connecting as i64);
                let tenant_label = TenantLabel {
                    tenant: tenant.tenant.clone(),
                };
                self.queue_waiting
                    .get_or_create(&tenant_label)
                    .set(tenant.waiting as i64);
                self.transactions_open
                    .get_or_create(&tenant_label)
                    .set(tenant.transactions_open as i64);
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request answered, and how long it waited for a connection (if it took one):
    /// one look-up of the tenant's series for both.
    pub fn request(
        &self,
        tenant: &str,
        route: &'static str,
        outcome: &'static str,
        seconds: f64,
        queue_wait: Option<f64>,
    ) {
        let handles = self.handles.load();
        let resolved;
        let waits = queue_wait.is_some();
        let ((requests, outcomes), duration, waited) = match handles
            .get(tenant)
            .and_then(|h| h.series(route, outcome, waits))
        {
            Some(found) => found,
            None => {
                // First request of this tenant, route and outcome (or first wait): resolve
                // the series once.
                resolved = self.resolve(tenant, |handles| {
                    handles.counters.entry((route, outcome)).or_insert_with(|| {
                        let requests = self.requests.get_or_create(&RequestLabels {
                            tenant: tenant.to_owned(),
                            route,
                            outcome,
                        });
                        let outcomes = self.outcomes.get_or_create(&OutcomeLabels {
                            tenant: tenant.to_owned(),
                            outcome,
                        });
                        (requests.clone(), outcomes.clone())
                    });
                    handles.duration.entry(route).or_insert_with(|| {
                        let labels = RouteLabels {
                            tenant: tenant.to_owned(),
                            route,
                        };
                        self.request_duration.get_or_create(&labels).clone()
                    });
                    if queue_wait.is_some() {
                        handles.queue_wait.get_or_insert_with(|| {
                            let labels = TenantLabel {
                                tenant: tenant.to_owned(),
                            };
                            self.queue_wait.get_or_create(&labels).clone()
                        });
                    }
                });
                resolved[tenant]
                    .series(route, outcome, waits)
                    .expect("the series were just resolved")
            }
        };
        requests.inc();
        outcomes.inc();
        duration.observe(seconds);
        if let (Some(histogram), Some(seconds)) = (waited, queue_wait) {
            histogram.observe(seconds);
        }
    }

    /// Adds series to `tenant`'s handles: the map is copied, changed and swapped in whole
    /// (readers never wait), one resolver at a time so that no addition is lost.
    fn resolve(&self, tenant: &str, add: impl FnOnce(&mut TenantHandles)) -> Arc<HandleMap> {
        let _one_at_a_time = self.resolving.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HandleMap::clone(&self.handles.load());
        add(map.entry(tenant.to_owned()).or_default());
        let map = Arc::new(map);
        self.handles.store(map.clone());
        map
    }

    /// Requests answered for a tenant with this outcome so far (for the admin view).
    pub fn requests_with(&self, tenant: &str, outcome: &'static str) -> u64 {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                tenant: tenant.to_owned(),
                outcome,
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Series resolved for the first time by several threads at once (tenants, routes and
    /// outcomes never seen before) lose no count: each resolution copies the map under one
    /// lock, so none overwrites another's additions.
    #[test]
    fn concurrent_first_requests_lose_no_count() {
        let metrics = Metrics::new(Counter::default());
        const ROUTES: [&str; 3] = ["query", "batch", "sql"];
        const OUTCOMES: [&str; 2] = ["ok", "database"];
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let metrics = &metrics;
                scope.spawn(move || {
                    for n in 0..600 {
                        let tenant = format!("t{}", (n + thread) % 5);
                        // Every fourth request took no connection, and waited for none.
                        let wait = (n % 4 != 0).then_some(0.0001);
                        metrics.request(&tenant, ROUTES[n % 3], OUTCOMES[n % 2], 0.001, wait);
                    }
                });
            }
        });
        let total: u64 = (0..5)
            .flat_map(|t| OUTCOMES.map(|o| (t, o)))
            .map(|(t, o)| metrics.requests_with(&format!("t{t}"), o))
            .sum();
        assert_eq!(total, 4 * 600);
        let t0 = (0..4)
            .map(|thread| {
                (0..600)
                    .filter(|n| (n + thread) % 5 == 0 && n % 4 != 0)
                    .count()
            })
            .sum::<usize>();
        let text = metrics.render(&Gauges::default());
        let line = format!("sluice_queue_wait_seconds_count{{tenant=\"t0\"}} {t0}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}
