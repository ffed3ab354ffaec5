//! What the runtime store does only on PostgreSQL: its migrations, and a session serialised
//! across replicas with a session-level advisory lock. Everything else is
//! [`super::sql_store`].

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use super::sql_store::{SessionLocking, StoreBackend};
use super::{SessionLock, StoreError};

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock key of a session: a 64-bit hash computed by the server
/// (`hashtextextended` is stable across versions, as hash partitioning depends on it), so
/// every replica agrees. The prefix keeps our keys apart from other users of advisory locks
/// in the same database.
const LOCK: &str =
    "SELECT pg_advisory_lock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";
const UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";
/// [`LOCK`] without waiting: `false` when another connection holds it.
const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('codelab-agent-runtime/session/' || $1, 0))";

impl StoreBackend for Postgres {
    type Locks = AdvisoryLocks;

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    /// Lock connections are opened lazily, with the pool's connect options, size and idle
    /// timeout (without it, every lock connection a burst of turns opened stayed open for
    /// sqlx's default ten minutes: the soak, docs/reliability.md).
    fn session_locks(pool: &PgPool) -> AdvisoryLocks {
        let options = pool.options();
        let connections = PgPoolOptions::new()
            .max_connections(options.get_max_connections())
            .acquire_timeout(options.get_acquire_timeout())
            .idle_timeout(options.get_idle_timeout())
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        AdvisoryLocks { connections }
    }

    /// The store's own pool: PostgreSQL's row locks serialise concurrent writers.
    fn writer_pool(pool: &PgPool) -> PgPool {
        pool.clone()
    }
}

/// Session locks as advisory locks, each held by a connection of its own.
#[derive(Debug)]
pub struct AdvisoryLocks {
    /// Connections that hold session locks. Separate from the store's pool because a lock is
    /// held for a whole turn: were locks taken from that pool, as many concurrent turns as it
    /// has connections would leave none for the turns' own queries, and they would all stall.
    /// Its size (the main pool's) caps the sessions one replica holds locked at once; further
    /// `lock_session` calls wait for a connection up to the pool's acquire timeout.
    connections: PgPool,
}

impl AdvisoryLocks {
    /// A lock connection, owned by a not-yet-locked guard before any lock request is sent on
    /// it, so a cancelled or failed request closes the connection instead of returning it to
    /// the pool.
    async fn guard(&self, session_id: &str) -> Result<PgSessionLock, StoreError> {
        Ok(PgSessionLock {
            conn: Some(self.connections.acquire().await?),
            session_id: session_id.to_owned(),
            locked: false,
        })
    }
}

#[async_trait]
impl SessionLocking for AdvisoryLocks {
    async fn lock(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        let mut guard = self.guard(session_id).await?;
        if let Some(conn) = guard.conn.as_mut() {
            sqlx::query(LOCK)
                .bind(&guard.session_id)
                .execute(&mut **conn)
                .await?;
            guard.locked = true;
        }
        Ok(Box::new(guard))
    }

    async fn try_lock(&self, session_id: &str) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        let mut guard = self.guard(session_id).await?;
        let Some(conn) = guard.conn.as_mut() else {
            return Ok(None);
        };
        let granted: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(&guard.session_id)
            .fetch_one(&mut **conn)
            .await?;
        if !granted {
            // Not granted, nothing queued: the connection may go back to the pool as is.
            guard.conn = None;
            return Ok(None);
        }
        guard.locked = true;
        Ok(Some(Box::new(guard)))
    }
}

/// A held advisory lock and the connection that holds it.
///
/// Session-level advisory locks belong to a connection, so the connection must never go back
/// to the pool while it holds (or may still be granted) the lock: dropping the guard unlocks
/// on a spawned task before the connection is returned, and every path that cannot unlock
/// cleanly closes the connection instead, which makes the server release the lock.
struct PgSessionLock {
    conn: Option<PoolConnection<Postgres>>,
    session_id: String,
    /// Whether `pg_advisory_lock` returned. Until then the request may still be queued on the
    /// server (the acquiring future was cancelled mid-wait), and would be granted later to
    /// whoever reused the connection.
    locked: bool,
}

impl SessionLock for PgSessionLock {}

impl Drop for PgSessionLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            // Not tracked for shutdown on purpose: if the runtime drops the task, the
            // connection is closed with it, which releases the lock just the same.
            Ok(runtime) if self.locked => {
                let session_id = std::mem::take(&mut self.session_id);
                runtime.spawn(unlock(conn, session_id));
            }
            // Detaching drops the socket without a task: the server ends the backend and
            // with it the lock (or the queued lock request).
            _ => drop(conn.detach()),
        }
    }
}

/// Releases the lock, then lets the connection return to the pool; closes it if the unlock
/// cannot be confirmed.
async fn unlock(mut conn: PoolConnection<Postgres>, session_id: String) {
    let released = sqlx::query_scalar::<_, bool>(UNLOCK)
        .bind(&session_id)
        .fetch_one(&mut *conn)
        .await;
    match released {
        Ok(true) => {}
        outcome => {
            tracing::warn!(
                session_id,
                ?outcome,
                "could not release a session lock; closing its connection"
            );
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Regression (the soak): lock connections are closed when idle, like the store's.
    #[tokio::test]
    async fn lock_connections_close_when_idle_like_the_store_pool() {
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .idle_timeout(Duration::from_secs(7))
            .connect_lazy("postgres://nobody@127.0.0.1:1/never_connected")
            .expect("a valid URL");
        let locks = <Postgres as StoreBackend>::session_locks(&pool);
        let options = locks.connections.options();
        assert_eq!(options.get_idle_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(options.get_max_connections(), 3);
    }
}
