//! Oversized, deeply nested and invalid-UTF-8 bodies on every operation of every OpenAPI
//! description (the OAuth form routes are operations of auth's): each gets a clear answer
//! within a bound, never a 5xx; an operation that reads a body refuses these with a 4xx; a body
//! over the service's limit gets 413. Then the same rounds again, and the RSS of the
//! `codelab up` process must not grow past [`RSS_GROWTH_BOUND`].

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::system::{Api, System};

/// Rounds of every hostile body on every operation after the warm-up round.
const ROUNDS: usize = 5;
/// Largest growth of `codelab up`'s RSS from after the warm-up round to after [`ROUNDS`] more.
/// Nothing of a refused request is kept, so what may grow is allocator slack: glibc keeps
/// freed blocks in per-thread arenas (a few worker threads here, bodies of at most 1 MiB). 16
/// MiB is above that slack and far below a leak of the bodies: keeping only the gateway's
/// oversized ones (14 operations x 1 MiB x 5 rounds) would be 70 MiB.
const RSS_GROWTH_BOUND: u64 = 16 * 1024 * 1024;
/// How long RSS may take to come back within the bound after the last round.
const RSS_SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// How long one answer may take (generous: 2 busy cores, debug build).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// Nesting depth of the deep body: far past serde_json's recursion limit (128) and any parser
/// stack, yet under auth's 64 KiB body limit so that the parser, not the size check, sees it.
const DEPTH: usize = 20_000;

/// The largest body each service accepts (the defaults of `*_MAX_BODY_BYTES`, see
/// docs/configuration.md); the oversized body is 1 KiB more.
fn body_limit(api: &str) -> usize {
    match api {
        "auth" => 64 * 1024,
        "gateway" => 1024 * 1024,
        _ => 32 * 1024 * 1024,
    }
}

/// One operation: method, path with its parameters filled in, whether it reads a body and of
/// which media type.
struct Operation {
    method: Method,
    path: String,
    body_type: Option<String>,
}

/// Every operation of `description`, with `{session_id}` set to `session` (a live session, so
/// the handlers get as far as the body) and other parameters to plausible values.
fn operations(description: &Value, session: &str) -> Vec<Operation> {
    let mut found = Vec::new();
    for (template, item) in description["paths"].as_object().unwrap() {
        let path = template
            .replace("{session_id}", session)
            .replace("{call_id}", "call_hostile")
            .replace("{agent_id}", "coder");
        for (method, operation) in item.as_object().unwrap() {
            let method = match method.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                // `parameters`, `summary`: not an operation.
                _ => continue,
            };
            let body_type = operation["requestBody"]["content"]
                .as_object()
                .and_then(|content| content.keys().next().cloned());
            found.push(Operation {
                method,
                path: path.clone(),
                body_type,
            });
        }
    }
    found
}

/// The hostile bodies for `api`, each with a name and the status class it must get on an
/// operation that reads a body.
fn bodies(api: &str, media_type: &str) -> Vec<(&'static str, Vec<u8>)> {
    let oversized = vec![b'a'; body_limit(api) + 1024];
    let mut nested = "[".repeat(DEPTH).into_bytes();
    nested.extend("]".repeat(DEPTH).into_bytes());
    let invalid_utf8 = if media_type.contains("form") {
        b"grant_type=password&client_id=codelab-flutter-app&username=\xff\xfe\xfd&password=\xc3\x28"
            .to_vec()
    } else {
        b"{\"title\": \"\xff\xfe\xfd\", \"decision\": \"\xc3\x28\", \"message\": {\"type\": \"user_message\", \"content\": \"\xed\xa0\x80\"}}".to_vec()
    };
    vec![
        ("oversized", oversized),
        ("deeply nested", nested),
        ("invalid UTF-8", invalid_utf8),
    ]
}

/// Sends every hostile body to every operation of `api` once; returns what went wrong.
async fn one_round(http: &reqwest::Client, api: &Api, operations: &[Operation]) -> Vec<String> {
    let mut problems = Vec::new();
    for operation in operations {
        let media_type = operation
            .body_type
            .clone()
            .unwrap_or_else(|| "application/json".to_owned());
        for (kind, body) in bodies(api.name, &media_type) {
            let url = format!("{}{}", api.base_url, operation.path);
            let mut request = http
                .request(operation.method.clone(), &url)
                .header("content-type", &media_type)
                .body(body);
            for (name, value) in &api.headers {
                request = request.header(name, value);
            }
            let label = format!(
                "{} {} {} ({kind})",
                api.name, operation.method, operation.path
            );
            let status = match tokio::time::timeout(ANSWER_WITHIN, request.send()).await {
                Err(_) => {
                    problems.push(format!("{label}: no answer within {ANSWER_WITHIN:?}"));
                    continue;
                }
                Ok(Err(error)) => {
                    problems.push(format!("{label}: {error:?}"));
                    continue;
                }
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    // Read the whole answer so the connection is reused.
                    let _ = response.bytes().await;
                    status
                }
            };
            let expected = if kind == "oversized" {
                status == 413
            } else if operation.body_type.is_some() {
                (400..500).contains(&status)
            } else {
                // An operation without a body ignores it: any answer but a 5xx.
                status < 500
            };
            if !expected {
                problems.push(format!("{label}: {status}"));
            }
        }
    }
    problems
}

/// A live session of `api` to aim the session routes at.
async fn live_session(http: &reqwest::Client, api: &Api) -> String {
    let path = match api.name {
        "gateway" => "/api/v1/sessions",
        "agent-runtime" => "/sessions",
        _ => return "no-session".to_owned(),
    };
    let mut request = http.post(format!("{}{path}", api.base_url));
    for (name, value) in &api.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{}: {}",
        api.name,
        response.status()
    );
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_a_clear_refusal_and_leave_no_memory_behind() {
    let system = System::start().await;
    let http = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    let mut targets = Vec::new();
    for api in &system.apis {
        let description = System::description(api).await;
        let session = live_session(&http, api).await;
        targets.push((api.clone(), operations(&description, &session)));
    }
    let operations: usize = targets.iter().map(|(_, ops)| ops.len()).sum();

    let mut problems = Vec::new();
    for (api, ops) in &targets {
        problems.extend(one_round(&http, api, ops).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let before = system.up.process.memory("VmRSS");
    let mut series = Vec::new();
    for _ in 0..ROUNDS {
        for (api, ops) in &targets {
            problems.extend(one_round(&http, api, ops).await);
        }
        series.push(system.up.process.memory("VmRSS") / (1024 * 1024));
    }
    println!("hostile bodies: RSS MiB after each round {series:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Freed memory may take a moment to be handed back (the services trim malloc's arenas
    // now and then): poll, bounded, for RSS to be within the bound.
    let deadline = std::time::Instant::now() + RSS_SETTLE_WITHIN;
    let mut after = system.up.process.memory("VmRSS");
    while after > before + RSS_GROWTH_BOUND && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = system.up.process.memory("VmRSS");
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "hostile bodies: {operations} operations x 3 bodies x {} rounds; codelab up RSS {:.1} MiB \
         after the warm-up round, {:.1} MiB after the rest",
        ROUNDS + 1,
        mib(before),
        mib(after)
    );
    assert!(
        after <= before + RSS_GROWTH_BOUND,
        "codelab up grew from {:.1} MiB to {:.1} MiB (after each round: {series:?} MiB)",
        mib(before),
        mib(after)
    );
}
