//! The error of every service store, the same on both databases, and the mapping of the
//! driver's constraint violations to it.

use super::cells::CellError;

/// Whether the driver's `error` is a database that did not answer rather than one that refused
/// the statement (see [`StoreError::is_unavailable`]); also what a service waits out at start.
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("57P")),
        _ => false,
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value (an id, a name) is already taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// The record to read or change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The driver or the database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A row holds something its columns should not.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A conditional write found the row in another state than expected (someone else
    /// changed it meanwhile); nothing was written.
    #[error("{0}")]
    Stale(String),
}

/// A cell that could not be read is a driver error or corrupt data.
impl From<CellError> for StoreError {
    fn from(error: CellError) -> Self {
        match error {
            CellError::Database(error) => Self::Database(error),
            CellError::Corrupt(message) => Self::Corrupt(message),
        }
    }
}

impl StoreError {
    /// Whether the database did not answer, rather than refused the statement: no connection
    /// within the pool's timeout (a server that is down, restarting or cut off by the
    /// network), an I/O or TLS failure on the connection, or PostgreSQL refusing connections
    /// while it starts, recovers or shuts down (SQLSTATE class 57P). Worth trying again later;
    /// the agent runtime answers 503 for it.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(error) => database_unavailable(error),
            _ => false,
        }
    }

    /// Whether the database refused a write for lack of space: SQLite's `SQLITE_FULL` (the
    /// disk, or `max_page_count`) or PostgreSQL's `disk_full` (SQLSTATE 53100). Nothing of the
    /// statement was written; it works again once space returns (docs/reliability.md, "Faults").
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                // SQLite reports the primary result code 13 (or an extended code whose low
                // byte is 13).
                let code = db.code();
                code.as_deref() == Some("53100")
                    || code
                        .as_deref()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| c & 0xff == 13)
            }
            _ => false,
        }
    }

    /// The error of a failed write: a unique violation is `Conflict(what(hint))`, where `hint`
    /// names the violated index (PostgreSQL) or the failing columns (SQLite's message); a
    /// foreign-key violation is `NotFound(missing)`; anything else stays a database error.
    pub fn of_write(err: sqlx::Error, what: impl FnOnce(&str) -> String, missing: &str) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                let hint = db.constraint().unwrap_or_else(|| db.message());
                return StoreError::Conflict(what(hint));
            }
            if db.is_foreign_key_violation() {
                return StoreError::NotFound(missing.to_owned());
            }
        }
        StoreError::Database(err)
    }
}

/// Maps every row with `map` (a row mapper of [`super::cells::Cells`] reads).
pub fn map_rows<R, T>(
    rows: &[R],
    map: impl Fn(&R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    /// A SQLite database that may not grow (`max_page_count`) fails a write the way a full
    /// disk does (SQLITE_FULL); other errors are not "disk full".
    #[tokio::test]
    async fn sqlite_full_is_recognised_as_a_full_disk() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v BLOB)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("PRAGMA max_page_count = 4")
            .execute(&mut conn)
            .await
            .unwrap();
        let error = sqlx::query("INSERT INTO t VALUES (zeroblob(100000))")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(StoreError::Database(error).is_disk_full());
        let other = sqlx::query("INSERT INTO missing VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(!StoreError::Database(other).is_disk_full());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).is_disk_full());
    }
}
