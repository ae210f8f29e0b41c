//! The gateway's [`Metrics`] wired to what they measure. The pool and the transactions record
//! through narrow traits of their own ([`PoolMetrics`], [`TransactionMetrics`]), implemented
//! here on [`Metrics`]; the gauges of a `/metrics` scrape are read here from the pools and the
//! transactions. This layer knows all three, so none of them has to know another.

use crate::metrics::{
    ClosedLabels, ConnectLabels, Gauges, Metrics, TenantGauges, TenantLabel, UpstreamGauges,
};
use crate::pool::{PoolMetrics, Pools};
use crate::transactions::{TransactionMetrics, Transactions};

impl PoolMetrics for Metrics {
    fn connect_attempt(&self, upstream: &str, outcome: &'static str) {
        let labels = ConnectLabels {
            upstream: upstream.to_owned(),
            outcome,
        };
        self.upstream_connects.get_or_create(&labels).inc();
    }

    fn connection_closed(&self, upstream: &str, reason: &'static str) {
        let labels = ClosedLabels {
            upstream: upstream.to_owned(),
            reason,
        };
        self.connections_closed.get_or_create(&labels).inc();
    }
}

impl TransactionMetrics for Metrics {
    fn expired(&self, tenant: &str) {
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        self.transactions_expired.get_or_create(&label).inc();
    }
}

/// The pool and transaction gauges now, for [`Metrics::render`].
pub(super) fn gauges(pools: &Pools, transactions: &Transactions) -> Gauges {
    let upstreams = pools
        .upstream_status()
        .into_iter()
        .zip(pools.cluster_views())
        .map(|((upstream, status), view)| UpstreamGauges {
            upstream,
            budget: status.budget,
            open: status.open,
            stuck: status.stuck,
            cluster_members: view.map(|(_, peers)| peers.len()),
            tenants: status
                .tenants
                .into_iter()
                .map(|(tenant, pool)| TenantGauges {
                    transactions_open: transactions.open_for(&tenant),
                    tenant,
                    idle: pool.idle,
                    in_use: pool.in_use,
                    connecting: pool.connecting,
                    waiting: pool.waiting,
                })
                .collect(),
        })
        .collect();
    Gauges { upstreams }
}
