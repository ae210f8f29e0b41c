//! What a request holds while it deals with an upstream: a [`PooledConn`] (a connection in its
//! hands, given back when dropped) or a [`Waiting`] place in its tenant's queue (removed when
//! dropped). Either way, a request that goes away loses nothing.

use std::ops::{Deref, DerefMut};
use std::sync::Weak;
use std::time::Instant;

use tokio::sync::oneshot;

use super::Upstream;
use crate::pg::PgConnection;
use crate::pool::PoolError;
use crate::pool::budget::{ConnId, WaiterId};

/// A connection in a request's hands. Dropping it gives it back (recovered first if the
/// request left it mid-statement): whatever happens to the request, the connection is
/// either reused or terminated, never forgotten.
pub(crate) struct PooledConn {
    pub(super) id: ConnId,
    pub(super) pg: Option<Box<PgConnection>>,
    pub(super) upstream: Weak<Upstream>,
}

impl PooledConn {
    /// The parts, without giving the connection back.
    pub(super) fn into_parts(mut self) -> (ConnId, Box<PgConnection>) {
        let pg = self.pg.take().expect("present until given back");
        (self.id, pg)
    }
}

impl Deref for PooledConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.pg.as_ref().expect("present until given back")
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.pg.as_mut().expect("present until given back")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take()
            && let Some(upstream) = self.upstream.upgrade()
        {
            upstream.give_back(self.id, pg, None, false);
        }
    }
}

/// A request's place in its tenant's queue. Dropping it (timeout, or the client vanished)
/// removes the place and returns a connection handed over in that instant.
pub(super) struct Waiting<'u> {
    pub(super) upstream: &'u Upstream,
    pub(super) tenant: usize,
    pub(super) id: WaiterId,
    pub(super) rx: Option<oneshot::Receiver<Result<PooledConn, PoolError>>>,
}

impl Waiting<'_> {
    pub(super) async fn wait(&mut self, deadline: Instant) -> Result<PooledConn, PoolError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(PoolError::ShuttingDown);
        };
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => {
                self.rx = None;
                result
            }
            Ok(Err(_)) => {
                self.rx = None;
                Err(PoolError::ShuttingDown)
            }
            Err(_) => {
                let retry_after = self.upstream.lock().book.estimate_wait(self.tenant);
                Err(PoolError::Timeout { retry_after })
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let sender = {
            let mut state = self.upstream.lock();
            state.book.waiter_gone(self.tenant, self.id);
            state.waiters.remove(&self.id)
        };
        drop(sender);
        rx.close();
        // A connection handed over in that instant goes back (through its `Drop`).
        if let Ok(Ok(conn)) = rx.try_recv() {
            drop(conn);
        }
    }
}
