//! What both tests of this binary run against: `codelab up` as a user starts it (an admin
//! password, a temp data dir, the runtime's key set with `AGENT_RUNTIME__INTERNAL_API_KEY` so
//! the runtime's API on its internal port can be called behind it). Plus the three OpenAPI
//! descriptions and how to reach each API.

use serde_json::Value;
use tempfile::TempDir;

use crate::common::cli::{Up, admin_login, json_of};

/// The admin's password for `--admin-password`.
const ADMIN_PASSWORD: &str = "schema-admin-password-1";
/// The runtime's key, set for `codelab up` (development: any non-empty value).
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

/// `codelab up` and the APIs it serves; it stops when dropped.
pub struct System {
    pub up: Up,
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
            &[
                ("AUTH_SERVICE__BRUTE_FORCE_THRESHOLD", "1000000"),
                ("AGENT_RUNTIME__INTERNAL_API_KEY", RUNTIME_KEY),
            ],
        );
        let auth_url = internal_url(&up.summary, "auth");
        let runtime_url = internal_url(&up.summary, "agent-runtime");
        let token = access_token(&up.url).await;
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
        System { up, apis, dir }
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
            (words.next() == Some(name) && line.contains("(internal"))
                .then(|| words.next().map(str::to_owned))
                .flatten()
        })
        .unwrap_or_else(|| panic!("`codelab up` lists no internal {name}: {summary:?}"))
}
