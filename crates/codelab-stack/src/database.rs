//! Where each service's database is: a SQLite file in the data dir, or its own database on a
//! PostgreSQL server.

use crate::StackError;

/// `server` (any form `AUTH_SERVICE__DB_URL` accepts) with its database replaced by the
/// service's own: `codelab_<service>`, or `<name>_<service>` when the URL names a database
/// `<name>` other than the maintenance database `postgres`. Query parameters are kept.
pub fn postgres_database_url(server: &str, service: &str) -> Result<String, StackError> {
    let normalized = codelab_core::db::normalize_database_url(server)
        .map_err(|e| StackError::PostgresUrl(format!("invalid --postgres-url: {e}")))?;
    let mut url = reqwest::Url::parse(&normalized)
        .map_err(|e| StackError::PostgresUrl(format!("invalid --postgres-url: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(StackError::PostgresUrl(format!(
            "--postgres-url must be a postgres:// URL, got {}",
            codelab_core::db::redact_database_url(server)
        )));
    }
    let prefix = match url.path().trim_matches('/') {
        "" | "postgres" => "codelab".to_owned(),
        name => name.to_owned(),
    };
    url.set_path(&format!("/{prefix}_{service}"));
    Ok(url.to_string())
}
