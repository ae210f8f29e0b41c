//! Synchronising tests on what can be observed — a metric, an admin view count, a
//! `pg_stat_activity` row — instead of sleeping for a guessed time. The deadline is generous
//! (the machine may be loaded by other builds); a condition that holds returns at once.

use std::time::{Duration, Instant};

/// How long a condition may take to hold before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Checks `check` until it holds; panics naming `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_for(what, async || check().await.then_some(())).await
}

/// Checks `check` until it gives a value, and returns it; panics naming `what` after
/// [`PATIENCE`].
pub async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}
