//! A tenant as one request sees it ([`Tenant`]): its configuration, its pool and the end user
//! the request acts for. The API resolves it from a key or token; the layers below (one-shot
//! queries, interactive transactions) take it as given.

use std::sync::Arc;

use crate::config::TenantConfig;
use crate::pool::TenantPool;

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
