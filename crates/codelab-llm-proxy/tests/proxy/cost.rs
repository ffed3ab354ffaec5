//! Every answer names the deployment that answered (`x-codelab-provider`, `x-codelab-model`)
//! and, when the model table prices it, reports its cost in `usage.cost` (docs/llm-proxy.md,
//! "Prices and cost").

use codelab_llm_proxy::{ProxyService, config::Config};
use codelab_testkit::FakeReply;

use super::*;

/// A model table entry priced in LiteLLM's `model_info` fields.
fn priced(name: &str, model: &str, base: &str, info: &str) -> String {
    format!(
        "  - model_name: {name}\n    litellm_params:\n      model: {model}\n      api_base: {base}\n      \
         api_key: sk-fake-key\n    model_info:\n{info}"
    )
}

fn close(actual: &Value, expected: f64) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("a cost, got {actual}"));
    assert!(
        (actual - expected).abs() <= expected * 1e-12,
        "cost {actual}, expected {expected}"
    );
}

#[tokio::test]
async fn a_fallback_is_priced_and_named_as_the_deployment_that_answered() {
    let primary = FakeLlm::start(FakeFlavor::OpenAi).await;
    let secondary = FakeLlm::start(FakeFlavor::OpenAi).await;
    primary.set_default_reply(FakeReply::status(503));
    secondary.set_default_reply(
        FakeReply::text(&["res", "cued"])
            .with_usage(1000, 200)
            .with_cached_tokens(600),
    );
    let mut yaml = String::from("model_list:\n");
    yaml.push_str(&priced(
        "main",
        "openai/gpt-4o",
        &primary.openai_base(),
        "      input_cost_per_token: 0.01\n      output_cost_per_token: 0.02\n",
    ));
    yaml.push_str(&priced(
        "backup",
        "openai/gpt-4o-mini",
        &secondary.openai_base(),
        "      input_cost_per_token: 1.5e-7\n      output_cost_per_token: 6.0e-7\n      \
         cache_read_input_token_cost: 7.5e-8\n",
    ));
    yaml.push_str("router_settings:\n  num_retries: 0\n  fallbacks: [{\"main\": [\"backup\"]}]\n");
    let proxy = Proxy::start(Some(yaml), |_| {}).await;
    let expected = 400.0 * 1.5e-7 + 600.0 * 7.5e-8 + 200.0 * 6.0e-7;

    // Streamed: the usage chunk carries the cost; the headers name the backup.
    let mut request = ask_streamed("main", "x");
    request["stream_options"] = json!({"include_usage": true});
    let response = proxy.chat(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-codelab-provider"], "openai");
    assert_eq!(response.headers()["x-codelab-model"], "gpt-4o-mini");
    let chunks = json_chunks(&sse_payloads(&response.text().await.unwrap()));
    let usage = &chunks.last().expect("a usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 1000);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 600);
    close(&usage["cost"], expected);

    // Not streamed: the same.
    let response = proxy.chat(ask("main", "x")).await;
    assert_eq!(response.headers()["x-codelab-model"], "gpt-4o-mini");
    let body: Value = response.json().await.unwrap();
    close(&body["usage"]["cost"], expected);
}

#[tokio::test]
async fn an_unpriced_model_reports_tokens_and_no_cost() {
    let (fake, proxy) = provider_proxy(FakeFlavor::Anthropic, |_| {}).await;
    fake.set_default_reply(FakeReply::text(&["hi"]).with_usage(6, 2));
    let response = proxy.chat(ask("m", "hi")).await;
    assert_eq!(response.headers()["x-codelab-provider"], "anthropic");
    assert_eq!(
        response.headers()["x-codelab-model"],
        "claude-sonnet-4-20250514"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["total_tokens"], 8);
    assert!(body["usage"].get("cost").is_none(), "{}", body["usage"]);

    // The built-in mock has no price either.
    let proxy = Proxy::start(None, |_| {}).await;
    let response = proxy.chat(ask("mock-llm", "hello there")).await;
    assert_eq!(response.headers()["x-codelab-provider"], "mock");
    let body: Value = response.json().await.unwrap();
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"].get("cost").is_none(), "{}", body["usage"]);
}

#[tokio::test]
async fn a_bad_price_in_the_model_table_is_refused_naming_the_model() {
    for (info, field) in [
        (
            "      input_cost_per_token: -0.1\n      output_cost_per_token: 0.1\n",
            "input_cost_per_token",
        ),
        ("      input_cost_per_token: 0.1\n", "output_cost_per_token"),
    ] {
        let mut yaml = String::from("model_list:\n");
        yaml.push_str(&priced("pricey", "openai/x", "http://127.0.0.1:9/v1", info));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        let config = Config {
            internal_api_key: Secret::new(KEY),
            config_file: Some(file.path().to_owned()),
            ..Config::default()
        };
        let error = ProxyService::build(config, SharedDeps::default())
            .await
            .err()
            .expect("the table is refused")
            .to_string();
        assert!(error.contains("pricey") && error.contains(field), "{error}");
    }
}
