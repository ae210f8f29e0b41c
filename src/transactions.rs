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

mod call;
mod expiry;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use call::TransactionCall;
use expiry::Expired;
use slots::{Slot, SlotCounts};

use crate::pg::{CancelToken, QueryError};
use crate::pool::{Checkout, PoolError};
use crate::tenant::Tenant;
/// Transactions' expiry times are shown this way.
pub use crate::timestamp::rfc3339;

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

/// Who calls, beyond the tenant: an end user's role and subject.
fn caller(tenant: &Tenant) -> Option<(String, Option<String>)> {
    tenant
        .end_user
        .as_ref()
        .map(|identity| (identity.role.clone(), identity.subject.clone()))
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
        self.expired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .knows(id, tenant)
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
            .map(|t| t.command.clone().into_owned())
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
            self.expired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remember(
                    transaction.id.clone(),
                    transaction.tenant.clone(),
                    Instant::now(),
                );
        }
    }

    /// The transaction's connection is gone (its backend rolled the transaction back): it is
    /// over, and later calls find it ended.
    fn lost(&self, transaction: &OpenTransaction) {
        tracing::warn!(transaction = %short(&transaction.id), tenant = %transaction.tenant, "transaction connection lost; the transaction is over");
        self.forget(transaction, false);
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
}
