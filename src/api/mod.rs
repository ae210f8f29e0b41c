//! The HTTP API (API.md): routing, authentication, request bodies, and one handler module per
//! endpoint group. This layer alone knows about status codes; the stages below it answer with
//! their own error types, mapped to API.md's kinds in [`error`].

pub mod batch;
pub mod body;
pub mod error;
mod health;
pub mod query;
pub mod results;
mod transactions;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use tokio_util::task::TaskTracker;

use self::body::Body;
use self::error::ApiError;
use crate::admission::{AuthFailures, TenantRate};
use crate::auth::{KeyStore, Principal};
use crate::config::{Config, TenantConfig};
use crate::pool::{Pools, TenantPool};
use crate::transactions::Transactions;

/// State shared by every request.
pub struct App {
    generation: ArcSwap<Generation>,
    pub transactions: Arc<Transactions>,
    auth_failures: AuthFailures,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

/// One configuration and everything built from it.
pub struct Generation {
    pub config: Config,
    pub keys: KeyStore,
    pub pools: Pools,
    /// Each tenant's request rate, by tenant index.
    pub rates: Vec<TenantRate>,
}

impl Generation {
    pub fn new(config: Config, tasks: &TaskTracker) -> Generation {
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
        let pools = Pools::new(&config, tasks);
        let rates = config
            .tenants
            .iter()
            .map(|t| TenantRate::new(t.rate_per_second, t.burst))
            .collect();
        Generation {
            config,
            keys,
            pools,
            rates,
        }
    }
}

/// A tenant resolved from a request's key.
#[derive(Clone)]
pub struct Tenant {
    pub index: usize,
    pub config: TenantConfig,
    pub pool: TenantPool,
}

impl App {
    pub fn new(generation: Generation, transactions: Arc<Transactions>) -> Arc<App> {
        let auth_failures = AuthFailures::new(generation.config.server.auth_failures_per_minute);
        Arc::new(App {
            generation: ArcSwap::from_pointee(generation),
            transactions,
            auth_failures,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
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
}

impl RequestContext<'_> {
    /// The tenant whose key the request carries, admitted under its rate limit; admin keys
    /// are not tenants.
    pub fn tenant(&mut self) -> Result<Tenant, ApiError> {
        match self.principal()? {
            Principal::Tenant(index) => {
                let config = self.generation.config.tenants[index].clone();
                self.log.tenant = Some(config.id.clone());
                if let Err(retry_after) = self.generation.rates[index].check() {
                    return Err(ApiError::RateLimited {
                        retry_after,
                        reason: "the tenant's request rate limit is exceeded; retry after Retry-After",
                    });
                }
                Ok(Tenant {
                    index,
                    config,
                    pool: self.generation.pools.tenant(index).clone(),
                })
            }
            Principal::Admin => Err(ApiError::Forbidden(
                "an admin key cannot run SQL; use a tenant's key".into(),
            )),
        }
    }

    /// Who the key belongs to. An address with too many failed attempts gets 429 whatever
    /// key it sends, so guessing cannot go on.
    fn principal(&self) -> Result<Principal, ApiError> {
        let blocked = |retry_after| ApiError::RateLimited {
            retry_after,
            reason: "too many failed authentications from this address; retry after Retry-After",
        };
        if let Some(wait) = self.app.auth_failures.blocked_for(self.peer) {
            return Err(blocked(wait));
        }
        let header = self
            .headers
            .get(http::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        self.generation.keys.authenticate(header).map_err(|error| {
            match self.app.auth_failures.record_failure(self.peer) {
                Some(wait) => blocked(wait),
                None => ApiError::Unauthorized(error.to_string()),
            }
        })
    }
}

/// Handles one HTTP request. Never fails: every error becomes an API.md error response.
pub async fn handle(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    let started = Instant::now();
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&app.in_flight);
    let request_id = request_id(request.headers());
    let generation = app.generation();
    let (parts, incoming) = request.into_parts();
    let route = Route::of(parts.uri.path());
    let mut ctx = RequestContext {
        app: &app,
        generation: &generation,
        headers: &parts.headers,
        peer,
        max_response_bytes: generation.config.server.max_response_bytes,
        log: RequestLog::default(),
    };
    let result = dispatch(&mut ctx, route, &parts.method, incoming).await;
    let (mut response, outcome, detail) = match result {
        Ok(response) => (response, "ok", None),
        Err(error) => {
            let kind = error.kind();
            let detail = error.log_detail().map(str::to_owned);
            (error.into_response(), kind, detail)
        }
    };
    response
        .headers_mut()
        .insert("x-request-id", request_id.clone());
    let log = &ctx.log;
    tracing::info!(
        target: "sluice::request",
        request_id = request_id.to_str().unwrap_or_default(),
        tenant = log.tenant.as_deref().unwrap_or("-"),
        transaction = log.transaction.as_deref(),
        route = route.name(),
        status = response.status().as_u16(),
        outcome,
        queue_wait_ms = log.queue_wait.map(|d| d.as_secs_f64() * 1e3),
        exec_ms = log.exec.map(|d| d.as_secs_f64() * 1e3),
        rows = log.rows,
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
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
    Query,
    Batch,
    Begin,
    Transaction(&'p str, transactions::Action),
    NotFound,
}

impl<'p> Route<'p> {
    fn of(path: &'p str) -> Route<'p> {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/v1/query" => Route::Query,
            "/v1/batch" => Route::Batch,
            "/v1/transactions" => Route::Begin,
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
            Route::Query => "query",
            Route::Batch => "batch",
            Route::Begin => "transaction_begin",
            Route::Transaction(_, transactions::Action::Query) => "transaction_query",
            Route::Transaction(_, transactions::Action::Batch) => "transaction_batch",
            Route::Transaction(_, transactions::Action::Commit) => "transaction_commit",
            Route::Transaction(_, transactions::Action::Rollback) => "transaction_rollback",
            Route::NotFound => "not_found",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Route::Healthz | Route::Readyz => "GET",
            Route::NotFound => "GET, POST",
            _ => "POST",
        }
    }
}

async fn dispatch(
    ctx: &mut RequestContext<'_>,
    route: Route<'_>,
    method: &Method,
    incoming: hyper::body::Incoming,
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
        Route::NotFound => Err(ApiError::NotFound),
        _ => {
            // Authenticate (and admit) before reading the body: an unauthenticated or
            // rate-limited client costs no more than its headers.
            let tenant = ctx.tenant()?;
            let body = read_body(ctx, incoming).await?;
            match route {
                Route::Query => query::handle(ctx, &tenant, &body).await,
                Route::Batch => batch::handle(ctx, &tenant, &body).await,
                Route::Begin => transactions::begin(ctx, &tenant, &body).await,
                Route::Transaction(id, action) => {
                    transactions::call(ctx, &tenant, id, action, &body).await
                }
                Route::Healthz | Route::Readyz | Route::NotFound => Err(ApiError::NotFound),
            }
        }
    }
}

/// Reads the request body within `max_body_bytes` (checked while reading, so an oversized
/// body is refused without being buffered) and the body read timeout.
async fn read_body(
    ctx: &RequestContext<'_>,
    incoming: hyper::body::Incoming,
) -> Result<Bytes, ApiError> {
    let server = &ctx.generation.config.server;
    let limit = server.max_body_bytes;
    let declared = ctx
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match tokio::time::timeout(
        server.body_read_timeout,
        Limited::new(incoming, limit).collect(),
    )
    .await
    {
        Err(_) => Err(ApiError::BadRequest(format!(
            "the request body did not arrive within {} s",
            server.body_read_timeout.as_secs()
        ))),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Ok(Err(error)) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {error}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
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

/// The client's `x-request-id` when it is reasonable, else a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get("x-request-id")
        && !value.is_empty()
        && value.len() <= 128
        && value.as_bytes().iter().all(|c| c.is_ascii_graphic())
    {
        return value.clone();
    }
    let id: u128 = rand::random();
    HeaderValue::from_str(&format!("{id:032x}")).expect("hex is a valid header value")
}
