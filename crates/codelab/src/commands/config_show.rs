//! `codelab config show`: the effective configuration with secrets redacted, passwords inside
//! URLs (database, Redis) included.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use codelab_core::config::{ConfigLoader, REDACTED};
use codelab_core::http::ListenerLimits;
use serde::Serialize;

use codelab_agent_runtime::RuntimeService;
use codelab_auth::AuthService;
use codelab_gateway::GatewayService;
use codelab_llm_proxy::ProxyService;
use codelab_website::WebsiteService;

use super::services::{ListenOverrides, load_config};

/// `codelab config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of every service (defaults < file < environment);
    /// secrets, and passwords inside URLs, print as "[redacted]".
    Show,
}

#[derive(Serialize)]
struct Effective {
    environment: String,
    llm_proxy: codelab_llm_proxy::Config,
    auth_service: codelab_auth::Config,
    agent_runtime: codelab_agent_runtime::Config,
    gateway: codelab_gateway::Config,
    website: codelab_website::Config,
    /// The listener limits every service applies (`[http]`, `HTTP__*`).
    http: ListenerLimits,
}

/// Prints the configuration as TOML.
pub fn run(file: Option<PathBuf>, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Show => {
            let none = ListenOverrides::default();
            let (llm_proxy, environment) = load_config::<ProxyService>(file.clone(), &none)?;
            let (auth_service, _) = load_config::<AuthService>(file.clone(), &none)?;
            let (agent_runtime, _) = load_config::<RuntimeService>(file.clone(), &none)?;
            let (gateway, _) = load_config::<GatewayService>(file.clone(), &none)?;
            let (website, _) = load_config::<WebsiteService>(file.clone(), &none)?;
            let http = ListenerLimits::load(&ConfigLoader::from_env_or(file))
                .context("invalid listener limits")?;
            let effective = Effective {
                environment: environment.as_str().to_owned(),
                llm_proxy,
                auth_service,
                agent_runtime,
                gateway,
                website,
                http,
            };
            let mut value =
                toml::Value::try_from(&effective).context("cannot render the configuration")?;
            redact_url_passwords(&mut value);
            let text = toml::to_string_pretty(&value).context("cannot render the configuration")?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Replaces the password of every URL among `value`'s strings, in every section: database and
/// Redis URLs carry them (`postgres://user:pass@host/db`, `redis://:pass@host`).
fn redact_url_passwords(value: &mut toml::Value) {
    match value {
        toml::Value::String(text) => {
            if let Some(redacted) = redact_url_password(text) {
                *text = redacted;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_url_passwords),
        toml::Value::Table(table) => table
            .iter_mut()
            .for_each(|(_, item)| redact_url_passwords(item)),
        _ => {}
    }
}

/// `url` with the password of its user info and any `password=` query parameter replaced by
/// `[redacted]`; `None` when `url` is not a URL or has no password.
///
/// Done on the text rather than through a URL parser, which would percent-encode the
/// placeholder and refuse what operators often write unencoded. The user info ends at the last
/// `@`, so a password holding a raw `/`, `?` or `@` is still hidden (a path holding `@` is
/// over-redacted, which only costs readability).
fn redact_url_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !is_scheme {
        return None;
    }
    let mut changed = false;
    let (user_info, location) = match rest.rsplit_once('@') {
        Some((user_info, location)) => match user_info.split_once(':') {
            Some((user, password)) if !password.is_empty() => {
                changed = true;
                (format!("{user}:{REDACTED}@"), location)
            }
            _ => (format!("{user_info}@"), location),
        },
        None => (String::new(), rest),
    };
    let location = match location.split_once('?') {
        Some((before, query_and_fragment)) => {
            let (query, fragment) = match query_and_fragment.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query_and_fragment, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, value))
                        if key.eq_ignore_ascii_case("password") && !value.is_empty() =>
                    {
                        changed = true;
                        format!("{key}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let mut location = format!("{before}?{}", query.join("&"));
            if let Some(fragment) = fragment {
                location.push('#');
                location.push_str(fragment);
            }
            location
        }
        None => location.to_owned(),
    };
    changed.then(|| format!("{scheme}://{user_info}{location}"))
}

#[cfg(test)]
mod tests {
    use super::redact_url_password;

    #[test]
    fn passwords_in_urls_are_redacted_and_the_rest_is_kept() {
        for (url, expected) in [
            (
                "postgres://user:p%40ss:word@host:5432/db",
                Some("postgres://user:[redacted]@host:5432/db"),
            ),
            (
                "redis://:secret@cache:6379/0",
                Some("redis://:[redacted]@cache:6379/0"),
            ),
            (
                "postgres://u@h/db?sslmode=require&PASSWORD=x#f",
                Some("postgres://u@h/db?sslmode=require&PASSWORD=[redacted]#f"),
            ),
            (
                "postgres://user:pa/ss?w@rd@host/db",
                Some("postgres://user:[redacted]@host/db"),
            ),
            ("postgres://user@host/db", None),
            ("redis://cache:6379", None),
            ("sqlite://./.codelab/auth.db", None),
            ("not a url", None),
            ("", None),
        ] {
            assert_eq!(redact_url_password(url).as_deref(), expected, "{url}");
        }
    }
}
