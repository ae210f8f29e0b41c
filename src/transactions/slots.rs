//! A tenant's transaction slots: how many transactions it may hold open (never every
//! connection of its pool), counted in one place whatever the config generation, each held
//! as a [`Slot`] that gives itself back when dropped — and, when none is free, when one is
//! due to free (`Retry-After`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{TransactionError, Transactions};
use crate::config::TenantConfig;
use crate::tenant::Tenant;

/// The shortest `Retry-After` of `too_many_transactions`.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many transactions each tenant holds a slot for. One count per tenant id whatever the
/// generation of the config: a reload that lowers the limit makes new transactions wait until
/// the old ones together with the new stay within it.
pub(super) type SlotCounts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// One of a tenant's transaction slots; dropping it gives it back. Only
/// [`Transactions::slot`] makes one.
#[must_use]
pub(super) struct Slot {
    counts: SlotCounts,
    tenant: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// How many transactions `tenant` may have open: never every connection of its pool, so
/// one-shot queries always find one.
fn transaction_capacity(tenant: &TenantConfig) -> usize {
    tenant
        .max_transactions
        .min(tenant.max_transaction_connections)
        .min(tenant.pool_size.saturating_sub(1))
}

impl Transactions {
    /// One of the tenant's transaction slots, or `too_many_transactions` at once.
    pub(super) fn slot(&self, tenant: &Tenant) -> Result<Slot, TransactionError> {
        let capacity = transaction_capacity(&tenant.config);
        let id: Arc<str> = tenant.config.id.as_str().into();
        {
            let mut counts = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.get(&id).copied().unwrap_or(0);
            if count < capacity {
                counts.insert(id.clone(), count + 1);
                return Ok(Slot {
                    counts: self.slots.clone(),
                    tenant: id,
                });
            }
        }
        Err(TransactionError::TooMany {
            retry_after: self.next_free(&id),
        })
    }

    /// When the tenant's next transaction is due to end at the latest (its idle or lifetime
    /// deadline; the lifetime for one that is busy past its idle deadline), for `Retry-After`.
    /// At least a second: a slot may free sooner, but the header counts whole seconds, and
    /// with no transaction open (`pool_size = 1` allows none) there is nothing better to say.
    fn next_free(&self, tenant: &str) -> Duration {
        let now = Instant::now();
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values()
            .filter(|t| &*t.tenant == tenant)
            .map(|t| {
                let idle = t.last_active() + t.idle_timeout;
                let end = if idle > now {
                    idle.min(t.deadline)
                } else {
                    t.deadline
                };
                end.saturating_duration_since(now)
            })
            .min()
            .unwrap_or(MIN_RETRY_AFTER)
            .max(MIN_RETRY_AFTER)
    }
}
