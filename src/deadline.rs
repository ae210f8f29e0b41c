//! A deadline timer that is cheap to wait on again and again: armed once and moved on only
//! when it fires (or when a wait's deadline comes before the one it is armed for). A wait costs
//! a deadline and a check, not a timer registered in tokio's wheel and taken out again, which a
//! `tokio::time::timeout` (or a fresh `Sleep`) per wait does. Used where one owner waits many
//! times: a Postgres connection's reads (`pg::conn`'s read deadline) and an HTTP/1 connection
//! between requests (`server::connection`: the head deadline and parking).
//!
//! [`within`] is `tokio::time::timeout` for a future that is usually ready at once (a request
//! body that came with its headers): the clock is read and the timer made only if it waits.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep, sleep_until};

/// Armed lazily, on the first wait that needs it; a connection that never waits holds none.
#[derive(Debug, Default)]
pub struct DeadlineTimer(Option<Pin<Box<Sleep>>>);

impl DeadlineTimer {
    /// Ready once `deadline` has passed; otherwise pending, with `cx`'s task woken no later
    /// than `deadline` (possibly earlier, spuriously, when armed for an earlier wait: the
    /// caller simply polls again).
    pub fn poll_expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(()),
                // Armed for an earlier wait, whose deadline came first: moved on to this one.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

/// `future` took longer than [`within`] allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` for at most `limit`, counted from its first wait: one that is ready when first
/// polled costs no clock read and no timer (`tokio::time::timeout` makes its timer, and takes
/// the runtime's handle, up front).
pub async fn within<F: Future>(
    limit: std::time::Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut deadline: Option<Instant> = None;
    let mut timer = DeadlineTimer::default();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limit);
        timer.poll_expired(deadline, cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_wait_expires_at_its_deadline_not_before() {
        let mut timer = DeadlineTimer::default();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        poll_fn(|cx| timer.poll_expired(deadline, cx)).await;
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_for_an_earlier_wait_moves_on_to_the_later_deadline() {
        let mut timer = DeadlineTimer::default();
        let start = Instant::now();
        // The first wait ends (its read completed) long before its deadline...
        let first = start + Duration::from_secs(2);
        let pending = poll_fn(|cx| Poll::Ready(timer.poll_expired(first, cx))).await;
        assert!(pending.is_pending());
        // ...and a later wait with a later deadline is not cut short by the armed timer.
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = Instant::now() + Duration::from_secs(2);
        poll_fn(|cx| timer.poll_expired(second, cx)).await;
        assert_eq!(Instant::now(), second);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_armed_one_is_kept() {
        let mut timer = DeadlineTimer::default();
        let start = Instant::now();
        let long = start + Duration::from_secs(60);
        let pending = poll_fn(|cx| Poll::Ready(timer.poll_expired(long, cx))).await;
        assert!(pending.is_pending());
        let short = start + Duration::from_secs(3);
        poll_fn(|cx| timer.poll_expired(short, cx)).await;
        assert_eq!(Instant::now(), short);
    }

    #[tokio::test(start_paused = true)]
    async fn within_returns_what_is_ready_and_cuts_off_what_waits_too_long() {
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(within(Duration::from_secs(3), never).await, Err(Elapsed));
        assert_eq!(Instant::now(), start + Duration::from_secs(3));
        // A future that waits, but less than the limit, finishes.
        let slow = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            8
        };
        assert_eq!(within(Duration::from_secs(3), slow).await, Ok(8));
    }
}
