//! Calls from the website to the other services: the auth service (code exchange, refresh,
//! revocation, user info, the admin API) and the gateway's REST API, always with the signed-in
//! user's access token, never with a key of the website's own.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A call to another service failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The service answered with an error status; `message` is its description.
    #[error("{service} answered {status}: {message}")]
    Status {
        /// `auth` or `gateway`.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// The answer's `error_description`, `detail` or `error` text.
        message: String,
    },
    /// The service could not be reached, or did not answer in time.
    #[error("{service} cannot be reached: {message}")]
    Unreachable {
        /// `auth` or `gateway`.
        service: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("{service} sent an unexpected answer: {message}")]
    Invalid {
        /// `auth` or `gateway`.
        service: &'static str,
        /// What was expected and what came.
        message: String,
    },
}

impl UpstreamError {
    /// The HTTP status of a refused call.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The service's own message for a refused call, else this error's text.
    pub fn message(&self) -> String {
        match self {
            Self::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The text of an error answer: `error_description`, `detail`, `error.message` or `error`.
fn error_message(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return body.chars().take(300).collect();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    text(value.get("error_description"))
        .or_else(|| text(value.get("detail")))
        .or_else(|| text(value.pointer("/error/message")))
        .or_else(|| text(value.get("error")))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// One service's base URL and a shared HTTP client.
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    base: String,
    service: &'static str,
}

impl Upstream {
    /// Calls to `base` (no trailing slash) named `service` in errors.
    pub fn new(http: reqwest::Client, base: String, service: &'static str) -> Self {
        Self {
            http,
            base,
            service,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, error: reqwest::Error) -> UpstreamError {
        // Without the URL: its path can carry a session id, which must stay out of error text
        // and logs (docs/security.md); reqwest's text never holds headers, so no token either.
        UpstreamError::Unreachable {
            service: self.service,
            message: if error.is_timeout() {
                "timed out".to_owned()
            } else {
                error.without_url().to_string()
            },
        }
    }

    /// Sends a request and returns the status and body text of a success.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, UpstreamError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(UpstreamError::Status {
                service: self.service,
                status: status.as_u16(),
                message: error_message(&body),
            })
        }
    }

    fn parse<T: DeserializeOwned>(&self, body: &str) -> Result<T, UpstreamError> {
        serde_json::from_str(body).map_err(|e| UpstreamError::Invalid {
            service: self.service,
            message: e.to_string(),
        })
    }

    /// A JSON call with a Bearer token.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<T, UpstreamError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let text = self.send(request).await?;
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        self.parse(text)
    }

    /// A form POST without credentials (the token and revocation endpoints of a public
    /// client), with the browser's address for the auth service's per-IP limits.
    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        forwarded_for: Option<&str>,
    ) -> Result<String, UpstreamError> {
        // Built in a block: the serializer is not `Send` and must not live across an await.
        let body = {
            let mut body = form_urlencoded::Serializer::new(String::new());
            for (name, value) in form {
                body.append_pair(name, value);
            }
            body.finish()
        };
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        if let Some(ip) = forwarded_for {
            // Believed only when the website is in AUTH_SERVICE__TRUSTED_PROXIES.
            request = request.header("x-forwarded-for", ip);
        }
        self.send(request).await
    }

    /// `GET <path>` without credentials: status and body, whatever the status (health checks).
    pub async fn probe(&self, path: &str) -> Result<(u16, String), UpstreamError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        Ok((status, body))
    }
}

/// A token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenAnswer {
    /// The access token.
    pub access_token: String,
    /// The refresh token (the `codelab-web` client gets one).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds the access token lives.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// The granted scope.
    #[serde(default)]
    pub scope: Option<String>,
}

/// `GET /oauth/userinfo`.
#[derive(Debug, Clone, Deserialize)]
pub struct UserInfoAnswer {
    /// The user id.
    pub sub: String,
    /// The username.
    pub username: String,
    /// The token's scope.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A user as the auth service's admin API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminUser {
    /// The user id.
    pub id: String,
    /// The username.
    pub username: String,
    /// The email, if any.
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the user may sign in.
    pub is_active: bool,
    /// Whether the user is an administrator.
    pub is_admin: bool,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_login_at: Option<String>,
}

/// An OAuth client as the auth service's admin API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminClient {
    /// The client id.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Whether the client authenticates with a secret.
    pub is_confidential: bool,
    /// Scopes it may get.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// Grant types it may use.
    #[serde(default)]
    pub allowed_grant_types: Vec<String>,
    /// Redirect URIs (authorization code flow).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Whether it is enabled.
    pub is_active: bool,
}

#[derive(Deserialize)]
struct UsersAnswer {
    users: Vec<AdminUser>,
}

#[derive(Deserialize)]
struct ClientsAnswer {
    clients: Vec<AdminClient>,
}

/// The auth service, as the console's public OAuth client and as an admin's agent.
#[derive(Debug, Clone)]
pub struct AuthClient {
    upstream: Upstream,
    client_id: String,
    redirect_uri: String,
}

impl AuthClient {
    /// The auth service at `upstream`, for OAuth client `client_id` with `redirect_uri`.
    pub fn new(upstream: Upstream, client_id: String, redirect_uri: String) -> Self {
        Self {
            upstream,
            client_id,
            redirect_uri,
        }
    }

    /// The service's base URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn parse_tokens(&self, body: &str) -> Result<TokenAnswer, UpstreamError> {
        self.upstream.parse(body)
    }

    /// RFC 6749 §4.1.3 with PKCE: the code and verifier for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        forwarded_for: Option<&str>,
    ) -> Result<TokenAnswer, UpstreamError> {
        let body = self
            .upstream
            .post_form(
                "/oauth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.redirect_uri),
                    ("client_id", &self.client_id),
                    ("code_verifier", verifier),
                ],
                forwarded_for,
            )
            .await?;
        self.parse_tokens(&body)
    }

    /// RFC 6749 §6: new tokens for a refresh token (which rotates); `scope` narrows the new
    /// access token to part of the login's grant (`None`: the whole grant).
    pub async fn refresh(
        &self,
        refresh_token: &str,
        scope: Option<&str>,
        forwarded_for: Option<&str>,
    ) -> Result<TokenAnswer, UpstreamError> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", self.client_id.as_str()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let body = self
            .upstream
            .post_form("/oauth/token", &form, forwarded_for)
            .await?;
        self.parse_tokens(&body)
    }

    /// RFC 7009: ends the login behind `refresh_token`.
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), UpstreamError> {
        self.upstream
            .post_form(
                "/oauth/revoke",
                &[
                    ("token", refresh_token),
                    ("token_type_hint", "refresh_token"),
                    ("client_id", &self.client_id),
                ],
                None,
            )
            .await
            .map(|_| ())
    }

    /// Who the access token belongs to.
    pub async fn userinfo(&self, access: &str) -> Result<UserInfoAnswer, UpstreamError> {
        self.upstream
            .call(Method::GET, "/oauth/userinfo", access, None)
            .await
    }

    /// `GET /admin/users`.
    pub async fn list_users(&self, access: &str) -> Result<Vec<AdminUser>, UpstreamError> {
        let answer: UsersAnswer = self
            .upstream
            .call(Method::GET, "/admin/users", access, None)
            .await?;
        Ok(answer.users)
    }

    /// `POST /admin/users`.
    pub async fn create_user(&self, access: &str, user: &Value) -> Result<Value, UpstreamError> {
        self.upstream
            .call(Method::POST, "/admin/users", access, Some(user))
            .await
    }

    /// `POST /admin/users/{username}/enable|disable`.
    pub async fn set_user_enabled(
        &self,
        access: &str,
        username: &str,
        enabled: bool,
    ) -> Result<Value, UpstreamError> {
        let action = if enabled { "enable" } else { "disable" };
        let path = format!("/admin/users/{}/{action}", path_segment(username));
        self.upstream
            .call(
                Method::POST,
                &path,
                access,
                Some(&Value::Object(Default::default())),
            )
            .await
    }

    /// `POST /admin/users/{username}/password`.
    pub async fn set_password(
        &self,
        access: &str,
        username: &str,
        password: &str,
    ) -> Result<Value, UpstreamError> {
        let path = format!("/admin/users/{}/password", path_segment(username));
        let body = serde_json::json!({ "password": password });
        self.upstream
            .call(Method::POST, &path, access, Some(&body))
            .await
    }

    /// `GET /admin/clients`.
    pub async fn list_clients(&self, access: &str) -> Result<Vec<AdminClient>, UpstreamError> {
        let answer: ClientsAnswer = self
            .upstream
            .call(Method::GET, "/admin/clients", access, None)
            .await?;
        Ok(answer.clients)
    }
}

/// Percent-encodes one path segment.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A session in the gateway's list, and one page of `GET /sessions` (the runtime's shapes, which
/// the gateway passes on).
pub use codelab_protocol::internal::{
    PendingApprovals, SessionHistory, SessionPage, SessionResource, SessionSummary,
};
/// A session's plans (`GET /api/v1/sessions/{id}/plans`, oldest first) and one plan.
pub use codelab_protocol::plans::{PlanView, SessionPlans};
/// Usage answers and budgets (docs/usage.md).
pub use codelab_protocol::usage::{BudgetList, BudgetView, MyUsage, UsageReport, UsageRow};

/// The gateway's REST API, acting as the signed-in user.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    upstream: Upstream,
}

impl GatewayClient {
    /// The gateway at `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    /// The service's base URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// `GET /api/v1/sessions?limit&offset&search`.
    pub async fn list_sessions(
        &self,
        token: &str,
        limit: u32,
        offset: u64,
        search: &str,
    ) -> Result<SessionPage, UpstreamError> {
        let path = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            query.append_pair("offset", &offset.to_string());
            if !search.is_empty() {
                query.append_pair("search", search);
            }
            format!("/api/v1/sessions?{}", query.finish())
        };
        self.upstream.call(Method::GET, &path, token, None).await
    }

    /// `POST /api/v1/sessions`.
    pub async fn create_session(&self, token: &str) -> Result<SessionSummary, UpstreamError> {
        let body = serde_json::json!({});
        self.upstream
            .call(Method::POST, "/api/v1/sessions", token, Some(&body))
            .await
    }

    /// `GET /api/v1/sessions/{id}`, `/history`, `/pending-approvals` or `/plans`, by the
    /// answer's type.
    pub async fn session_part<T: SessionResource>(
        &self,
        token: &str,
        id: &str,
    ) -> Result<T, UpstreamError> {
        let path = format!("/api/v1/sessions/{}{}", path_segment(id), T::SUFFIX);
        self.upstream.call(Method::GET, &path, token, None).await
    }

    /// `POST /api/v1/sessions/{id}/approvals/{call_id}`.
    pub async fn decide(
        &self,
        token: &str,
        id: &str,
        call_id: &str,
        decision: &Value,
    ) -> Result<Value, UpstreamError> {
        let path = format!(
            "/api/v1/sessions/{}/approvals/{}",
            path_segment(id),
            path_segment(call_id)
        );
        self.upstream
            .call(Method::POST, &path, token, Some(decision))
            .await
    }

    /// `POST /api/v1/plans/{id}/decision`: the gateway relays the plan's run
    /// to the session's sockets.
    pub async fn decide_plan(
        &self,
        token: &str,
        plan_id: &str,
        decision: &Value,
    ) -> Result<Value, UpstreamError> {
        let path = format!("/api/v1/plans/{}/decision", path_segment(plan_id));
        self.upstream
            .call(Method::POST, &path, token, Some(decision))
            .await
    }

    /// `GET /api/v1/usage?from=`: the user's LLM calls from `from` (a `YYYY-MM-DD` day) on.
    pub async fn my_usage(&self, token: &str, from: &str) -> Result<MyUsage, UpstreamError> {
        let path = format!("/api/v1/usage?from={}", path_segment(from));
        self.upstream.call(Method::GET, &path, token, None).await
    }

    /// `GET /api/v1/admin/usage?group_by=user&from=` (administrators).
    pub async fn usage_by_user(
        &self,
        token: &str,
        from: &str,
    ) -> Result<UsageReport, UpstreamError> {
        let path = format!(
            "/api/v1/admin/usage?group_by=user&from={}",
            path_segment(from)
        );
        self.upstream.call(Method::GET, &path, token, None).await
    }

    /// `GET /api/v1/admin/budgets` (administrators).
    pub async fn budgets(&self, token: &str) -> Result<BudgetList, UpstreamError> {
        self.upstream
            .call(Method::GET, "/api/v1/admin/budgets", token, None)
            .await
    }

    /// `POST /api/v1/sessions/{id}/cancel`.
    pub async fn cancel(&self, token: &str, id: &str) -> Result<Value, UpstreamError> {
        let path = format!("/api/v1/sessions/{}/cancel", path_segment(id));
        let body = serde_json::json!({ "reason": "cancelled from the console" });
        self.upstream
            .call(Method::POST, &path, token, Some(&body))
            .await
    }
}

/// The shared HTTP client for calls to other services.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("codelab-website/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a status means the token is no longer good (sign in again).
pub fn is_unauthorized(error: &UpstreamError) -> bool {
    error.status() == Some(StatusCode::UNAUTHORIZED.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_come_from_every_envelope_we_meet() {
        assert_eq!(
            error_message(r#"{"error":"invalid_grant","error_description":"bad code"}"#),
            "bad code"
        );
        assert_eq!(
            error_message(r#"{"error":"conflict","detail":"already"}"#),
            "already"
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"m","type":"t"}}"#),
            "m"
        );
        assert_eq!(error_message("plain"), "plain");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(path_segment("eve@x.io"), "eve%40x.io");
    }
}
