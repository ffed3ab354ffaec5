//! The LLM proxy over real HTTP, against fake providers that speak each wire format: one test
//! binary, one module per area.
#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot unwrap has failed: the panic is the report"
)]

mod api;
mod cost;
mod non_stream;
mod openai_sdk;
mod stream_line_cap;

use codelab_core::config::Secret;
use codelab_core::service::{EnvVars, Service, SharedDeps};
use codelab_llm_proxy::ProxyService;
use codelab_llm_proxy::config::Config;
use codelab_testkit::{FakeFlavor, FakeLlm, ServerGuard};
use serde_json::{Value, json};

const KEY: &str = "test-internal-key-0123456789";

struct Proxy {
    server: ServerGuard,
    http: reqwest::Client,
    _table: Option<tempfile::NamedTempFile>,
}

impl Proxy {
    async fn start(table_yaml: Option<String>, tweak: impl FnOnce(&mut Config)) -> Proxy {
        Self::start_with_env(table_yaml, EnvVars::default(), tweak).await
    }

    async fn start_with_env(
        table_yaml: Option<String>,
        provider_env: EnvVars,
        tweak: impl FnOnce(&mut Config),
    ) -> Proxy {
        let table = table_yaml.map(|yaml| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), yaml).unwrap();
            file
        });
        let mut config = Config {
            internal_api_key: Secret::new(KEY),
            config_file: table.as_ref().map(|f| f.path().to_owned()),
            retry_backoff_ms: 1,
            request_timeout: 5.0,
            ..Config::default()
        };
        tweak(&mut config);
        let state = ProxyService::build(config, SharedDeps::default().with_env(provider_env))
            .await
            .unwrap();
        let server = ServerGuard::start(ProxyService::router(state)).await;
        Proxy {
            server,
            http: reqwest::Client::new(),
            _table: table,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn chat(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .header("X-Internal-Auth", KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `chat`'s answer as JSON.
    async fn chat_json(&self, body: Value) -> Value {
        self.chat(body).await.json().await.unwrap()
    }

    /// A raw JSON body to the chat endpoint, with the key.
    async fn post_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let request = self.http.post(self.url("/v1/chat/completions"));
        let request = request.header("X-Internal-Auth", KEY);
        let request = request.header("content-type", "application/json");
        request.body(body).send().await.unwrap()
    }

    /// `GET path`, with the internal key when `key` is given.
    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(key) = key {
            request = request.header("X-Internal-Auth", key);
        }
        request.send().await.unwrap()
    }

    /// `GET path` as JSON.
    async fn get_json(&self, path: &str, key: Option<&str>) -> Value {
        self.get(path, key).await.json().await.unwrap()
    }

    /// Streams a request and returns every `data:` payload (the `[DONE]` marker included).
    async fn chat_stream(&self, body: Value) -> Vec<String> {
        let response = self.chat(body).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        sse_payloads(&response.text().await.unwrap())
    }
}

fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|line| {
            line.strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
        })
        .map(|s| s.trim().to_owned())
        .collect()
}

fn json_chunks(payloads: &[String]) -> Vec<Value> {
    payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// A request for `model` with one user message.
fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user(text)})
}

/// [`ask`], streamed.
fn ask_streamed(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user(text), "stream": true})
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn table(entries: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from("model_list:\n");
    for (name, model, base) in entries {
        yaml.push_str(&format!(
            "  - model_name: {name}\n    litellm_params:\n      model: {model}\n      api_base: {base}\n      api_key: sk-fake-key\n"
        ));
    }
    yaml
}

/// Rebuilds tool calls from streamed chunks: (id, name, arguments) per index, and the finish reason.
fn collect_stream(chunks: &[Value]) -> (String, Vec<(String, String, String)>, Option<String>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str() {
                text.push_str(t);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap() as usize;
                if calls.len() <= index {
                    calls.resize(index + 1, Default::default());
                }
                if let Some(id) = call["id"].as_str() {
                    calls[index].0 = id.to_owned();
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    calls[index].1 = name.to_owned();
                }
                if let Some(args) = call["function"]["arguments"].as_str() {
                    calls[index].2.push_str(args);
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
        }
    }
    (text, calls, finish)
}

/// A fake upstream of `flavor` and a proxy serving it as model `m`, its config `tweak`ed.
async fn provider_proxy(flavor: FakeFlavor, tweak: impl FnOnce(&mut Config)) -> (FakeLlm, Proxy) {
    let fake = FakeLlm::start(flavor).await;
    let (model, base) = match flavor {
        FakeFlavor::OpenAi => ("openai/gpt-4o", fake.openai_base()),
        FakeFlavor::Anthropic => ("anthropic/claude-sonnet-4-20250514", fake.base_url()),
        FakeFlavor::Ollama => ("ollama/qwen3:0.6b", fake.base_url()),
    };
    let proxy = Proxy::start(Some(table(&[("m", model, &base)])), tweak).await;
    (fake, proxy)
}
