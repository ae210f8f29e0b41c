//! End users on the API side: before routing, a request whose bearer credential is a JWT (or
//! which has none, for a tenant with an `anonymous_role`) is routed to its tenant and verified
//! (`crate::jwt`); `RequestContext::tenant` then takes the outcome instead of an API key.
//! Done ahead of routing, asynchronously (a JWKS may need fetching), so every route that asks
//! for its tenant gets it.

use std::sync::Arc;

use http::HeaderName;

use super::error::ApiError;
use super::head::Headers;
use super::{Generation, Tenant};
use crate::jwt::{Identity, Unverified, route};
use crate::pg::sql::analysis_of;

/// What the request's credentials say about an end user.
#[derive(Debug, Clone, Default)]
pub enum EndUser {
    /// Not an end user's request: API keys decide, as before.
    #[default]
    NotApplicable,
    Verified {
        tenant: usize,
        identity: Arc<Identity>,
    },
    /// A token was presented and refused; the reason is the client's.
    Refused(String),
}

/// Names the tenant whose token policy applies when several could accept a token.
const SLUICE_TENANT: HeaderName = HeaderName::from_static("sluice-tenant");

/// Reads the request's credentials. Cheap when no tenant has a `jwt` table.
pub async fn authenticate(generation: &Generation, headers: &Headers) -> EndUser {
    let tenants = &generation.config.tenants;
    if tenants.iter().all(|t| t.jwt.is_none()) {
        return EndUser::NotApplicable;
    }
    let policies = || {
        tenants
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.jwt.as_deref().map(|jwt| (i, t.id.as_str(), jwt)))
    };
    let tenant_header = headers.get_str(&SLUICE_TENANT);
    let Some(header) = headers.get(&http::header::AUTHORIZATION) else {
        // Anonymous: only where a tenant takes anonymous requests; otherwise API keys' usual
        // "missing credentials" answer.
        return match route(policies(), tenant_header, None) {
            Ok(tenant) => {
                let role = tenants[tenant]
                    .jwt
                    .as_ref()
                    .and_then(|j| j.anonymous_role.as_deref());
                match role {
                    Some(role) => EndUser::Verified {
                        tenant,
                        identity: Arc::new(Identity::anonymous(role)),
                    },
                    None => EndUser::NotApplicable,
                }
            }
            Err(_) => EndUser::NotApplicable,
        };
    };
    let Some(token) = crate::auth::bearer_token(header) else {
        return EndUser::NotApplicable;
    };
    if !crate::auth::looks_like_jwt(token) {
        return EndUser::NotApplicable;
    }
    let refused = |reason: String| EndUser::Refused(format!("invalid token: {reason}"));
    let peeked = match Unverified::peek(token) {
        Ok(peeked) => peeked,
        Err(error) => return refused(error.0),
    };
    let tenant = match route(
        policies(),
        tenant_header,
        Some(peeked.issuer.as_deref().unwrap_or("")),
    ) {
        Ok(tenant) => tenant,
        Err(error) => return refused(error.0),
    };
    let Some(policy) = tenants[tenant].jwt.as_deref() else {
        return EndUser::NotApplicable;
    };
    // Boxed: verifying may fetch a JWKS over HTTPS, a future of several KiB that every
    // request's future would otherwise carry (and move) whether or not it has a token.
    match Box::pin(policy.verify(token, &generation.jwt_keys[tenant])).await {
        Ok(identity) => EndUser::Verified {
            tenant,
            identity: Arc::new(identity),
        },
        Err(error) => refused(error.0),
    }
}

/// The statement every end-user request refuses: a batch script run outside a transaction
/// would have no transaction to hold the role and claims.
pub const NEEDS_TRANSACTION: &str = "requests with an end user's token run in a transaction: \
    `\"transaction\": false` is for API keys";

/// The `BEGIN` of a route's gateway-owned transaction: with the end user's role and claims
/// when there is one.
pub fn begin_for(identity: Option<&Arc<Identity>>, begin: &str) -> String {
    match identity {
        Some(identity) => identity.begin_sql(begin),
        None => begin.to_owned(),
    }
}

/// Statements an end user may not send: they would change the role or settings the gateway
/// set for the request (`SET ROLE`, `RESET ROLE`, `SET request.jwt.claims`, a `DO` block that
/// runs them). `set_config()` is kept from end users by privileges instead (see the README's
/// authenticator setup: EXECUTE on it is revoked from PUBLIC), which also covers SQL run
/// indirectly (`query_to_xml`, functions).
const REFUSED_LEADING: &[&str] = &["SET", "RESET", "DO"];

/// For an end user's request, refuses SQL that would change its role or claims (see
/// [`REFUSED_LEADING`]); every statement of `sql` is looked at. API-key requests pass.
pub fn check_sql(tenant: &Tenant, sql: &str) -> Result<(), ApiError> {
    if tenant.end_user.is_none() {
        return Ok(());
    }
    let analysis = analysis_of(sql);
    for span in &analysis.statement_spans {
        let statement = analysis_of(&sql[span.clone()]);
        let leading = &statement.leading_keyword;
        if REFUSED_LEADING.contains(&leading.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "{leading} is not available to an end user's token: the gateway sets the \
                 request's role and claims (statement timeouts go in `timeoutMs`)"
            )));
        }
    }
    Ok(())
}
