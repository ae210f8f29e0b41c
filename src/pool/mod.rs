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
mod health;
pub(crate) mod upstream;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use budget::Limits;
pub use health::ServerLimit;
use upstream::{PooledConn, TenantSettings, Upstream, UpstreamSettings};
pub use upstream::{TenantPoolStatus, UpstreamStatus};

use crate::cluster::control::Governed;
use crate::config::{Config, TenantConfig, UpstreamConfig};
use crate::pg::{ConnectConfig, PgConnection, TypeRegistry};

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

/// One tenant's pool: a handle onto its upstream.
#[derive(Clone)]
pub struct TenantPool {
    id: Arc<str>,
    upstream: Arc<Upstream>,
    /// This tenant's index within its upstream.
    index: usize,
    database: String,
    /// The role the tenant's connections log in as.
    role: String,
    types: Arc<TypeRegistry>,
    queue_timeout: Duration,
}

impl TenantPool {
    /// Cluster mode: this replica's id on the tenant's upstream (it names the owner in
    /// transaction ids).
    pub(crate) fn replica_id(&self) -> Option<crate::cluster::plan::ReplicaId> {
        self.upstream.cluster().map(|c| c.id)
    }

    /// Cluster mode: how many replicas share the tenant's rate (the live members of its
    /// upstream's cluster); 0 when unknown or outside cluster mode.
    pub fn cluster_members(&self) -> usize {
        self.upstream.members()
    }

    /// Cluster mode: whether `replica` is a member of the tenant's upstream's cluster, and its
    /// advertised address if one was seen.
    pub(crate) fn peer(&self, replica: crate::cluster::plan::ReplicaId) -> Option<Option<String>> {
        self.upstream.peer(replica)
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

    fn build(
        config: &Config,
        tasks: &TaskTracker,
        metrics: Arc<dyn PoolMetrics>,
        previous: Option<&Pools>,
    ) -> Result<Pools, String> {
        let settings: Vec<UpstreamSettings> = config
            .upstreams
            .iter()
            .map(|u| upstream_settings(u, &config.upstreams))
            .collect();
        // An upstream keeps its accounting (and its connections) across reloads as long as
        // its name stays: a change of address or credentials replaces its connections within
        // the same budget, so old and new together never exceed it.
        let reused: Vec<Option<Arc<Upstream>>> = settings
            .iter()
            .map(|s| {
                previous?
                    .upstreams
                    .iter()
                    .find(|u| u.name() == &*s.name)
                    .cloned()
            })
            .collect();
        let mut settings = settings;
        for (i, (settings, reused)) in settings.iter_mut().zip(&reused).enumerate() {
            cluster_settings(config, i, settings, reused.as_deref())?;
        }
        for (upstream, settings) in reused.iter().zip(&settings) {
            if let Some(upstream) = upstream
                && upstream.identity() == settings.identity
            {
                upstream.check_budget(&settings.limits)?;
            }
        }
        // Upstreams on one server share its limit: a limit read through one of them holds the
        // sum of their budgets.
        for (i, settings) in settings.iter().enumerate() {
            let known = reused
                .iter()
                .zip(&config.upstreams)
                .filter(|(_, u)| u.target == config.upstreams[i].target)
                .find_map(|(r, _)| r.as_ref().and_then(|r| r.server_limit()));
            if let Some(limit) = known {
                limit.check_shared(
                    &settings.name,
                    settings.limits.budget,
                    settings.limits.server_budget,
                )?;
            }
        }

        let mut members: Vec<Vec<(usize, TenantSettings)>> =
            vec![Vec::new(); config.upstreams.len()];
        for (index, tenant) in config.tenants.iter().enumerate() {
            let upstream = &config.upstreams[tenant.upstream];
            let mut connect = connect_config(upstream, tenant);
            if let Some(cluster) = &settings[tenant.upstream].cluster {
                // The replica's id in every data session: how the other replicas count them.
                connect.settings[0].1 = crate::cluster::data_application_name(
                    cluster.namespace,
                    cluster.id,
                    &tenant.id,
                );
            }
            let tenant_settings = TenantSettings {
                id: tenant.id.as_str().into(),
                pool_size: tenant.pool_size,
                max_waiting: tenant.max_waiting,
                connect: Arc::new(connect),
            };
            members[tenant.upstream].push((index, tenant_settings));
        }
        let mut tenants: Vec<Option<TenantPool>> = vec![None; config.tenants.len()];
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for (u, ((settings, members), reused)) in
            settings.into_iter().zip(members).zip(reused).enumerate()
        {
            let global: Vec<usize> = members.iter().map(|(i, _)| *i).collect();
            let tenant_settings: Vec<TenantSettings> =
                members.into_iter().map(|(_, s)| s).collect();
            let carry_types = reused
                .as_ref()
                .is_some_and(|r| r.identity() == settings.identity);
            let (upstream, local) = match reused {
                Some(upstream) => {
                    let local = upstream.reconfigure(&settings, tenant_settings);
                    (upstream, local)
                }
                None => {
                    let count = tenant_settings.len();
                    let clustered = settings.cluster.is_some();
                    let upstream =
                        Upstream::new(settings, tenant_settings, tasks.clone(), metrics.clone());
                    if clustered {
                        tasks.spawn(crate::cluster::control::run(Arc::downgrade(&upstream)));
                    }
                    (upstream, (0..count).collect())
                }
            };
            for (&global, &local) in global.iter().zip(&local) {
                let tenant = &config.tenants[global];
                let database = tenant
                    .database
                    .clone()
                    .unwrap_or_else(|| config.upstreams[u].database.clone());
                let role = tenant
                    .user
                    .clone()
                    .unwrap_or_else(|| config.upstreams[u].user.clone());
                tenants[global] = Some(TenantPool {
                    id: tenant.id.as_str().into(),
                    upstream: upstream.clone(),
                    index: local,
                    // Extension and user type OIDs differ between databases, and what a name
                    // resolves to can differ between roles: shared per (upstream, database,
                    // role) only, and not across an identity change.
                    types: type_registry(
                        previous.filter(|_| carry_types),
                        &tenants,
                        &upstream,
                        &database,
                        &role,
                    ),
                    database,
                    role,
                    queue_timeout: tenant.queue_timeout,
                });
            }
            upstreams.push(upstream);
        }
        if let Some(previous) = previous {
            for old in &previous.upstreams {
                if !upstreams.iter().any(|u| Arc::ptr_eq(u, old)) {
                    old.retire_all();
                }
            }
        }
        let pools = Pools {
            upstreams,
            tenants: tenants
                .into_iter()
                .map(|t| t.expect("every tenant has an upstream"))
                .collect(),
            stop_reaper: CancellationToken::new(),
        };
        pools.start_reaper(tasks);
        Ok(pools)
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
        for upstream in &self.upstreams {
            let Some(tenant) = self
                .tenants
                .iter()
                .find(|t| Arc::ptr_eq(&t.upstream, upstream))
            else {
                continue;
            };
            if upstream.cluster().is_some() {
                // No share before the control loop grants one; the first data connection
                // checks the server's limit.
                continue;
            }
            match upstream.checkout(tenant.index, wait).await {
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
        for upstream in &self.upstreams {
            let Some(tenant) = self
                .tenants
                .iter()
                .find(|t| Arc::ptr_eq(&t.upstream, upstream))
            else {
                continue;
            };
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
                match upstream.checkout(tenant.index, wait).await {
                    Ok(conn) => drop(conn),
                    Err(error) => return Err(format!("upstream \"{}\": {error}", upstream.name())),
                }
            }
        }
        Ok(())
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
        &self.id
    }

    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    /// A connection, within the tenant's queue timeout.
    pub async fn checkout(&self) -> Result<Checkout, PoolError> {
        let conn = self
            .upstream
            .checkout(self.index, self.queue_timeout)
            .await?;
        Ok(Checkout {
            conn: Some(conn),
            upstream: self.upstream.clone(),
            since: Instant::now(),
        })
    }

    pub fn status(&self) -> TenantPoolStatus {
        self.upstream.tenant_status(self.index)
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
            self.upstream.checkin(conn, self.since.elapsed());
        }
    }
}

/// The type registry for `database` on `upstream` as `role`: shared with any tenant already
/// built on the same database as the same role, or carried over from the previous generation.
/// Extension and user type OIDs differ between databases; the registry is not shared between
/// roles either, so no tenant can plant an entry another tenant's responses are encoded by.
fn type_registry(
    previous: Option<&Pools>,
    tenants: &[Option<TenantPool>],
    upstream: &Arc<Upstream>,
    database: &str,
    role: &str,
) -> Arc<TypeRegistry> {
    let same = |t: &TenantPool| {
        Arc::ptr_eq(&t.upstream, upstream) && t.database == database && t.role == role
    };
    tenants
        .iter()
        .flatten()
        .chain(previous.into_iter().flat_map(|p| p.tenants.iter()))
        .find(|t| same(t))
        .map(|t| t.types.clone())
        .unwrap_or_default()
}

fn upstream_settings(upstream: &UpstreamConfig, all: &[UpstreamConfig]) -> UpstreamSettings {
    UpstreamSettings {
        name: upstream.name.as_str().into(),
        // Everything that decides where and how a connection logs in: a reload that changes
        // any of it (a tightened auth policy too) replaces the connections.
        identity: format!(
            "{}|{}|{:?}|{}|{}|{:?}",
            upstream.target,
            upstream.user,
            upstream.password,
            upstream.database,
            upstream.tls.describe(),
            upstream.auth,
        ),
        limits: Limits {
            budget: upstream.max_connections,
            server_budget: server_budget(upstream, all),
            server_lifetime: upstream.server_lifetime,
            server_idle_timeout: upstream.server_idle_timeout,
        },
        cluster: None,
    }
}

/// Cluster mode (`[cluster]`): the upstream at `index` gets its control settings — the id of
/// the upstream it reuses, or a new one — starts with no share, and the server must hold
/// every cluster budget on it plus the control sessions. A reload may not switch cluster mode
/// on or off, or rename the cluster: that needs a restart.
fn cluster_settings(
    config: &Config,
    index: usize,
    settings: &mut UpstreamSettings,
    reused: Option<&Upstream>,
) -> Result<(), String> {
    let previous = reused.and_then(|u| u.cluster());
    let Some(cluster) = &config.cluster else {
        if previous.is_some() {
            return Err("[cluster] cannot be removed by a reload: restart the replica".into());
        }
        return Ok(());
    };
    let upstream = &config.upstreams[index];
    if reused.is_some() && previous.is_none() {
        return Err("[cluster] cannot be added by a reload: restart the replica".into());
    }
    let namespace = crate::cluster::namespace(&cluster.name, &upstream.name);
    if let Some(previous) = &previous
        && previous.namespace != namespace
    {
        return Err("cluster.name cannot change in a reload: restart the replica".into());
    }
    let id = previous
        .map(|p| p.id)
        .unwrap_or_else(crate::cluster::new_replica_id);
    let control = ConnectConfig {
        target: upstream.target.clone(),
        user: upstream.user.clone(),
        password: upstream.password.clone(),
        database: upstream.database.clone(),
        tls: upstream.tls.clone(),
        connect_timeout: upstream.connect_timeout,
        settings: vec![(
            "application_name".into(),
            crate::cluster::control_application_name(namespace, id, 0),
        )],
        statement_timeout_ms: 0,
        statement_cache_size: 1,
        auth: upstream.auth,
    };
    settings.cluster = Some(crate::cluster::ClusterSettings::new(
        cluster, upstream, control, id,
    ));
    settings.limits.budget = 0;
    settings.limits.server_budget = config
        .upstreams
        .iter()
        .filter(|u| u.target == upstream.target)
        .map(|u| crate::cluster::footprint(u, cluster))
        .sum();
    Ok(())
}

/// The sum of the budgets of the upstreams in `all` that point at the same server (host and
/// port, or socket path) as `upstream`, its own included: what that server's limit must hold.
pub fn server_budget(upstream: &UpstreamConfig, all: &[UpstreamConfig]) -> usize {
    all.iter()
        .filter(|u| u.target == upstream.target)
        .map(|u| u.max_connections)
        .sum::<usize>()
        .max(upstream.max_connections)
}

/// How the gateway connects for a tenant: the upstream's URL with the tenant's overrides, and
/// the session settings every connection starts with.
fn connect_config(upstream: &UpstreamConfig, tenant: &TenantConfig) -> ConnectConfig {
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

/// Connects once with the upstream's own credentials and reads the server's connection limit
/// (for `sluice check`, which runs outside any pool).
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

pub async fn read_server_limit(upstream: &UpstreamConfig) -> Result<ServerLimit, String> {
    let config = ConnectConfig {
        target: upstream.target.clone(),
        user: upstream.user.clone(),
        password: upstream.password.clone(),
        database: upstream.database.clone(),
        tls: upstream.tls.clone(),
        connect_timeout: upstream.connect_timeout,
        settings: vec![("application_name".into(), "sluice check".into())],
        statement_timeout_ms: 0,
        statement_cache_size: 1,
        auth: upstream.auth,
    };
    let mut conn = PgConnection::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    let rows = conn
        .fetch_text(health::SERVER_LIMIT_SQL, &[])
        .await
        .map_err(|e| e.to_string());
    conn.terminate(Duration::from_secs(1)).await;
    rows?
        .first()
        .and_then(|row| ServerLimit::from_row(row))
        .ok_or_else(|| "the server did not report max_connections".into())
}
