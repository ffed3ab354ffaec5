//! What the runtime store does only on PostgreSQL: its migrations, and a session serialised
//! across replicas with a session-level advisory lock. Everything else is
//! [`super::sql_store`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{Notify, mpsc, oneshot};

use super::sql_store::{SessionLocking, StoreBackend};
use super::{SessionLock, StoreError, StoreSettings};

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock key of a session: a 64-bit hash computed by the server
/// (`hashtextextended` is stable across versions, as hash partitioning depends on it), so
/// every replica agrees. The prefix keeps our keys apart from other users of advisory locks
/// in the same database. `false` when another connection holds it.
const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";
const UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";

/// How long `lock` first waits before asking the server again while another replica holds
/// the session, and the most it waits between two asks (doubling in between): short against
/// a turn's length, few round trips for a long one.
const FIRST_RETRY: Duration = Duration::from_millis(5);
const LONGEST_RETRY: Duration = Duration::from_millis(100);
/// After a failed connect, locks fail at once for this long instead of each trying again: the
/// holder runs one statement at a time, so a queue of locks behind a connect that hangs until
/// its timeout (a server cut off by the network) would otherwise wait that timeout each.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Which server session a connection is: its process id and its start in microseconds (a
/// process id alone may be reused by a later session).
const IDENTIFY: &str = "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 \
     FROM pg_stat_activity WHERE pid = pg_backend_pid()";
/// Ends the server sessions of holder connections given up on (see [`Holder::abandoned`]),
/// one row per session still there.
const END_ABANDONED: &str = "SELECT pg_terminate_backend(activity.pid) \
     FROM pg_stat_activity AS activity \
     JOIN unnest($1::int4[], $2::int8[]) AS abandoned(pid, started) \
     ON activity.pid = abandoned.pid \
     AND (extract(epoch FROM activity.backend_start) * 1000000)::int8 = abandoned.started";

impl StoreBackend for Postgres {
    type Locks = AdvisoryLocks;

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn usage_day() -> &'static str {
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    }

    /// One holder connection, opened lazily with the pool's connect options; connecting is
    /// bounded by the pool's acquire timeout, each statement by the settings'
    /// `session_lock_statement_timeout`, and the connection is closed when no lock has
    /// been held for the pool's idle timeout (before, every lock connection a burst of turns
    /// opened stayed open for sqlx's default ten minutes: the soak, docs/reliability.md).
    /// Must be called within a tokio runtime (the store is opened in one): it starts the
    /// holder's task.
    fn session_locks(pool: &PgPool, settings: &StoreSettings) -> AdvisoryLocks {
        AdvisoryLocks::start(Holder::for_pool(
            pool,
            settings.session_lock_statement_timeout,
        ))
    }

    /// The store's own pool: PostgreSQL's row locks serialise concurrent writers.
    fn writer_pool(pool: &PgPool) -> PgPool {
        pool.clone()
    }
}

/// Session locks as advisory locks, all of this store's held by one dedicated connection.
///
/// Session-level advisory locks belong to a connection, and one connection may hold any
/// number of them, so a single holder connection serves every session this store locks: the
/// sessions locked at once are not capped by a pool's size (they were, with one pooled
/// connection per lock, and a burst of turns beyond it failed after the acquire timeout: the
/// soak, docs/reliability.md). The holder is separate from the store's pool because its locks
/// live as long as turns, and its statements never wait on the server (`pg_try_advisory_lock`
/// only), so one connection is not a queue behind a held lock.
///
/// Advisory locks are re-entrant on their connection, so the server cannot tell two tasks of
/// this process apart: a process-local registry of the sessions held excludes them first, and
/// only its winner asks the server, which then excludes the other replicas.
#[derive(Debug)]
pub struct AdvisoryLocks {
    local: Arc<LocalSessions>,
    /// The holder task's queue.
    commands: mpsc::UnboundedSender<Command>,
}

impl AdvisoryLocks {
    fn start(holder: Holder) -> Self {
        let (commands, queue) = mpsc::unbounded_channel();
        // The task ends when the store and all its guards are gone (every sender dropped).
        codelab_core::tasks::spawn("session lock holder", holder.run(queue));
        Self {
            local: Arc::default(),
            commands,
        }
    }

    /// Asks the server for `session_id`'s lock on the holder connection, once.
    async fn try_on_server(&self, session_id: &str) -> Result<Option<ServerLock>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::TryLock {
            session_id: session_id.to_owned(),
            reply,
            commands: self.commands.clone(),
        };
        if self.commands.send(command).is_err() {
            return Err(holder_gone());
        }
        // Cancel-safe: if this future is dropped, a lock granted meanwhile is dropped with the
        // reply (in the channel, or handed back by a failed send), and its drop queues the
        // unlock. No lock request waits on the server (try-lock only), so nothing can be
        // granted later to nobody.
        answer.await.map_err(|_| holder_gone())?
    }
}

/// The holder task stopped: only when the runtime that ran it shut down.
fn holder_gone() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

#[async_trait]
impl SessionLocking for AdvisoryLocks {
    async fn lock(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        let local = LocalClaim::wait(&self.local, session_id).await;
        let mut retry = FIRST_RETRY;
        loop {
            if let Some(server) = self.try_on_server(session_id).await? {
                return Ok(Box::new(PgSessionLock {
                    _server: server,
                    _local: local,
                }));
            }
            // Another replica holds it. Local waiters queue behind our claim meanwhile.
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(LONGEST_RETRY);
        }
    }

    async fn try_lock(&self, session_id: &str) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        let Some(local) = LocalClaim::try_claim(&self.local, session_id) else {
            return Ok(None);
        };
        Ok(self
            .try_on_server(session_id)
            .await?
            .map(|server| -> Box<dyn SessionLock> {
                Box::new(PgSessionLock {
                    _server: server,
                    _local: local,
                })
            }))
    }
}

/// A held session lock: on the server, and in this process.
///
/// Fields drop in order: the server unlock is queued before the local claim is released, so
/// the holder connection sees unlocks and try-locks of one session in the order the claims
/// passed between tasks, and each granted try-lock is matched by exactly one unlock.
struct PgSessionLock {
    _server: ServerLock,
    _local: LocalClaim,
}

impl SessionLock for PgSessionLock {}

// ---------------------------------------------------------------------------------------------
// This process's sessions
// ---------------------------------------------------------------------------------------------

/// The sessions a task of this process holds (or is acquiring on the server), each with what
/// wakes the tasks waiting for it.
#[derive(Debug, Default)]
struct LocalSessions {
    held: Mutex<HashMap<String, Arc<Notify>>>,
}

impl LocalSessions {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // The map is consistent after every statement: a panic elsewhere cannot corrupt it.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One task's hold of a session in this process; dropping it lets the next local waiter in.
struct LocalClaim {
    sessions: Arc<LocalSessions>,
    session_id: String,
}

impl LocalClaim {
    fn try_claim(sessions: &Arc<LocalSessions>, session_id: &str) -> Option<Self> {
        match sessions.held().entry(session_id.to_owned()) {
            Entry::Occupied(_) => None,
            Entry::Vacant(free) => {
                free.insert(Arc::default());
                Some(Self {
                    sessions: sessions.clone(),
                    session_id: session_id.to_owned(),
                })
            }
        }
    }

    /// Waits until no other task of this process holds the session. Cancel-safe: a waiter
    /// holds nothing.
    async fn wait(sessions: &Arc<LocalSessions>, session_id: &str) -> Self {
        loop {
            let released = sessions.held().get(session_id).cloned();
            let Some(released) = released else {
                if let Some(claim) = Self::try_claim(sessions, session_id) {
                    return claim;
                }
                continue;
            };
            let notified = released.notified();
            tokio::pin!(notified);
            // Registered before the check below, so a release after it wakes us; a release
            // before it shows as the entry being gone or another holder's.
            notified.as_mut().enable();
            let still_held = sessions
                .held()
                .get(session_id)
                .is_some_and(|current| Arc::ptr_eq(current, &released));
            if still_held {
                notified.await;
            }
        }
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        let released = self.sessions.held().remove(&self.session_id);
        if let Some(released) = released {
            released.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The holder connection
// ---------------------------------------------------------------------------------------------

enum Command {
    TryLock {
        session_id: String,
        reply: oneshot::Sender<Result<Option<ServerLock>, StoreError>>,
        /// For the granted lock's drop to queue its unlock.
        commands: mpsc::UnboundedSender<Command>,
    },
    Unlock {
        session_id: String,
        /// Of the connection that was granted the lock.
        connection: u64,
    },
}

/// A lock the holder connection was granted; dropping it queues the unlock (no runtime
/// needed: the queue is a channel). If the holder task is gone, so is its connection, and
/// with it the lock.
struct ServerLock {
    session_id: String,
    connection: u64,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for ServerLock {
    fn drop(&mut self) {
        let unlock = Command::Unlock {
            session_id: std::mem::take(&mut self.session_id),
            connection: self.connection,
        };
        // An error means the holder task and its connection are gone: nothing to release.
        let _ = self.commands.send(unlock);
    }
}

/// The task that owns the holder connection and runs its statements one at a time, in the
/// order they were queued.
///
/// Every statement is bounded on the client (a server-side `statement_timeout` cannot fire
/// when the network is gone): without the bound, a statement whose packets are dropped waits
/// for TCP's own timeouts, many minutes, and every lock of the process queues behind it. A
/// statement past the bound loses the connection as a broken one does.
struct Holder {
    options: PgConnectOptions,
    connect_timeout: Duration,
    statement_timeout: Duration,
    idle_timeout: Option<Duration>,
    connection: Option<PgConnection>,
    /// The server session of `connection`.
    backend: Option<Backend>,
    /// Server sessions of connections this holder dropped as lost. When the network, not the
    /// server, failed, the server may not know yet (until its TCP keepalive, two hours by
    /// default) and keeps their locks from every replica, this one's new connection included;
    /// the next connection ends them.
    abandoned: Vec<Backend>,
    /// Numbers the connections opened, so an unlock is sent only to the connection that
    /// holds the lock (after a reconnect, the old locks are gone with the old connection).
    generation: u64,
    /// Locks granted on the current connection and not yet released.
    held: usize,
    /// When connecting last failed (see [`RECONNECT_PAUSE`]).
    connect_failed_at: Option<tokio::time::Instant>,
}

/// A server session: its process id and start (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backend {
    pid: i32,
    started: i64,
}

impl Holder {
    fn for_pool(pool: &PgPool, statement_timeout: Duration) -> Self {
        let options = pool.options();
        Self {
            options: pool.connect_options().as_ref().clone(),
            connect_timeout: options.get_acquire_timeout(),
            statement_timeout,
            idle_timeout: options.get_idle_timeout(),
            connection: None,
            backend: None,
            abandoned: Vec::new(),
            generation: 0,
            held: 0,
            connect_failed_at: None,
        }
    }

    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        loop {
            let idle = match (self.idle_timeout, &self.connection) {
                (Some(idle), Some(_)) if self.held == 0 => Some(idle),
                _ => None,
            };
            let next = match idle {
                Some(idle) => match tokio::time::timeout(idle, queue.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.close().await;
                        continue;
                    }
                },
                None => queue.recv().await,
            };
            let Some(command) = next else { break };
            match command {
                Command::TryLock {
                    session_id,
                    reply,
                    commands,
                } => {
                    let outcome = self.try_lock(&session_id).await.map(|granted| {
                        granted.then(|| ServerLock {
                            session_id,
                            connection: self.generation,
                            commands,
                        })
                    });
                    // A failed send drops the lock, which queues its unlock: the asker gave up.
                    let _ = reply.send(outcome);
                }
                Command::Unlock {
                    session_id,
                    connection,
                } => self.unlock(&session_id, connection).await,
            }
        }
        self.close().await;
    }

    async fn try_lock(&mut self, session_id: &str) -> Result<bool, StoreError> {
        // A connection that broke since its last statement is found out here: one retry on
        // a fresh one.
        let mut retried = false;
        loop {
            let fresh = self.connection.is_none();
            let bound = self.statement_timeout;
            let connection = self.connection().await?;
            let outcome = within(
                bound,
                sqlx::query_scalar::<_, bool>(TRY_LOCK)
                    .bind(session_id)
                    .fetch_one(connection),
            )
            .await;
            match outcome {
                Ok(granted) => {
                    self.held += usize::from(granted);
                    return Ok(granted);
                }
                Err(error) if connection_lost(&error) => {
                    self.lost(&error);
                    // Past the bound, a second try would wait as long again (or a connect
                    // timeout) with every lock queued behind it: the caller decides.
                    if fresh || retried || timed_out(&error) {
                        return Err(error.into());
                    }
                    retried = true;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Failures count as released: a lost connection took its locks with it. Never reconnects.
    async fn unlock(&mut self, session_id: &str, generation: u64) {
        if generation != self.generation {
            return;
        }
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        self.held = self.held.saturating_sub(1);
        let outcome = within(
            self.statement_timeout,
            sqlx::query_scalar::<_, bool>(UNLOCK)
                .bind(session_id)
                .fetch_one(connection),
        )
        .await;
        match outcome {
            Ok(true) => {}
            Err(error) if connection_lost(&error) => self.lost(&error),
            // The server refused the statement on a live connection: the lock stays with this
            // connection (only other replicas are kept out; it is re-entrant here) until it
            // is closed.
            outcome => tracing::warn!(
                session_id,
                ?outcome,
                "could not release a session lock on the holder connection"
            ),
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.connection.is_none() {
            if self
                .connect_failed_at
                .is_some_and(|failed| failed.elapsed() < RECONNECT_PAUSE)
            {
                return Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "connecting the session lock connection failed less than a second ago",
                ))));
            }
            let options = &self.options;
            let connect = async {
                let mut connection = options.connect().await?;
                let (pid, started) = sqlx::query_as::<_, (i32, i64)>(IDENTIFY)
                    .fetch_one(&mut connection)
                    .await?;
                Ok((connection, Backend { pid, started }))
            };
            let connected = tokio::time::timeout(self.connect_timeout, connect)
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut));
            let (connection, backend) = match connected {
                Ok(connected) => connected,
                Err(error) => {
                    self.connect_failed_at = Some(tokio::time::Instant::now());
                    return Err(error.into());
                }
            };
            self.connect_failed_at = None;
            self.generation += 1;
            self.held = 0;
            self.connection = Some(connection);
            self.backend = Some(backend);
            self.end_abandoned().await?;
        }
        self.connection
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }

    /// Ends the server sessions of the connections given up on, so their locks are free
    /// now rather than when the server notices (see [`Holder::abandoned`]). A refusal (a
    /// role that may not end them) is logged and not retried; losing this connection too is
    /// the lock's error, and they are ended by the next one.
    async fn end_abandoned(&mut self) -> Result<(), StoreError> {
        if self.abandoned.is_empty() {
            return Ok(());
        }
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let (pids, starts): (Vec<i32>, Vec<i64>) = self
            .abandoned
            .iter()
            .map(|backend| (backend.pid, backend.started))
            .unzip();
        let outcome = within(
            self.statement_timeout,
            sqlx::query_scalar::<_, bool>(END_ABANDONED)
                .bind(pids)
                .bind(starts)
                .fetch_all(connection),
        )
        .await;
        match outcome {
            Ok(ended) => {
                let ended = ended.into_iter().filter(|ended| *ended).count();
                if ended > 0 {
                    tracing::warn!(
                        ended,
                        "ended the server sessions of lost session lock connections, releasing their locks"
                    );
                }
            }
            Err(error) if connection_lost(&error) => {
                self.lost(&error);
                return Err(error.into());
            }
            Err(error) => tracing::warn!(
                %error,
                "could not end the server sessions of lost session lock connections; their \
                 locks stay until the server notices"
            ),
        }
        self.abandoned.clear();
        Ok(())
    }

    /// Forgets a broken connection; its locks are gone on the server. The same guarantee as
    /// with a connection per lock: a lock's connection breaking released it then too. The
    /// guards still held keep excluding this process's tasks; other replicas may take those
    /// sessions.
    ///
    /// The connection is dropped, not closed: closing talks to the server, which may be
    /// unreachable. Its server session is remembered for the next connection to end.
    fn lost(&mut self, error: &sqlx::Error) {
        if self.connection.take().is_some() {
            tracing::warn!(
                %error,
                locks = self.held,
                "lost the session lock connection; its locks are released, reconnecting on the next lock"
            );
        }
        self.abandoned.extend(self.backend.take());
        self.held = 0;
    }

    async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            // Politely (the server logs no broken connection); dropping would release too,
            // which is what happens past the bound.
            let _ = tokio::time::timeout(self.statement_timeout, connection.close()).await;
        }
        self.backend = None;
        self.held = 0;
    }
}

/// Runs one statement of the holder connection, failing it with a timed-out I/O error (as
/// the OS reports a dead peer, so it counts as unavailable: 503) past `bound`. The statement's
/// future is dropped then, mid-way: its connection must not be used again.
async fn within<T>(
    bound: Duration,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(bound, statement)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the session lock connection did not answer within {bound:?} \
                     (AGENT_RUNTIME__SESSION_LOCK_STATEMENT_TIMEOUT)"
                ),
            )))
        })
}

/// Whether `error` is a statement (or the OS) giving up on an unanswering connection.
fn timed_out(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(error) if error.kind() == std::io::ErrorKind::TimedOut)
}

/// Whether the connection is unusable after `error`: anything but the server refusing one
/// statement, or the server ending the session (SQLSTATE classes 08 connection exception and
/// 57 operator intervention, e.g. an administrator's shutdown).
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    /// Regression (the soak): the lock connection is closed when idle, like the store's, and
    /// connecting is bounded like acquiring from the pool.
    #[tokio::test]
    async fn the_lock_connection_closes_when_idle_like_the_store_pool() {
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .idle_timeout(Duration::from_secs(7))
            .acquire_timeout(Duration::from_secs(4))
            .connect_lazy("postgres://nobody@127.0.0.1:1/never_connected")
            .expect("a valid URL");
        let holder = Holder::for_pool(&pool, Duration::from_secs(3));
        assert_eq!(holder.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(holder.connect_timeout, Duration::from_secs(4));
        assert_eq!(holder.statement_timeout, Duration::from_secs(3));
    }

    /// A server that cannot be reached fails the queued locks at once, not a connect
    /// timeout each (the holder runs one statement at a time).
    #[tokio::test]
    async fn locks_fail_at_once_for_a_moment_after_a_failed_connect() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/never_connected")
            .expect("a valid URL");
        let mut holder = Holder::for_pool(&pool, Duration::from_secs(5));
        let first = holder.try_lock("s1").await;
        assert!(
            matches!(&first, Err(StoreError::Database(sqlx::Error::Io(e))) if e.kind() != std::io::ErrorKind::NotConnected),
            "{first:?}"
        );
        let second = holder.try_lock("s1").await;
        assert!(
            matches!(&second, Err(StoreError::Database(sqlx::Error::Io(e))) if e.kind() == std::io::ErrorKind::NotConnected),
            "{second:?}"
        );
        assert!(second.is_err_and(|error| error.is_unavailable()));
        assert!(holder.connection.is_none());
    }

    #[test]
    fn io_and_pool_failures_count_as_a_lost_connection() {
        assert!(connection_lost(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof
        ))));
        assert!(connection_lost(&sqlx::Error::PoolTimedOut));
    }

    /// A statement past the bound is a lost connection (dropped, not retried), and callers
    /// see an unavailable database (503), not a hang.
    #[tokio::test]
    async fn a_statement_past_the_bound_fails_as_an_unavailable_connection() {
        let outcome = within(
            Duration::from_millis(10),
            std::future::pending::<Result<bool, sqlx::Error>>(),
        )
        .await;
        let error = outcome.expect_err("a statement that never answers fails");
        assert!(timed_out(&error), "{error}");
        assert!(connection_lost(&error));
        assert!(StoreError::Database(error).is_unavailable());
    }
}
