//! Serving an [`axum::Router`] on an ephemeral `127.0.0.1` port for tests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Binds `127.0.0.1:0` and serves `router` (HTTP/1.1) in a background tokio task.
///
/// Returns the bound address and the task handle. Aborting the handle stops accepting
/// new connections; prefer wrapping the pair in a [`ServerGuard`], which does that on drop.
///
/// # Errors
///
/// Fails when the listener cannot be bound.
pub async fn try_spawn_router(router: Router) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    // Streaming tests send many tiny frames: disable Nagle so chunk timing is real.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::trace!("testkit: failed to set TCP_NODELAY: {err}");
        }
    });
    let handle = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::warn!("testkit: server on {addr} stopped with error: {err}");
        }
    });
    Ok((addr, handle))
}

/// Like [`try_spawn_router`], panicking if `127.0.0.1:0` cannot be bound (test support only).
pub async fn spawn_router(router: Router) -> (SocketAddr, JoinHandle<()>) {
    try_spawn_router(router)
        .await
        .expect("testkit: binding 127.0.0.1:0 for a test server must succeed")
}

/// A test server running in a background task; the task is aborted when the guard drops.
#[derive(Debug)]
pub struct ServerGuard {
    addr: SocketAddr,
    handle: JoinHandle<()>,
}

impl ServerGuard {
    /// Serves `router` on `127.0.0.1:0` (see [`spawn_router`]) and guards the task.
    pub async fn start(router: Router) -> Self {
        let (addr, handle) = spawn_router(router).await;
        Self { addr, handle }
    }

    /// Wraps an already spawned server task.
    #[must_use]
    pub fn from_parts(addr: SocketAddr, handle: JoinHandle<()>) -> Self {
        Self { addr, handle }
    }

    /// The bound socket address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections now (also happens on drop).
    pub fn abort(&self) {
        self.handle.abort();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
