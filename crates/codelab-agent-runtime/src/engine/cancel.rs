//! Stopping a running turn from outside it. A `cancel_turn` must not wait behind the session
//! lock the running turn holds, so it asks in two ways at once: the process-local registry of
//! running turns fires the turn's [`CancellationToken`] (immediate when the turn runs here),
//! and the turn's durable `cancel_requested_at` is set, which a watcher beside every running
//! turn polls (so a cancel that lands on another replica stops it within [`CANCEL_POLL`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::RuntimeStore;

/// How often a running turn checks whether a cancel was requested in the database.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);
/// How long a `cancel_turn` waits for the running turn to stop before it answers anyway.
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// The turns this process is running: session id → (turn id, token).
#[derive(Debug, Default)]
pub(crate) struct RunningTurns {
    turns: Mutex<HashMap<String, (String, CancellationToken)>>,
}

impl RunningTurns {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, CancellationToken)>> {
        // Nothing panics while the map is held; if something did, the map is still valid.
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a turn this process starts running and starts polling its durable cancel
    /// request; the guard unregisters it and stops the polling.
    pub(crate) fn start(
        self: &Arc<Self>,
        store: Arc<dyn RuntimeStore>,
        session_id: &str,
        turn_id: &str,
    ) -> RunningGuard {
        let token = CancellationToken::new();
        self.map()
            .insert(session_id.to_owned(), (turn_id.to_owned(), token.clone()));
        let watcher = codelab_core::tasks::spawn(
            "turn-cancel-watcher",
            watch(store, turn_id.to_owned(), token.clone()),
        );
        RunningGuard {
            turns: Arc::clone(self),
            session_id: session_id.to_owned(),
            turn_id: turn_id.to_owned(),
            token,
            watcher,
        }
    }

    /// Fires the token of `turn_id` if this process runs it; whether it did.
    pub(crate) fn cancel(&self, session_id: &str, turn_id: &str) -> bool {
        match self.map().get(session_id) {
            Some((running, token)) if running == turn_id => {
                token.cancel();
                true
            }
            _ => false,
        }
    }
}

/// A turn registered as running here; dropping it unregisters the turn.
#[derive(Debug)]
pub(crate) struct RunningGuard {
    turns: Arc<RunningTurns>,
    session_id: String,
    turn_id: String,
    token: CancellationToken,
    watcher: JoinHandle<()>,
}

impl RunningGuard {
    /// Cancelled when someone asked the turn to stop.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.watcher.abort();
        let mut map = self.turns.map();
        if map
            .get(&self.session_id)
            .is_some_and(|(turn, _)| *turn == self.turn_id)
        {
            map.remove(&self.session_id);
        }
    }
}

/// Polls the turn's `cancel_requested_at` until it is set (then fires `token`) or the turn
/// stops running (the guard aborts this task).
async fn watch(store: Arc<dyn RuntimeStore>, turn_id: String, token: CancellationToken) {
    let mut interval = tokio::time::interval(CANCEL_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the turn's state was just read by its runner.
    interval.tick().await;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store.get_turn(&turn_id).await {
            Ok(Some(turn)) if turn.cancel_requested_at.is_some() => {
                tracing::debug!(turn_id, "cancel requested in the database");
                token.cancel();
                return;
            }
            Ok(_) => {}
            // A failed poll is retried at the next tick; the local token still works.
            Err(error) => tracing::debug!(turn_id, %error, "cannot poll the cancel request"),
        }
    }
}
