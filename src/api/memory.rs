//! The gateway-wide bound on memory held for requests (`max_buffered_bytes`): request bodies
//! while they are read and handled, and complete responses until hyper has sent them.
//!
//! Per-request limits (`max_body_bytes`, `max_response_bytes`) bound one request; without a
//! bound on their sum, 2,000 clients each sending a 1 MiB body made the process hold 2 GB.
//! Here a request reserves its body's bytes before reading it, waiting while others hold the
//! budget (up to [`MEMORY_WAIT`], then `overloaded`); its lease then follows it: resized to
//! the response once the handler is done and released when the response body is dropped.
//!
//! A response already encoded is charged even past the bound (it exists; refusing to count it
//! would only hide it): the next bodies wait until it is sent. Rows being encoded are bounded
//! separately — by the connections that produce them, each result by `max_response_bytes`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a request waits for memory before it is answered `overloaded`.
pub const MEMORY_WAIT: Duration = Duration::from_secs(5);

/// The bound, and what is held against it.
pub struct MemoryBudget {
    limit: usize,
    held: AtomicUsize,
    /// The most held since [`MemoryBudget::take_peak`] last asked.
    peak: AtomicUsize,
    /// Woken when bytes are released, if anyone waits: `waiting` counts the leases about to
    /// wait or waiting, so a release with nobody waiting (nearly every release) touches no
    /// lock — `Notify::notify_waiters` takes one, shared by every worker thread.
    released: Notify,
    waiting: AtomicUsize,
}

/// No memory within [`MEMORY_WAIT`].
#[derive(Debug)]
pub struct Overloaded;

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            released: Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most bytes held since the last call, and whether they are all released now.
    pub fn take_peak(&self) -> (usize, bool) {
        let peak = self.peak.swap(self.held(), Ordering::Relaxed);
        (peak, self.held() == 0)
    }

    fn note_peak(&self, held: usize) {
        self.peak.fetch_max(held, Ordering::Relaxed);
    }

    /// A lease of nothing yet.
    pub fn lease(self: &Arc<Self>) -> MemoryLease {
        MemoryLease {
            budget: self.clone(),
            bytes: 0,
        }
    }

    // `held` and `waiting` are both SeqCst: a lease announces that it waits and then checks
    // `held`; a release lowers `held` and then checks `waiting`. With one total order, at
    // least one of the two sees the other's write, so a waiter is never missed.
    fn try_charge(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + bytes <= self.limit).then_some(held + bytes)
            })
            .map(|held| self.note_peak(held + bytes))
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.released.notify_waiters();
            }
        }
    }
}

/// Bytes one request holds against the budget; given back when dropped.
pub struct MemoryLease {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryLease {
    /// Grows the lease by `more` bytes, waiting up to `patience` for others to release. The
    /// deadline is taken only when the budget is short: a lease that fits reads no clock and
    /// registers no waiter.
    pub async fn grow(&mut self, more: usize, patience: Duration) -> Result<(), Overloaded> {
        if self.try_grow(more) {
            return Ok(());
        }
        let budget = self.budget.clone();
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&budget);
        let deadline = Instant::now() + patience;
        loop {
            // Registered before the check, so a release between the check and the wait is
            // not missed.
            let released = budget.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if budget.try_charge(more) {
                self.bytes += more;
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(Overloaded);
            }
        }
    }

    /// Grows the lease by `more` bytes if the budget has them now; `false` (and no change)
    /// if it is short.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let charged = self.budget.try_charge(more);
        if charged {
            self.bytes += more;
        }
        charged
    }

    /// Makes the lease exactly `bytes`: what is already allocated is charged even past the
    /// bound (see the module docs); anything beyond is given back.
    pub fn charge_exactly(&mut self, bytes: usize) {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            let held = self.budget.held.fetch_add(more, Ordering::AcqRel);
            self.budget.note_peak(held + more);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

/// A lease counted in [`MemoryBudget::waiting`] until it stops waiting, however it stops.
struct Waiting<'b>(&'b MemoryBudget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_wait_for_released_bytes_and_give_up_at_the_deadline() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.lease();
        first.grow(80, Duration::ZERO).await.unwrap();
        let mut second = budget.lease();
        assert!(second.grow(30, Duration::from_millis(20)).await.is_err());
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(budget.held(), 80);
        let waiting = tokio::spawn(async move {
            second
                .grow(30, Duration::from_secs(5))
                .await
                .map(|()| second)
        });
        // Released only once the second lease waits: the release must wake it.
        while budget.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(budget.held(), 30);
        drop(second);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_built_response_is_charged_past_the_bound_and_blocks_new_bodies() {
        let budget = MemoryBudget::new(100);
        let mut lease = budget.lease();
        lease.grow(10, Duration::ZERO).await.unwrap();
        lease.charge_exactly(150);
        assert_eq!(budget.held(), 150);
        assert!(budget.lease().grow(1, Duration::ZERO).await.is_err());
        lease.charge_exactly(5);
        assert_eq!(budget.held(), 5);
        drop(lease);
        assert_eq!(budget.held(), 0);
    }
}
