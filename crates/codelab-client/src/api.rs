//! The gateway's REST API (`{server}/api/v1/...`) with a Bearer token, retried once with a
//! refreshed token after a 401.

use std::sync::Arc;

use codelab_protocol::internal::{PendingApprovals, SessionPage};
use codelab_protocol::plans::{PlanView, SessionPlans};
use codelab_protocol::usage::SessionUsage;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{AuthError, TokenManager};

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection to the server.
    #[error("cannot reach the gateway at {server}: {reason}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The gateway answered an error status.
    #[error("{method} {path} answered HTTP {status}: {detail}")]
    Status {
        /// The method.
        method: String,
        /// The path under `/api/v1`.
        path: String,
        /// HTTP status.
        status: u16,
        /// The body's error text.
        detail: String,
    },
    /// The answer is not the JSON expected.
    #[error("unexpected answer to {path}: {message}")]
    Decode {
        /// The path under `/api/v1`.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The token could not be renewed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ApiError {
    /// The HTTP status of a refused call.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A session as the gateway lists it, and a tool call waiting for a person (the runtime's
/// shapes, which the gateway passes on).
pub use codelab_protocol::internal::{PendingApproval, SessionSummary};

/// One agent of `GET /agents`.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentInfo {
    /// Its type (`coder`, ...), the name `switch_agent` takes.
    #[serde(rename = "type")]
    pub kind: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The tools it may call.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AgentList {
    #[serde(default)]
    agents: Vec<AgentInfo>,
}

/// The gateway's REST API for the logged-in user.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    http: reqwest::Client,
    tokens: Arc<TokenManager>,
}

fn error_detail(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let pick = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    pick("detail")
        .or_else(|| pick("error_description"))
        .or_else(|| pick("error"))
        .unwrap_or_else(|| text.chars().take(300).collect())
}

impl GatewayApi {
    /// A client acting with `tokens`' user on their server.
    pub fn new(http: reqwest::Client, tokens: Arc<TokenManager>) -> GatewayApi {
        GatewayApi { http, tokens }
    }

    /// The token manager.
    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.tokens
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> Result<reqwest::Response, ApiError> {
        let server = self.tokens.server();
        let mut request = self
            .http
            .request(method, format!("{server}/api/v1{path}"))
            .bearer_auth(token);
        if path.ends_with("/cancel") || path == "/sessions" {
            request = request
                .header("content-type", "application/json")
                .body("{}");
        }
        request.send().await.map_err(|e| ApiError::Unreachable {
            server: server.to_owned(),
            reason: crate::describe_reqwest(&e),
        })
    }

    /// One call; a 401 is retried once with a refreshed token.
    pub async fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, ApiError> {
        let token = self.tokens.access_token().await?;
        let mut response = self.send(method.clone(), path, &token).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let token = self.tokens.refresh_after_rejection(&token).await?;
            response = self.send(method.clone(), path, &token).await?;
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ApiError::Status {
                method: method.to_string(),
                path: path.to_owned(),
                status: status.as_u16(),
                detail: error_detail(&text),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ApiError::Decode {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn decode<T: for<'de> Deserialize<'de>>(path: &str, value: Value) -> Result<T, ApiError> {
        serde_json::from_value(value).map_err(|e| ApiError::Decode {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// `POST /sessions`.
    pub async fn create_session(&self) -> Result<SessionSummary, ApiError> {
        let value = self.call(reqwest::Method::POST, "/sessions").await?;
        Self::decode("/sessions", value)
    }

    /// `GET /sessions/{id}`.
    pub async fn session(&self, id: &str) -> Result<SessionSummary, ApiError> {
        let path = format!("/sessions/{}", segment(id));
        let value = self.call(reqwest::Method::GET, &path).await?;
        Self::decode(&path, value)
    }

    /// `GET /sessions?limit=N`, most recently active first.
    pub async fn sessions(&self, limit: u32) -> Result<Vec<SessionSummary>, ApiError> {
        let path = format!("/sessions?limit={limit}");
        let value = self.call(reqwest::Method::GET, &path).await?;
        Ok(Self::decode::<SessionPage>(&path, value)?.sessions)
    }

    /// `GET /sessions/{id}/history` (messages, agent changes, tool calls, `active_turn`).
    pub async fn history(&self, id: &str) -> Result<Value, ApiError> {
        let path = format!("/sessions/{}/history", segment(id));
        self.call(reqwest::Method::GET, &path).await
    }

    /// `GET /sessions/{id}/pending-approvals`.
    pub async fn pending_approvals(&self, id: &str) -> Result<Vec<PendingApproval>, ApiError> {
        let path = format!("/sessions/{}/pending-approvals", segment(id));
        let value = self.call(reqwest::Method::GET, &path).await?;
        Ok(Self::decode::<PendingApprovals>(&path, value)?.pending_approvals)
    }

    /// `GET /sessions/{id}/plans`: the session's plans, oldest first.
    pub async fn session_plans(&self, id: &str) -> Result<Vec<PlanView>, ApiError> {
        let path = format!("/sessions/{}/plans", segment(id));
        let value = self.call(reqwest::Method::GET, &path).await?;
        Ok(Self::decode::<SessionPlans>(&path, value)?.plans)
    }

    /// `GET /sessions/{id}/usage`: the session's LLM calls per turn and step (docs/usage.md).
    pub async fn session_usage(&self, id: &str) -> Result<SessionUsage, ApiError> {
        let path = format!("/sessions/{}/usage", segment(id));
        let value = self.call(reqwest::Method::GET, &path).await?;
        Self::decode(&path, value)
    }

    /// `GET /agents`.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, ApiError> {
        let value = self.call(reqwest::Method::GET, "/agents").await?;
        Ok(Self::decode::<AgentList>("/agents", value)?.agents)
    }
}

/// A session id as one URL path segment (ids are `[A-Za-z0-9_.-]`; anything else is encoded
/// so it cannot change the path).
pub fn segment(id: &str) -> String {
    // `.` and `..` alone would be resolved away by the URL parser.
    let only_dots = id.bytes().all(|b| b == b'.');
    id.bytes()
        .map(|b| match b {
            b'.' if only_dots => "%2E".to_owned(),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_path() {
        assert_eq!(segment("0f8f-ab_c.d"), "0f8f-ab_c.d");
        assert_eq!(segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(segment(".."), "%2E%2E");
    }

    #[test]
    fn error_details_come_from_the_envelope() {
        assert_eq!(
            error_detail(r#"{"error":"Agent Runtime error: 404","detail":"session x not found"}"#),
            "session x not found"
        );
        assert_eq!(error_detail(r#"{"error":"unauthorized"}"#), "unauthorized");
        assert_eq!(error_detail("plain"), "plain");
    }
}
