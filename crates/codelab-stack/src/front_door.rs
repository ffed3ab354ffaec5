//! The front door: one listener that routes like our nginx (`/` website, `/oauth/` and
//! `/.well-known/` auth, `/api/v1/` gateway incl. its WebSocket, health routes) and exposes
//! what nginx exposes and no more (docs/security.md).

use codelab_core::service::Service as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, OriginalUri, Request};
use axum::http::{StatusCode, Uri};
use axum::routing::{any, get};
use tower::ServiceExt;

/// Routes of the front door, in nginx's order. Auth paths are dispatched in process to the
/// auth router, keeping the caller's connection info (this hop is not a proxy, so no
/// forwarding header is added).
pub fn front_door_router(
    auth: &Arc<codelab_auth::AppState>,
    gateway: &Arc<codelab_gateway::AppState>,
    website: &Arc<codelab_website::AppState>,
) -> Router {
    let auth_router = codelab_auth::AuthService::router(Arc::clone(auth));
    // The auth router matches on the full path; the outer route's MatchedPath is dropped so
    // its metrics see its own route templates.
    let to_auth = move |rewrite: Option<&'static str>| {
        auth_router.clone().map_request(move |mut req: Request| {
            req.extensions_mut().remove::<MatchedPath>();
            if let Some(path) = rewrite {
                *req.uri_mut() = Uri::from_static(path);
            }
            req
        })
    };
    // The gateway likewise. `/api/v1/` is nested rather than routed with a `{*path}` wildcard:
    // axum would hand the wildcard to the gateway's own `Path` extractors as an extra
    // parameter, while a nest's tail is not passed on. The nest strips the prefix; the
    // original URI (path and query string) is put back, and the request is otherwise
    // untouched, so WebSocket upgrades pass.
    let gateway_router = codelab_gateway::GatewayService::router(Arc::clone(gateway));
    let api = gateway_router.clone().map_request(|mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        if let Some(OriginalUri(uri)) = req.extensions().get::<OriginalUri>().cloned() {
            *req.uri_mut() = uri;
        }
        req
    });
    let gateway_health = gateway_router.map_request(|mut req: Request| {
        req.extensions_mut().remove::<MatchedPath>();
        *req.uri_mut() = Uri::from_static("/health");
        req
    });
    Router::new()
        .route("/nginx-health", get(|| async { "healthy\n" }))
        // Not public, as in nginx: introspection is for services inside the deployment (they
        // call auth's internal port), metrics and readiness for the operator's tools.
        .route("/oauth/introspect", any(not_routed))
        .route("/oauth/introspect/{*rest}", any(not_routed))
        .route("/metrics", any(not_routed))
        .route("/ready", any(not_routed))
        .nest_service("/api/v1", api)
        // nginx maps `/gateway-health` to the gateway's `/health`.
        .route_service("/gateway-health", gateway_health)
        .route_service("/oauth/{*path}", to_auth(None))
        .route_service("/.well-known/{*path}", to_auth(None))
        // nginx maps `/auth-health` to the auth service's `/health`.
        .route_service("/auth-health", to_auth(Some("/health")))
        // Everything else is the website (docs and console), as nginx's `location /`.
        .fallback_service(
            codelab_website::WebsiteService::router(Arc::clone(website)).map_request(
                |mut req: Request| {
                    req.extensions_mut().remove::<MatchedPath>();
                    req
                },
            ),
        )
        .layer(axum::middleware::map_request(strip_internal_headers))
}

/// The front door while the services wait for their database
/// ([`crate::StackBuilder::wait_for_database`]): not ready on its health routes, and 503 with
/// `Retry-After` in each routed service's own error shape elsewhere, so a client sees why
/// instead of a refused or hanging connection. The database's error stays in the operator's
/// output: clients only learn that the system is starting.
pub(crate) fn front_door_while_waiting() -> Router {
    use axum::http::header::RETRY_AFTER;
    use axum::response::IntoResponse;
    use codelab_core::starting::RETRY_AFTER_SECONDS;
    const WHY: &str = "CodeLab is starting: its database does not answer yet";
    let plain = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, RETRY_AFTER_SECONDS)],
            format!("{WHY}\n"),
        )
            .into_response()
    };
    let service_health = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, RETRY_AFTER_SECONDS)],
            axum::Json(serde_json::json!({"status": "starting", "detail": WHY})),
        )
            .into_response()
    };
    // The gateway's envelope (`{"detail": ...}`) and auth's (RFC 6749 §5.2 shape, with the
    // `temporarily_unavailable` code of §4.1.2.1).
    let gateway = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, RETRY_AFTER_SECONDS)],
            axum::Json(serde_json::json!({"detail": WHY})),
        )
            .into_response()
    };
    let auth = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, RETRY_AFTER_SECONDS)],
            axum::Json(serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": WHY,
            })),
        )
            .into_response()
    };
    Router::new()
        // `up`'s readiness for the user: 503 until every service serves.
        .route("/nginx-health", any(plain))
        .route("/oauth/introspect", any(not_routed))
        .route("/oauth/introspect/{*rest}", any(not_routed))
        .route("/metrics", any(not_routed))
        .route("/ready", any(not_routed))
        .route("/api/v1", any(gateway))
        .route("/api/v1/{*rest}", any(gateway))
        .route("/gateway-health", any(service_health))
        .route("/auth-health", any(service_health))
        .route("/oauth/{*path}", any(auth))
        .route("/.well-known/{*path}", any(auth))
        .fallback(plain)
}

/// What nginx answers for a path it does not route.
async fn not_routed() -> StatusCode {
    StatusCode::NOT_FOUND
}

/// Removes the headers only services inside the deployment may send, as nginx does: with them
/// a client could present itself as a service acting for any user (docs/security.md).
pub async fn strip_internal_headers(mut req: Request) -> Request {
    let headers = req.headers_mut();
    headers.remove(codelab_core::http::INTERNAL_AUTH_HEADER);
    headers.remove(codelab_gateway::auth::USER_HEADER);
    req
}
