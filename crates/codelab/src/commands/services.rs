//! Loading each service's configuration section the same way for `serve`, `up` and `config show`.

use std::path::PathBuf;

use anyhow::Context;
use codelab_core::config::{ConfigLoader, Environment};
use codelab_core::service::Service;
use serde::Serialize;

/// Flags that override a service's file and environment settings.
#[derive(Debug, Default, Serialize)]
pub struct ListenOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Service `S`'s settings (defaults < file < `<PREFIX>__*` < `overrides`) and environment.
pub fn load_config<S: Service>(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(S::Config, Environment)> {
    let environment = codelab_core::config::environment(S::ENV_PREFIX)?;
    Ok((load_section::<S>(file, overrides)?, environment))
}

/// Service `S`'s settings (defaults < file < `<PREFIX>__*` < `overrides`).
pub fn load_section<S: Service>(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<S::Config> {
    ConfigLoader::from_env_or(file)
        .load(S::SECTION, S::ENV_PREFIX, overrides)
        .with_context(|| format!("invalid {} configuration", S::NAME))
}

/// Prints credentials generated while seeding, once, to stdout (never through tracing, which
/// may ship logs elsewhere). Nothing is printed when nothing was generated.
pub fn print_seeded_credentials(report: &codelab_auth::seed::SeedReport) {
    if let Some(password) = &report.admin_password {
        let origin = if report.admin_password_generated {
            "generated; shown only this once"
        } else {
            "from AUTH_SERVICE__MASTER_KEY"
        };
        if report.admin_password_generated {
            println!(
                "Created the admin user: username admin, password {} ({origin})",
                password.expose()
            );
        } else {
            println!("Created the admin user: username admin ({origin})");
        }
    }
    if let Some(path) = &report.internal_client_secret_file {
        println!(
            "Created the codelab-internal client; its generated secret is in {} (mode 0600)",
            path.display()
        );
    }
    if let Some(secret) = &report.internal_client_secret {
        println!(
            "Created the codelab-internal client with secret {} (generated; shown only this once)",
            secret.expose()
        );
    }
}
