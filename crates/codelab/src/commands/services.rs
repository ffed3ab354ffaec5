//! Loading each service's configuration section the same way for `serve`, `up` and `config show`.

use std::path::PathBuf;

use anyhow::Context;
use codelab_core::config::{ConfigLoader, Environment};
use serde::Serialize;

/// Flags that override a service's file and environment settings.
#[derive(Debug, Default, Serialize)]
pub struct ListenOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The LLM proxy's settings and environment.
pub fn llm_proxy_config(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(codelab_llm_proxy::Config, Environment)> {
    use codelab_llm_proxy::config::{ENV_PREFIX, SECTION};
    let environment = codelab_core::config::environment(ENV_PREFIX)?;
    let config = ConfigLoader::from_env_or(file)
        .load(SECTION, ENV_PREFIX, overrides)
        .context("invalid llm-proxy configuration")?;
    Ok((config, environment))
}

/// The auth service's settings and environment.
pub fn auth_config(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(codelab_auth::Config, Environment)> {
    use codelab_auth::config::{ENV_PREFIX, SECTION};
    let environment = codelab_core::config::environment(ENV_PREFIX)?;
    let config = ConfigLoader::from_env_or(file)
        .load(SECTION, ENV_PREFIX, overrides)
        .context("invalid auth configuration")?;
    Ok((config, environment))
}

/// The agent runtime's settings and environment.
pub fn agent_runtime_config(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(codelab_agent_runtime::Config, Environment)> {
    use codelab_agent_runtime::config::{ENV_PREFIX, SECTION};
    let environment = codelab_core::config::environment(ENV_PREFIX)?;
    let config = ConfigLoader::from_env_or(file)
        .load(SECTION, ENV_PREFIX, overrides)
        .context("invalid agent-runtime configuration")?;
    Ok((config, environment))
}

/// The gateway's settings and environment.
pub fn gateway_config(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(codelab_gateway::Config, Environment)> {
    use codelab_gateway::config::{ENV_PREFIX, SECTION};
    let environment = codelab_core::config::environment(ENV_PREFIX)?;
    let config = ConfigLoader::from_env_or(file)
        .load(SECTION, ENV_PREFIX, overrides)
        .context("invalid gateway configuration")?;
    Ok((config, environment))
}

/// The website's settings and environment.
pub fn website_config(
    file: Option<PathBuf>,
    overrides: &impl Serialize,
) -> anyhow::Result<(codelab_website::Config, Environment)> {
    use codelab_website::config::{ENV_PREFIX, SECTION};
    let environment = codelab_core::config::environment(ENV_PREFIX)?;
    let config = ConfigLoader::from_env_or(file)
        .load(SECTION, ENV_PREFIX, overrides)
        .context("invalid website configuration")?;
    Ok((config, environment))
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
