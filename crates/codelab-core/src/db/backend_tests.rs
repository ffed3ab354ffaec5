//! [`DbTime`], [`JsonText`] and [`query`] on both engines, through one generic function.

use std::time::{Duration, SystemTime};

use chrono::{TimeZone, Utc};
use sqlx::Row;

use super::*;
use crate::clock::ManualClock;
use crate::db::cells::sqlite_time;
use crate::db::{DbOptions, DbPool, connect_database};

/// Written once: stores two instants and a JSON text in a temporary table, then checks
/// that SQL compares the stored instants as time and everything reads back unchanged.
async fn round_trip<B: Backend>(pool: &Pool<B>, time_column: &str) -> Transaction<'static, B> {
    let early = DbTime(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
    // Later by 0.5 s: as naive text "…05.5" would sort before "…05Z"; fixed width does not.
    let late = DbTime(early.0 + chrono::Duration::milliseconds(500));
    let mut tx = B::begin_write(pool).await.unwrap();
    let create = format!("CREATE TEMPORARY TABLE times (n BIGINT, at {time_column}, data TEXT)");
    query::<B>(&create).execute(&mut tx).await.unwrap();
    for (n, at) in [(1_i64, late), (2, early)] {
        let inserted = query("INSERT INTO times (n, at, data) VALUES ($1, $2, $3)")
            .bind(n)
            .bind(at)
            .bind(Some(sqlite_time(at.0)))
            .execute(&mut tx)
            .await
            .unwrap();
        assert_eq!(inserted, 1);
    }
    let nothing: Option<DbTime> = None;
    query("INSERT INTO times (n, at) VALUES ($1, $2)")
        .bind(3_i64)
        .bind(nothing)
        .execute(&mut tx)
        .await
        .unwrap();
    let ordered = query("SELECT n, at FROM times WHERE at >= $1 ORDER BY at")
        .bind(early)
        .fetch_all(&mut tx)
        .await
        .unwrap();
    let read: Vec<(i64, chrono::DateTime<Utc>)> = ordered
        .iter()
        .map(|row| (row.int("n").unwrap(), row.time("at").unwrap()))
        .collect();
    assert_eq!(read, vec![(2, early.0), (1, late.0)]);
    let null = query("SELECT at FROM times WHERE n = $1")
        .bind(3_i64)
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(null.opt_time("at").unwrap(), None);
    let missing = query("SELECT n FROM times WHERE at < $1")
        .bind(early)
        .fetch_optional(&mut tx)
        .await
        .unwrap();
    assert!(missing.is_none());
    tx
}

fn clock_time() -> DbTime {
    let clock =
        ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789));
    DbTime::now(&clock)
}

#[test]
fn now_keeps_microseconds() {
    assert_eq!(sqlite_time(clock_time().0), "2023-11-14T22:13:20.123456Z");
}

#[tokio::test]
async fn sqlite_binds_fixed_width_text_and_reads_it_back() {
    let DbPool::Sqlite(pool) = connect_database("sqlite::memory:", &DbOptions::default())
        .await
        .unwrap()
    else {
        panic!("expected a SQLite pool");
    };
    let mut tx = round_trip::<Sqlite>(&pool, "TEXT").await;
    // Stored bytes are the fixed-width text rows written before DbTime existed have.
    let row = query("SELECT at, typeof(at) AS kind FROM times WHERE n = $1")
        .bind(1_i64)
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(row.text("at").unwrap(), "2024-01-02T03:04:05.500000Z");
    assert_eq!(row.text("kind").unwrap(), "text");
    assert_eq!(
        row.try_get::<DbTime, _>("at").unwrap().0,
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::milliseconds(500)
    );
    tx.rollback().await.unwrap();
    json_text_is_stored_verbatim(&pool, "TEXT").await;
}

#[tokio::test]
async fn postgres_binds_timestamptz_and_reads_it_back() {
    let Some(url) = std::env::var("CODELAB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("CODELAB_TEST_DATABASE_URL is not set: skipping the PostgreSQL round trip");
        return;
    };
    let options = DbOptions {
        max_connections: 2,
        create_if_missing: false,
        ..DbOptions::default()
    };
    let DbPool::Postgres(pool) = connect_database(&url, &options).await.unwrap() else {
        panic!("expected a PostgreSQL pool");
    };
    let mut tx = round_trip::<Postgres>(&pool, "TIMESTAMPTZ").await;
    let at = clock_time();
    let row = query("SELECT $1 AS at, pg_typeof($1)::text AS kind")
        .bind(at)
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(row.try_get::<DbTime, _>("at").unwrap(), at);
    assert_eq!(row.text("kind").unwrap(), "timestamp with time zone");
    tx.rollback().await.unwrap();
    json_text_is_stored_verbatim(&pool, "JSON").await;
}

async fn json_text_is_stored_verbatim<B: Backend>(pool: &Pool<B>, json_column: &str) {
    let mut conn = pool.acquire().await.unwrap();
    let create = format!("CREATE TEMPORARY TABLE docs (body {json_column})");
    query::<B>(&create).execute(&mut conn).await.unwrap();
    // Key order and spacing survive (`jsonb` would normalise both).
    let text = r#"{"b":1, "a":[true]}"#;
    query("INSERT INTO docs (body) VALUES ($1)")
        .bind(JsonText(text.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    let row = query("SELECT CAST(body AS TEXT) AS body FROM docs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.text("body").unwrap(), text);
    query::<B>("DROP TABLE docs")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[test]
fn engines_name_themselves() {
    assert_eq!(<Postgres as Backend>::KIND, crate::db::DbKind::Postgres);
    assert_eq!(<Sqlite as Backend>::KIND, crate::db::DbKind::Sqlite);
    assert_eq!(<Sqlite as Backend>::BEGIN_WRITE, "BEGIN IMMEDIATE");
}
