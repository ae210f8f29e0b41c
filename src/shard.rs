//! Which per-thread shard this thread writes ([`index`]). A count that every worker thread's
//! requests update (requests in flight, a latency histogram) is kept in shards, each on cache
//! lines of its own, so that a request writes a line its own core already holds instead of one
//! that moves between cores on every request; the rare reader sums the shards.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many shards, however many cores.
const MAX_SHARDS: usize = 16;

/// How many shards a sharded count has: one per core, up to [`MAX_SHARDS`].
pub fn count() -> usize {
    static COUNT: LazyLock<usize> = LazyLock::new(|| {
        std::thread::available_parallelism()
            .map_or(MAX_SHARDS, |n| n.get())
            .clamp(1, MAX_SHARDS)
    });
    *COUNT
}

/// This thread's shard, below [`count`]: handed out in turn as threads first ask (worker
/// threads, started together, get distinct ones).
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % count();
    }
    INDEX.with(|index| *index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_shards_in_turn_within_the_count() {
        let shards: Vec<usize> = (0..2 * count())
            .map(|_| std::thread::spawn(index).join().unwrap())
            .collect();
        assert!(shards.iter().all(|&s| s < count()));
        assert_eq!(index(), index(), "a thread keeps its shard");
    }
}
