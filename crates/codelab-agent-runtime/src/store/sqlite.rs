//! What the runtime store does only on SQLite: its migrations, and a session serialised by a
//! process-wide mutex (with SQLite the runtime is a single process). Writes that read first
//! run in `BEGIN IMMEDIATE` transactions (the backend's write start: a deferred one could not
//! upgrade its read lock once another writer committed). Everything else is
//! [`super::sql_store`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::OwnedMutexGuard;

use super::sql_store::{SessionLocking, StoreBackend};
use super::{SessionLock, StoreError, StoreSettings};

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

impl StoreBackend for Sqlite {
    type Locks = ProcessLocks;

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    /// Times are fixed-width RFC 3339 UTC text: the day is its first ten characters.
    fn usage_day() -> &'static str {
        "substr(created_at, 1, 10)"
    }

    /// No settings apply: the locks are in this process.
    fn session_locks(pool: &SqlitePool, _settings: &StoreSettings) -> ProcessLocks {
        let file = pool.connect_options().get_filename().to_owned();
        // The same file reached by another path should share locks too.
        let file = std::fs::canonicalize(&file).unwrap_or(file);
        ProcessLocks {
            scope: Arc::from(file.to_string_lossy().as_ref()),
        }
    }

    /// One connection of its own on the same file, opened lazily with the pool's settings
    /// (WAL, busy timeout, foreign keys). The same pool for an in-memory database (a second
    /// pool would open another database) or a pool of one connection already.
    fn writer_pool(pool: &SqlitePool) -> SqlitePool {
        let options = pool.connect_options();
        let on_disk = std::fs::metadata(options.get_filename()).is_ok_and(|file| file.is_file());
        if !on_disk || pool.options().get_max_connections() <= 1 {
            return pool.clone();
        }
        SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(pool.options().get_acquire_timeout())
            // Local and owned by this process: nothing to test before handing it out.
            .test_before_acquire(false)
            // Never reuse a connection SQLite left in a transaction sqlx still counts open
            // (after SQLITE_FULL): every later write would fail until a restart.
            .before_acquire(codelab_core::db::sqlite_connection_reusable)
            .connect_lazy_with(options.as_ref().clone())
    }
}

/// Session locks as mutexes of this process.
#[derive(Debug)]
pub struct ProcessLocks {
    /// Names the database in the lock registry, so two stores on the same file in one process
    /// share their session locks and stores on different files never block each other.
    scope: Arc<str>,
}

#[async_trait]
impl SessionLocking for ProcessLocks {
    async fn lock(&self, session_id: &str) -> Result<Box<dyn SessionLock>, StoreError> {
        let key = (self.scope.clone(), session_id.to_owned());
        let mutex = registry().mutex(key.clone());
        let guard = mutex.lock_owned().await;
        Ok(Box::new(SqliteSessionLock {
            guard: Some(guard),
            key,
        }))
    }

    async fn try_lock(&self, session_id: &str) -> Result<Option<Box<dyn SessionLock>>, StoreError> {
        let key = (self.scope.clone(), session_id.to_owned());
        let mutex = registry().mutex(key.clone());
        let Ok(guard) = mutex.try_lock_owned() else {
            registry().release(&key);
            return Ok(None);
        };
        Ok(Some(Box::new(SqliteSessionLock {
            guard: Some(guard),
            key,
        })))
    }
}

/// Session mutexes of this process, by database and session id. Entries are weak: a mutex
/// lives while a guard or a waiter holds it, and its entry is removed when the last one goes.
static SESSION_LOCKS: LazyLock<Mutex<LockRegistry>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct LockRegistry {
    mutexes: HashMap<(Arc<str>, String), Weak<tokio::sync::Mutex<()>>>,
    /// Size at which dead entries (left by cancelled waiters) are swept next; doubling keeps
    /// the sweeps amortised O(1) per lock.
    sweep_at: usize,
}

impl LockRegistry {
    /// The mutex of a session, created on first use.
    fn mutex(&mut self, key: (Arc<str>, String)) -> Arc<tokio::sync::Mutex<()>> {
        if let Some(mutex) = self.mutexes.get(&key).and_then(Weak::upgrade) {
            return mutex;
        }
        if self.mutexes.len() >= self.sweep_at.max(64) {
            self.mutexes.retain(|_, mutex| mutex.strong_count() > 0);
            self.sweep_at = self.mutexes.len() * 2;
        }
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        self.mutexes.insert(key, Arc::downgrade(&mutex));
        mutex
    }

    /// Forgets a session's mutex once nobody holds or waits for it.
    fn release(&mut self, key: &(Arc<str>, String)) {
        if self
            .mutexes
            .get(key)
            .is_some_and(|mutex| mutex.strong_count() == 0)
        {
            self.mutexes.remove(key);
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, LockRegistry> {
    // Nothing panics while the registry is held; if something did, the map is still valid.
    SESSION_LOCKS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A held session mutex.
struct SqliteSessionLock {
    guard: Option<OwnedMutexGuard<()>>,
    key: (Arc<str>, String),
}

impl SessionLock for SqliteSessionLock {}

impl Drop for SqliteSessionLock {
    fn drop(&mut self) {
        // Unlock first, so the entry is removable when nobody waits.
        drop(self.guard.take());
        registry().release(&self.key);
    }
}
