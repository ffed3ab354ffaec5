//! Configuration: defaults < TOML file section < `<PREFIX>__KEY` environment variables < flags.
//!
//! Every service's `Config` is a `#[serde(default)]` struct loaded with [`ConfigLoader::load`].
//! Errors name the offending key and where it came from (variable name or file path).

mod providers;
mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use secret::{REDACTED, Secret};

/// Environment variable naming the TOML config file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "CODELAB_CONFIG";

/// A configuration problem, displayed as one line naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be turned into the setting's type.
    #[error("invalid value for {key} ({origin}): {message}")]
    InvalidValue {
        /// The key as the user wrote it (`LLM_PROXY__PORT`, `llm_proxy.port`, `--port`).
        key: String,
        /// Where the value came from (`environment variable`, `TOML file /etc/codelab.toml`).
        origin: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A setting without a default was not given anywhere.
    #[error("missing required setting {key}")]
    MissingValue {
        /// The setting, with the environment variable that would set it.
        key: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {message}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The config file is not valid TOML or its section is not a table.
    #[error("invalid TOML in config file {}: {message}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message with line and column.
        message: String,
    },
    /// Anything else (for example overrides that do not serialize to a table).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The deployment profile. Everything that is not development (staging included) refuses weak
/// secrets and insecure modes and logs JSON: see [`Environment::is_hardened`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Environment {
    /// A developer's machine (the default).
    #[default]
    Development,
    /// A pre-production deployment.
    Staging,
    /// A production deployment.
    Production,
}

impl Environment {
    /// Whether weak secrets and insecure modes are refused: every profile but development.
    ///
    /// This is the one predicate for every such refusal in every service (docs/security.md):
    /// staging is a real deployment reachable by real users and must not be weaker than
    /// production.
    pub fn is_hardened(self) -> bool {
        self != Self::Development
    }

    /// The canonical lower-case name (`development`, `staging`, `production`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value given for an environment name is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected development, staging or production, found {0:?}")]
pub struct ParseEnvironmentError(pub String);

impl FromStr for Environment {
    type Err = ParseEnvironmentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "staging" | "stage" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            _ => Err(ParseEnvironmentError(s.to_owned())),
        }
    }
}

impl Serialize for Environment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// The environment profile: `<PREFIX>__ENVIRONMENT` wins over plain `ENVIRONMENT`;
/// unset or empty means development.
pub fn environment(env_prefix: &str) -> Result<Environment, ConfigError> {
    environment_with(env_prefix, |name| std::env::var(name).ok())
}

/// As [`environment`], reading variables through `lookup` (for tests and embedding).
pub fn environment_with(
    env_prefix: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Environment, ConfigError> {
    let prefixed = format!("{}__ENVIRONMENT", normalize_prefix(env_prefix));
    for name in [prefixed.as_str(), "ENVIRONMENT"] {
        // Compose passes empty strings for unset `${VAR}`: treat them as unset.
        let Some(value) = lookup(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return value
            .parse()
            .map_err(|e: ParseEnvironmentError| ConfigError::InvalidValue {
                key: name.to_owned(),
                origin: providers::ENV_ORIGIN.to_owned(),
                message: e.to_string(),
            });
    }
    Ok(Environment::Development)
}

/// Loads service configuration sections from defaults, a TOML file, the environment and flags.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
}

impl ConfigLoader {
    /// A loader reading `file` (if any) as the TOML layer.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { file }
    }

    /// A loader reading `file` (from `--config`) or else the file named by `CODELAB_CONFIG`.
    pub fn from_env_or(file: Option<PathBuf>) -> Self {
        let file = file.or_else(|| {
            std::env::var_os(CONFIG_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Self { file }
    }

    /// The TOML file this loader reads, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Loads `T` from `T::default()` < TOML `[section]` < `<PREFIX>__KEY` variables < `overrides`.
    ///
    /// `T` should be `#[serde(default)]` so missing keys keep their defaults; its serialized
    /// default is used only to learn each key's type. `overrides` is a struct of flags whose
    /// `None` fields carry `#[serde(skip_serializing_if = "Option::is_none")]` (nulls are also
    /// dropped here); it must carry secrets as plain strings, since a [`Secret`] serializes as
    /// `"[redacted]"` (rejected with an error). Pass `&()` when there are no flags.
    pub fn load<T>(
        &self,
        section: &str,
        env_prefix: &str,
        overrides: &impl Serialize,
    ) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        self.load_with_env(section, env_prefix, overrides, process_env())
    }

    /// As [`ConfigLoader::load`], with the environment given as `(name, value)` pairs
    /// instead of read from the process (tests, `codelab up` embedding).
    pub fn load_with_env<T, I>(
        &self,
        section: &str,
        env_prefix: &str,
        overrides: &impl Serialize,
        env: I,
    ) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
        I: IntoIterator<Item = (String, String)>,
    {
        // Only the shape (which keys are lists, tables or nullable) is taken from the default;
        // its values are never merged, so secrets' "[redacted]" cannot leak into the result.
        let shape = serde_json::to_value(T::default()).unwrap_or(serde_json::Value::Null);
        let prefix = normalize_prefix(env_prefix);

        let mut figment = Figment::new();
        if let Some(path) = &self.file {
            figment = figment.merge(providers::toml_section(path, section)?);
        }
        figment = figment.merge(providers::env(&prefix, env, &shape));
        if let Some(flags) = providers::overrides(overrides)? {
            figment = figment.merge(flags);
        }
        // Lossy extraction parses strings as numbers/booleans only where the target type asks
        // for one, so "8080" stays a string for string fields and `yes`/`on` work for booleans.
        figment
            .extract_lossy::<T>()
            .map_err(|e| providers::to_config_error(&e, section, &prefix))
    }
}

/// Strips trailing underscores so `LLM_PROXY`, `LLM_PROXY_` and `LLM_PROXY__` all mean the same.
fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('_').to_ascii_uppercase()
}

/// The process environment, skipping variables whose name or value is not UTF-8.
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The listen port: the service's own `<PREFIX>__PORT` (already in its config) wins, then plain
/// `PORT` when `honour_plain_port` (one service per container), then `default`.
pub fn resolve_port(
    service_port: Option<u16>,
    default: u16,
    honour_plain_port: bool,
) -> Result<u16, ConfigError> {
    resolve_port_with(
        service_port,
        default,
        honour_plain_port,
        |name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(raw)) => Some(raw.to_string_lossy().into_owned()),
        },
    )
}

/// As [`resolve_port`], reading `PORT` through `lookup`.
pub fn resolve_port_with(
    service_port: Option<u16>,
    default: u16,
    honour_plain_port: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<u16, ConfigError> {
    if let Some(port) = service_port {
        return Ok(port);
    }
    if !honour_plain_port {
        return Ok(default);
    }
    if let Some(raw) = lookup("PORT").filter(|v| !v.trim().is_empty()) {
        return raw
            .trim()
            .parse::<u16>()
            .map_err(|_| ConfigError::InvalidValue {
                key: "PORT".to_owned(),
                origin: providers::ENV_ORIGIN.to_owned(),
                message: format!("expected a port number between 0 and 65535, found {raw:?}"),
            });
    }
    Ok(default)
}

#[cfg(test)]
mod tests;
