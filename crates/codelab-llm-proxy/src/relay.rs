//! Timers of a relayed stream that cost nothing per piece: the upstream's idle timeout and the
//! client's keep-alive comments.
//!
//! A `tokio::time::timeout` around every read, or a keep-alive timer reset after every event,
//! registers and cancels a timer per piece. Here each stream keeps one timer that stays armed;
//! only when it fires is the real deadline (counted from when the wait began) checked, and the
//! timer moved to it if it lies later.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

/// A lazily re-armed deadline "`after` past the start of the current wait".
#[derive(Debug)]
pub struct WaitTimer {
    after: Duration,
    sleep: Pin<Box<Sleep>>,
    /// When the current wait began; `None` while not waiting.
    waiting_since: Option<Instant>,
}

impl WaitTimer {
    /// A timer for waits of at most `after`.
    pub fn new(after: Duration) -> Self {
        WaitTimer {
            after,
            sleep: Box::pin(tokio::time::sleep(after)),
            waiting_since: None,
        }
    }

    /// The awaited thing happened: the next wait starts afresh.
    pub fn reset(&mut self) {
        self.waiting_since = None;
    }

    /// Called while waiting: `Ready` once the current wait has lasted `after` (the wait then
    /// starts afresh), else `Pending` with the timer armed to wake `cx`.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // A limit too far away to be an instant never expires (as `tokio::time::timeout`).
            let Some(deadline) = since.checked_add(self.after) else {
                return Poll::Pending;
            };
            let now = Instant::now();
            if deadline > now {
                self.sleep.as_mut().reset(deadline);
                continue;
            }
            self.waiting_since = Some(now);
            if let Some(next) = now.checked_add(self.after) {
                self.sleep.as_mut().reset(next);
            }
            return Poll::Ready(());
        }
    }
}

/// `inner`, ended with `on_timeout()` as its last item when it stays silent longer than the
/// timer's duration.
pub struct IdleTimeout<S, F> {
    inner: Option<S>,
    timer: WaitTimer,
    on_timeout: F,
}

impl<S, F> IdleTimeout<S, F> {
    /// Wraps `inner` with an idle limit of `timeout`.
    pub fn new(inner: S, timeout: Duration, on_timeout: F) -> Self {
        IdleTimeout {
            inner: Some(inner),
            timer: WaitTimer::new(timeout),
            on_timeout,
        }
    }
}

impl<S, F> Stream for IdleTimeout<S, F>
where
    S: Stream + Unpin,
    F: Fn() -> S::Item + Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                this.timer.reset();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.poll_expired(cx) {
                Poll::Ready(()) => {
                    this.inner = None;
                    Poll::Ready(Some((this.on_timeout)()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "the test's upstream sends its pieces from a task of its own"
)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(400);
    const GAP: Duration = Duration::from_millis(150);

    fn stream_of(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
    ) -> Pin<Box<dyn Stream<Item = u32> + Send>> {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test]
    async fn a_silent_stream_times_out_counting_from_the_start_of_the_wait() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut stream = IdleTimeout::new(stream_of(rx), LIMIT, || 0);
        let start = Instant::now();
        // Pieces GAP apart never reach the limit, though together they last longer than it.
        let sender = tx.clone();
        tokio::spawn(async move {
            for n in 1..5 {
                tokio::time::sleep(GAP).await;
                sender.send(n).unwrap();
            }
        });
        for n in 1..5 {
            assert_eq!(stream.next().await, Some(n));
        }
        assert!(start.elapsed() > LIMIT);
        // A consumer that is slow itself does not count against the upstream.
        tokio::time::sleep(LIMIT * 2).await;
        let waited = Instant::now();
        assert_eq!(stream.next().await, Some(0), "the timeout item");
        assert!(waited.elapsed() >= LIMIT, "{:?}", waited.elapsed());
        assert_eq!(stream.next().await, None);
        drop(tx);
    }

    #[tokio::test]
    async fn the_wait_timer_fires_once_per_period_of_waiting() {
        let mut timer = WaitTimer::new(GAP);
        let start = Instant::now();
        std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(start.elapsed() >= GAP);
        std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(start.elapsed() >= GAP * 2);
        tokio::time::sleep(GAP * 2).await;
        // Something happened: a new wait of a full period.
        timer.reset();
        let again = Instant::now();
        std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
        assert!(again.elapsed() >= GAP, "{:?}", again.elapsed());
    }
}
