//! One call on an open transaction ([`TransactionCall`]): its connection, held for the call
//! behind the transaction's lock, and what happens when the call ends — the connection settled
//! in the background if the client vanished mid-statement, the transaction over if the
//! connection died.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use super::{OpenTransaction, Transactions};
use crate::pool::Checkout;

/// How long a connection abandoned mid-statement may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection of a transaction, held for one call. If the call is dropped halfway (the
/// client vanished), the statement still running is cancelled and the protocol settled in the
/// background; the transaction itself stays open.
pub struct TransactionCall {
    pub(super) transaction: Arc<OpenTransaction>,
    pub(super) guard: Option<OwnedMutexGuard<Option<Checkout>>>,
    pub(super) transactions: Arc<Transactions>,
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

    pub(super) fn take(&mut self) -> Option<Checkout> {
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
