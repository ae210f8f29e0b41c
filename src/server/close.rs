//! The gateway's word to its connections at shutdown: finish the current request, then close.
//! The token wakes connections that wait; the flag is what a connection checks between its
//! requests, since reading the token's state takes a lock every connection shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The close signal every connection holds a clone of.
#[derive(Clone, Default)]
pub(super) struct Close {
    token: CancellationToken,
    closing: Arc<AtomicBool>,
}

impl Close {
    pub(super) fn close(&self) {
        // Set first: a connection woken by the token finds the flag set.
        self.closing.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub(super) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub(super) fn token(&self) -> &CancellationToken {
        &self.token
    }
}
