//! Background tasks. Shipped code starts them here and nowhere else (`tokio::spawn` is a
//! disallowed method in `clippy.toml`), so every task has a name and a panic in one is logged
//! with it instead of vanishing with its `JoinHandle`.

use std::future::Future;

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
    tokio::spawn(async move {
        let _reporter = PanicReporter { name };
        future.await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_returns_its_output_and_a_panic_reaches_the_handle() {
        assert_eq!(spawn("answer", async { 42 }).await.ok(), Some(42));
        let panicked = spawn("boom", async { panic!("boom") }).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
    }
}
