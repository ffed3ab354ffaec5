//! The error of every service store, the same on both databases, and the mapping of the
//! driver's constraint violations to it.

use super::cells::CellError;

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
