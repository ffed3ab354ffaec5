//! Calls from one service to another in the same process (`codelab up`, the test stack)
//! without HTTP on the wire: the caller builds the same `reqwest` request it would send, and
//! when the service at that address runs in this process its router (a tower service) answers
//! it directly. Everything above the transport — URLs, headers, the internal key, bodies,
//! status handling, streaming — is one code path for both; the split deployment
//! (`codelab serve`) has no local routes and speaks HTTP as before (docs/architecture.md).
//!
//! What the wire would add and an in-process call does not: the listener's limits (header
//! and body timeouts, the connection cap; the caller is trusted code of the same process) and
//! `reqwest`'s own per-request timeout. Callers bound their calls with their own timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::Router;
use http::header::HOST;
use tower::ServiceExt;

/// The routers of the services running in this process, by the base URL (`http://host:port`)
/// their callers are configured with. Cheap to clone: every clone sees the same routes.
#[derive(Clone, Default)]
pub struct LocalRoutes {
    routes: Arc<Mutex<HashMap<String, LocalRoute>>>,
}

impl std::fmt::Debug for LocalRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(routes.keys()).finish()
    }
}

impl LocalRoutes {
    /// The route to the service at `base_url`: it answers in process once
    /// [`LocalRoutes::serve`] gave that URL a router, and until then the caller uses HTTP.
    /// Callers take it when they are built, before the service they call may exist.
    pub fn route(&self, base_url: &str) -> LocalRoute {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.entry(origin_of(base_url)).or_default().clone()
    }

    /// From now on, calls to `base_url` are answered by `router`. The first router given for
    /// an address stays (a replica on another port has its own address).
    pub fn serve(&self, base_url: &str, router: Router) {
        // Already served: the route keeps the router it has.
        let _ = self.route(base_url).router.set(router);
    }
}

/// Where the calls to one base URL go: a router in this process once it is set.
#[derive(Clone, Default)]
pub struct LocalRoute {
    router: Arc<OnceLock<Router>>,
}

impl std::fmt::Debug for LocalRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoute")
            .field("served", &self.router.get().is_some())
            .finish()
    }
}

/// `scheme://host:port` of a URL as configured (`http://127.0.0.1:8001/` and
/// `http://127.0.0.1:8001` are one service).
fn origin_of(base_url: &str) -> String {
    base_url.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// A `reqwest` client that hands a request to the router of a service in this process when it
/// has a [`LocalRoute`] whose router is set, and sends it over HTTP otherwise.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    local: Option<LocalRoute>,
}

impl ServiceClient {
    /// A client that always uses HTTP through `http`.
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, local: None }
    }

    /// The same client, answered in process when `route` is served.
    #[must_use]
    pub fn with_local_route(mut self, route: Option<LocalRoute>) -> Self {
        self.local = route;
        self
    }

    /// Whether calls are answered in process now.
    pub fn is_in_process(&self) -> bool {
        self.router().is_some()
    }

    /// A request to `url` (send it with [`ServiceClient::send`]).
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    fn router(&self) -> Option<&Router> {
        self.local.as_ref().and_then(|route| route.router.get())
    }

    /// Sends `request`: to the local router when there is one (its answer arrives as a
    /// `reqwest::Response` like any other, its body streamed as the handler produces it),
    /// else over HTTP. A request that cannot be built fails as `reqwest` would.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let Some(router) = self.router() else {
            return request.send().await;
        };
        let request = request.build()?;
        let mut request = http::Request::<reqwest::Body>::try_from(request)?;
        // What a client on the wire always sends; handlers may read it.
        if let Some(authority) = request.uri().authority().cloned()
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().entry(HOST).or_insert(host);
        }
        let response = match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        Ok(reqwest::Response::from(response.map(|body| {
            reqwest::Body::wrap_stream(body.into_data_stream())
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::routing::{get, post};
    use futures_util::StreamExt;

    use super::*;

    fn router() -> Router {
        Router::new()
            .route(
                "/echo",
                post(|headers: http::HeaderMap, body: String| async move {
                    let key = headers
                        .get("x-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let host = headers
                        .get(HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (http::StatusCode::CREATED, format!("{key}|{host}|{body}"))
                }),
            )
            .route(
                "/stream",
                get(|| async {
                    let pieces =
                        futures_util::stream::iter(["a", "b", "c"]).then(|piece| async move {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Ok::<_, std::io::Error>(piece)
                        });
                    Body::from_stream(pieces)
                }),
            )
    }

    #[tokio::test]
    async fn a_served_route_answers_in_process_with_status_headers_and_body() {
        let routes = LocalRoutes::default();
        // Taken before the service exists, as a caller built first does.
        let client = ServiceClient::new(reqwest::Client::new())
            .with_local_route(Some(routes.route("http://127.0.0.1:1/")));
        assert!(!client.is_in_process());
        routes.serve("http://127.0.0.1:1", router());
        assert!(client.is_in_process());

        let response = client
            .send(
                client
                    .request(reqwest::Method::POST, "http://127.0.0.1:1/echo")
                    .header("x-key", "secret")
                    .body("payload"),
            )
            .await
            .expect("in-process answer");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        assert_eq!(
            response.text().await.expect("body"),
            "secret|127.0.0.1:1|payload"
        );
    }

    #[tokio::test]
    async fn a_streamed_body_arrives_piece_by_piece_and_unknown_paths_are_404() {
        let routes = LocalRoutes::default();
        routes.serve("http://127.0.0.1:2", router());
        let client = ServiceClient::new(reqwest::Client::new())
            .with_local_route(Some(routes.route("http://127.0.0.1:2")));
        let response = client
            .send(client.request(reqwest::Method::GET, "http://127.0.0.1:2/stream"))
            .await
            .expect("answer");
        let pieces: Vec<_> = response
            .bytes_stream()
            .map(|piece| piece.expect("piece"))
            .collect()
            .await;
        assert_eq!(pieces, ["a", "b", "c"]);

        let missing = client
            .send(client.request(reqwest::Method::GET, "http://127.0.0.1:2/nope"))
            .await
            .expect("answer");
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn without_a_router_the_request_goes_over_http_and_fails_as_http_does() {
        let routes = LocalRoutes::default();
        // Served under another address only.
        routes.serve("http://127.0.0.1:3", router());
        let client = ServiceClient::new(reqwest::Client::new())
            .with_local_route(Some(routes.route("http://127.0.0.1:4")));
        assert!(!client.is_in_process());
        let error = client
            .send(client.request(reqwest::Method::GET, "http://127.0.0.1:4/stream"))
            .await
            .expect_err("nothing listens on port 4");
        assert!(error.is_connect() || error.is_request(), "{error}");
    }

    #[test]
    fn the_first_router_of_an_address_stays_and_trailing_slashes_do_not_matter() {
        let routes = LocalRoutes::default();
        routes.serve("http://127.0.0.1:5/", router());
        routes.serve("http://127.0.0.1:5", Router::new());
        let route = routes.route("HTTP://127.0.0.1:5");
        assert!(route.router.get().is_some());
        assert_eq!(format!("{routes:?}"), "{\"http://127.0.0.1:5\"}");
    }
}
