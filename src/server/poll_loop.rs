//! Wake-ups a connection gives itself while it is being polled, absorbed instead of sent
//! through the scheduler.
//!
//! hyper's HTTP/1 connection wakes its own task in the middle of a poll: the request body's
//! channel signals "want" to the dispatcher and "data" to the handler, and both are the same
//! task. tokio treats such a wake-up as a yield: the task goes to the back of the run queue and
//! an idle worker thread is woken (futex) to steal it. Under light load that was two futex
//! calls and a thread migration per request (`strace -c -f`, one client); under heavy load a
//! reschedule and a second poll of the whole connection.
//!
//! [`PollLoop`] polls the connection with a waker of its own: a wake-up that arrives while the
//! connection is being polled only marks it for another round, run at once (up to
//! [`MAX_ROUNDS`]); one that arrives between polls (the socket became readable, a pool
//! connection was handed over) wakes the task as before.

use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

/// Rounds of polling in one go before the task yields to others (tokio's cooperative budget
/// also makes resources wake the task to yield; those wake-ups end up here too).
const MAX_ROUNDS: usize = 8;

/// [`Shared::state`]: the connection is being polled.
const POLLING: u8 = 1;
/// [`Shared::state`]: a wake-up arrived during the current round.
const WOKEN: u8 = 2;

/// One per served hyper connection.
pub(super) struct PollLoop {
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    /// The task's own waker, for wake-ups between polls. A connection is polled by its own
    /// task only, so it is set once (a different waker is polled around, see `poll`).
    task: OnceLock<Waker>,
    /// [`POLLING`] and [`WOKEN`]: one word, so that a wake-up and the end of a round cannot
    /// miss each other (each sees the other's change, all SeqCst read-modify-writes).
    state: AtomicU8,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.fetch_or(WOKEN, SeqCst) & POLLING == 0
            && let Some(task) = self.task.get()
        {
            task.wake_by_ref();
        }
    }
}

impl PollLoop {
    pub(super) fn new() -> PollLoop {
        let shared = Arc::new(Shared {
            task: OnceLock::new(),
            state: AtomicU8::new(0),
        });
        let waker = Waker::from(shared.clone());
        PollLoop { shared, waker }
    }

    /// Polls `poll` with this loop's waker, again at once for as long as it woke itself
    /// during the round (at most [`MAX_ROUNDS`] rounds, then the task is woken to come back).
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let task = self.shared.task.get_or_init(|| cx.waker().clone());
        if !task.will_wake(cx.waker()) {
            // Polled from elsewhere than the task it started in: no loop, plain polling.
            return poll(cx);
        }
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_ROUNDS {
            self.shared.state.store(POLLING, SeqCst);
            let polled = poll(&mut inner);
            let state = self.shared.state.swap(0, SeqCst);
            if polled.is_ready() || state & WOKEN == 0 {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wake-ups the task itself receives.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn task() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_wake_up_during_the_poll_runs_another_round_without_waking_the_task() {
        let (woken, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let polling = PollLoop::new();
        let mut rounds = 0;
        let polled = polling.poll(&mut cx, |cx| {
            rounds += 1;
            if rounds < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(rounds)
            }
        });
        assert_eq!(polled, Poll::Ready(3));
        assert_eq!(woken.0.load(SeqCst), 0, "the task was not rescheduled");
    }

    #[test]
    fn a_wake_up_between_polls_wakes_the_task() {
        let (woken, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let polling = PollLoop::new();
        let mut kept = None;
        let polled = polling.poll(&mut cx, |cx| {
            kept = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(woken.0.load(SeqCst), 0);
        // Later, from the reactor or another task:
        kept.unwrap().wake();
        assert_eq!(woken.0.load(SeqCst), 1);
    }

    #[test]
    fn polled_from_another_task_the_loop_steps_aside() {
        let (first, waker) = task();
        let polling = PollLoop::new();
        let _ = polling.poll(&mut Context::from_waker(&waker), |_| Poll::<()>::Pending);
        let (second, other) = task();
        let polled = polling.poll(&mut Context::from_waker(&other), |cx| {
            // The future sees the task's own waker, so its wake-ups reach that task.
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(second.0.load(SeqCst), 1);
        assert_eq!(first.0.load(SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_after_a_bounded_number_of_rounds() {
        let (woken, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let polling = PollLoop::new();
        let mut rounds = 0;
        let polled = polling.poll(&mut cx, |cx| {
            rounds += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(woken.0.load(SeqCst), 1, "the task comes back for more");
    }
}
