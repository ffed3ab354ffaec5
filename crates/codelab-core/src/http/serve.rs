//! Serving a router: TCP_NODELAY, listener limits against slow and too many clients, upgrades
//! (WebSockets) and a bounded graceful drain.
//!
//! `axum::serve` exposes neither hyper's header-read timeout nor a connection cap, so the accept
//! loop is written here on hyper's HTTP/1 connection builder (docs/operations.md).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{ErrorEnvelope, ErrorShape, ListenerLimits, ServiceErrorShape};

/// Pause after an accept error that is not about one connection (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Most bytes of an unread request body discarded after its answer (see [`drain_unread_body`]).
const MAX_DRAINED_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Serves `router` on `listener` with the default [`ListenerLimits`] until `shutdown` is
/// cancelled; see [`serve_with_limits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> io::Result<()> {
    serve_with_limits(
        listener,
        router,
        shutdown,
        drain_timeout,
        &ListenerLimits::default(),
    )
    .await
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests and streams finish for up to `drain_timeout` before returning.
///
/// A client must send a request's headers within `limits.header_read_timeout` and its body
/// within `limits.body_read_timeout` (answered 408 past it); responses, streamed ones included,
/// are not time-limited here. At most `limits.max_connections` connections (upgraded
/// WebSockets included) are served at once: beyond that the listener stops accepting, so new
/// connections wait in the kernel's backlog instead of being refused.
///
/// Connections still open after the drain are abandoned (they end with the process).
/// Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    limits: &ListenerLimits,
) -> io::Result<()> {
    let connection_limits = ConnectionLimits {
        header_read_timeout: limits.header_read_timeout(),
        body_read_timeout: limits.body_read_timeout(),
    };
    let slots = Arc::new(Semaphore::new(
        limits.max_connections().min(Semaphore::MAX_PERMITS),
    ));
    let connections = TaskTracker::new();
    let mut at_cap = false;
    loop {
        let Some(slot) = next_slot(&slots, &shutdown, &mut at_cap).await else {
            break;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => {
                tracing::debug!(%err, "a connection failed while being accepted");
                continue;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot accept connections; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        // Streamed tokens must leave at once, not wait for Nagle's algorithm.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let stream = SlottedStream {
            stream,
            _slot: slot,
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            shutdown.clone(),
            connection_limits,
        ));
    }
    // Closing the listener now makes clients still in the backlog fail fast instead of waiting.
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout_secs = drain_timeout.as_secs_f64(),
            "connections still open after the drain timeout; stopping anyway"
        );
    }
    Ok(())
}

/// A connection slot, waiting (without accepting) while every slot is taken; `None` on shutdown.
/// `at_cap` remembers that the cap was reported, so a listener that stays full logs it once.
async fn next_slot(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    at_cap: &mut bool,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
        *at_cap = false;
        return Some(slot);
    }
    if !*at_cap {
        *at_cap = true;
        tracing::warn!("connection limit reached; new connections wait in the backlog");
    }
    tokio::select! {
        () = shutdown.cancelled() => None,
        slot = Arc::clone(slots).acquire_owned() => slot.ok(),
    }
}

/// Errors about one connection (reset before accept): the listener itself is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The per-connection part of [`ListenerLimits`], as durations.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    body_read_timeout: Duration,
}

async fn serve_connection(
    stream: SlottedStream,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        handle_request(router.clone(), peer, limits.body_read_timeout, request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight (or the stream being sent), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Timeouts and clients that vanish are routine; nothing here identifies the request.
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// Runs one request through the router with the peer address and a body-read deadline.
async fn handle_request(
    router: Router,
    peer: SocketAddr,
    body_read_timeout: Duration,
    mut request: Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    let expired = Arc::new(AtomicBool::new(false));
    // Only a body still to come can be left unread: requests without one (most GETs) skip
    // the channel that hands it back.
    let (unread_tx, unread_rx) = if http_body::Body::is_end_stream(request.body()) {
        (None, None)
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    };
    let deadline = Instant::now() + body_read_timeout;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: Some(body),
            deadline,
            sleep: None,
            expired: Arc::clone(&expired),
            unread: unread_tx,
        })
    });
    let response = router.oneshot(request).await?;
    if let Some(Ok(unread)) = unread_rx.map(|mut rx| rx.try_recv()) {
        crate::tasks::spawn("drain-request-body", drain_unread_body(unread, deadline));
    }
    if expired.load(Ordering::Acquire) {
        // Whatever the handler made of the failed read (often a 400), the cause is the client's
        // slowness; the connection is closed since the rest of the body was never read.
        // In the service's own shape, which its standard layers stamped on the response.
        let shape = response
            .extensions()
            .get::<ServiceErrorShape>()
            .map_or_else(ErrorShape::default, |stamp| stamp.0);
        let message = format!(
            "the request body did not arrive within {} seconds",
            body_read_timeout.as_secs_f64()
        );
        let mut response = ErrorEnvelope {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "request_timeout",
            code: None,
            message: &message,
            detail: None,
        }
        .render(shape);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    Ok(response)
}

/// Reads and discards what is left of a request body answered without reading it (a 413 on
/// its declared length, a 401 before the body, a route that ignores bodies), up to
/// [`MAX_DRAINED_BODY_BYTES`] and the body's deadline. Without it the connection would close
/// with the client's bytes unread, and the kernel answers those with a reset that can destroy
/// the answer before the client reads it: the client sees "connection reset" instead of the
/// 413 (what nginx's `lingering_close` prevents). Drained to its end, the connection also stays
/// usable for the next request.
async fn drain_unread_body(mut body: Incoming, deadline: Instant) {
    let mut drained: u64 = 0;
    while drained <= MAX_DRAINED_BODY_BYTES {
        let frame = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Ok(Some(Ok(frame))) => {
                drained += frame.data_ref().map_or(0, |data| data.len() as u64);
            }
            // The end, a broken connection or the deadline: hyper closes what must be closed.
            _ => return,
        }
    }
}

/// The body of a request was not received before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyReadTimeout;

/// A request body that fails once its deadline passes, however slowly bytes keep trickling in.
///
/// The timer is created only when a read has to wait, so bodies already received (and requests
/// without a body) cost no timer.
struct DeadlineBody {
    /// `None` only while being dropped.
    inner: Option<Incoming>,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
    /// Gets the rest of the body when it is dropped unread (see [`drain_unread_body`]).
    unread: Option<tokio::sync::oneshot::Sender<Incoming>>,
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        if let (Some(inner), Some(unread)) = (self.inner.take(), self.unread.take())
            && !http_body::Body::is_end_stream(&inner)
            && !self.expired.load(Ordering::Acquire)
        {
            let _ = unread.send(inner);
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyReadTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// A connection that holds one of the listener's slots until it is dropped, which happens when
/// the connection closes, also after an upgrade (a WebSocket keeps its slot while it is open).
struct SlottedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for SlottedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlottedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A token cancelled on SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    crate::tasks::spawn("shutdown-signals", async move {
        wait_for_signal().await;
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};

    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
    }
}
