//! Operator routes: `GET /metrics` (Prometheus text), `GET /v1/admin/pools` (the JSON
//! counterpart of PgBouncer's `SHOW POOLS` / `SHOW STATS`) and `POST /v1/admin/reload`.
//! The admin routes take an admin key; a tenant's key gets `403 forbidden`.

use http::{HeaderValue, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::RequestContext;
use super::body::Body;
use super::error::ApiError;
use crate::auth::Principal;
use crate::metrics::OUTCOMES;

pub fn metrics(ctx: &RequestContext<'_>) -> Response<Body> {
    let gauges = super::telemetry::gauges(&ctx.generation.pools, &ctx.app.transactions);
    let text = ctx.app.metrics.render(&gauges);
    let mut response = Response::new(Body::Full(Some(text.into())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Only admin keys pass.
pub fn require_admin(ctx: &RequestContext<'_>) -> Result<(), ApiError> {
    match ctx.principal()? {
        Principal::Admin => Ok(()),
        Principal::Tenant(_) => Err(ApiError::Forbidden("this route needs an admin key".into())),
    }
}

/// Per upstream and tenant: budget, connections by state, waiting requests and the longest
/// current wait, requests served and rejected by kind, open transactions.
pub fn pools(ctx: &RequestContext<'_>) -> Response<Body> {
    let config = &ctx.generation.config;
    let metrics = &ctx.app.metrics;
    let clusters = ctx.generation.pools.cluster_views();
    let upstreams: Vec<Value> = ctx
        .generation
        .pools
        .upstream_status()
        .into_iter()
        .zip(clusters)
        .map(|((name, status), cluster)| {
            let tenants: Vec<Value> = status
                .tenants
                .iter()
                .map(|(id, pool)| {
                    let mut rejected = Map::new();
                    for outcome in OUTCOMES.iter().skip(1) {
                        let count = metrics.requests_with(id, outcome);
                        if count > 0 {
                            rejected.insert((*outcome).to_owned(), count.into());
                        }
                    }
                    let pool_size = config
                        .tenants
                        .iter()
                        .find(|t| &t.id == id)
                        .map(|t| t.pool_size);
                    json!({
                        "id": id,
                        "poolSize": pool_size,
                        "removed": pool_size.is_none(),
                        "open": pool.open,
                        "idle": pool.idle,
                        "inUse": pool.in_use,
                        "connecting": pool.connecting,
                        "waiting": pool.waiting,
                        "longestWaitMs": pool.longest_wait.as_millis() as u64,
                        "served": metrics.requests_with(id, "ok"),
                        "rejected": rejected,
                        "transactionsOpen": ctx.app.transactions.open_for(id),
                    })
                })
                .collect();
            json!({
                "name": name,
                "budget": status.budget,
                "open": status.open,
                "connecting": status.connecting,
                "closing": status.closing,
                "available": status.available,
                "lastError": status.last_error,
                "tenants": tenants,
                "cluster": cluster.map(cluster_view),
            })
        })
        .collect();
    Body::json_response(StatusCode::OK, &json!({ "upstreams": upstreams }))
}

/// Cluster mode: this replica and the members it sees, with the addresses they advertise
/// (where calls on their transactions are forwarded).
fn cluster_view((me, peers): (u64, crate::cluster::Peers)) -> Value {
    let mut members: Vec<(u64, Option<String>)> = peers.into_iter().collect();
    members.sort();
    let members: Vec<Value> = members
        .into_iter()
        .map(|(replica, advertise)| {
            json!({ "replica": format!("{replica:016x}"), "advertise": advertise })
        })
        .collect();
    json!({ "replica": format!("{me:016x}"), "members": members })
}

/// Reads the config file again and applies it; an invalid config is refused whole and the
/// current one stays.
pub async fn reload(ctx: &RequestContext<'_>) -> Result<Response<Body>, ApiError> {
    match ctx.app.reload().await {
        Ok(report) => Ok(Body::json_response(StatusCode::OK, &report)),
        Err(reason) => Err(ApiError::BadRequest(format!(
            "config refused, the current one stays in force: {reason}"
        ))),
    }
}
