//! Connections to Postgres: one [`Upstream`] per server with its hard connection budget, one
//! [`TenantPool`] per tenant on it, and the [`Checkout`] guard a request holds while it uses a
//! connection. This module alone opens and closes connections.
//!
//! Check-out order: an idle connection of the tenant (most recently used first), else a place
//! in the tenant's FIFO queue (bounded by `max_waiting`, limited by `queue_timeout_ms`) while
//! the upstream opens a connection if the tenant is under its `pool_size` and the budget
//! allows — or the next connection the tenant returns. A connection goes back to the pool only
//! in a clean state (see `PgConnection::recover`); otherwise it is closed.

mod budget;
mod build;
mod connect;
mod health;
mod upstream;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use build::server_budget;
pub use connect::{check_roles, read_server_limit};
pub use health::ServerLimit;
use upstream::{PooledConn, Upstream};
pub use upstream::{TenantPoolStatus, UpstreamStatus};

use crate::cluster::control::Governed;
use crate::config::Config;
use crate::pg::{PgConnection, TypeRegistry};

/// Why no connection was handed out. In every case the statement did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("too many requests are already waiting for a connection")]
    QueueFull { retry_after: Duration },
    #[error("no connection became free within the queue timeout")]
    Timeout { retry_after: Duration },
    #[error("the database is unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// What the pool counts as it works, recorded through whatever the gateway exports metrics
/// with (handed in at construction; the pool does not know how they are exported). Called per
/// connection opened or closed, never per request.
pub trait PoolMetrics: Send + Sync {
    /// A connection attempt to `upstream` ended: `ok`, `error` or `misconfigured`.
    fn connect_attempt(&self, upstream: &str, outcome: &'static str);
    /// A connection to `upstream` is being closed, for `reason` (`idle_timeout`,
    /// `lifetime`, `broken`, …).
    fn connection_closed(&self, upstream: &str, reason: &'static str);
}

/// Every upstream and tenant pool of one configuration.
pub struct Pools {
    upstreams: Vec<Arc<Upstream>>,
    tenants: Vec<TenantPool>,
    stop_reaper: CancellationToken,
}

/// One tenant's pool: a handle onto its upstream. A request takes a clone (its tenant's), so
/// the handle is one shared reference: a clone of its five parts would be five reference
/// counts that every worker's requests write, cache lines moved between cores each time.
#[derive(Clone)]
pub struct TenantPool(Arc<TenantPoolParts>);

struct TenantPoolParts {
    id: Arc<str>,
    upstream: Arc<Upstream>,
    /// This tenant's index within its upstream.
    index: usize,
    database: Arc<str>,
    /// The role the tenant's connections log in as.
    role: Arc<str>,
    types: Arc<TypeRegistry>,
    queue_timeout: Duration,
}

impl TenantPool {
    /// Cluster mode: this replica's id on the tenant's upstream (it names the owner in
    /// transaction ids).
    pub(crate) fn replica_id(&self) -> Option<crate::cluster::plan::ReplicaId> {
        self.0.upstream.cluster().map(|c| c.id)
    }

    /// Cluster mode: how many replicas share the tenant's rate (the live members of its
    /// upstream's cluster); 0 when unknown or outside cluster mode.
    pub fn cluster_members(&self) -> usize {
        self.0.upstream.members()
    }

    /// Cluster mode: whether `replica` is a member of the tenant's upstream's cluster, and its
    /// advertised address if one was seen.
    pub(crate) fn peer(&self, replica: crate::cluster::plan::ReplicaId) -> Option<Option<String>> {
        self.0.upstream.peer(replica)
    }
}

impl Pools {
    /// Builds the pools for `config`; connections open lazily, on demand. Background work
    /// (connecting, closing, the reaper) runs on `tasks`.
    pub fn new(
        config: &Config,
        tasks: &TaskTracker,
        metrics: &Arc<impl PoolMetrics + 'static>,
    ) -> Pools {
        Pools::build(config, tasks, metrics.clone(), None)
            .expect("a fresh build has nothing to refuse")
    }

    /// The pools for a reloaded `config`, reusing `previous`'s upstreams (and their
    /// connections) where the upstream still points at the same server as the same user: the
    /// tenants keep their connections and queues, budgets and limits change in place. Refuses
    /// a budget that does not fit a server whose limit is known.
    pub fn reconfigure(
        &self,
        config: &Config,
        tasks: &TaskTracker,
        metrics: &Arc<impl PoolMetrics + 'static>,
    ) -> Result<Pools, String> {
        Pools::build(config, tasks, metrics.clone(), Some(self))
    }

    /// The pool of the tenant at `index` in the config's tenant list.
    pub fn tenant(&self, index: usize) -> &TenantPool {
        &self.tenants[index]
    }

    /// Opens one connection per upstream that has tenants (reading each server's connection
    /// limit on the way), so a misconfigured budget is refused before serving. An upstream
    /// that cannot be reached is not an error here: the gateway starts and checks on first
    /// contact.
    pub async fn probe(&self, wait: Duration) -> Result<(), String> {
        for (upstream, tenant) in self.served() {
            if upstream.cluster().is_some() {
                // No share before the control loop grants one; the first data connection
                // checks the server's limit.
                continue;
            }
            match upstream.checkout(tenant, wait).await {
                Ok(conn) => drop(conn),
                Err(error) => {
                    if let Some(problem) = upstream.misconfigured() {
                        return Err(problem);
                    }
                    tracing::warn!(upstream = %upstream.name(), %error, "upstream not reachable at start; it will be checked on first contact");
                }
            }
        }
        Ok(())
    }

    /// Ready when every upstream with tenants can be reached: one that has never been
    /// contacted is probed now.
    pub async fn ready(&self, wait: Duration) -> Result<(), String> {
        for (upstream, tenant) in self.served() {
            let status = upstream.status();
            if upstream.cluster().is_some() && status.budget == 0 {
                return Err(format!(
                    "upstream \"{}\": no share of the cluster budget yet (waiting for a replica slot, or for the other replicas to shrink)",
                    upstream.name()
                ));
            }
            if !status.available {
                let reason = status.last_error.unwrap_or_else(|| "unavailable".into());
                return Err(format!("upstream \"{}\": {reason}", upstream.name()));
            }
            if !upstream.has_connected() {
                match upstream.checkout(tenant, wait).await {
                    Ok(conn) => drop(conn),
                    Err(error) => return Err(format!("upstream \"{}\": {error}", upstream.name())),
                }
            }
        }
        Ok(())
    }

    /// Each upstream that has tenants, with the index on it of its first tenant (as whom to
    /// check a connection out).
    fn served(&self) -> impl Iterator<Item = (&Arc<Upstream>, usize)> {
        self.upstreams.iter().filter_map(|upstream| {
            let tenant = self
                .tenants
                .iter()
                .find(|t| Arc::ptr_eq(&t.0.upstream, upstream))?;
            Some((upstream, tenant.0.index))
        })
    }

    pub fn upstream_status(&self) -> Vec<(String, UpstreamStatus)> {
        self.upstreams
            .iter()
            .map(|u| (u.name().to_owned(), u.status()))
            .collect()
    }

    /// Cluster mode, per upstream (as [`Pools::upstream_status`]): this replica's id and the
    /// members it last saw with their addresses; `None` outside cluster mode.
    pub(crate) fn cluster_views(
        &self,
    ) -> Vec<Option<(crate::cluster::plan::ReplicaId, crate::cluster::Peers)>> {
        self.upstreams
            .iter()
            .map(|u| {
                let id = u.cluster()?.id;
                Some((id, u.peers()))
            })
            .collect()
    }

    /// Stops the reaper, fails waiting requests and closes idle connections; connections in
    /// use close as their requests finish.
    pub fn close(&self) {
        self.stop_reaper.cancel();
        for upstream in &self.upstreams {
            upstream.close();
        }
    }

    fn start_reaper(&self, tasks: &TaskTracker) {
        let upstreams: Vec<_> = self.upstreams.iter().map(Arc::downgrade).collect();
        let stop = self.stop_reaper.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let mut alive = false;
                for upstream in upstreams.iter().filter_map(|u| u.upgrade()) {
                    upstream.reap(now);
                    alive = true;
                }
                if !alive {
                    return;
                }
            }
        });
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        self.stop_reaper.cancel();
    }
}

impl TenantPool {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn types(&self) -> &TypeRegistry {
        &self.0.types
    }

    /// A connection, within the tenant's queue timeout.
    pub async fn checkout(&self) -> Result<Checkout, PoolError> {
        self.checkout_from(Instant::now()).await
    }

    /// [`TenantPool::checkout`] for a request that asked at `asked` (see
    /// [`Checkout::checked_out_at`]).
    pub async fn checkout_from(&self, asked: Instant) -> Result<Checkout, PoolError> {
        let (conn, since) = self
            .0
            .upstream
            .checkout_from(self.0.index, self.0.queue_timeout, asked)
            .await?;
        Ok(Checkout {
            conn: Some(conn),
            upstream: self.0.upstream.clone(),
            since,
        })
    }

    pub fn status(&self) -> TenantPoolStatus {
        self.0.upstream.tenant_status(self.0.index)
    }
}

/// A connection checked out for one request (or one interactive transaction). Dropping it
/// returns the connection — after cleaning it in the background if the request left it
/// mid-statement or with session state, or closing it if that fails.
pub struct Checkout {
    conn: Option<PooledConn>,
    upstream: Arc<Upstream>,
    since: Instant,
}

impl Checkout {
    /// When the connection was handed over (the end of the request's wait for it): the time
    /// it was asked for, when an idle one was taken without a wait.
    pub fn checked_out_at(&self) -> Instant {
        self.since
    }
}

impl Deref for Checkout {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.upstream.checkin(conn, self.since);
        }
    }
}
