//! How transactions end without their client: a watcher per transaction rolls it back past
//! its idle timeout or lifetime (cancelling a statement still running), a drain rolls back
//! every one left, and expired ids are remembered for a while so that they answer `expired`
//! rather than "unknown" — to their own tenant only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::{OpenTransaction, Transactions, short};
use crate::pool::Checkout;

/// How long an expired id still answers `expired` rather than "unknown".
const REMEMBER_EXPIRED: Duration = Duration::from_secs(15 * 60);
const MAX_REMEMBERED: usize = 100_000;

#[derive(Default)]
pub(super) struct Expired {
    /// When each id expired, and its tenant.
    ids: HashMap<Arc<str>, (Instant, Arc<str>)>,
    order: VecDeque<Arc<str>>,
}

impl Expired {
    /// Remembers that `id` of `tenant` expired `now`, forgetting the oldest past their time
    /// (or past the most remembered).
    pub(super) fn remember(&mut self, id: Arc<str>, tenant: Arc<str>, now: Instant) {
        while self.order.len() >= MAX_REMEMBERED
            || self.order.front().is_some_and(|id| {
                self.ids
                    .get(id)
                    .is_none_or(|(at, _)| now.duration_since(*at) >= REMEMBER_EXPIRED)
            })
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.clone(), (now, tenant));
        self.order.push_back(id);
    }

    /// Whether `tenant`'s transaction `id` expired lately; another tenant's reads as unknown.
    pub(super) fn knows(&self, id: &str, tenant: &str) -> bool {
        self.ids
            .get(id)
            .is_some_and(|(at, owner)| &**owner == tenant && at.elapsed() < REMEMBER_EXPIRED)
    }
}

impl Transactions {
    /// Rolls the transaction back when it has been idle too long or lived too long.
    pub(super) async fn watch(self: Arc<Self>, transaction: Arc<OpenTransaction>) {
        loop {
            let idle_deadline = transaction.last_active() + transaction.idle_timeout;
            let wake = idle_deadline.min(transaction.deadline);
            tokio::select! {
                _ = transaction.ended.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            if now >= transaction.deadline {
                self.expire(&transaction, "lifetime").await;
                return;
            }
            if now < transaction.last_active() + transaction.idle_timeout {
                continue;
            }
            // A call in progress is activity: wait for it (until the lifetime ends), then look
            // again at when the transaction was last active.
            let guard = tokio::select! {
                _ = transaction.ended.cancelled() => return,
                guard = tokio::time::timeout_at(transaction.deadline.into(), transaction.conn.clone().lock_owned()) => guard,
            };
            match guard {
                Ok(guard) if guard.is_none() => {
                    self.forget(&transaction, false);
                    return;
                }
                Ok(guard)
                    if Instant::now() >= transaction.last_active() + transaction.idle_timeout =>
                {
                    transaction.expiring.store(true, Ordering::SeqCst);
                    self.rollback_expired(&transaction, guard, "idle").await;
                    return;
                }
                Ok(_) => continue,
                Err(_) => {
                    self.expire(&transaction, "lifetime").await;
                    return;
                }
            }
        }
    }

    /// Lifetime over: cancel whatever runs, then roll back.
    async fn expire(&self, transaction: &Arc<OpenTransaction>, reason: &str) {
        transaction.expiring.store(true, Ordering::SeqCst);
        let guard = match transaction.conn.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                let _ = transaction.cancel.cancel().await;
                transaction.conn.clone().lock_owned().await
            }
        };
        self.rollback_expired(transaction, guard, reason).await;
    }

    async fn rollback_expired(
        &self,
        transaction: &Arc<OpenTransaction>,
        mut guard: OwnedMutexGuard<Option<Checkout>>,
        reason: &str,
    ) {
        if let Some(mut conn) = guard.take() {
            // Rolled back before the id reads "expired", so whoever sees that also sees the
            // locks gone. Failing that, returning the connection rolls back in the background.
            if conn.is_in_sync() {
                let _ = conn.simple_query("ROLLBACK").await;
            }
            drop(conn);
        }
        tracing::info!(transaction = %short(&transaction.id), tenant = %transaction.tenant, reason, "transaction expired and was rolled back");
        if reason != "shutdown" {
            self.metrics.expired(&transaction.tenant);
        }
        self.forget(transaction, true);
    }

    /// At the end of a drain: rolls back every transaction still open.
    pub async fn abort_all(&self) {
        let open: Vec<_> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for transaction in open {
            self.expire(&transaction, "shutdown").await;
        }
    }
}
