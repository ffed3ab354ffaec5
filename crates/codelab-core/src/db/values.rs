//! Values that bind and read the same way on PostgreSQL and SQLite, so a store writes each
//! query once: [`DbTime`] for timestamps and [`JsonText`] for the original's `JSON` columns.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

use super::cells::{parse_sqlite_time, sqlite_time};
use crate::clock::Clock;

/// A timestamp column: `TIMESTAMPTZ` on PostgreSQL, fixed-width RFC 3339 UTC text on SQLite
/// (`2024-01-02T03:04:05.123456Z`, [`sqlite_time`]), so SQL comparisons on the text compare
/// instants and rows written before this type existed read back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbTime(pub DateTime<Utc>);

impl DbTime {
    /// The clock's current time at the precision both databases keep (microseconds), so a
    /// record read back equals the one returned when it was written.
    pub fn now(clock: &dyn Clock) -> Self {
        Self(now_from(clock))
    }

    /// The instant.
    pub fn instant(self) -> DateTime<Utc> {
        self.0
    }
}

/// The clock's current time truncated to microseconds (what both databases keep).
pub fn now_from(clock: &dyn Clock) -> DateTime<Utc> {
    DateTime::<Utc>::from(clock.now()).trunc_subsecs(6)
}

impl From<DateTime<Utc>> for DbTime {
    fn from(at: DateTime<Utc>) -> Self {
        Self(at)
    }
}

impl From<DbTime> for DateTime<Utc> {
    fn from(at: DbTime) -> Self {
        at.0
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Self)
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty) || <DateTime<Utc> as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(sqlite_time(self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Self(parse_sqlite_time("timestamp", text)?))
    }
}

/// JSON kept as the exact text given: the original's `JSON` column on PostgreSQL (bound with
/// the `json` type, which stores its input verbatim, unlike `jsonb`), JSON text on SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub String);

impl JsonText {
    /// The value serialized as compact JSON.
    pub fn of(value: &serde_json::Value) -> Self {
        Self(value.to_string())
    }
}

/// PostgreSQL's `json` type (OID 114); sqlx only exposes `jsonb` for its own `Json` wrapper.
const PG_JSON: PgTypeInfo = PgTypeInfo::with_oid(Oid(114));

impl Type<Postgres> for JsonText {
    fn type_info() -> PgTypeInfo {
        PG_JSON
    }
}

impl Encode<'_, Postgres> for JsonText {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // The binary form of `json` is its text.
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

impl Type<Sqlite> for JsonText {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for JsonText {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode_by_ref(&self.0, buf)
    }
}
