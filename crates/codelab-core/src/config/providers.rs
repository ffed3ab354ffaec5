//! figment providers for the TOML section, the environment and flags, and error rendering.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::Serialize;

use super::{ConfigError, REDACTED};

/// How values from the environment are described in errors.
pub(super) const ENV_ORIGIN: &str = "environment variable";
/// How values from the TOML file are described in errors (followed by the path).
const FILE_ORIGIN: &str = "TOML file";
/// How override values are described in errors.
const FLAG_ORIGIN: &str = "command-line flag";

/// A ready-made dictionary with metadata that names where it came from.
pub(super) struct DictProvider {
    dict: Dict,
    metadata: Metadata,
}

impl Provider for DictProvider {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The `[section]` table of the TOML file at `path` (an empty section when it is absent).
pub(super) fn toml_section(path: &Path, section: &str) -> Result<DictProvider, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let parse_error = |message: String| ConfigError::ParseFile {
        path: path.to_owned(),
        message,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let message = e.message().to_owned();
        match e.span() {
            Some(span) => {
                let (line, column) = line_column(&text, span.start);
                parse_error(format!("line {line} column {column}: {message}"))
            }
            None => parse_error(message),
        }
    })?;

    let mut current = toml::Value::Table(table);
    for part in section.split('.').filter(|p| !p.is_empty()) {
        current = match current {
            toml::Value::Table(mut t) => match t.remove(part) {
                Some(v) => v,
                None => toml::Value::Table(toml::Table::new()),
            },
            _ => toml::Value::Table(toml::Table::new()),
        };
        if !current.is_table() {
            return Err(parse_error(format!("[{section}] must be a table")));
        }
    }
    let dict = match Value::serialize(&current) {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => return Err(parse_error(format!("[{section}] must be a table"))),
        Err(e) => return Err(parse_error(e.to_string())),
    };

    let file: PathBuf = path.to_owned();
    let section = section.to_owned();
    let metadata =
        Metadata::from(FILE_ORIGIN, file.as_path()).interpolater(move |_, keys: &[&str]| {
            if section.is_empty() {
                keys.join(".")
            } else {
                format!("{section}.{}", keys.join("."))
            }
        });
    Ok(DictProvider { dict, metadata })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `<prefix>__KEY[__SUB]` variables of `env`, typed by the shape of the default value.
pub(super) fn env(
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
    shape: &serde_json::Value,
) -> DictProvider {
    let head = format!("{prefix}__");
    let mut vars: Vec<(Vec<String>, String, String)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            // Compose passes empty strings for unset `${VAR}`: an empty value means unset.
            if value.is_empty() {
                return None;
            }
            let rest = match name.get(..head.len()) {
                Some(p) if p.eq_ignore_ascii_case(&head) => name.get(head.len()..)?,
                _ => return None,
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return None;
            }
            Some((path, name, value))
        })
        .collect();
    // Sorted so `A` is applied before `A__B` and the result never depends on env order.
    vars.sort();

    let mut dict = Dict::new();
    let mut names = Vec::with_capacity(vars.len());
    for (path, name, raw) in vars {
        let value = typed_env_value(&raw, shape_at(shape, &path));
        insert_at(&mut dict, &path, value);
        names.push((path, name));
    }

    let names = Arc::new(names);
    let prefix = prefix.to_owned();
    let metadata = Metadata::named(ENV_ORIGIN).interpolater(move |_, keys: &[&str]| {
        // Name the variable that was actually set: the longest set path that prefixes `keys`.
        names
            .iter()
            .filter(|(path, _)| {
                path.len() <= keys.len() && path.iter().zip(keys).all(|(a, b)| a == b)
            })
            .max_by_key(|(path, _)| path.len())
            .map_or_else(
                || format!("{prefix}__{}", keys.join("__").to_ascii_uppercase()),
                |(_, name)| name.clone(),
            )
    });
    DictProvider { dict, metadata }
}

/// The default value's sub-value at `path`, if the default has one.
fn shape_at<'a>(shape: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter()
        .try_fold(shape, |node, key| node.as_object()?.get(key))
}

/// Turns a raw variable into a value of the kind the setting expects.
///
/// Scalars stay strings: lossy extraction parses them as numbers or booleans only where the
/// target type asks for one. Lists accept a JSON array or comma-separated items; tables accept
/// a JSON object; unknown or null-default keys accept a JSON object/array, else a string.
fn typed_env_value(raw: &str, shape: Option<&serde_json::Value>) -> Value {
    use serde_json::Value as J;
    let json_container = |wanted: fn(&J) -> bool| -> Option<Value> {
        let trimmed = raw.trim_start();
        if !(trimmed.starts_with('[') || trimmed.starts_with('{')) {
            return None;
        }
        let parsed: J = serde_json::from_str(raw).ok()?;
        if wanted(&parsed) {
            Value::serialize(&parsed).ok()
        } else {
            None
        }
    };
    match shape {
        Some(J::Array(_)) => json_container(J::is_array).unwrap_or_else(|| {
            let items: Vec<Value> = raw
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(Value::from)
                .collect();
            Value::from(items)
        }),
        Some(J::Object(_)) => json_container(J::is_object).unwrap_or_else(|| Value::from(raw)),
        Some(J::Null) | None => {
            json_container(|j| j.is_object() || j.is_array()).unwrap_or_else(|| Value::from(raw))
        }
        Some(_) => Value::from(raw),
    }
}

/// Puts `value` at `path` in `dict`, creating (or replacing non-table) intermediate tables.
fn insert_at(dict: &mut Dict, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = dict;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, next) = entry else {
            return;
        };
        node = next;
    }
    node.insert(last.clone(), value);
}

/// The overrides as a provider; `None` when they serialize to nothing (`()`, all `None`).
pub(super) fn overrides(overrides: &impl Serialize) -> Result<Option<DictProvider>, ConfigError> {
    let json = serde_json::to_value(overrides)
        .map_err(|e| ConfigError::Invalid(format!("overrides do not serialize: {e}")))?;
    let json = match strip_nulls(json) {
        None => return Ok(None),
        Some(serde_json::Value::Object(map)) if map.is_empty() => return Ok(None),
        Some(json @ serde_json::Value::Object(_)) => json,
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "overrides must serialize to a table, got {other}"
            )));
        }
    };
    if let Some(key) = find_redacted(&json, String::new()) {
        return Err(ConfigError::Invalid(format!(
            "override {key} is a redacted secret; pass secrets in overrides as plain strings"
        )));
    }
    let dict = match Value::serialize(&json) {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => return Ok(None),
        Err(e) => {
            return Err(ConfigError::Invalid(format!(
                "overrides do not serialize: {e}"
            )));
        }
    };
    let metadata = Metadata::named(FLAG_ORIGIN)
        .interpolater(|_, keys: &[&str]| format!("--{}", keys.join("-").replace('_', "-")));
    Ok(Some(DictProvider { dict, metadata }))
}

/// Removes null members of tables (recursively); `None` when the whole value is null.
fn strip_nulls(value: serde_json::Value) -> Option<serde_json::Value> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) => Some(serde_json::Value::Object(
            map.into_iter()
                .filter_map(|(k, v)| Some((k, strip_nulls(v)?)))
                .collect(),
        )),
        other => Some(other),
    }
}

/// The dotted key of the first string equal to `"[redacted]"`, if any.
fn find_redacted(value: &serde_json::Value, at: String) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s == REDACTED => Some(at),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            find_redacted(
                v,
                if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                },
            )
        }),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_redacted(v, format!("{at}.{i}"))),
        _ => None,
    }
}

/// Renders figment's error as one line naming the key (as the user wrote it) and its source.
pub(super) fn to_config_error(error: &figment::Error, section: &str, prefix: &str) -> ConfigError {
    let path: Vec<&str> = error.path.iter().map(String::as_str).collect();
    let profile = Profile::Default;

    if let Kind::MissingField(field) = &error.kind {
        let mut keys = path.clone();
        keys.push(field);
        let dotted = keys.join(".");
        let variable = format!("{prefix}__{}", keys.join("__").to_ascii_uppercase());
        let key = if section.is_empty() {
            format!("{dotted} (set {variable})")
        } else {
            format!("{section}.{dotted} (set {variable})")
        };
        return ConfigError::MissingValue { key };
    }

    let message = kind_message(&error.kind);
    let more = error.count().saturating_sub(1);
    let message = if more > 0 {
        format!("{message} (and {more} more errors)")
    } else {
        message
    };
    match &error.metadata {
        Some(metadata) => {
            let key = if path.is_empty() {
                if section.is_empty() {
                    "configuration".to_owned()
                } else {
                    section.to_owned()
                }
            } else {
                metadata.interpolate(&profile, &path)
            };
            let origin = match metadata.source.as_ref().and_then(|s| s.file_path()) {
                Some(file) => format!("{} {}", metadata.name, file.display()),
                None => metadata.name.to_string(),
            };
            ConfigError::InvalidValue {
                key,
                origin,
                message,
            }
        }
        None if !path.is_empty() => ConfigError::InvalidValue {
            key: path.join("."),
            origin: "configuration".to_owned(),
            message,
        },
        None => ConfigError::Invalid(message),
    }
}

/// "expected X, found Y" for type errors, serde's own text otherwise.
fn kind_message(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found {}", describe_actual(actual))
        }
        Kind::InvalidLength(len, expected) => format!("expected {expected}, found {len} items"),
        Kind::UnknownVariant(found, expected) => {
            format!("expected one of {}, found {found:?}", expected.join(", "))
        }
        Kind::UnknownField(found, expected) => {
            format!(
                "unknown setting {found:?}, expected one of {}",
                expected.join(", ")
            )
        }
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The found value as a user would have typed it.
fn describe_actual(actual: &Actual) -> String {
    match actual {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a table".to_owned(),
        other => other.to_string(),
    }
}
