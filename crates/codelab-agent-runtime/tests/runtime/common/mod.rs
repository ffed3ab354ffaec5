//! Shared test setup: a store on an empty database on either backend (a temp SQLite file; a
//! fresh database on the PostgreSQL server at `CODELAB_TEST_DATABASE_URL`, dropped
//! afterwards), and another store on the same database.

use std::sync::Arc;

use codelab_agent_runtime::store::{RuntimeStore, open_store};
use codelab_core::clock::{SharedClock, SystemClock};
use codelab_core::db::{DbOptions, connect_database};
use codelab_testkit::TempDatabase;

/// A store on an empty database, and the database (deleted or dropped with it).
pub struct TestDb {
    pub store: Arc<dyn RuntimeStore>,
    /// How to open another pool on the same database.
    pub url: String,
    _database: TempDatabase,
}

pub async fn sqlite_db() -> TestDb {
    test_db(TempDatabase::sqlite("agent_runtime.db")).await
}

pub async fn postgres_db() -> TestDb {
    test_db(TempDatabase::postgres("runtime_test")).await
}

async fn test_db(database: TempDatabase) -> TestDb {
    let pool = database.connect().await;
    let store = open_store(pool, Arc::new(SystemClock)).await.unwrap();
    TestDb {
        store,
        url: database.url.clone(),
        _database: database,
    }
}

/// Another store on the database at `url`, on a pool of its own (as another replica, or the
/// process restarted, would open it).
pub async fn reopen(url: &str, clock: SharedClock) -> Arc<dyn RuntimeStore> {
    let pool = connect_database(url, &DbOptions::default()).await.unwrap();
    open_store(pool, clock).await.unwrap()
}
