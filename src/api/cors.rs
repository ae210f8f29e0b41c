//! CORS on the wire, ahead of routing so it covers every route, present and future: a
//! preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here
//! against the union of the tenants' origins (it carries no credentials: see `crate::cors`),
//! every response to an allowed origin gets the `Access-Control-*` headers, and the real
//! request's origin is checked against its own tenant's policy once the tenant is known.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::Body;
use super::error::ApiError;
use super::head::Headers;
use crate::config::TenantConfig;
use crate::cors::CorsUnion;

/// What the SDK and Neon's serverless driver send. `sluice-tenant` names a tenant for tokens
/// (and anonymous requests) that several tenants could accept.
const ALLOW_HEADERS: &str = "authorization, content-type, accept, x-request-id, sluice-tenant, \
    neon-connection-string, neon-raw-text-output, neon-array-mode, neon-batch-isolation-level, \
    neon-batch-read-only, neon-batch-deferrable";
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Readable by the page: the request id to quote, and when to retry a 429 or 503.
const EXPOSE_HEADERS: &str = "x-request-id, retry-after";

fn origin(headers: &Headers) -> Option<&str> {
    headers.get_str(&ORIGIN)
}

/// The answer to a CORS preflight, or `None` when the request is not one.
pub fn preflight(union: &CorsUnion, method: &Method, headers: &Headers) -> Option<Response<Body>> {
    if method != Method::OPTIONS || !headers.contains(&ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = origin(headers)?;
    if !union.allows(origin) {
        return Some(refused(origin).into_response());
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    out.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(union.max_age_s()));
    Some(response)
}

/// Adds the `Access-Control-*` headers to a response when the request's origin is allowed by
/// some tenant (a refusal by the request's own tenant included, so the page can read why).
pub fn decorate(union: &CorsUnion, request: &Headers, response: &mut HeaderMap) {
    let Some(origin) = origin(request) else {
        return;
    };
    if !union.allows(origin) {
        return;
    }
    let Ok(value) = HeaderValue::from_str(origin) else {
        return;
    };
    response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    response.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    response.append(VARY, HeaderValue::from_static("origin"));
}

/// A request from a browser page (it has an `Origin`) must come from one of its tenant's
/// origins; requests without `Origin` (servers, functions) are not browsers' and pass.
pub fn check_origin(headers: &Headers, tenant: &TenantConfig) -> Result<(), ApiError> {
    if !headers.contains(&ORIGIN) {
        return Ok(());
    }
    let origin = origin(headers).unwrap_or("(not text)");
    match &tenant.cors {
        Some(policy) if policy.allows(origin) => Ok(()),
        _ => Err(refused(origin)),
    }
}

fn refused(origin: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "origin {origin} is not allowed to call this gateway: add it to the tenant's \
         cors.origins"
    ))
}
