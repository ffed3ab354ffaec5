//! Background tasks. Shipped code starts them here and nowhere else (`tokio::spawn` is a
//! disallowed method in `clippy.toml`), so every task has a name and a panic in one is logged
//! with it instead of vanishing with its `JoinHandle`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

/// Logs when the task it lives in unwinds: dropped while the thread panics.
struct PanicReporter {
    name: &'static str,
}

impl Drop for PanicReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(task = self.name, "a background task panicked");
        }
    }
}

pin_project_lite::pin_project! {
    /// `future` with the name its panics are logged with. A struct rather than an `async`
    /// block around `future.await`: such a block keeps the moved-in future and the awaited
    /// one in separate slots, so every task took twice its future's size (docs/gateway.md,
    /// memory per idle socket).
    struct Named<F> {
        #[pin]
        future: F,
        name: &'static str,
    }
}

impl<F: Future> Future for Named<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _reporter = PanicReporter { name: this.name };
        this.future.poll(cx)
    }
}

/// Starts `future` as a tokio task named `name` (for the log line if it panics). The task
/// behaves as with `tokio::spawn`: the handle reports its output, a panic, or its abort.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place shipped code starts a task"
)]
pub fn spawn<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Named { future, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_task_is_barely_larger_than_its_future() {
        let future = async {
            let buffer = [7u8; 1024];
            std::future::ready(()).await;
            buffer.iter().map(|b| usize::from(*b)).sum::<usize>()
        };
        let alone = std::mem::size_of_val(&future);
        let named = Named {
            future,
            name: "sized",
        };
        assert!(
            // The name (a &str) and alignment; the async-block wrapper took twice `alone`.
            std::mem::size_of_val(&named) <= alone + 32,
            "{} bytes for a {alone}-byte future",
            std::mem::size_of_val(&named)
        );
    }

    #[tokio::test]
    async fn a_task_returns_its_output_and_a_panic_reaches_the_handle() {
        assert_eq!(spawn("answer", async { 42 }).await.ok(), Some(42));
        let panicked = spawn("boom", async { panic!("boom") }).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
    }
}
