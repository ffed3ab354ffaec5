//! What the auth store needs of PostgreSQL alone: its migrations. The store itself is
//! [`super::SqlStore`], written once for both engines.

use sqlx::migrate::Migrator;

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
