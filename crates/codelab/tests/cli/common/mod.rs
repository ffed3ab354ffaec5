//! What the deployment tests share: the environment variable names each service reads, taken
//! from the configuration structs themselves (`Config::default()` serialised), so Compose,
//! Helm and the configuration reference are checked against the code, not against a list;
//! a real nginx in front of test upstreams ([`nginx`]); real processes of the binary and a
//! private Redis ([`processes`]); the services as `codelab serve` processes wired to each other
//! ([`services`]) and the whole production topology on loopback ([`topology`]).

pub mod cli;
pub mod nginx;
pub mod private_postgres;
pub mod processes;
pub mod services;
pub mod topology;

use codelab_core::service::Service as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The default of every setting of a config struct, as JSON.
pub fn defaults_of(config: impl Serialize) -> BTreeMap<String, serde_json::Value> {
    match serde_json::to_value(config).unwrap() {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        other => panic!("a Config serialises to an object, got {other}"),
    }
}

/// Every built service: environment prefix -> its settings' defaults.
pub fn services() -> BTreeMap<&'static str, BTreeMap<String, serde_json::Value>> {
    BTreeMap::from([
        (
            codelab_llm_proxy::ProxyService::ENV_PREFIX,
            defaults_of(codelab_llm_proxy::Config::default()),
        ),
        (
            codelab_auth::AuthService::ENV_PREFIX,
            defaults_of(codelab_auth::Config::default()),
        ),
        (
            codelab_agent_runtime::RuntimeService::ENV_PREFIX,
            defaults_of(codelab_agent_runtime::Config::default()),
        ),
        (
            codelab_gateway::GatewayService::ENV_PREFIX,
            defaults_of(codelab_gateway::Config::default()),
        ),
        (
            codelab_website::WebsiteService::ENV_PREFIX,
            defaults_of(codelab_website::Config::default()),
        ),
    ])
}

/// Provider credentials and addresses the LLM proxy reads by their usual names (each is
/// checked to appear in the proxy's routing code).
pub const PROVIDER_VARIABLES: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_API_BASE",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_API_BASE",
    "ANTHROPIC_BASE_URL",
    "OPENROUTER_API_KEY",
    "OPENROUTER_API_BASE",
    "OLLAMA_API_BASE",
    "OLLAMA_BASE_URL",
    "AZURE_API_KEY",
    "AZURE_API_BASE",
    "AZURE_API_VERSION",
    "HOSTED_VLLM_API_KEY",
    "HOSTED_VLLM_API_BASE",
    "VLLM_API_KEY",
    "VLLM_BASE_URL",
    "LM_STUDIO_API_KEY",
    "LM_STUDIO_API_BASE",
];

/// Names read outside the `<PREFIX>__` scheme: the profile, the port, the log filter and the
/// provider variables.
pub fn plain_variables() -> BTreeSet<String> {
    let routing =
        std::fs::read_to_string(repo_root().join("crates/codelab-llm-proxy/src/routing.rs"))
            .unwrap();
    for name in PROVIDER_VARIABLES {
        assert!(
            routing.contains(&format!("\"{name}\"")),
            "{name} is not read by crates/codelab-llm-proxy/src/routing.rs"
        );
    }
    ["ENVIRONMENT", "PORT", "RUST_LOG"]
        .iter()
        .chain(PROVIDER_VARIABLES)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Whether `name` is a variable some service reads: `<PREFIX>__<KEY>` of a service
/// (`<PREFIX>__ENVIRONMENT` included), or a plain one.
pub fn is_known_variable(name: &str) -> bool {
    if plain_variables().contains(name) {
        return true;
    }
    let Some((prefix, key)) = name.split_once("__") else {
        return false;
    };
    if key == "ENVIRONMENT" {
        return true;
    }
    let key = key.to_ascii_lowercase();
    services()
        .get(prefix)
        .is_some_and(|keys| keys.contains_key(&key))
}

/// The JSON handed to deploy/tests/validate_deploy.py (`--config-keys`).
pub fn config_keys_json() -> serde_json::Value {
    let services: BTreeMap<_, Vec<_>> = services()
        .into_iter()
        .map(|(prefix, defaults)| (prefix, defaults.into_keys().collect()))
        .collect();
    serde_json::json!({
        "services": services,
        "plain": plain_variables(),
    })
}
