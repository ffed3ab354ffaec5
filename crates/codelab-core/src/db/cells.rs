//! Reading one cell of a PostgreSQL or SQLite row as the few types the stores use, so each
//! store maps a record once for both databases ([`Cells`]), and the timestamp forms both
//! databases keep.
//!
//! Timestamps are `TIMESTAMPTZ` on PostgreSQL and fixed-width RFC 3339 UTC text on SQLite
//! (`2024-01-02T03:04:05.123456Z`, [`sqlite_time`]), so that text order is time order in SQL
//! comparisons. JSON is `JSON`/`JSONB` on PostgreSQL and JSON text on SQLite.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;

/// A cell that could not be read: the driver refused it, or its content is not what the
/// column holds. Stores turn it into their own error.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The driver could not decode the cell as the asked type.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The cell holds something the column should not (a NULL, malformed text).
    #[error("{0}")]
    Corrupt(String),
}

/// Reads one cell of a row.
pub trait Cells {
    /// A non-NULL text.
    fn text(&self, column: &str) -> Result<String, CellError>;
    /// A text or NULL.
    fn opt_text(&self, column: &str) -> Result<Option<String>, CellError>;
    /// A boolean.
    fn flag(&self, column: &str) -> Result<bool, CellError>;
    /// A `BIGINT` (PostgreSQL) or `INTEGER` (SQLite).
    fn int(&self, column: &str) -> Result<i64, CellError>;
    /// An `INTEGER` (int4, PostgreSQL) or `INTEGER` (SQLite): sqlx will not widen implicitly.
    fn int32(&self, column: &str) -> Result<i32, CellError>;
    /// A `BIGINT` (PostgreSQL) or `INTEGER` (SQLite) or NULL.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, CellError>;
    /// A `DOUBLE PRECISION` (PostgreSQL) or `REAL` (SQLite) or NULL.
    fn opt_float(&self, column: &str) -> Result<Option<f64>, CellError>;
    /// A timestamp (`TIMESTAMPTZ`, or [`sqlite_time`] text) or NULL.
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, CellError>;
    /// A JSON value (`JSON`/`JSONB`, or JSON text) or NULL.
    fn opt_json(&self, column: &str) -> Result<Option<Value>, CellError>;

    /// A non-NULL timestamp.
    fn time(&self, column: &str) -> Result<DateTime<Utc>, CellError> {
        self.opt_time(column)?
            .ok_or_else(|| CellError::Corrupt(format!("{column} is NULL")))
    }

    /// A non-NULL JSON value.
    fn json(&self, column: &str) -> Result<Value, CellError> {
        self.opt_json(column)?
            .ok_or_else(|| CellError::Corrupt(format!("{column} is NULL")))
    }
}

/// The cells both engines decode the same way (sqlx's own types).
macro_rules! plain_cells {
    () => {
        fn text(&self, column: &str) -> Result<String, CellError> {
            Ok(self.try_get(column)?)
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>, CellError> {
            Ok(self.try_get(column)?)
        }
        fn flag(&self, column: &str) -> Result<bool, CellError> {
            Ok(self.try_get(column)?)
        }
        fn int(&self, column: &str) -> Result<i64, CellError> {
            Ok(self.try_get(column)?)
        }
        fn int32(&self, column: &str) -> Result<i32, CellError> {
            Ok(self.try_get(column)?)
        }
        fn opt_int(&self, column: &str) -> Result<Option<i64>, CellError> {
            Ok(self.try_get(column)?)
        }
        fn opt_float(&self, column: &str) -> Result<Option<f64>, CellError> {
            Ok(self.try_get(column)?)
        }
    };
}

impl Cells for PgRow {
    plain_cells!();
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, CellError> {
        Ok(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> Result<Option<Value>, CellError> {
        Ok(self.try_get::<Option<Json<Value>>, _>(column)?.map(|j| j.0))
    }
}

impl Cells for SqliteRow {
    plain_cells!();
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, CellError> {
        self.try_get::<Option<String>, _>(column)?
            .map(|text| parse_sqlite_time(column, &text))
            .transpose()
    }
    fn opt_json(&self, column: &str) -> Result<Option<Value>, CellError> {
        self.try_get::<Option<String>, _>(column)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| {
                    CellError::Corrupt(format!("{column}: expected JSON text, got {text:?}: {e}"))
                })
            })
            .transpose()
    }
}

/// A timestamp as SQLite stores it: RFC 3339 UTC, always six fractional digits, so that text
/// comparison is time comparison.
pub fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads [`sqlite_time`] text, or naive UTC text (`2024-01-02 03:04:05.123456`, as the
/// original service wrote it) in case a row escaped a migration's rewrite.
pub fn parse_sqlite_time(column: &str, text: &str) -> Result<DateTime<Utc>, CellError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
        .ok_or_else(|| {
            CellError::Corrupt(format!(
                "{column}: expected an RFC 3339 timestamp, got {text:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn sqlite_times_are_fixed_width_and_round_trip() {
        let at = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let text = sqlite_time(at);
        assert_eq!(text, "2024-01-02T03:04:05.000000Z");
        assert_eq!(
            sqlite_time(crate::db::now_from(&crate::clock::SystemClock)).len(),
            text.len()
        );
        assert_eq!(parse_sqlite_time("x", &text).unwrap(), at);
        assert_eq!(
            parse_sqlite_time("x", "2024-01-02 03:04:05.000000").unwrap(),
            at,
            "the original's naive UTC text"
        );
        assert_eq!(parse_sqlite_time("x", "2024-01-02 03:04:05").unwrap(), at);
        assert!(matches!(
            parse_sqlite_time("x", "yesterday"),
            Err(CellError::Corrupt(message)) if message.contains("x:")
        ));
    }
}
