//! deploy/compose/docker-compose.yml sets only environment variables the services read: every
//! `<PREFIX>__<KEY>` must be a field of that service's `Config` (serialised from
//! `Config::default()`), every other name one of the plain ones (ENVIRONMENT, PORT, RUST_LOG,
//! provider credentials). The schema, interpolation and start order are checked by
//! deploy/tests/validate_deploy.py (deploy_validation.rs).

use std::collections::BTreeMap;

use crate::common;
use serde_norway::Value;

/// The services of a compose file, with YAML merge keys (`<<: *anchor`) applied.
fn compose_services(path: &str) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(common::repo_root().join(path)).unwrap();
    let mut doc: Value = serde_norway::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    let services = doc.get("services").unwrap().as_mapping().unwrap();
    services
        .iter()
        .map(|(name, service)| {
            let mut service = service.clone();
            service.apply_merge().unwrap();
            (name.as_str().unwrap().to_owned(), service)
        })
        .collect()
}

/// The variable names of a service's `environment` (map or `NAME=value` list form).
fn environment_names(service: &Value) -> Vec<String> {
    match service.get("environment") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map.keys().map(|k| k.as_str().unwrap().to_owned()).collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|item| {
                let item = item.as_str().unwrap();
                item.split_once('=').map_or(item, |(k, _)| k).to_owned()
            })
            .collect(),
        Some(other) => panic!("unexpected environment {other:?}"),
    }
}

/// Whether a service runs the codelab image (its command is a codelab subcommand).
fn runs_codelab(service: &Value) -> bool {
    let image = service.get("image").and_then(Value::as_str).unwrap_or("");
    image.contains("CODELAB_IMAGE")
}

#[test]
fn compose_sets_only_variables_the_services_read() {
    let services = compose_services("deploy/compose/docker-compose.yml");
    let mut checked = 0;
    let mut unknown = Vec::new();
    for (name, service) in &services {
        if !runs_codelab(service) {
            // nginx, postgres, redis: their own images' variables.
            continue;
        }
        let command: Vec<&str> = service
            .get("command")
            .unwrap()
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            matches!(command.first(), Some(&"serve") | Some(&"migrate")),
            "{name}: command {command:?}"
        );
        for variable in environment_names(service) {
            checked += 1;
            if !common::is_known_variable(&variable) {
                unknown.push(format!("{name}: {variable}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "variables no service reads: {unknown:#?}"
    );
    assert!(checked > 40, "only {checked} variables checked");
}

#[test]
fn each_service_gets_its_own_prefix_only() {
    let services = compose_services("deploy/compose/docker-compose.yml");
    let expected = [
        ("auth", "AUTH_SERVICE"),
        ("gateway", "GATEWAY"),
        ("agent-runtime", "AGENT_RUNTIME"),
        ("llm-proxy", "LLM_PROXY"),
        ("website", "WEBSITE"),
    ];
    for (name, prefix) in expected {
        for variable in environment_names(&services[name]) {
            if let Some((p, _)) = variable.split_once("__") {
                assert_eq!(p, prefix, "{name} sets {variable}");
            }
        }
    }
    // The migration job reads both stores' URLs and nothing else of theirs.
    let mut migrate = environment_names(&services["migrate"]);
    migrate.sort();
    assert_eq!(
        migrate,
        [
            "AGENT_RUNTIME__DB_URL",
            "AUTH_SERVICE__DB_URL",
            "ENVIRONMENT"
        ]
    );
}

#[test]
fn the_known_names_come_from_the_config_structs() {
    // A sanity check of the helper itself: real keys are known, made-up ones are not.
    assert!(common::is_known_variable("AUTH_SERVICE__TRUSTED_PROXIES"));
    assert!(common::is_known_variable("GATEWAY__USE_JWT_AUTH"));
    assert!(common::is_known_variable(
        "AGENT_RUNTIME__LLM_PROXY_API_KEY"
    ));
    assert!(common::is_known_variable("LLM_PROXY__INTERNAL_API_KEY"));
    assert!(common::is_known_variable("ANTHROPIC_API_KEY"));
    assert!(!common::is_known_variable("AUTH_SERVICE__DATABASE_URL"));
    assert!(!common::is_known_variable("GATEWAY__WS_HEARTBEAT_TIMEOUT"));
    assert!(!common::is_known_variable("LLM_PROVIDER"));
    assert!(!common::is_known_variable("AGENT_RUNTIME__GATEWAY_URL"));
}
