//! Building the pools from a configuration, at start and on reload: each upstream's settings
//! and budget (cluster mode's control settings included), which upstreams a reload keeps with
//! their connections, and which tenants share a type registry.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::Limits;
use super::connect::{connect_config, own_connect_config};
use super::upstream::{TenantSettings, Upstream, UpstreamSettings};
use super::{PoolMetrics, Pools, TenantPool, TenantPoolParts};
use crate::config::{Config, UpstreamConfig};
use crate::pg::TypeRegistry;

impl Pools {
    pub(super) fn build(
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
                tenants[global] = Some(TenantPool(Arc::new(TenantPoolParts {
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
                    database: database.into(),
                    role: role.into(),
                    queue_timeout: tenant.queue_timeout,
                })));
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
        Arc::ptr_eq(&t.0.upstream, upstream) && *t.0.database == *database && *t.0.role == *role
    };
    tenants
        .iter()
        .flatten()
        .chain(previous.into_iter().flat_map(|p| p.tenants.iter()))
        .find(|t| same(t))
        .map(|t| t.0.types.clone())
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
    let control = own_connect_config(
        upstream,
        crate::cluster::control_application_name(namespace, id, 0),
    );
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
