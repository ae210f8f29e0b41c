//! The HTTP API (API.md): routing, authentication, request bodies, and one handler module per
//! endpoint group. This layer alone knows about status codes; the stages below it answer with
//! their own error types, mapped to API.md's kinds in [`error`].

mod admin;
pub mod batch;
pub mod body;
pub mod cors;
pub mod end_user;
pub mod error;
pub mod forward;
mod health;
pub mod memory;
pub mod neon;
pub mod query;
pub mod results;
mod stream;
pub(crate) mod transactions;

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::body::Body;
use self::error::ApiError;
use self::memory::{MEMORY_WAIT, MemoryBudget, MemoryLease};
use crate::admission::{AuthFailures, SubjectRates, TenantRate};
use crate::auth::{KeyStore, Principal};
use crate::config::{Config, TenantConfig};
use crate::metrics::Metrics;
use crate::pool::{Pools, TenantPool};
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
    in_flight: AtomicUsize,
    /// Bytes held for request bodies and unsent responses, gateway-wide (`max_buffered_bytes`,
    /// fixed until a restart).
    pub memory: Arc<MemoryBudget>,
    /// Cancelled when a drain reaches its deadline: work that outlives its handler (streaming
    /// responses) stops then instead of holding the exit up.
    deadline_passed: CancellationToken,
    /// The `Keep-Alive: timeout=N` hint of HTTP/1.1 responses. The idle timeout it states
    /// changes only with a restart, so it is built once.
    keep_alive: HeaderValue,
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

/// A tenant resolved from a request's key.
#[derive(Clone)]
pub struct Tenant {
    pub index: usize,
    pub config: Arc<TenantConfig>,
    pub pool: TenantPool,
    /// The end user the request acts for (a verified token, or the anonymous role): its
    /// statements run in a gateway-owned transaction as that role, with its claims.
    pub end_user: Option<Arc<crate::jwt::Identity>>,
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
        let keep_alive = HeaderValue::from_str(&format!("timeout={idle_seconds}"))
            .expect("a number is a valid header value");
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
            in_flight: AtomicUsize::new(0),
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
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// What the per-request log line reports.
#[derive(Debug, Default)]
pub struct RequestLog {
    pub tenant: Option<String>,
    /// The transaction's id, shortened (never logged in full).
    pub transaction: Option<String>,
    pub queue_wait: Option<Duration>,
    pub exec: Option<Duration>,
    pub rows: u64,
}

/// Everything a handler needs about the request it serves.
pub struct RequestContext<'r> {
    pub app: &'r App,
    pub generation: &'r Generation,
    pub headers: &'r http::HeaderMap,
    pub peer: IpAddr,
    pub max_response_bytes: usize,
    pub log: RequestLog,
    /// What this request holds of the gateway's memory budget: its body, then its response.
    pub memory: Option<MemoryLease>,
    /// An end user's token, verified before routing (see [`end_user`]).
    pub end_user: end_user::EndUser,
    /// Set by a route that runs end users' statements as their role and claims
    /// (`end_user::begin_for`, `end_user::check_sql`); other routes refuse their tokens rather
    /// than run them as the tenant's login role.
    pub accepts_end_users: bool,
}

impl RequestContext<'_> {
    /// The tenant whose key the request carries, admitted under its rate limit; admin keys
    /// are not tenants.
    pub fn tenant(&mut self) -> Result<Tenant, ApiError> {
        let (principal, end_user) = match &self.end_user {
            end_user::EndUser::NotApplicable => (self.principal()?, None),
            end_user::EndUser::Verified { .. } if !self.accepts_end_users => {
                return Err(ApiError::Forbidden(
                    "this route does not take end users' tokens: use /v1/query, /v1/batch or \
                     /v1/transactions"
                        .into(),
                ));
            }
            end_user::EndUser::Verified { tenant, identity } => {
                (Principal::Tenant(*tenant), Some(identity.clone()))
            }
            end_user::EndUser::Refused(reason) => {
                self.app.metrics.auth_failures.inc();
                return Err(ApiError::Unauthorized(reason.clone()));
            }
        };
        match principal {
            Principal::Tenant(index) => {
                let config = self.generation.config.tenants[index].clone();
                cors::check_origin(self.headers, &config)?;
                self.log.tenant = Some(config.id.clone());
                // In cluster mode, this replica's share of the rate (crate::admission).
                let replicas = self.generation.pools.tenant(index).cluster_members();
                if let Err(retry_after) = self.generation.rates[index].check_among(replicas) {
                    let label = crate::metrics::TenantLabel {
                        tenant: config.id.clone(),
                    };
                    self.app.metrics.rate_limited.get_or_create(&label).inc();
                    return Err(ApiError::RateLimited {
                        retry_after,
                        reason: "the tenant's request rate limit is exceeded; retry after Retry-After",
                    });
                }
                if let (Some(rates), Some(subject)) = (
                    &self.generation.subject_rates[index],
                    end_user.as_ref().and_then(|e| e.subject.as_deref()),
                ) && let Err(retry_after) = rates.check(subject)
                {
                    let label = crate::metrics::TenantLabel {
                        tenant: config.id.clone(),
                    };
                    self.app.metrics.rate_limited.get_or_create(&label).inc();
                    return Err(ApiError::RateLimited {
                        retry_after,
                        reason: "the end user's request rate limit (rate_per_second_per_subject) \
                                 is exceeded; retry after Retry-After",
                    });
                }
                Ok(Tenant {
                    index,
                    config,
                    pool: self.generation.pools.tenant(index).clone(),
                    end_user,
                })
            }
            Principal::Admin => Err(ApiError::Forbidden(
                "an admin key cannot run SQL; use a tenant's key".into(),
            )),
        }
    }

    /// Who the key belongs to. An address with too many failed attempts gets 429 whatever
    /// key it sends, so guessing cannot go on.
    pub(crate) fn principal(&self) -> Result<Principal, ApiError> {
        let blocked = |retry_after| ApiError::RateLimited {
            retry_after,
            reason: "too many failed authentications from this address; retry after Retry-After",
        };
        let failures = &self.generation.auth_failures;
        if let Some(wait) = failures.blocked_for(self.peer) {
            return Err(blocked(wait));
        }
        let header = self
            .headers
            .get(http::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        self.generation.keys.authenticate(header).map_err(|error| {
            self.app.metrics.auth_failures.inc();
            match failures.record_failure(self.peer) {
                Some(wait) => blocked(wait),
                None => ApiError::Unauthorized(error.to_string()),
            }
        })
    }
}

/// A request body as the server hands it over: hyper's, or hyper's wrapped by the connection
/// (which watches for its end).
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static
{
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The API, with `/metrics` too unless metrics have a listener of their own.
    Api { with_metrics: bool },
    /// `/metrics` (and `/healthz`) only.
    Metrics,
}

/// Handles one HTTP request. Never fails: every error becomes an API.md error response.
pub async fn handle<B: RequestBody>(
    app: Arc<App>,
    request: Request<B>,
    peer: IpAddr,
    surface: Surface,
) -> Response<Body> {
    let started = Instant::now();
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&app.in_flight);
    let request_id = request_id(request.headers());
    let generation = app.generation();
    let (mut parts, incoming) = request.into_parts();
    let route = Route::of(parts.uri.path(), surface);
    if let Some(mut response) = cors::preflight(&generation.cors, &parts.method, &parts.headers) {
        cors::decorate(&generation.cors, &parts.headers, response.headers_mut());
        response
            .headers_mut()
            .insert("x-request-id", request_id.clone());
        return response;
    }
    if route == Route::Sql {
        neon::adopt_connection_string_key(&mut parts.headers);
    }
    // Every route but the gateway's own (probes, metrics, admin) may be a tenant's, including
    // routes added later: an end user's token is checked before routing.
    let end_user = match route {
        Route::Healthz
        | Route::Readyz
        | Route::Metrics { .. }
        | Route::AdminPools
        | Route::AdminReload => end_user::EndUser::NotApplicable,
        _ => end_user::authenticate(&generation, &parts.headers).await,
    };
    let mut ctx = RequestContext {
        app: &app,
        generation: &generation,
        headers: &parts.headers,
        peer,
        max_response_bytes: generation.config.server.max_response_bytes,
        log: RequestLog::default(),
        memory: Some(app.memory.lease()),
        end_user,
        accepts_end_users: false,
    };
    // A panic is a bug, but it must cost one request, not the connection or the process: the
    // client gets `internal`, and the hook (crate::panic) logs where it happened without the
    // request's data.
    let result = AssertUnwindSafe(dispatch(&mut ctx, route, &parts.method, incoming))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Internal {
                reason: "the request handler panicked (see the sluice::panic log line)".into(),
            })
        });
    let (mut response, outcome, detail) = match result {
        Ok(response) => (response, "ok", None),
        Err(error) => {
            let kind = error.kind();
            let detail = error.log_detail().map(str::to_owned);
            let response = if route == Route::Sql {
                neon::error_response(error)
            } else {
                error.into_response()
            };
            (response, kind, detail)
        }
    };
    // The body was dropped with the handler; the lease now covers the response until it is
    // sent.
    if let Some(lease) = ctx.memory.take() {
        response = response.map(|body| body.leased(lease));
    }
    response
        .headers_mut()
        .insert("x-request-id", request_id.clone());
    cors::decorate(&generation.cors, &parts.headers, response.headers_mut());
    if parts.version == http::Version::HTTP_11 {
        // The gateway closes connections idle longer than the header read timeout; saying so
        // lets clients (undici, Node's fetch) retire them first instead of sending a request
        // into a connection that is closing.
        response
            .headers_mut()
            .insert("keep-alive", app.keep_alive.clone());
    }
    let log = &ctx.log;
    let elapsed = started.elapsed();
    let tenant = log.tenant.as_deref().unwrap_or("-");
    if route.is_api() {
        app.metrics
            .request(tenant, route.name(), outcome, elapsed.as_secs_f64());
        if let (Some(wait), Some(tenant)) = (log.queue_wait, &log.tenant) {
            app.metrics.observe_queue_wait(tenant, wait.as_secs_f64());
        }
    }
    let bytes = http_body::Body::size_hint(response.body()).exact();
    // `log_sample_rate` thins the lines of successful requests only: errors are always logged.
    let sample_rate = generation.config.server.log_sample_rate;
    if outcome == "ok" && sample_rate < 1.0 && rand::random::<f64>() >= sample_rate {
        return response;
    }
    let logged = crate::logging::access(&crate::logging::AccessLine {
        request_id: request_id.as_bytes(),
        tenant,
        transaction: log.transaction.as_deref(),
        route: route.name(),
        status: response.status().as_u16(),
        outcome,
        queue_wait: log.queue_wait,
        exec: log.exec,
        rows: log.rows,
        bytes,
        duration: elapsed,
        detail: detail.as_deref(),
    });
    if logged {
        return response;
    }
    tracing::info!(
        target: "sluice::request",
        request_id = request_id.to_str().unwrap_or_default(),
        tenant,
        transaction = log.transaction.as_deref(),
        route = route.name(),
        status = response.status().as_u16(),
        outcome,
        queue_wait_ms = log.queue_wait.map(|d| d.as_secs_f64() * 1e3),
        exec_ms = log.exec.map(|d| d.as_secs_f64() * 1e3),
        rows = log.rows,
        bytes,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        detail = detail.as_deref(),
    );
    response
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'p> {
    Healthz,
    Readyz,
    Metrics {
        /// Served on the public listener, where only an admin key may read it.
        admin_only: bool,
    },
    Query,
    Batch,
    Begin,
    Transaction(&'p str, transactions::Action),
    /// Neon's protocol (`POST /sql`).
    Sql,
    AdminPools,
    AdminReload,
    NotFound,
}

impl<'p> Route<'p> {
    fn of(path: &'p str, surface: Surface) -> Route<'p> {
        match (surface, path) {
            (_, "/healthz") => Route::Healthz,
            (Surface::Metrics, "/metrics") => Route::Metrics { admin_only: false },
            // Metrics name every tenant: on the public listener only an admin key reads them.
            (Surface::Api { with_metrics: true }, "/metrics") => {
                Route::Metrics { admin_only: true }
            }
            (Surface::Metrics, _) => Route::NotFound,
            (_, "/readyz") => Route::Readyz,
            (_, "/v1/query") => Route::Query,
            (_, "/v1/batch") => Route::Batch,
            (_, "/v1/transactions") => Route::Begin,
            (_, "/sql") => Route::Sql,
            (_, "/v1/admin/pools") => Route::AdminPools,
            (_, "/v1/admin/reload") => Route::AdminReload,
            _ => {
                let Some(rest) = path.strip_prefix("/v1/transactions/") else {
                    return Route::NotFound;
                };
                let Some((id, action)) = rest.split_once('/') else {
                    return Route::NotFound;
                };
                let action = match action {
                    "query" => transactions::Action::Query,
                    "batch" => transactions::Action::Batch,
                    "commit" => transactions::Action::Commit,
                    "rollback" => transactions::Action::Rollback,
                    _ => return Route::NotFound,
                };
                Route::Transaction(id, action)
            }
        }
    }

    /// The route's name in logs and metrics (bounded: no ids).
    fn name(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics { .. } => "metrics",
            Route::Query => "query",
            Route::Batch => "batch",
            Route::Begin => "transaction_begin",
            Route::Transaction(_, transactions::Action::Query) => "transaction_query",
            Route::Transaction(_, transactions::Action::Batch) => "transaction_batch",
            Route::Transaction(_, transactions::Action::Commit) => "transaction_commit",
            Route::Transaction(_, transactions::Action::Rollback) => "transaction_rollback",
            Route::Sql => "sql",
            Route::AdminPools => "admin_pools",
            Route::AdminReload => "admin_reload",
            Route::NotFound => "not_found",
        }
    }

    /// Routes counted in the request metrics (not probes, scrapes or admin calls).
    fn is_api(self) -> bool {
        matches!(
            self,
            Route::Query | Route::Batch | Route::Begin | Route::Transaction(..) | Route::Sql
        )
    }

    fn method(self) -> &'static str {
        match self {
            Route::Healthz | Route::Readyz | Route::Metrics { .. } | Route::AdminPools => "GET",
            Route::NotFound => "GET, POST",
            _ => "POST",
        }
    }
}

async fn dispatch<B: RequestBody>(
    ctx: &mut RequestContext<'_>,
    route: Route<'_>,
    method: &Method,
    incoming: B,
) -> Result<Response<Body>, ApiError> {
    if route == Route::NotFound {
        return Err(ApiError::NotFound);
    }
    let allowed = match route.method() {
        "GET" => method == Method::GET || method == Method::HEAD,
        _ => method == Method::POST,
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed {
            allow: route.method(),
        });
    }
    match route {
        Route::Healthz => Ok(health::healthz()),
        Route::Readyz => Ok(health::readyz(ctx).await),
        Route::Metrics { admin_only } => {
            if admin_only {
                admin::require_admin(ctx)?;
            }
            Ok(admin::metrics(ctx))
        }
        Route::AdminPools => {
            admin::require_admin(ctx)?;
            Ok(admin::pools(ctx))
        }
        Route::AdminReload => {
            admin::require_admin(ctx)?;
            admin::reload(ctx).await
        }
        Route::NotFound => Err(ApiError::NotFound),
        Route::Sql => neon::handle(ctx, incoming).await,
        Route::Query | Route::Batch | Route::Begin | Route::Transaction(..) => {
            // Authenticate (and admit) before reading the body: an unauthenticated or
            // rate-limited client costs no more than its headers.
            ctx.accepts_end_users = true;
            let tenant = ctx.tenant()?;
            let body = read_body(ctx, incoming).await?;
            #[cfg(feature = "fault-injection")]
            if crate::fault::requested(ctx.headers, "panic") {
                // Quotes the body, as a real slicing bug would: the hook must not log it.
                panic!("injected panic on {}", String::from_utf8_lossy(&body));
            }
            match route {
                Route::Query => query::handle(ctx, &tenant, &body).await,
                Route::Batch => batch::handle(ctx, &tenant, &body).await,
                Route::Begin => transactions::begin(ctx, &tenant, &body).await,
                Route::Transaction(id, action) => {
                    transactions::call(ctx, &tenant, id, action, &body).await
                }
                _ => Err(ApiError::NotFound),
            }
        }
    }
}

/// How much of a refused (too large) body is still read and dropped, and for how long, so the
/// client — still sending — receives the 413 instead of a connection reset. Beyond these, the
/// connection is simply closed.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the request body within `max_body_bytes` (checked while reading, so an oversized
/// body is refused without being buffered), the body read timeout and the gateway's memory
/// budget: the declared length is reserved before reading (a chunked body's bytes as they
/// come), waiting up to [`MEMORY_WAIT`] for others to release.
async fn read_body<B: RequestBody>(
    ctx: &mut RequestContext<'_>,
    mut incoming: B,
) -> Result<Bytes, ApiError> {
    let server = &ctx.generation.config.server;
    let limit = server.max_body_bytes;
    let declared = ctx
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |incoming| async move {
        drain(incoming, declared).await;
        Err(ApiError::PayloadTooLarge { limit })
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large(incoming).await;
    }
    let overloaded = |_| ApiError::Overloaded {
        retry_after: Duration::from_secs(1),
    };
    let memory_deadline = tokio::time::Instant::now() + MEMORY_WAIT;
    let lease = ctx
        .memory
        .as_mut()
        .expect("the lease lives until the response");
    let reserved = declared.unwrap_or(0) as usize;
    lease
        .grow(reserved, memory_deadline)
        .await
        .map_err(overloaded)?;
    let mut body = bytes::BytesMut::with_capacity(declared.map_or(1024, |l| l as usize));
    let read = tokio::time::timeout(server.body_read_timeout, async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if body.len() + data.len() > limit {
                    return Ok(false);
                }
                let beyond = (body.len() + data.len()).saturating_sub(reserved.max(body.len()));
                if beyond > 0 {
                    lease
                        .grow(beyond, memory_deadline)
                        .await
                        .map_err(overloaded)?;
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(true)
    })
    .await;
    match read {
        Err(_) => Err(ApiError::BadRequest(format!(
            "the request body did not arrive within {} s",
            server.body_read_timeout.as_secs()
        ))),
        Ok(Err(error)) => Err(error),
        Ok(Ok(false)) => too_large(incoming).await,
        Ok(Ok(true)) => Ok(body.freeze()),
    }
}

/// Reads and drops what is left of a refused body, within bounds (see [`DRAIN_BYTES`]).
async fn drain<B: RequestBody>(mut incoming: B, declared: Option<u64>) {
    if declared.is_some_and(|length| length > DRAIN_BYTES as u64) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = incoming.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// Parses a JSON body into a request type; serde's message names the field and the problem.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Decodes and checks a request body as the route at `path` does before it uses a connection
/// (the default limits standing in for a tenant's); `Err` is the client's error message. For
/// fuzzing the request decoder: whatever the bytes, it must answer, never panic.
#[doc(hidden)]
pub fn decode_request(path: &str, body: &[u8]) -> Result<(), String> {
    use crate::config::defaults;
    let limits = query::Limits {
        max_sql_bytes: defaults::MAX_SQL_BYTES,
        statement_timeout_ms: defaults::STATEMENT_TIMEOUT_MS,
        session_reset: crate::config::SessionReset::default(),
    };
    let message = |error: ApiError| format!("{}: {}", error.kind(), error.message());
    let checked = match path {
        "/v1/query" | "/v1/transactions/id/query" => parse_json::<query::QueryRequest>(body)
            .and_then(|request| request.check(limits).map(drop)),
        "/v1/batch" | "/v1/transactions/id/batch" => parse_json::<batch::BatchRequest>(body)
            .and_then(|request| match (&request.statements, &request.script) {
                (Some(statements), _) => {
                    batch::check_statements(statements, request.timeout_ms, limits).map(drop)
                }
                (None, Some(script)) => batch::check_script(
                    script,
                    request.transaction.unwrap_or(true),
                    limits.max_sql_bytes,
                )
                .map(drop),
                (None, None) => Ok(()),
            }),
        "/sql" => neon::decode(body, limits),
        _ => Ok(()),
    };
    checked.map_err(message)
}

/// The client's `x-request-id` when it is reasonable, else a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get("x-request-id")
        && !value.is_empty()
        && value.len() <= 128
        && value.as_bytes().iter().all(|c| c.is_ascii_graphic())
    {
        return value.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random: [u8; 16] = rand::random();
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}
