//! State shared by every request ([`App`]: drain, in-flight count, memory budget, reload) and
//! the [`Generation`] a reload builds from one configuration and swaps in.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::in_flight::InFlight;
use super::memory::MemoryBudget;
use crate::admission::{AuthFailures, SubjectRates, TenantRate};
use crate::auth::{KeyStore, Principal};
use crate::config::{Config, TenantConfig};
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::tls::ReloadableCert;
use crate::transactions::Transactions;

/// State shared by every request.
pub struct App {
    generation: ArcSwap<Generation>,
    pub transactions: Arc<Transactions>,
    pub metrics: Arc<Metrics>,
    tasks: TaskTracker,
    reloader: Reloader,
    draining: AtomicBool,
    pub(super) in_flight: InFlight,
    /// Bytes held for request bodies and unsent responses, gateway-wide (`max_buffered_bytes`,
    /// fixed until a restart).
    pub memory: Arc<MemoryBudget>,
    /// Cancelled when a drain reaches its deadline: work that outlives its handler (streaming
    /// responses) stops then instead of holding the exit up.
    deadline_passed: CancellationToken,
    /// The `Keep-Alive: timeout=N` hint of HTTP/1.1 responses. The idle timeout it states
    /// changes only with a restart, so it is built once.
    pub(super) keep_alive: HeaderValue,
}

/// What a reload reads again.
#[derive(Default)]
pub struct Reloader {
    /// The config file; `None` when the config came from the environment.
    pub config_path: Option<PathBuf>,
    /// The HTTPS listeners' certificates.
    pub certificates: Vec<Arc<ReloadableCert>>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(config_path: Option<PathBuf>, certificates: Vec<Arc<ReloadableCert>>) -> Reloader {
        Reloader {
            config_path,
            certificates,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// One configuration and everything built from it.
pub struct Generation {
    pub config: Config,
    pub keys: KeyStore,
    pub pools: Pools,
    /// Each tenant's request rate, by tenant index.
    pub rates: Vec<Arc<TenantRate>>,
    pub auth_failures: Arc<AuthFailures>,
    /// Every tenant's CORS origins together, for preflights.
    pub cors: crate::cors::CorsUnion,
    /// Each tenant's JWKS cache, by tenant index (kept across reloads that leave the tenant's
    /// `jwt` table as it was).
    pub jwt_keys: Vec<Arc<crate::jwt::KeyCache>>,
    /// Each tenant's per-subject rates, when it sets `rate_per_second_per_subject`.
    pub subject_rates: Vec<Option<Arc<SubjectRates>>>,
}

impl Generation {
    pub fn new(config: Config, tasks: &TaskTracker, metrics: &Arc<Metrics>) -> Generation {
        let pools = Pools::new(&config, tasks, metrics);
        let generation = Generation::assemble(config, pools, None);
        generation.start_jwks_refresh(tasks);
        generation
    }

    /// Each `jwks_url` tenant's background key refresh (kept caches keep theirs).
    fn start_jwks_refresh(&self, tasks: &TaskTracker) {
        for (tenant, keys) in self.config.tenants.iter().zip(&self.jwt_keys) {
            if let Some(jwt) = &tenant.jwt {
                keys.start_refresh(jwt, tasks);
            }
        }
    }

    /// Shutdown: the background key refreshes end now (a reload ends a dropped cache's).
    pub fn stop_jwks_refresh(&self) {
        for keys in &self.jwt_keys {
            keys.stop_refresh();
        }
    }

    /// The next generation after a reload: pools reconfigured in place, rate-limit state kept
    /// for tenants whose limits did not change.
    pub fn reconfigure(
        config: Config,
        previous: &Generation,
        tasks: &TaskTracker,
        metrics: &Arc<Metrics>,
    ) -> Result<Generation, String> {
        let pools = previous.pools.reconfigure(&config, tasks, metrics)?;
        let generation = Generation::assemble(config, pools, Some(previous));
        generation.start_jwks_refresh(tasks);
        Ok(generation)
    }

    fn assemble(config: Config, pools: Pools, previous: Option<&Generation>) -> Generation {
        let keys = KeyStore::new(
            config
                .tenants
                .iter()
                .enumerate()
                .flat_map(|(i, t)| t.api_keys.iter().map(move |k| (*k, Principal::Tenant(i))))
                .chain(
                    config
                        .server
                        .admin_keys
                        .iter()
                        .map(|k| (*k, Principal::Admin)),
                ),
        );
        let rates = config
            .tenants
            .iter()
            .map(|tenant| {
                let unchanged = previous.and_then(|p| {
                    let index = p.config.tenant_index(&tenant.id)?;
                    let old = &p.config.tenants[index];
                    (old.rate_per_second == tenant.rate_per_second && old.burst == tenant.burst)
                        .then(|| p.rates[index].clone())
                });
                unchanged.unwrap_or_else(|| {
                    Arc::new(TenantRate::new(tenant.rate_per_second, tenant.burst))
                })
            })
            .collect();
        let per_minute = config.server.auth_failures_per_minute;
        let auth_failures = previous
            .filter(|p| p.config.server.auth_failures_per_minute == per_minute)
            .map(|p| p.auth_failures.clone())
            .unwrap_or_else(|| Arc::new(AuthFailures::new(per_minute)));
        let cors =
            crate::cors::CorsUnion::new(config.tenants.iter().filter_map(|t| t.cors.as_ref()));
        let previous_tenant = |tenant: &TenantConfig| {
            let p = previous?;
            let index = p.config.tenant_index(&tenant.id)?;
            Some((p, index))
        };
        let jwt_keys = config
            .tenants
            .iter()
            .map(|tenant| {
                previous_tenant(tenant)
                    .filter(|(p, i)| p.config.tenants[*i].jwt == tenant.jwt)
                    .map(|(p, i)| p.jwt_keys[i].clone())
                    .unwrap_or_default()
            })
            .collect();
        let subject_rates = config
            .tenants
            .iter()
            .map(|tenant| {
                let rate = tenant.rate_per_second_per_subject?;
                let kept = previous_tenant(tenant)
                    .filter(|(p, i)| p.config.tenants[*i].rate_per_second_per_subject == Some(rate))
                    .and_then(|(p, i)| p.subject_rates[i].clone());
                Some(kept.unwrap_or_else(|| Arc::new(SubjectRates::new(rate))))
            })
            .collect();
        Generation {
            config,
            keys,
            pools,
            rates,
            auth_failures,
            cors,
            jwt_keys,
            subject_rates,
        }
    }
}

impl App {
    pub fn new(
        generation: Generation,
        transactions: Arc<Transactions>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        reloader: Reloader,
    ) -> Arc<App> {
        let idle_seconds = generation
            .config
            .server
            .header_read_timeout
            .as_secs()
            .max(1);
        // Static (leaked once per App, that is once per process outside tests): a clone of a
        // static value is a copy, where a clone of an allocated one is a reference count that
        // every worker's requests write, a cache line moved between cores each time.
        let keep_alive = HeaderValue::from_static(Box::leak(
            format!("timeout={idle_seconds}").into_boxed_str(),
        ));
        let memory = MemoryBudget::new(generation.config.server.max_buffered_bytes);
        Arc::new(App {
            memory,
            deadline_passed: CancellationToken::new(),
            generation: ArcSwap::from_pointee(generation),
            keep_alive,
            transactions,
            metrics,
            tasks,
            reloader,
            draining: AtomicBool::new(false),
            in_flight: InFlight::default(),
        })
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Reloads certificates and the config file (SIGHUP, `POST /v1/admin/reload`). An invalid
    /// config is refused whole, with the reason, and the current one stays; requests in flight
    /// finish on the generation they started with.
    pub async fn reload(&self) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.reloader.lock.lock().await;
        for certificate in &self.reloader.certificates {
            certificate.reload();
        }
        let Some(path) = &self.reloader.config_path else {
            return Ok(
                serde_json::json!({ "reloaded": false, "reason": "the config came from the environment; certificates were reloaded" }),
            );
        };
        let config = Config::from_file(path).map_err(|e| e.to_string())?;
        let current = self.generation();
        let mut warnings = Vec::new();
        let (old, new) = (&current.config.server, &config.server);
        if old.listen != new.listen
            || old.metrics_listen != new.metrics_listen
            || old.tls.as_ref().map(|t| (&t.cert, &t.key, t.listen))
                != new.tls.as_ref().map(|t| (&t.cert, &t.key, t.listen))
            || old.header_read_timeout != new.header_read_timeout
            || old.max_buffered_bytes != new.max_buffered_bytes
        {
            warnings.push(
                "listen addresses, TLS files, header_read_timeout_ms and max_buffered_bytes change \
                 only with a restart"
                    .to_owned(),
            );
        }
        let generation = Generation::reconfigure(config, &current, &self.tasks, &self.metrics)?;
        let report = serde_json::json!({
            "reloaded": true,
            "upstreams": generation.config.upstreams.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
            "tenants": generation.config.tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            "warnings": warnings,
        });
        self.generation.store(Arc::new(generation));
        tracing::info!(config = %path.display(), "config reloaded");
        Ok(report)
    }

    /// Runs background work of a request that outlives its handler (a streaming response).
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The drain's deadline has passed: streams still running stop now.
    pub fn stop_background_work(&self) {
        self.deadline_passed.cancel();
    }

    /// Cancelled once the drain's deadline has passed.
    pub(crate) fn deadline_passed(&self) -> &CancellationToken {
        &self.deadline_passed
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }
}
