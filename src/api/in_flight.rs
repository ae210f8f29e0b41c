//! The count of requests being handled ([`InFlight`]), which a drain waits on. Every request
//! adds itself at its start and removes itself at its end, from whichever worker thread runs
//! it; one shared counter would be a cache line that every worker writes twice per request,
//! moved between cores each time. So each thread counts in a shard of its own (a line of its
//! own, `crate::shard`), and the rare reader (the drain) sums the shards.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Shards: the most `crate::shard` hands out.
const SHARDS: usize = 16;

/// One cache line (two on CPUs that fetch lines in pairs) per shard.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicUsize);

#[derive(Default)]
pub struct InFlight {
    shards: [Shard; SHARDS],
}

impl InFlight {
    /// Counts a request until the guard is dropped. The guard takes itself off the shard it
    /// was added to, wherever it is dropped: so no shard ever counts below zero, and a sum
    /// of the shards misses only requests that start while it is taken (as a read of one
    /// counter would).
    pub fn enter(&self) -> InFlightGuard<'_> {
        let shard = &self.shards[crate::shard::index() % SHARDS].0;
        shard.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(shard)
    }

    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }
}

pub struct InFlightGuard<'a>(&'a AtomicUsize);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_many_threads_are_counted_until_they_end() {
        let in_flight = InFlight::default();
        let outer = in_flight.enter();
        let barrier = std::sync::Barrier::new(SHARDS + 5);
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 4 {
                scope.spawn(|| {
                    let _guard = in_flight.enter();
                    barrier.wait(); // every thread's request is in flight
                    barrier.wait(); // counted
                });
            }
            barrier.wait();
            assert_eq!(in_flight.count(), SHARDS + 5);
            barrier.wait();
        });
        assert_eq!(in_flight.count(), 1);
        // A guard dropped on another thread takes itself off its own shard.
        std::thread::scope(|scope| {
            scope.spawn(move || drop(outer));
        });
        assert_eq!(in_flight.count(), 0);
    }
}
