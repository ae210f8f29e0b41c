//! Interactive transactions over HTTP: the registry of open ones, each pinning one pooled
//! connection of its tenant (so it counts against the upstream budget like any connection).
//!
//! - An id is 192 random bits (`tx_…`), bound to its tenant (and to the end user whose token
//!   began it): any other tenant's key, or another end user, is told it does not exist. Ids
//!   are never logged in full.
//! - One call at a time: a transaction's connection sits behind an async mutex, and a second
//!   call finds it locked (`transaction_busy`).
//! - A watcher task per transaction rolls it back when it sits idle longer than its idle
//!   timeout or lives past its maximum lifetime (cancelling a statement still running); its
//!   id then answers `expired` for a while — to its own tenant: to any other, as unknown.
//! - A client that vanishes mid-statement gets its statement cancelled; the transaction stays
//!   open (failed, as Postgres leaves it) until commit, rollback or timeout.
//! - A transaction whose connection dies (the backend terminated, a failed write) ends there:
//!   it is unregistered and its slot freed at once, and its id then reads as ended.
//! - At most `min(max_transactions, max_transaction_connections, pool_size - 1)` per tenant
//!   are open, counted in one place across reloads, so one-shot queries always find a
//!   connection (with `pool_size = 1`, none).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rand::Rng;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TenantConfig;
use crate::pg::{CancelToken, QueryError};
use crate::pool::{Checkout, PoolError};
use crate::tenant::Tenant;

/// How long an expired id still answers `expired` rather than "unknown".
const REMEMBER_EXPIRED: Duration = Duration::from_secs(15 * 60);
const MAX_REMEMBERED: usize = 100_000;
/// How long a connection abandoned mid-statement may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest `Retry-After` of `too_many_transactions`.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a transaction was not begun, found or called; the API maps each to its API error.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// Unknown, another tenant's, ended, or (`expired`) rolled back by the gateway.
    #[error("no such transaction")]
    NotFound { expired: bool },
    #[error("another call on this transaction is in progress")]
    Busy,
    #[error("the tenant has its maximum of open transactions")]
    TooMany { retry_after: Duration },
    /// No connection for `begin`.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// `BEGIN`, `COMMIT` or `ROLLBACK` failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// What the registry counts, recorded through whatever the gateway exports metrics with
/// (handed in at construction).
pub trait TransactionMetrics: Send + Sync {
    /// A transaction of `tenant` was rolled back by its idle or lifetime timeout.
    fn expired(&self, tenant: &str);
}

/// Every open transaction of the gateway.
pub struct Transactions {
    // std Mutexes: each critical section is a map operation, never held across an await.
    open: Mutex<HashMap<Arc<str>, Arc<OpenTransaction>>>,
    expired: Mutex<Expired>,
    /// Per tenant id: transactions holding a slot (open, or opening).
    slots: SlotCounts,
    tasks: TaskTracker,
    metrics: Arc<dyn TransactionMetrics>,
}

pub struct OpenTransaction {
    id: Arc<str>,
    tenant: Arc<str>,
    /// The end user who began it (role and subject), if a token did: only the same end user's
    /// calls find it, as only its tenant's do.
    end_user: Option<(String, Option<String>)>,
    /// `None` once the transaction has ended.
    conn: Arc<tokio::sync::Mutex<Option<Checkout>>>,
    cancel: CancelToken,
    idle_timeout: Duration,
    deadline: Instant,
    last_active: Mutex<Instant>,
    /// Set when the watcher decides to roll the transaction back.
    expiring: AtomicBool,
    ended: CancellationToken,
    /// The tenant's transaction slot, given back the moment the transaction ends (not when the
    /// last reference to it goes, which may be a watcher task that has yet to run).
    slot: Mutex<Option<Slot>>,
}

/// How many transactions each tenant holds a slot for. One count per tenant id whatever the
/// generation of the config: a reload that lowers the limit makes new transactions wait until
/// the old ones together with the new stay within it.
type SlotCounts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// One of a tenant's transaction slots; dropping it gives it back. Only
/// [`Transactions::slot`] makes one.
#[must_use]
struct Slot {
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
/// Who calls, beyond the tenant: an end user's role and subject.
fn caller(tenant: &Tenant) -> Option<(String, Option<String>)> {
    tenant
        .end_user
        .as_ref()
        .map(|identity| (identity.role.clone(), identity.subject.clone()))
}

fn transaction_capacity(tenant: &TenantConfig) -> usize {
    tenant
        .max_transactions
        .min(tenant.max_transaction_connections)
        .min(tenant.pool_size.saturating_sub(1))
}

/// The connection of a transaction, held for one call. If the call is dropped halfway (the
/// client vanished), the statement still running is cancelled and the protocol settled in the
/// background; the transaction itself stays open.
pub struct TransactionCall {
    transaction: Arc<OpenTransaction>,
    guard: Option<OwnedMutexGuard<Option<Checkout>>>,
    transactions: Arc<Transactions>,
}

#[derive(Default)]
struct Expired {
    /// When each id expired, and its tenant.
    ids: HashMap<Arc<str>, (Instant, Arc<str>)>,
    order: VecDeque<Arc<str>>,
}

/// What `begin` was asked for, already checked against the tenant's limits.
pub struct BeginOptions {
    pub begin_sql: String,
    pub idle_timeout: Duration,
    /// Cluster mode: this replica's id, named in the transaction id so that calls landing on
    /// another replica find their way here.
    pub owner: Option<u64>,
}

impl Transactions {
    pub fn new(
        tasks: TaskTracker,
        metrics: Arc<impl TransactionMetrics + 'static>,
    ) -> Arc<Transactions> {
        Arc::new(Transactions {
            open: Mutex::new(HashMap::new()),
            expired: Mutex::new(Expired::default()),
            slots: Arc::new(Mutex::new(HashMap::new())),
            tasks,
            metrics,
        })
    }

    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Open transactions of one tenant.
    pub fn open_for(&self, tenant: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| &*t.tenant == tenant)
            .count()
    }

    /// Opens a transaction: a slot, a connection, `BEGIN`.
    pub async fn begin(
        self: &Arc<Self>,
        tenant: &Tenant,
        options: BeginOptions,
    ) -> Result<Arc<OpenTransaction>, TransactionError> {
        let slot = self.slot(tenant)?;
        let mut conn = tenant.pool.checkout().await?;
        conn.simple_query(&options.begin_sql).await?;
        let now = Instant::now();
        let transaction = Arc::new(OpenTransaction {
            id: match options.owner {
                Some(owner) => crate::cluster::owned_transaction_id(&new_id(), owner).into(),
                None => new_id().into(),
            },
            tenant: tenant.config.id.as_str().into(),
            end_user: caller(tenant),
            cancel: conn.cancel_token(),
            conn: Arc::new(tokio::sync::Mutex::new(Some(conn))),
            idle_timeout: options.idle_timeout,
            deadline: now + tenant.config.transaction_max,
            last_active: Mutex::new(now),
            expiring: AtomicBool::new(false),
            ended: CancellationToken::new(),
            slot: Mutex::new(Some(slot)),
        });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(transaction.id.clone(), transaction.clone());
        self.tasks.spawn(self.clone().watch(transaction.clone()));
        Ok(transaction)
    }

    /// One of the tenant's transaction slots, or `too_many_transactions` at once.
    fn slot(&self, tenant: &Tenant) -> Result<Slot, TransactionError> {
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

    /// The transaction `id` of `tenant`; another tenant's is "not found", like an unknown one.
    pub fn get(&self, id: &str, tenant: &Tenant) -> Result<Arc<OpenTransaction>, TransactionError> {
        let found = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        match found {
            Some(transaction)
                if *transaction.tenant == *tenant.config.id
                    && transaction.end_user == caller(tenant) =>
            {
                Ok(transaction)
            }
            Some(_) => Err(TransactionError::NotFound { expired: false }),
            None => Err(TransactionError::NotFound {
                expired: self.was_expired(id, &tenant.config.id),
            }),
        }
    }

    /// Whether `tenant`'s transaction `id` expired lately; another tenant's reads as unknown.
    fn was_expired(&self, id: &str, tenant: &str) -> bool {
        let expired = self.expired.lock().unwrap_or_else(|e| e.into_inner());
        expired
            .ids
            .get(id)
            .is_some_and(|(at, owner)| &**owner == tenant && at.elapsed() < REMEMBER_EXPIRED)
    }

    /// The connection, for one call: `transaction_busy` if another call holds it.
    pub fn call(
        self: &Arc<Self>,
        transaction: &Arc<OpenTransaction>,
    ) -> Result<TransactionCall, TransactionError> {
        // Past its lifetime, or once the watcher has decided to roll it back (it may hold the
        // connection doing so), the caller sees the transaction expired, not busy.
        if Instant::now() >= transaction.deadline || transaction.expiring.load(Ordering::SeqCst) {
            return Err(TransactionError::NotFound { expired: true });
        }
        let guard = transaction
            .conn
            .clone()
            .try_lock_owned()
            .map_err(|_| TransactionError::Busy)?;
        if guard.is_none() {
            // Ended (its connection lost) while this caller looked it up.
            return Err(TransactionError::NotFound {
                expired: self.was_expired(&transaction.id, &transaction.tenant),
            });
        }
        Ok(TransactionCall {
            transaction: transaction.clone(),
            guard: Some(guard),
            transactions: self.clone(),
        })
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`; returns the command tag Postgres gave
    /// (`ROLLBACK` for a commit of a failed transaction).
    pub async fn finish(
        &self,
        mut call: TransactionCall,
        commit: bool,
    ) -> Result<String, TransactionError> {
        let transaction = call.transaction.clone();
        let mut conn = call.take().expect("a call holds the connection");
        self.forget(&transaction, false);
        let tags = conn
            .simple_query(if commit { "COMMIT" } else { "ROLLBACK" })
            .await?;
        Ok(tags
            .first()
            .map(|t| t.command.clone())
            .unwrap_or_else(|| "ROLLBACK".into()))
    }

    fn forget(&self, transaction: &OpenTransaction, expired: bool) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&transaction.id);
        transaction.ended.cancel();
        transaction
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if expired {
            let mut remembered = self.expired.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            while remembered.order.len() >= MAX_REMEMBERED
                || remembered.order.front().is_some_and(|id| {
                    remembered
                        .ids
                        .get(id)
                        .is_none_or(|(at, _)| now.duration_since(*at) >= REMEMBER_EXPIRED)
                })
            {
                let Some(oldest) = remembered.order.pop_front() else {
                    break;
                };
                remembered.ids.remove(&oldest);
            }
            remembered
                .ids
                .insert(transaction.id.clone(), (now, transaction.tenant.clone()));
            remembered.order.push_back(transaction.id.clone());
        }
    }

    /// The transaction's connection is gone (its backend rolled the transaction back): it is
    /// over, and later calls find it ended.
    fn lost(&self, transaction: &OpenTransaction) {
        tracing::warn!(transaction = %short(&transaction.id), tenant = %transaction.tenant, "transaction connection lost; the transaction is over");
        self.forget(transaction, false);
    }

    /// Rolls the transaction back when it has been idle too long or lived too long.
    async fn watch(self: Arc<Self>, transaction: Arc<OpenTransaction>) {
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

impl OpenTransaction {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Whether the gateway is rolling the transaction back (idle or lifetime over): an error
    /// of the call in progress is the expiry's doing (its statement was cancelled).
    pub fn is_expiring(&self) -> bool {
        self.expiring.load(Ordering::SeqCst)
    }

    /// The lifetime deadline as wall-clock time.
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::now() + self.deadline.saturating_duration_since(Instant::now())
    }

    fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

impl TransactionCall {
    pub fn conn(&mut self) -> &mut Checkout {
        self.guard
            .as_mut()
            .and_then(|g| g.as_mut())
            .expect("a call holds the connection")
    }

    /// Whether the gateway is expiring the transaction: then whatever the call's statement
    /// met (its cancellation, 57014) is the expiry, and the call answers as a later one would.
    pub fn is_expiring(&self) -> bool {
        self.transaction.is_expiring()
    }

    fn take(&mut self) -> Option<Checkout> {
        self.guard.as_mut().and_then(|g| g.take())
    }
}

impl Drop for TransactionCall {
    fn drop(&mut self) {
        self.transaction.touch();
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if guard.as_ref().is_some_and(|c| c.is_broken()) {
            // The connection died under the call (terminated backend, failed write): Postgres
            // has rolled the transaction back, so it ends here and its slot is free.
            drop(guard.take());
            drop(guard);
            self.transactions.lost(&self.transaction);
            return;
        }
        let in_sync = guard.as_ref().is_none_or(|c| c.is_in_sync());
        if in_sync {
            return;
        }
        let transaction = self.transaction.clone();
        let transactions = self.transactions.clone();
        self.transactions.tasks.spawn(async move {
            if let Some(conn) = guard.as_mut()
                && !conn.settle(SETTLE_TIMEOUT).await
            {
                // Cannot be trusted: the connection goes, and the transaction with it.
                drop(guard.take());
                drop(guard);
                transactions.lost(&transaction);
                return;
            }
            transaction.touch();
        });
    }
}

/// 192 random bits.
fn new_id() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "tx_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Enough of an id to follow it in the logs, not enough to use it.
pub fn short(id: &str) -> String {
    format!("{}…", id.get(..9).unwrap_or(id))
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs() as i64;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_random_and_url_safe() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 32);
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(short(&a).chars().count(), 10);
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
