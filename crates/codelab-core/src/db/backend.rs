//! One store, written once, for PostgreSQL and SQLite: [`Backend`] names the few real dialect
//! differences (the write transaction start, migrations) and carries every bound generic sqlx
//! code needs, so `impl<B: Backend> Store for SqlStore<B>` needs no where clause; [`query`]
//! builds a statement that binds the values both databases agree on.
//!
//! Rust does not carry a trait's `where` clauses to its users, only its supertraits and the
//! bounds on associated types, so the bounds here are spelled as associated-type bounds
//! (`Database<Row: Cells>`) and binding goes through [`Bind`] on the arguments type.

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{Database, Encode, Executor, IntoArguments, Pool, Postgres, Sqlite, Transaction, Type};

use super::DbKind;
use super::StoreError;
use super::cells::Cells;
use super::values::{DbTime, JsonText};

/// A database engine a store can be written once for: PostgreSQL or SQLite.
///
/// Everything that truly differs between them is here; everything else is the same SQL
/// (sqlx binds `$n` on both) and the same values ([`Params`]).
pub trait Backend:
    Database<Row: Cells, QueryResult: RowsAffected>
    + for<'q> Database<Arguments<'q>: IntoArguments<'q, Self> + Params<'q>>
{
    /// Which engine this is.
    const KIND: DbKind;

    /// The statement that opens a transaction that will write: SQLite's `BEGIN IMMEDIATE`
    /// takes the write lock up front, so a concurrent writer waits (busy timeout) instead of
    /// failing to upgrade its read lock; PostgreSQL's row locks make plain `BEGIN` enough.
    const BEGIN_WRITE: &'static str;

    /// Runs a service's migrations for this engine.
    fn run_migrations<'a>(
        migrator: &'a Migrator,
        pool: &'a Pool<Self>,
    ) -> BoxFuture<'a, Result<(), MigrateError>>;

    /// Opens a write transaction ([`Self::BEGIN_WRITE`]).
    fn begin_write(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>>;

    /// Runs a statement (what [`Query`] calls; sqlx implements its executors per engine, and
    /// boxing here keeps generic store futures provably `Send`).
    fn run<'e, 'q: 'e>(
        on: On<'e, Self>,
        query: SqlxQuery<'q, Self>,
        want: Want,
    ) -> BoxFuture<'e, Result<Ran<Self>, sqlx::Error>>;
}

/// An sqlx statement on `B`.
type SqlxQuery<'q, B> = sqlx::query::Query<'q, B, <B as Database>::Arguments<'q>>;

/// What a caller of [`Backend::run`] wants back.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// Rows affected.
    Count,
    /// Exactly one row.
    One,
    /// At most one row.
    Optional,
    /// Every row.
    All,
}

/// What [`Backend::run`] gives back, as asked by [`Want`].
#[doc(hidden)]
#[derive(Debug)]
pub enum Ran<B: Database> {
    /// Rows affected.
    Count(u64),
    /// The rows.
    Rows(Vec<B::Row>),
}

/// Both engines run statements the same way; only the types differ.
macro_rules! backend_runs {
    () => {
        fn run_migrations<'a>(
            migrator: &'a Migrator,
            pool: &'a Pool<Self>,
        ) -> BoxFuture<'a, Result<(), MigrateError>> {
            Box::pin(migrator.run(pool))
        }

        fn begin_write(
            pool: &Pool<Self>,
        ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
            Box::pin(pool.begin_with(Self::BEGIN_WRITE))
        }

        fn run<'e, 'q: 'e>(
            on: On<'e, Self>,
            query: SqlxQuery<'q, Self>,
            want: Want,
        ) -> BoxFuture<'e, Result<Ran<Self>, sqlx::Error>> {
            Box::pin(async move {
                match on {
                    On::Pool(pool) => run_on(pool, query, want).await,
                    On::Connection(connection) => run_on(connection, query, want).await,
                }
            })
        }
    };
}

impl Backend for Postgres {
    const KIND: DbKind = DbKind::Postgres;
    // Under READ COMMITTED a concurrent writer blocks on the row lock, then re-checks its
    // WHERE clause against the committed row.
    const BEGIN_WRITE: &'static str = "BEGIN";
    backend_runs!();
}

impl Backend for Sqlite {
    const KIND: DbKind = DbKind::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    backend_runs!();
}

async fn run_on<'e, 'q: 'e, B: Database>(
    executor: impl Executor<'e, Database = B>,
    query: SqlxQuery<'q, B>,
    want: Want,
) -> Result<Ran<B>, sqlx::Error>
where
    B::Arguments<'q>: IntoArguments<'q, B>,
    B::QueryResult: RowsAffected,
{
    Ok(match want {
        Want::Count => Ran::Count(query.execute(executor).await?.rows_affected()),
        Want::One => Ran::Rows(vec![query.fetch_one(executor).await?]),
        Want::Optional => Ran::Rows(query.fetch_optional(executor).await?.into_iter().collect()),
        Want::All => Ran::Rows(query.fetch_all(executor).await?),
    })
}

/// How many rows a statement changed (sqlx has this per engine only).
pub trait RowsAffected {
    /// The count.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Arguments that accept a `T`: what [`Query::bind`] needs. Implemented for every sqlx
/// arguments type and every value it can encode.
pub trait Bind<'q, T> {
    /// Appends `value` as the next `$n`.
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError>;
}

impl<'q, A, T> Bind<'q, T> for A
where
    A: sqlx::Arguments<'q>,
    T: 'q + Encode<'q, A::Database> + Type<A::Database>,
{
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// Declares [`Params`] (every `Bind<'q, T>` of the list) and implements it for whatever
/// arguments type has them all, from one list.
macro_rules! params {
    ($first:ty $(, $rest:ty)* $(,)?) => {
        /// The values a store may bind on every [`Backend`]. `DateTime<Utc>` is deliberately
        /// absent: SQLite would store sqlx's own text form, which does not compare as time;
        /// bind [`DbTime`].
        pub trait Params<'q>: Bind<'q, $first> $(+ Bind<'q, $rest>)* {}

        impl<'q, A> Params<'q> for A where A: Bind<'q, $first> $(+ Bind<'q, $rest>)* {}
    };
}

params!(
    String,
    &'q String,
    &'q str,
    Option<String>,
    &'q Option<String>,
    Option<&'q str>,
    Option<&'q String>,
    i64,
    Option<i64>,
    i32,
    Option<i32>,
    bool,
    Option<bool>,
    f64,
    Option<f64>,
    Vec<u8>,
    &'q [u8],
    DbTime,
    Option<DbTime>,
    JsonText,
    Option<JsonText>,
    Json<Value>,
    Option<Json<Value>>,
    Json<&'q Value>,
    Option<Json<&'q Value>>,
);

/// Where a statement runs: a pool, or a connection (an open transaction, a checked-out
/// connection). Made with `From`, so `&pool`, `&mut tx` and `&mut conn` all work.
pub enum On<'e, B: Database> {
    /// Any connection of the pool.
    Pool(&'e Pool<B>),
    /// This connection.
    Connection(&'e mut B::Connection),
}

impl<'e, B: Database> From<&'e Pool<B>> for On<'e, B> {
    fn from(pool: &'e Pool<B>) -> Self {
        Self::Pool(pool)
    }
}

impl<'e, B: Database> From<&'e mut Transaction<'_, B>> for On<'e, B> {
    fn from(transaction: &'e mut Transaction<'_, B>) -> Self {
        Self::Connection(&mut **transaction)
    }
}

impl<'e, B: Database> From<&'e mut PoolConnection<B>> for On<'e, B> {
    fn from(connection: &'e mut PoolConnection<B>) -> Self {
        Self::Connection(&mut **connection)
    }
}

/// A statement with its bound values, for any [`Backend`] (inferred from where it runs).
#[must_use = "a query does nothing until it is run"]
pub struct Query<'q, B: Backend> {
    sql: &'q str,
    arguments: B::Arguments<'q>,
    /// The first value that failed to encode; reported when the statement runs, as sqlx does.
    error: Option<BoxDynError>,
}

/// Starts a statement: `query(SQL).bind(a).bind(b).fetch_optional(&pool)`.
pub fn query<B: Backend>(sql: &str) -> Query<'_, B> {
    Query {
        sql,
        arguments: B::Arguments::default(),
        error: None,
    }
}

impl<'q, B: Backend> Query<'q, B> {
    /// Binds the next `$n` (any value of [`Params`]).
    pub fn bind<T>(mut self, value: T) -> Self
    where
        B::Arguments<'q>: Bind<'q, T>,
    {
        if self.error.is_none()
            && let Err(error) = self.arguments.bind_value(value)
        {
            self.error = Some(error);
        }
        self
    }

    fn run<'e>(self, on: On<'e, B>, want: Want) -> BoxFuture<'e, Result<Ran<B>, sqlx::Error>>
    where
        'q: 'e,
    {
        match self.error {
            Some(error) => Box::pin(std::future::ready(Err(sqlx::Error::Encode(error)))),
            None => B::run(on, sqlx::query_with(self.sql, self.arguments), want),
        }
    }

    /// Runs it; returns how many rows it changed.
    pub fn execute<'e>(self, on: impl Into<On<'e, B>>) -> BoxFuture<'e, Result<u64, sqlx::Error>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::Count);
        Box::pin(async move {
            match ran.await? {
                Ran::Count(count) => Ok(count),
                Ran::Rows(rows) => Ok(rows.len() as u64),
            }
        })
    }

    /// Runs it; exactly one row is expected.
    pub fn fetch_one<'e>(
        self,
        on: impl Into<On<'e, B>>,
    ) -> BoxFuture<'e, Result<B::Row, sqlx::Error>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::One);
        Box::pin(async move { rows(ran.await?).next().ok_or(sqlx::Error::RowNotFound) })
    }

    /// Runs it; at most one row is expected.
    pub fn fetch_optional<'e>(
        self,
        on: impl Into<On<'e, B>>,
    ) -> BoxFuture<'e, Result<Option<B::Row>, sqlx::Error>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::Optional);
        Box::pin(async move { Ok(rows(ran.await?).next()) })
    }

    /// Runs it; returns every row.
    pub fn fetch_all<'e>(
        self,
        on: impl Into<On<'e, B>>,
    ) -> BoxFuture<'e, Result<Vec<B::Row>, sqlx::Error>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::All);
        Box::pin(async move { Ok(rows(ran.await?).collect()) })
    }

    /// Runs it; at most one row is expected, read by `map` (a row mapper of the store).
    pub fn fetch_optional_as<'e, T: Send + 'e>(
        self,
        on: impl Into<On<'e, B>>,
        map: fn(&B::Row) -> Result<T, StoreError>,
    ) -> BoxFuture<'e, Result<Option<T>, StoreError>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::Optional);
        Box::pin(async move { rows(ran.await?).next().as_ref().map(map).transpose() })
    }

    /// Runs it; every row, read by `map` (a row mapper of the store).
    pub fn fetch_all_as<'e, T: Send + 'e>(
        self,
        on: impl Into<On<'e, B>>,
        map: fn(&B::Row) -> Result<T, StoreError>,
    ) -> BoxFuture<'e, Result<Vec<T>, StoreError>>
    where
        'q: 'e,
    {
        let ran = self.run(on.into(), Want::All);
        Box::pin(async move { rows(ran.await?).map(|row| map(&row)).collect() })
    }
}

fn rows<B: Database>(ran: Ran<B>) -> std::vec::IntoIter<B::Row> {
    match ran {
        Ran::Rows(rows) => rows.into_iter(),
        Ran::Count(_) => Vec::new().into_iter(),
    }
}
#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
