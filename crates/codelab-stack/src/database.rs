//! Where each service's database is: a SQLite file in the data dir, or its own database on a
//! PostgreSQL server.

use crate::StackError;

/// `server` (any form `AUTH_SERVICE__DB_URL` accepts) with its database replaced by the
/// service's own: `codelab_<service>`, or `<name>_<service>` when the URL names a database
/// `<name>` other than the maintenance database `postgres`. Query parameters are kept.
///
/// A loopback server without an `sslmode` gets `sslmode=disable`: the driver's default
/// (`prefer`) does not verify the server, so on loopback TLS would only encrypt bytes that
/// never leave the host, at a measurable CPU cost on both ends (docs/benchmarks.md). An
/// explicit `sslmode` always wins.
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
    let has_sslmode = url.query_pairs().any(|(name, _)| name == "sslmode");
    if !has_sslmode
        && url
            .host_str()
            .is_some_and(codelab_core::http::is_loopback_host)
    {
        url.query_pairs_mut().append_pair("sslmode", "disable");
    }
    Ok(url.to_string())
}
