//! Tool-argument validation in the agent runtime (`codelab_agent_runtime::tools::
//! validate_arguments`): a model's raw `arguments` string checked against the tool's schema.
//!
//! Input: byte 0 picks the tool (a registered one, or the rest's first line as an unknown
//! name when it is past the registry), the rest is the raw arguments.
//!
//! Invariants: no panic; accepted arguments are a JSON object, exactly the JSON sent (`{}` for
//! an empty string), valid against the tool's schema, and accepted again when re-encoded;
//! a refusal names the tool.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use codelab_agent_runtime::tools::{all, get, validate_arguments};
use jsonschema::Validator;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Each tool's schema compiled once by this target (independently of the runtime's copy).
static SCHEMAS: LazyLock<HashMap<&'static str, Validator>> = LazyLock::new(|| {
    all()
        .iter()
        .map(|tool| {
            let schema = jsonschema::draft7::new(&tool.parameters).expect("the schemas compile");
            (tool.name, schema)
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let tools = all();
    let (name, raw) = match tools.get(usize::from(*pick)) {
        Some(tool) => (tool.name, rest),
        None => rest.split_once('\n').unwrap_or((rest, "")),
    };
    match validate_arguments(name, raw) {
        Ok(value) => {
            let schema = SCHEMAS
                .get(name)
                .expect("only a known tool accepts arguments");
            assert!(value.is_object());
            let sent = if raw.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str::<Value>(raw.trim()).expect("accepted arguments are JSON")
            };
            assert_eq!(value, sent, "the arguments were changed");
            assert!(
                schema.is_valid(&value),
                "accepted arguments break the schema"
            );
            let again = validate_arguments(name, &value.to_string());
            assert_eq!(
                again.as_ref().ok(),
                Some(&value),
                "re-encoded arguments refused"
            );
        }
        Err(message) => {
            let known = get(name).is_some();
            if known {
                assert!(message.starts_with(&format!("{name}: ")), "{message}");
            } else {
                assert!(message.starts_with("unknown tool"), "{message}");
            }
        }
    }
});
