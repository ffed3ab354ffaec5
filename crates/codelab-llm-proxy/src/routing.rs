//! The model table: which upstream serves a model name.
//!
//! The table is read from the original's `litellm_config.yaml` format, so users of the original
//! keep their file. Resolution order for a requested name: the mock in `mock` mode; an exact
//! `model_name` (several entries are load-balanced round-robin); a provider prefix such as
//! `openai/…` or `anthropic/…`; the external LiteLLM upstream when configured; else unknown.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::pricing::Prices;
use crate::providers::{Deployment, ProviderKind};

/// Names of the built-in mock model: the original runtime's default is `fake-llm`.
pub const MOCK_MODEL_NAMES: [&str; 2] = ["mock-llm", "fake-llm"];

/// Failure to read or understand the model table.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("cannot read model table {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid model table {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Environment lookups the table needs (`os.environ/NAME` keys, provider base URLs); taken
/// once at start from the service's `SharedDeps::env`, so resolution is pure and tests can
/// inject their own.
#[derive(Debug, Clone, Default)]
pub struct ProviderEnv(HashMap<String, String>);

impl ProviderEnv {
    /// An explicit set of variables.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        ProviderEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, if set and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn first(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| self.get(n)).map(str::to_owned)
    }
}

/// One model name of the table with its deployments.
#[derive(Debug)]
struct ModelEntry {
    deployments: Vec<Deployment>,
    context_length: Option<u64>,
    next: AtomicUsize,
}

/// The routing table, shared by all requests.
#[derive(Debug, Default)]
pub struct ModelTable {
    /// Model names in file order (for listing).
    names: Vec<String>,
    entries: HashMap<String, ModelEntry>,
    fallbacks: HashMap<String, Vec<String>>,
    /// `num_retries` from `router_settings`/`litellm_settings`, when the file sets it.
    pub num_retries: Option<u32>,
}

/// A model name resolved to the deployments to try, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub deployments: Vec<Deployment>,
}

/// A listed model: name, provider label, context length.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedModel {
    pub name: String,
    pub provider: ProviderKind,
    pub context_length: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct LiteLlmFile {
    #[serde(default)]
    model_list: Vec<LiteLlmModel>,
    #[serde(default)]
    router_settings: Option<LiteLlmSettings>,
    #[serde(default)]
    litellm_settings: Option<LiteLlmSettings>,
}

#[derive(Debug, Deserialize)]
struct LiteLlmModel {
    model_name: String,
    litellm_params: LiteLlmParams,
    #[serde(default)]
    model_info: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
struct LiteLlmParams {
    model: String,
    #[serde(default)]
    api_base: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct LiteLlmSettings {
    #[serde(default)]
    fallbacks: Option<Vec<HashMap<String, Vec<String>>>>,
    #[serde(default)]
    num_retries: Option<u32>,
}

impl ModelTable {
    /// A table with only the built-in mock names.
    pub fn builtin() -> Self {
        let mut table = ModelTable::default();
        table.add_mock_names();
        table
    }

    /// Reads a `litellm_config.yaml`-format file; the mock names are added when absent.
    pub fn load(path: &Path, env: &ProviderEnv) -> Result<Self, RoutingError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, env).map_err(|message| RoutingError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the YAML text of a model table.
    pub fn parse(text: &str, env: &ProviderEnv) -> Result<Self, String> {
        let file: LiteLlmFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let mut table = ModelTable::default();
        for (position, model) in file.model_list.into_iter().enumerate() {
            let mut deployment = deployment_for(&model.litellm_params.model, env).ok_or_else(|| {
                format!(
                    "model_list[{position}] ({}): unknown provider in litellm_params.model {:?}; \
                     expected a prefix such as openai/, anthropic/, ollama/, openrouter/, azure/, hosted_vllm/ or mock/",
                    model.model_name, model.litellm_params.model
                )
            })?;
            let params = model.litellm_params;
            if let Some(base) = params.api_base {
                deployment.api_base = resolve_env_ref(&base, env, position, "api_base")?;
            }
            if let Some(key) = params.api_key {
                deployment.api_key = Some(SecretString::from(resolve_env_ref(
                    &key, env, position, "api_key",
                )?));
            }
            if let Some(version) = params.api_version {
                deployment.api_version =
                    Some(resolve_env_ref(&version, env, position, "api_version")?);
            }
            if let Some(secs) = params.timeout {
                // `try_`: a number too large for a `Duration` (fuzz/seeds/model_table/huge_timeout.yaml) is
                // refused like a negative one instead of panicking.
                let timeout = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|t| !t.is_zero());
                let Some(timeout) = timeout else {
                    return Err(format!(
                        "model_list[{position}]: timeout must be a positive number of seconds"
                    ));
                };
                deployment.timeout = Some(timeout);
            }
            if deployment.api_base.is_empty() {
                return Err(format!(
                    "model_list[{position}] ({}): api_base is required for {}",
                    model.model_name, params.model
                ));
            }
            if let Some(info) = &model.model_info {
                deployment.prices = Prices::from_model_info(info).map_err(|message| {
                    format!("model_list[{position}] ({}): {message}", model.model_name)
                })?;
            }
            let context_length = model.model_info.as_ref().and_then(|info| {
                ["context_length", "max_input_tokens", "max_tokens"]
                    .iter()
                    .find_map(|k| info.get(*k).and_then(serde_norway::Value::as_u64))
            });
            table.insert(&model.model_name, deployment, context_length);
        }
        for settings in [file.router_settings, file.litellm_settings]
            .into_iter()
            .flatten()
        {
            for map in settings.fallbacks.unwrap_or_default() {
                for (from, to) in map {
                    table.fallbacks.entry(from).or_default().extend(to);
                }
            }
            if settings.num_retries.is_some() {
                table.num_retries = settings.num_retries;
            }
        }
        table.add_mock_names();
        Ok(table)
    }

    fn insert(&mut self, name: &str, deployment: Deployment, context_length: Option<u64>) {
        match self.entries.get_mut(name) {
            Some(entry) => {
                entry.deployments.push(deployment);
                entry.context_length = entry.context_length.or(context_length);
            }
            None => {
                self.names.push(name.to_owned());
                self.entries.insert(
                    name.to_owned(),
                    ModelEntry {
                        deployments: vec![deployment],
                        context_length,
                        next: AtomicUsize::new(0),
                    },
                );
            }
        }
    }

    fn add_mock_names(&mut self) {
        for name in MOCK_MODEL_NAMES {
            if !self.entries.contains_key(name) {
                self.insert(name, mock_deployment(name), Some(4096));
            }
        }
    }

    /// The deployments of an exact table name, rotated so successive requests start at the
    /// next deployment (round-robin load balancing).
    pub fn exact(&self, name: &str) -> Option<Route> {
        let entry = self.entries.get(name)?;
        let n = entry.deployments.len();
        let start = entry.next.fetch_add(1, Ordering::Relaxed) % n;
        let deployments = (0..n)
            .map(|i| entry.deployments[(start + i) % n].clone())
            .collect();
        Some(Route { deployments })
    }

    /// Fallback model names configured for `name`.
    pub fn fallbacks_for(&self, name: &str) -> &[String] {
        self.fallbacks.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every model name of the table, in file order, with its first deployment's provider.
    pub fn list(&self) -> Vec<ListedModel> {
        self.names
            .iter()
            .filter_map(|name| {
                let entry = self.entries.get(name)?;
                Some(ListedModel {
                    name: name.clone(),
                    provider: entry.deployments.first()?.provider,
                    context_length: entry.context_length,
                })
            })
            .collect()
    }
}

/// The deployment of the built-in mock.
pub fn mock_deployment(name: &str) -> Deployment {
    Deployment {
        provider: ProviderKind::Mock,
        upstream_model: name.to_owned(),
        api_base: "mock://".to_owned(),
        api_key: None,
        api_version: None,
        timeout: None,
        prices: None,
    }
}

/// `os.environ/NAME` is LiteLLM's way to name an environment variable in the file.
fn resolve_env_ref(
    value: &str,
    env: &ProviderEnv,
    position: usize,
    field: &str,
) -> Result<String, String> {
    match value.strip_prefix("os.environ/") {
        Some(var) => env.get(var).map(str::to_owned).ok_or_else(|| {
            format!("model_list[{position}].litellm_params.{field}: environment variable {var} is not set")
        }),
        None => Ok(value.to_owned()),
    }
}

/// Resolves a LiteLLM-style `provider/model` name to a deployment with the provider's default
/// base URL and key from the environment; `None` when the prefix is unknown.
pub fn deployment_for(name: &str, env: &ProviderEnv) -> Option<Deployment> {
    let (prefix, model) = name.split_once('/')?;
    if model.is_empty() {
        return None;
    }
    let key = |names: &[&str]| env.first(names).map(SecretString::from);
    let (provider, api_base, api_key, api_version) = match prefix {
        "openai" | "text-completion-openai" => (
            ProviderKind::OpenAi,
            env.first(&["OPENAI_API_BASE", "OPENAI_BASE_URL"])
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned()),
            key(&["OPENAI_API_KEY"]),
            None,
        ),
        "openrouter" => (
            ProviderKind::OpenAi,
            env.first(&["OPENROUTER_API_BASE"])
                .unwrap_or_else(|| "https://openrouter.ai/api/v1".to_owned()),
            key(&["OPENROUTER_API_KEY"]),
            None,
        ),
        "anthropic" => (
            ProviderKind::Anthropic,
            env.first(&["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"])
                .unwrap_or_else(|| "https://api.anthropic.com".to_owned()),
            key(&["ANTHROPIC_API_KEY"]),
            None,
        ),
        "ollama" | "ollama_chat" => (
            ProviderKind::Ollama,
            env.first(&["OLLAMA_API_BASE", "OLLAMA_BASE_URL"])
                .unwrap_or_else(|| "http://localhost:11434".to_owned()),
            None,
            None,
        ),
        "azure" => (
            ProviderKind::Azure,
            env.first(&["AZURE_API_BASE"]).unwrap_or_default(),
            key(&["AZURE_API_KEY"]),
            Some(
                env.first(&["AZURE_API_VERSION"])
                    .unwrap_or_else(|| "2024-02-15-preview".to_owned()),
            ),
        ),
        "hosted_vllm" | "vllm" => (
            ProviderKind::OpenAi,
            env.first(&["HOSTED_VLLM_API_BASE", "VLLM_BASE_URL"])
                .unwrap_or_else(|| "http://localhost:8000/v1".to_owned()),
            key(&["HOSTED_VLLM_API_KEY", "VLLM_API_KEY"]),
            None,
        ),
        "lm_studio" => (
            ProviderKind::OpenAi,
            env.first(&["LM_STUDIO_API_BASE"])
                .unwrap_or_else(|| "http://localhost:1234/v1".to_owned()),
            key(&["LM_STUDIO_API_KEY"]),
            None,
        ),
        "mock" => return Some(mock_deployment(model)),
        _ => return None,
    };
    Some(Deployment {
        provider,
        upstream_model: model.to_owned(),
        api_base,
        api_key,
        api_version,
        timeout: None,
        prices: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const FILE: &str = r#"
model_list:
  - model_name: gpt-4.1
    litellm_params:
      model: openrouter/openai/gpt-4-turbo
      api_key: os.environ/OPENROUTER_API_KEY
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20241022
      api_key: os.environ/ANTHROPIC_API_KEY
      timeout: 90
  - model_name: local
    litellm_params:
      model: ollama/qwen3:0.6b
      api_base: http://ollama:11434
  - model_name: local
    litellm_params:
      model: hosted_vllm/Qwen/Qwen3-0.6B
      api_base: http://vllm:8000/v1
router_settings:
  num_retries: 1
  fallbacks: [{"gpt-4.1": ["claude"]}]
litellm_settings:
  drop_params: true
"#;

    fn env() -> ProviderEnv {
        ProviderEnv::from_pairs([
            ("OPENROUTER_API_KEY", "or-key"),
            ("ANTHROPIC_API_KEY", "an-key"),
        ])
    }

    #[test]
    fn litellm_file_is_understood() {
        let table = ModelTable::parse(FILE, &env()).unwrap();
        let route = table.exact("gpt-4.1").unwrap();
        let d = &route.deployments[0];
        assert_eq!(d.provider, ProviderKind::OpenAi);
        assert_eq!(d.api_base, "https://openrouter.ai/api/v1");
        assert_eq!(d.upstream_model, "openai/gpt-4-turbo");
        assert_eq!(d.api_key.as_ref().unwrap().expose_secret(), "or-key");
        let claude = &table.exact("claude").unwrap().deployments[0];
        assert_eq!(claude.timeout, Some(Duration::from_secs(90)));
        assert_eq!(table.fallbacks_for("gpt-4.1"), ["claude".to_owned()]);
        assert_eq!(table.num_retries, Some(1));
        let names: Vec<_> = table.list().into_iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            ["gpt-4.1", "claude", "local", "mock-llm", "fake-llm"]
        );
    }

    #[test]
    fn repeated_names_rotate_round_robin() {
        let table = ModelTable::parse(FILE, &env()).unwrap();
        let first = table.exact("local").unwrap();
        let second = table.exact("local").unwrap();
        assert_eq!(first.deployments.len(), 2);
        assert_eq!(first.deployments[0].provider, ProviderKind::Ollama);
        assert_eq!(second.deployments[0].upstream_model, "Qwen/Qwen3-0.6B");
    }

    #[test]
    fn missing_environment_variable_is_named() {
        let err = ModelTable::parse(FILE, &ProviderEnv::default()).unwrap_err();
        assert!(err.contains("OPENROUTER_API_KEY"), "{err}");
    }

    #[test]
    fn unknown_prefix_is_an_error_naming_the_entry() {
        let err = ModelTable::parse(
            "model_list:\n  - model_name: x\n    litellm_params:\n      model: bedrock/foo\n",
            &env(),
        )
        .unwrap_err();
        assert!(err.contains("model_list[0] (x)"), "{err}");
    }

    /// fuzz/seeds/model_table/huge_timeout.yaml: a timeout past `Duration`'s range panicked.
    #[test]
    fn timeouts_out_of_range_are_refused_not_a_panic() {
        for timeout in ["1e300", "-1", "0", ".nan", ".inf", "1e-10"] {
            let text = format!(
                "model_list:\n  - model_name: slow\n    litellm_params:\n      \
                 model: anthropic/claude\n      timeout: {timeout}\n"
            );
            let err = ModelTable::parse(&text, &env()).unwrap_err();
            assert!(
                err.contains("timeout must be a positive number"),
                "{timeout}: {err}"
            );
        }
    }

    #[test]
    fn prefixes_route_without_a_table_entry() {
        let env = ProviderEnv::from_pairs([("OLLAMA_API_BASE", "http://gpu:11434")]);
        let d = deployment_for("ollama/llama3", &env).unwrap();
        assert_eq!(
            (d.provider, d.api_base.as_str(), d.upstream_model.as_str()),
            (ProviderKind::Ollama, "http://gpu:11434", "llama3")
        );
        assert!(deployment_for("gpt-4", &env).is_none());
        assert!(deployment_for("unknown/x", &env).is_none());
        assert_eq!(
            deployment_for("azure/gpt4", &env)
                .unwrap()
                .api_version
                .as_deref(),
            Some("2024-02-15-preview")
        );
    }
}
