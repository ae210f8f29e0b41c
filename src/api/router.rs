//! Routes and dispatch: [`handle`] turns one HTTP request into a route, runs its handler (a
//! panic costing that request only), and writes the metrics and the access log line.

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;
use http::{Method, Response};

use super::body::Body;
use super::error::ApiError;
use super::head::RequestHead;
use super::request::{X_REQUEST_ID, read_body, request_id};
use super::{
    App, RequestBody, RequestContext, RequestLog, admin, batch, cors, end_user, health, neon,
    query, transactions,
};

/// Made once, as `X_REQUEST_ID`: a name given as a string is parsed, and a non-standard one
/// allocated, on every insert.
const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The API, with `/metrics` too unless metrics have a listener of their own.
    Api { with_metrics: bool },
    /// `/metrics` (and `/healthz`) only.
    Metrics,
}

/// Handles one HTTP request (its head and body). Never fails: every error becomes an API.md
/// error response.
///
/// An `async` block rather than an `async fn`: an `async fn`'s future holds its arguments
/// twice, as captured and as moved into the body (rust-lang/rust#62958), here half a
/// kilobyte more in every request's future, copied with it.
#[allow(clippy::manual_async_fn)]
pub fn handle<B: RequestBody>(
    app: &App,
    mut head: RequestHead,
    incoming: B,
    peer: IpAddr,
    surface: Surface,
) -> impl Future<Output = Response<Body>> {
    async move {
        let started = Instant::now();
        let _in_flight = app.in_flight.enter();
        let request_id = request_id(&head.headers);
        let generation = app.generation();
        let route = Route::of(head.uri.path(), surface);
        if let Some(mut response) = cors::preflight(&generation.cors, &head.method, &head.headers) {
            cors::decorate(&generation.cors, &head.headers, response.headers_mut());
            response
                .headers_mut()
                .insert(X_REQUEST_ID, request_id.clone());
            return response;
        }
        if route == Route::Sql {
            neon::adopt_connection_string_key(&mut head.headers);
        }
        // Every route but the gateway's own (probes, metrics, admin) may be a tenant's, including
        // routes added later: an end user's token is checked before routing.
        let end_user = match route {
            Route::Healthz
            | Route::Readyz
            | Route::Metrics { .. }
            | Route::AdminPools
            | Route::AdminReload => end_user::EndUser::NotApplicable,
            _ => end_user::authenticate(&generation, &head.headers).await,
        };
        let mut ctx = RequestContext {
            app,
            generation: &generation,
            headers: &head.headers,
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
        let result = AssertUnwindSafe(dispatch(&mut ctx, route, &head.method, incoming))
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
        cors::decorate(&generation.cors, &head.headers, response.headers_mut());
        if head.version == http::Version::HTTP_11 {
            // The gateway closes connections idle longer than the header read timeout; saying so
            // lets clients (undici, Node's fetch) retire them first instead of sending a request
            // into a connection that is closing.
            response
                .headers_mut()
                .insert(KEEP_ALIVE, app.keep_alive.clone());
        }
        let log = &ctx.log;
        let elapsed = started.elapsed();
        let tenant = log
            .tenant
            .map_or("-", |index| generation.config.tenants[index].id.as_str());
        if route.is_api() {
            let queue_wait = log.queue_wait.filter(|_| log.tenant.is_some());
            app.metrics.request(
                tenant,
                route.name(),
                outcome,
                elapsed.as_secs_f64(),
                queue_wait.map(|wait| wait.as_secs_f64()),
            );
        }
        let bytes = http_body::Body::size_hint(response.body()).exact();
        // `log_sample_rate` thins the lines of successful requests only: errors are always logged.
        let sample_rate = generation.config.server.log_sample_rate;
        'log: {
            if outcome == "ok" && sample_rate < 1.0 && rand::random::<f64>() >= sample_rate {
                break 'log;
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
                break 'log;
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
        }
        // Moved in last, not cloned: a clone of a new id's bytes would allocate a shared header.
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
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
            if crate::fault::requested(ctx.headers.get_all(&crate::fault::HEADER), "panic") {
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
