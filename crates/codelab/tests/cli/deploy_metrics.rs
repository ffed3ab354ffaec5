//! deploy/grafana/codelab-dashboard.json and deploy/prometheus/alerts.yaml use only metrics the
//! services really export. The services run in process (the stack `codelab up` builds: auth,
//! LLM proxy with its mock model, agent runtime, gateway, website, on SQLite), get a little
//! real traffic (logins, a refresh-token reuse, a lockout, a WebSocket turn with an approval
//! and a tool result), and their `/metrics` are scraped; every metric name of every dashboard
//! query and alert expression must be in some scrape.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::cli::fetch_json;
use codelab_core::config::Secret;
use codelab_testkit::ide_clients::steps::{p2_approve, p2_ask_write};
use codelab_testkit::{P2Frame, Protocol2Client, Protocol2Options};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin-password-123";

/// Series Prometheus writes itself for every target (never in a /metrics answer).
const PROMETHEUS_SERIES: &[&str] = &["up"];

// ------------------------------------------------------------------------------ PromQL names

/// Aggregations, set operators and modifiers: words of PromQL that are not metric names (with
/// [`LABEL_LIST_MODIFIERS`]).
const KEYWORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
];

/// Modifiers followed by a list of label names (`by (job)`), which are not metric names either.
const LABEL_LIST_MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names of a PromQL expression (Grafana's `$variables` allowed): every identifier
/// that is not a function call, keyword, label list, label matcher, string, number or duration.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_until = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        (i, chars.get(i).copied())
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_until(i + 1, '}');
        } else if c == '[' {
            i = skip_until(i + 1, ']');
        } else if c == '$' {
            // $__rate_interval, ${datasource}
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_until(i, '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let (after, next) = next_non_space(i);
            let modifier = LABEL_LIST_MODIFIERS.contains(&word.as_str());
            if modifier && next == Some('(') {
                i = skip_until(after + 1, ')');
            } else if next == Some('(') || modifier || KEYWORDS.contains(&word.as_str()) {
                // A function or an aggregation.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric name of the dashboard's queries and the alert rules, with where it is used.
fn used_names() -> Vec<(String, String)> {
    let root = crate::common::repo_root();
    let mut used = Vec::new();
    let board: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/codelab-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().to_owned();
            queries.push((format!("dashboard panel {:?}", panel["title"]), expr));
        }
    }
    for variable in board["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label)
            let metric = query
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap();
            used.push((
                metric.trim().to_owned(),
                format!("variable {}", variable["name"]),
            ));
        }
    }
    let rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            queries.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(queries.len() > 40, "only {} queries found", queries.len());
    for (place, expr) in queries {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            used.push((name, place.clone()));
        }
    }
    used
}

#[test]
fn the_promql_name_extraction_understands_the_queries() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (namespace, le) (rate(codelab_x_bucket{route!~"/health|/ready",a="b{c}"}[5m]))) > 1.5e9
           or label_replace(codelab_y{state="in_use"} / on (instance) group_left (service) codelab_build_info, "service", "auth", "", "")
           or absent(codelab_build_info{service="gateway"}) or up{job=~".*codelab.*"} == 0
           or sum(increase(codelab_z_total[$__range])) * 60 + count(process_open_fds offset 5m) > bool 2"#,
    );
    let expected: BTreeSet<String> = [
        "codelab_x_bucket",
        "codelab_y",
        "codelab_build_info",
        "up",
        "codelab_z_total",
        "process_open_fds",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
}

// ------------------------------------------------------------------------------------ stack

/// The whole stack in process (codelab_stack, as `codelab up` builds it) and the addresses
/// the traffic goes to.
struct Stack {
    urls: Vec<(&'static str, String)>,
    auth_url: String,
    gateway_url: String,
    http: reqwest::Client,
    _stack: codelab_stack::Stack,
}

async fn start_stack() -> Stack {
    let stack = codelab_stack::Stack::builder()
        .auth_config(|c| {
            c.master_key = Secret::new(ADMIN_PASSWORD);
            c.enable_rate_limiting = Some(false);
        })
        .start()
        .await
        .unwrap();
    let urls: Vec<(&'static str, String)> = stack
        .services()
        .into_iter()
        .map(|(name, address)| (name, format!("http://{address}")))
        .collect();
    let url_of = |service: &str| {
        let (_, url) = urls.iter().find(|(name, _)| *name == service).unwrap();
        url.clone()
    };
    Stack {
        auth_url: url_of("auth"),
        gateway_url: url_of("gateway"),
        urls,
        http: reqwest::Client::new(),
        _stack: stack,
    }
}

impl Stack {
    /// The password grant of the Flutter client: status and body.
    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!("{}/oauth/token", self.auth_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, username: &str, password: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "password"),
            ("client_id", "codelab-flutter-app"),
            ("username", username),
            ("password", password),
        ])
        .await
    }
}

/// Traffic that makes every kind of series appear: health and readiness probes, logins (good,
/// bad, locked out), a refresh rotation and its reuse, a refused token at the gateway, and a
/// WebSocket turn through gateway, runtime and proxy with an approval and a tool result.
async fn exercise(stack: &Stack) {
    for (_, url) in &stack.urls {
        for path in ["/health", "/ready", "/no-such-route"] {
            let _ = stack.http.get(format!("{url}{path}")).send().await.unwrap();
        }
    }
    let (status, tokens) = stack.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("client_id", "codelab-flutter-app"),
        ("refresh_token", refresh.as_str()),
    ];
    let (status, _) = stack.token(&refresh_form).await;
    assert_eq!(status, 200);
    let (status, _) = stack.token(&refresh_form).await;
    assert_eq!(status, 401, "reusing a rotated refresh token is refused");
    for _ in 0..6 {
        let _ = stack.login("mallory", "wrong-password").await;
    }

    let refused = stack
        .http
        .get(format!("{}/api/v1/sessions", stack.gateway_url))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let session = fetch_json(
        stack
            .http
            .post(format!("{}/api/v1/sessions", stack.gateway_url))
            .bearer_auth(&access),
    )
    .await;
    let session = session["id"].as_str().unwrap().to_owned();
    let options = Protocol2Options {
        timeout: Duration::from_secs(20),
        ..Protocol2Options::default()
    }
    .with_token(&access, codelab_testkit::ide_clients::TokenPlacement::Query);
    let mut socket = Protocol2Client::connect(&stack.gateway_url, &session, options)
        .await
        .unwrap();
    socket.wait_for_type("session_info").await.unwrap();
    let call = p2_ask_write(&mut socket, "a.md").await;
    assert!(call.requires_approval(), "{call:?}");
    let call_id = call.call_id().unwrap().to_owned();
    p2_approve(&mut socket, &call_id).await;
    socket
        .send_tool_result(&call_id, "write_file", json!({"success": true}))
        .await
        .unwrap();
    socket
        .wait_for("the answer", P2Frame::is_final_text)
        .await
        .unwrap();
    let done = socket.wait_for_type("turn_finished").await.unwrap();
    assert_eq!(done.outcome(), Some("completed"));
}

/// The series names of a Prometheus text answer.
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let stack = start_stack().await;
    exercise(&stack).await;

    let mut scraped = BTreeSet::new();
    for (service, url) in &stack.urls {
        let response = stack
            .http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{service} /metrics");
        let text = response.text().await.unwrap();
        let names = series_names(&text);
        let own = format!("codelab_{}_", service.replace('-', "_"));
        assert!(
            names.iter().any(|n| n.starts_with(&own)),
            "{service} exports no {own}* series:\n{text}"
        );
        scraped.extend(names);
    }

    let mut missing = Vec::new();
    for (name, place) in used_names() {
        if scraped.contains(&name) || PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        missing.push(format!("{name} ({place})"));
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "used but exported by no service:\n{}\n\nscraped:\n{scraped:#?}",
        missing.join("\n")
    );
}
