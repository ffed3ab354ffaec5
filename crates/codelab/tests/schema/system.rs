//! What both tests of this binary run against: `codelab up` as a user starts it (an admin
//! password, a temp data dir) and the agent runtime as the split deployment runs it
//! (`codelab serve agent-runtime` with its key, in front of `codelab serve llm-proxy`), because
//! `up` generates the runtime's key per process and never shows it. Plus the three OpenAPI
//! descriptions and how to reach each API.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::common::cli::{Up, admin_login, json_of};
use crate::common::processes::{Process, codelab, free_port, wait_for_status};

/// The admin's password for `--admin-password`.
const ADMIN_PASSWORD: &str = "schema-admin-password-1";
/// The key of the split runtime and its proxy (development: any non-empty value).
pub const RUNTIME_KEY: &str = "schema-test-runtime-key-4b1d";

/// One API under test: where its description is, where its requests go, the headers that
/// authenticate them.
#[derive(Debug, Clone)]
pub struct Api {
    pub name: &'static str,
    pub description_url: String,
    pub base_url: String,
    pub headers: Vec<(String, String)>,
}

/// `codelab up`, the split runtime and the APIs they serve; everything stops when dropped.
pub struct System {
    pub up: Up,
    _runtime: Process,
    _proxy: Process,
    pub apis: Vec<Api>,
    pub dir: TempDir,
}

impl System {
    /// Starts everything and logs the admin in. Auth's brute-force counters are raised: the
    /// tests send thousands of (mostly wrong) logins from one address on purpose, and a lockout
    /// would answer 429 to the valid ones too (a documented answer, but one that would stop
    /// the tests from reaching the code behind it).
    pub async fn start() -> System {
        let dir = tempfile::Builder::new()
            .prefix("schema-test-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("up");
        let up = Up::start(
            &data,
            "127.0.0.1:0",
            &["--admin-password", ADMIN_PASSWORD],
            &[("AUTH_SERVICE__BRUTE_FORCE_THRESHOLD", "1000000")],
        );
        let auth_url = internal_url(&up.summary, "auth");
        let token = access_token(&up.url).await;

        let (proxy, runtime, runtime_url) = start_split_runtime(dir.path()).await;
        let apis = vec![
            Api {
                name: "gateway",
                description_url: format!("{}/api/v1/openapi.json", up.url),
                base_url: up.url.clone(),
                headers: vec![("Authorization".into(), format!("Bearer {token}"))],
            },
            Api {
                name: "auth",
                description_url: format!("{auth_url}/openapi.json"),
                base_url: auth_url,
                headers: Vec::new(),
            },
            Api {
                name: "agent-runtime",
                description_url: format!("{runtime_url}/openapi.json"),
                base_url: runtime_url,
                headers: vec![("X-Internal-Auth".into(), RUNTIME_KEY.into())],
            },
        ];
        System {
            up,
            _runtime: runtime,
            _proxy: proxy,
            apis,
            dir,
        }
    }

    /// The description of `api`, fetched as schemathesis fetches it.
    pub async fn description(api: &Api) -> Value {
        let mut request = reqwest::Client::new().get(&api.description_url);
        for (name, value) in &api.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{} description at {}",
            api.name,
            api.description_url
        );
        json_of(response).await
    }
}

/// The admin's access token from the password grant at the public listener.
async fn access_token(public: &str) -> String {
    let response = admin_login(public, ADMIN_PASSWORD).await;
    assert_eq!(response.status(), 200, "admin login");
    json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `http://host:port` the summary of `codelab up` lists for the internal service `name`.
fn internal_url(summary: &[String], name: &str) -> String {
    summary
        .iter()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name) && line.contains("(internal)"))
                .then(|| words.next().map(str::to_owned))
                .flatten()
        })
        .unwrap_or_else(|| panic!("`codelab up` lists no internal {name}: {summary:?}"))
}

/// `codelab serve llm-proxy` (the mock model) and `codelab serve agent-runtime` on SQLite in
/// `dir`, both with [`RUNTIME_KEY`]; returns them and the runtime's URL once it is ready.
async fn start_split_runtime(dir: &Path) -> (Process, Process, String) {
    let proxy_port = free_port().to_string();
    let mut proxy_command = codelab(&[
        "serve",
        "llm-proxy",
        "--port",
        &proxy_port,
        "--host",
        "127.0.0.1",
    ]);
    proxy_command.env("LLM_PROXY__INTERNAL_API_KEY", RUNTIME_KEY);
    let mut proxy = Process::spawn("llm-proxy", proxy_command, &dir.join("proxy.log"));
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    wait_for_status(
        &format!("{proxy_url}/health"),
        200,
        &mut proxy,
        Duration::from_secs(60),
    )
    .await;

    let runtime_port = free_port().to_string();
    let db = format!("sqlite:///{}", dir.join("agent_runtime.db").display());
    let mut runtime_command = codelab(&[
        "serve",
        "agent-runtime",
        "--port",
        &runtime_port,
        "--host",
        "127.0.0.1",
    ]);
    runtime_command
        .env("AGENT_RUNTIME__INTERNAL_API_KEY", RUNTIME_KEY)
        .env("AGENT_RUNTIME__LLM_PROXY_URL", &proxy_url)
        .env("AGENT_RUNTIME__DB_URL", &db);
    let mut runtime = Process::spawn("agent-runtime", runtime_command, &dir.join("runtime.log"));
    let runtime_url = format!("http://127.0.0.1:{runtime_port}");
    wait_for_status(
        &format!("{runtime_url}/ready"),
        200,
        &mut runtime,
        Duration::from_secs(60),
    )
    .await;
    (proxy, runtime, runtime_url)
}
