use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct Sample {
    port: Option<u16>,
    max_concurrent_requests: u64,
    request_timeout: f64,
    enable_rate_limiting: bool,
    name: String,
    origins: Vec<String>,
    numbers: Vec<u32>,
    api_key: Secret,
    limit: Option<u64>,
    proxy_url: Option<String>,
    labels: BTreeMap<String, String>,
    nested: Nested,
    environment: Environment,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
struct Nested {
    depth: u32,
    label: String,
}

impl Default for Nested {
    fn default() -> Self {
        Self {
            depth: 1,
            label: "deep".into(),
        }
    }
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            port: None,
            max_concurrent_requests: 100,
            request_timeout: 30.0,
            enable_rate_limiting: true,
            name: "proxy".into(),
            origins: vec!["*".into()],
            numbers: Vec::new(),
            api_key: Secret::new("change-me-internal-key"),
            limit: None,
            proxy_url: None,
            labels: BTreeMap::new(),
            nested: Nested::default(),
            environment: Environment::Development,
        }
    }
}

#[derive(Serialize, Default)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Sample, ConfigError> {
    load_with_flags(&(), pairs)
}

/// `[llm_proxy]` from the TOML file at `path` alone.
fn load_file(path: impl Into<std::path::PathBuf>) -> Result<Sample, ConfigError> {
    ConfigLoader::new(Some(path.into())).load_with_env("llm_proxy", "LLM_PROXY", &(), env(&[]))
}

/// `[llm_proxy]` from `LLM_PROXY__*` `pairs` and command-line `flags`, without a file.
fn load_with_flags(flags: &impl Serialize, pairs: &[(&str, &str)]) -> Result<Sample, ConfigError> {
    ConfigLoader::new(None).load_with_env("llm_proxy", "LLM_PROXY", flags, env(pairs))
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn nothing_set_keeps_every_default() {
    let config = load(&[("UNRELATED", "1"), ("GATEWAY__NAME", "other")]).unwrap();
    assert_eq!(config.max_concurrent_requests, 100);
    assert_eq!(config.name, "proxy");
    assert_eq!(config.origins, vec!["*"]);
    assert_eq!(config.api_key.expose(), "change-me-internal-key");
    assert_eq!(config.nested, Nested::default());
    assert!(config.enable_rate_limiting);
    assert_eq!(config.port, None);
}

#[test]
fn env_values_are_coerced_to_each_field_type() {
    let config = load(&[
        ("LLM_PROXY__PORT", "9000"),
        ("LLM_PROXY__MAX_CONCURRENT_REQUESTS", "250"),
        ("LLM_PROXY__REQUEST_TIMEOUT", "45"),
        ("LLM_PROXY__NAME", "8080"),
        ("LLM_PROXY__ORIGINS", "http://a.test, http://b.test,"),
        ("LLM_PROXY__NUMBERS", "[1, 2, 3]"),
        ("LLM_PROXY__API_KEY", "s3cret-value-from-env"),
        ("LLM_PROXY__LIMIT", "7"),
        ("LLM_PROXY__PROXY_URL", "4000"),
        ("LLM_PROXY__LABELS", r#"{"team":"core"}"#),
        ("LLM_PROXY__NESTED__DEPTH", "3"),
        ("LLM_PROXY__ENVIRONMENT", "PROD"),
    ])
    .unwrap();
    assert_eq!(config.port, Some(9000));
    assert_eq!(config.max_concurrent_requests, 250);
    assert!((config.request_timeout - 45.0).abs() < f64::EPSILON);
    assert_eq!(
        config.name, "8080",
        "string fields stay strings even when numeric"
    );
    assert_eq!(config.origins, vec!["http://a.test", "http://b.test"]);
    assert_eq!(config.numbers, vec![1, 2, 3]);
    assert_eq!(config.api_key.expose(), "s3cret-value-from-env");
    assert_eq!(config.limit, Some(7));
    assert_eq!(config.proxy_url.as_deref(), Some("4000"));
    assert_eq!(config.labels.get("team").map(String::as_str), Some("core"));
    assert_eq!(
        config.nested,
        Nested {
            depth: 3,
            label: "deep".into()
        }
    );
    assert_eq!(config.environment, Environment::Production);
}

#[test]
fn booleans_accept_the_usual_spellings() {
    for (raw, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("On", true),
        ("false", false),
        ("False", false),
        ("0", false),
        ("no", false),
        ("OFF", false),
    ] {
        let config = load(&[("LLM_PROXY__ENABLE_RATE_LIMITING", raw)]).unwrap();
        assert_eq!(config.enable_rate_limiting, expected, "{raw}");
    }
}

#[test]
fn lists_accept_a_json_array_and_numbers_accept_comma_lists() {
    let config = load(&[
        ("LLM_PROXY__ORIGINS", r#"["a,b", "c"]"#),
        ("LLM_PROXY__NUMBERS", "4,5"),
    ])
    .unwrap();
    assert_eq!(config.origins, vec!["a,b", "c"]);
    assert_eq!(config.numbers, vec![4, 5]);
}

#[test]
fn empty_env_values_mean_unset() {
    let config = load(&[
        ("LLM_PROXY__MAX_CONCURRENT_REQUESTS", ""),
        ("LLM_PROXY__NAME", ""),
        ("LLM_PROXY__PORT", ""),
    ])
    .unwrap();
    assert_eq!(config.max_concurrent_requests, 100);
    assert_eq!(config.name, "proxy");
    assert_eq!(config.port, None);
}

#[test]
fn bad_env_number_names_the_variable_and_the_value() {
    let err = load(&[("LLM_PROXY__MAX_CONCURRENT_REQUESTS", "abc")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for LLM_PROXY__MAX_CONCURRENT_REQUESTS (environment variable): expected u64, found "abc""#
    );
}

#[test]
fn bad_env_boolean_and_out_of_range_port_are_reported() {
    let err = load(&[("LLM_PROXY__ENABLE_RATE_LIMITING", "maybe")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for LLM_PROXY__ENABLE_RATE_LIMITING (environment variable): expected a boolean, found "maybe""#
    );
    let err = load(&[("LLM_PROXY__PORT", "70000")]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("invalid value for LLM_PROXY__PORT (environment variable): "),
        "{text}"
    );
    assert!(text.contains("u16") && text.contains("70000"), "{text}");
    let err = load(&[("LLM_PROXY__NESTED__DEPTH", "x")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid value for LLM_PROXY__NESTED__DEPTH "),
        "{err}"
    );
    let err = load(&[("LLM_PROXY__ENVIRONMENT", "qa")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for LLM_PROXY__ENVIRONMENT (environment variable): expected development, staging or production, found "qa""#
    );
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags() {
    let file = toml_file(
        r#"
        [llm_proxy]
        max_concurrent_requests = 10
        name = "from-file"
        port = 7000
        origins = ["file.test"]

        [llm_proxy.nested]
        label = "file-label"

        [gateway]
        name = "not-ours"
        "#,
    );
    let loader = ConfigLoader::new(Some(file.path().to_owned()));

    let from_file: Sample = loader
        .load_with_env("llm_proxy", "LLM_PROXY", &(), env(&[]))
        .unwrap();
    assert_eq!(from_file.max_concurrent_requests, 10);
    assert_eq!(from_file.name, "from-file");
    assert_eq!(from_file.port, Some(7000));
    assert_eq!(from_file.origins, vec!["file.test"]);
    assert_eq!(
        from_file.nested,
        Nested {
            depth: 1,
            label: "file-label".into()
        }
    );
    assert!(
        from_file.enable_rate_limiting,
        "keys absent from the file keep defaults"
    );

    let flags = Flags {
        port: Some(9999),
        name: None,
    };
    let merged: Sample = loader
        .load_with_env(
            "llm_proxy",
            "LLM_PROXY",
            &flags,
            env(&[("LLM_PROXY__NAME", "from-env"), ("LLM_PROXY__PORT", "8000")]),
        )
        .unwrap();
    assert_eq!(
        merged.name, "from-env",
        "env beats the file; a None flag changes nothing"
    );
    assert_eq!(merged.port, Some(9999), "flags beat env");
    assert_eq!(merged.max_concurrent_requests, 10);
}

#[test]
fn null_flags_are_ignored_even_without_skip_serializing_if() {
    #[derive(Serialize)]
    struct LooseFlags {
        name: Option<String>,
        port: Option<u16>,
    }
    let config: Sample = load_with_flags(
        &LooseFlags {
            name: None,
            port: Some(1),
        },
        &[("LLM_PROXY__NAME", "env")],
    )
    .unwrap();
    assert_eq!(config.name, "env");
    assert_eq!(config.port, Some(1));
}

#[test]
fn redacted_secrets_in_flags_are_refused() {
    #[derive(Serialize)]
    struct SecretFlags {
        api_key: Secret,
    }
    let err = load_with_flags(
        &SecretFlags {
            api_key: Secret::new("real"),
        },
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");

    #[derive(Serialize)]
    struct PlainFlags {
        api_key: String,
    }
    let config: Sample = load_with_flags(
        &PlainFlags {
            api_key: "generated-key-0123456789".into(),
        },
        &[],
    )
    .unwrap();
    assert_eq!(config.api_key.expose(), "generated-key-0123456789");
}

#[test]
fn bad_flag_value_names_the_flag() {
    #[derive(Serialize)]
    struct BadFlags {
        max_concurrent_requests: String,
    }
    let err = load_with_flags(
        &BadFlags {
            max_concurrent_requests: "lots".into(),
        },
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for --max-concurrent-requests (command-line flag): expected u64, found "lots""#
    );
}

#[test]
fn bad_file_value_names_the_key_and_the_file() {
    let file = toml_file("[llm_proxy]\nmax_concurrent_requests = \"abc\"\n");
    let err = load_file(file.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"invalid value for llm_proxy.max_concurrent_requests (TOML file {}): expected u64, found "abc""#,
            file.path().display()
        )
    );
}

#[test]
fn unreadable_or_malformed_files_are_clear_errors() {
    let missing = std::path::PathBuf::from("/nonexistent/codelab.toml");
    let err = load_file(missing).unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/codelab.toml: ")
    );

    let file = toml_file("[llm_proxy]\nname = \"unterminated\n");
    let err = load_file(file.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "invalid TOML in config file {}: line 2",
            file.path().display()
        )),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");

    let file = toml_file("llm_proxy = 5\n");
    let err = load_file(file.path()).unwrap_err();
    assert!(
        err.to_string().contains("[llm_proxy] must be a table"),
        "{err}"
    );
}

#[test]
fn a_file_without_the_section_keeps_defaults() {
    let file = toml_file("[gateway]\nname = \"x\"\n");
    let config: Sample = load_file(file.path()).unwrap();
    assert_eq!(config.name, "proxy");
}

#[test]
fn missing_required_setting_names_the_variable() {
    #[derive(Debug, Serialize, Deserialize, Default)]
    struct Strict {
        db_url: String,
    }
    let err = ConfigLoader::new(None)
        .load_with_env::<Strict, _>("auth", "AUTH_SERVICE", &(), env(&[]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing required setting auth.db_url (set AUTH_SERVICE__DB_URL)"
    );
}

#[test]
fn prefix_spelling_with_trailing_underscores_is_accepted() {
    let config: Sample = ConfigLoader::new(None)
        .load_with_env(
            "llm_proxy",
            "LLM_PROXY__",
            &(),
            env(&[("LLM_PROXY__NAME", "x")]),
        )
        .unwrap();
    assert_eq!(config.name, "x");
}

#[test]
fn environment_prefers_the_prefixed_variable() {
    let lookup = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(
        environment_with("GATEWAY", lookup(&[])).unwrap(),
        Environment::Development
    );
    assert_eq!(
        environment_with("GATEWAY", lookup(&[("ENVIRONMENT", "staging")])).unwrap(),
        Environment::Staging
    );
    assert_eq!(
        environment_with(
            "GATEWAY",
            lookup(&[("ENVIRONMENT", "staging"), ("GATEWAY__ENVIRONMENT", "Prod")])
        )
        .unwrap(),
        Environment::Production
    );
    assert_eq!(
        environment_with(
            "GATEWAY",
            lookup(&[("GATEWAY__ENVIRONMENT", ""), ("ENVIRONMENT", "")])
        )
        .unwrap(),
        Environment::Development
    );
    let err = environment_with("GATEWAY", lookup(&[("ENVIRONMENT", "qa")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for ENVIRONMENT (environment variable): expected development, staging or production, found "qa""#
    );
}

#[test]
fn environment_names_parse_case_insensitively() {
    for (raw, env) in [
        ("development", Environment::Development),
        ("DEV", Environment::Development),
        ("Staging", Environment::Staging),
        ("stage", Environment::Staging),
        ("PRODUCTION", Environment::Production),
        ("prod", Environment::Production),
    ] {
        assert_eq!(raw.parse::<Environment>().unwrap(), env);
    }
    assert!("test".parse::<Environment>().is_err());
    assert!(Environment::Production.is_hardened());
    assert!(Environment::Staging.is_hardened());
    assert!(!Environment::Development.is_hardened());
    assert_eq!(Environment::Staging.as_str(), "staging");
    assert_eq!(
        serde_json::to_string(&Environment::Production).unwrap(),
        r#""production""#
    );
}

#[test]
fn port_resolution_order() {
    let port_env =
        |value: &'static str| move |name: &str| (name == "PORT").then(|| value.to_owned());
    let no_env = |_: &str| None;
    assert_eq!(
        resolve_port_with(Some(9001), 8000, true, port_env("7000")).unwrap(),
        9001
    );
    assert_eq!(
        resolve_port_with(None, 8000, true, port_env("7000")).unwrap(),
        7000
    );
    assert_eq!(
        resolve_port_with(None, 8000, false, port_env("7000")).unwrap(),
        8000
    );
    assert_eq!(resolve_port_with(None, 8000, true, no_env).unwrap(), 8000);
    assert_eq!(
        resolve_port_with(None, 8000, true, port_env("")).unwrap(),
        8000
    );
    let err = resolve_port_with(None, 8000, true, port_env("eighty")).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value for PORT (environment variable): expected a port number between 0 and 65535, found "eighty""#
    );
    assert!(resolve_port_with(None, 8000, true, port_env("65536")).is_err());
    // A bad PORT is irrelevant when the service's own port is set or PORT is not honoured.
    assert_eq!(
        resolve_port_with(None, 8000, false, port_env("eighty")).unwrap(),
        8000
    );
}

#[test]
fn explicit_config_file_beats_codelab_config() {
    let loader = ConfigLoader::from_env_or(Some("/etc/explicit.toml".into()));
    assert_eq!(
        loader.file(),
        Some(std::path::Path::new("/etc/explicit.toml"))
    );
    assert_eq!(ConfigLoader::new(None).file(), None);
}
