//! `GET /healthz` (the process serves) and `GET /readyz` (the upstreams can be reached and the
//! gateway is not draining), for load balancers and orchestrators. Unauthenticated, so they
//! say what is wrong only in general terms; the details are in the log.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::json;

use super::RequestContext;
use super::body::Body;

/// How long a readiness probe may spend contacting an upstream that has not been reached yet.
const READY_PROBE_WAIT: Duration = Duration::from_secs(2);

pub fn healthz() -> Response<Body> {
    Body::json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

pub async fn readyz(ctx: &RequestContext<'_>) -> Response<Body> {
    if ctx.app.is_draining() {
        return Body::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "draining" }),
        );
    }
    match ctx.generation.pools.ready(READY_PROBE_WAIT).await {
        Ok(()) => Body::json_response(StatusCode::OK, &json!({ "status": "ready" })),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            Body::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "unavailable" }),
            )
        }
    }
}
