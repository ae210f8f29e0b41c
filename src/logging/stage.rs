//! A worker thread's staging area for its log lines. A line appended straight to the shared
//! buffer costs its thread the buffer's lock and cache lines that the other workers and the
//! writer thread keep taking away (measured: the unlock, which waits for those lines, was the
//! costliest instruction of the append). A worker's lines are therefore staged in memory only
//! that worker writes, and moved to the shared buffer in one piece when the worker goes idle,
//! when [`STAGE_BYTES`] are staged, or by the writer thread when they have waited a flush
//! interval (a worker that never idles). The stage's lock is taken by the writer only then, so
//! the worker's own locking stays on a cache line of its own.
//!
//! This file is the data structure; `buffer.rs` decides when a stage is moved, and where to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A stage this full is moved to the shared buffer by the line that filled it.
pub const STAGE_BYTES: usize = 16 * 1024;

/// Where stage ages are counted from (an `Instant` cannot live in an atomic).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One worker thread's staged lines.
pub struct Stage {
    /// The buffer this stage drains into (its address: a thread's stage belongs to one).
    owner: usize,
    lines: Mutex<Vec<u8>>,
    /// When the oldest staged line was staged (nanoseconds since [`EPOCH`], at least 1), or 0
    /// while the stage is empty. Read without the lock by the writer thread looking for
    /// stages left waiting; written once per batch, not per line.
    since: AtomicU64,
}

/// What an append left behind.
pub struct Staged {
    /// The stage was empty before: the writer may have to be told that lines are waiting.
    pub first: bool,
    /// [`STAGE_BYTES`] or more are staged: time to move them.
    pub full: bool,
}

impl Stage {
    pub fn new(owner: usize) -> Stage {
        Stage {
            owner,
            lines: Mutex::new(Vec::with_capacity(STAGE_BYTES + 1024)),
            since: AtomicU64::new(0),
        }
    }

    pub fn owner(&self) -> usize {
        self.owner
    }

    /// Appends what `write` writes (one or more whole lines) to the stage.
    pub fn append(&self, write: impl FnOnce(&mut Vec<u8>)) -> Staged {
        let mut lines = self.lock();
        let first = lines.is_empty();
        write(&mut lines);
        let first = first && !lines.is_empty();
        let full = lines.len() >= STAGE_BYTES;
        if first {
            // Under the lock, so that it cannot land after a `take` that emptied the stage.
            // SeqCst: paired with the writer's announcement that it goes idle (buffer.rs),
            // so that either the writer sees this stage waiting or this thread sees the writer
            // idle and wakes it.
            let age = EPOCH.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64;
            self.since.store(age, Ordering::SeqCst);
        }
        Staged { first, full }
    }

    /// The staged lines, to be moved out (and cleared) by the caller while it holds them.
    pub fn take(&self) -> MutexGuard<'_, Vec<u8>> {
        let lines = self.lock();
        self.since.store(0, Ordering::Relaxed);
        lines
    }

    /// Whether any line is staged (without taking the lock).
    pub fn is_waiting(&self) -> bool {
        self.since.load(Ordering::SeqCst) != 0
    }

    /// Whether the oldest staged line has waited at least `limit`.
    pub fn waited(&self, limit: Duration) -> bool {
        let since = self.since.load(Ordering::Relaxed);
        since != 0 && EPOCH.elapsed().as_nanos() >= u128::from(since) + limit.as_nanos()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while formatting into the stage leaves whole lines before it; keep them.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_reports_its_first_line_its_fill_and_its_age() {
        let stage = Stage::new(7);
        assert_eq!(stage.owner(), 7);
        assert!(!stage.is_waiting());
        assert!(!stage.waited(Duration::ZERO));
        let staged = stage.append(|out| out.extend_from_slice(b"one\n"));
        assert!(staged.first && !staged.full);
        assert!(stage.is_waiting());
        assert!(stage.waited(Duration::ZERO));
        assert!(!stage.waited(Duration::from_secs(3600)));
        let staged = stage.append(|out| out.resize(STAGE_BYTES, b'x'));
        assert!(!staged.first && staged.full);
        let mut lines = stage.take();
        assert_eq!(lines.len(), STAGE_BYTES);
        lines.clear();
        drop(lines);
        assert!(!stage.is_waiting());
        assert!(stage.append(|out| out.push(b'\n')).first);
    }
}
