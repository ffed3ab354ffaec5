//! Where a frame's events go: stored with the session's next `seq`, then sent to the client
//! while it listens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use codelab_protocol::runtime::{RuntimeEvent, SequencedEvent};
use tokio::sync::mpsc;

use crate::store::{RuntimeStore, StoreError};

/// Stores events and sends them to the client, in that order.
pub(crate) struct Emitter {
    store: Arc<dyn RuntimeStore>,
    session_id: String,
    tx: mpsc::Sender<SequencedEvent>,
    /// The client went away: stop trying to send (storing goes on).
    gone: AtomicBool,
    /// The frame asked for or settled an approval: the pending-approvals gauge is recounted
    /// when it ends (and only then: the count is a query of every session).
    approvals_changed: AtomicBool,
}

impl Emitter {
    pub(super) fn new(
        store: Arc<dyn RuntimeStore>,
        session_id: String,
        tx: mpsc::Sender<SequencedEvent>,
    ) -> Emitter {
        Emitter {
            store,
            session_id,
            tx,
            gone: AtomicBool::new(false),
            approvals_changed: AtomicBool::new(false),
        }
    }

    /// Notes that the number of calls waiting for approval may have changed.
    pub(crate) fn note_approvals_changed(&self) {
        self.approvals_changed.store(true, Ordering::Relaxed);
    }

    /// Whether [`Emitter::note_approvals_changed`] was called.
    pub(super) fn approvals_changed(&self) -> bool {
        self.approvals_changed.load(Ordering::Relaxed)
    }

    /// Stores `event` with the session's next `seq`, then sends it.
    pub(crate) async fn emit(&self, event: RuntimeEvent) -> Result<(), StoreError> {
        let stored = self.store.append_event(&self.session_id, &event).await?;
        self.send(stored).await;
        Ok(())
    }

    /// Sends events a commit already stored.
    pub(crate) async fn send_all(&self, events: Vec<SequencedEvent>) {
        for event in events {
            self.send(event).await;
        }
    }

    /// Sends without storing (`seq` 0): streamed text deltas, whose whole is stored as the
    /// `assistant_message` that follows them.
    pub(crate) async fn send_unstored(&self, event: RuntimeEvent) {
        self.send(SequencedEvent { seq: 0, event }).await;
    }

    /// Stores and sends; when storing fails, still tells the client (unstored).
    pub(super) async fn emit_best_effort(&self, event: RuntimeEvent) {
        if let Err(error) = self.emit(event.clone()).await {
            tracing::warn!(session = %codelab_core::ids::log_reference(&self.session_id), %error, "cannot store an event");
            self.send_unstored(event).await;
        }
    }

    async fn send(&self, event: SequencedEvent) {
        if self.gone.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.send(event).await.is_err() {
            // The client disconnected; processing continues to a consistent point.
            tracing::debug!(session = %codelab_core::ids::log_reference(&self.session_id), "client left; continuing without it");
            self.gone.store(true, Ordering::Relaxed);
        }
    }
}

/// Everything one frame's processing needs besides the engine: the session and where its
/// events go.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) out: &'a Emitter,
}
