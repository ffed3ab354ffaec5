//! The LLM proxy's model table in the litellm format (`codelab_llm_proxy::routing::
//! ModelTable::parse`, what `LLM_PROXY__CONFIG_FILE` is read with).
//!
//! Input: the YAML text of the file. The environment holds one provider key and one base URL,
//! so `os.environ/...` references resolve or fail.
//!
//! Invariants: no panic (hostile numbers included); a loaded table lists each name once, always
//! the mock names, every listed name routes to at least one deployment with a base URL and a
//! positive timeout if any, prices (`model_info`) that are finite and not negative and give a
//! finite, non-negative cost, and round-robin returns the same deployments in every rotation.
#![no_main]

use std::collections::HashSet;

use codelab_llm_proxy::routing::{MOCK_MODEL_NAMES, ModelTable, ProviderEnv, Route};
use codelab_protocol::openai::Usage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = ProviderEnv::from_pairs([
        ("OPENAI_API_KEY", "sk-fuzz"),
        ("OLLAMA_API_BASE", "http://ollama:11434"),
    ]);
    let Ok(table) = ModelTable::parse(text, &env) else {
        return;
    };
    let listed = table.list();
    let mut names = HashSet::new();
    for model in &listed {
        assert!(
            names.insert(model.name.clone()),
            "{} listed twice",
            model.name
        );
        let first = table.exact(&model.name).expect("a listed name routes");
        assert!(!first.deployments.is_empty());
        for deployment in &first.deployments {
            assert!(
                !deployment.api_base.is_empty(),
                "no base URL for {}",
                model.name
            );
            if let Some(timeout) = deployment.timeout {
                assert!(!timeout.is_zero());
            }
            if let Some(prices) = deployment.prices {
                let all = [prices.input, prices.output, prices.cache_read.unwrap_or(0.0)];
                assert!(
                    all.iter().all(|price| price.is_finite() && *price >= 0.0),
                    "{prices:?}"
                );
                let usage = Usage::new(1_000_000, 1_000_000).with_cached_tokens(500_000);
                let cost = prices.cost(&usage);
                assert!(cost.is_finite() && cost >= 0.0, "{prices:?}: {cost}");
            }
        }
        let second = table.exact(&model.name).expect("a listed name routes");
        let key = |route: &Route| {
            let mut bases: Vec<String> = route
                .deployments
                .iter()
                .map(|d| format!("{:?}|{}|{}", d.provider, d.upstream_model, d.api_base))
                .collect();
            bases.sort();
            bases
        };
        assert_eq!(
            key(&first),
            key(&second),
            "rotation changed the deployments"
        );
    }
    for mock in MOCK_MODEL_NAMES {
        assert!(names.contains(mock), "the mock name {mock} is missing");
    }
    let _ = table.fallbacks_for("gpt-4");
});
