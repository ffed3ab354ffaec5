//! `X-Internal-Auth`: the shared key guarding service-to-service links.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use futures_util::future::Either;
use tower::{Layer, Service};

use crate::config::Secret;

/// The header carrying the internal key (defined with the rest of the internal contract).
pub use codelab_protocol::internal::INTERNAL_AUTH_HEADER;

/// Exactly the original's body for a missing or wrong key.
const UNAUTHORIZED_BODY: &str = r#"{"detail":"unauthorized"}"#;

/// Layer requiring a valid `X-Internal-Auth` on every path except the exempt ones.
#[derive(Clone)]
pub struct InternalAuthLayer {
    key: Arc<Secret>,
    exempt: &'static [&'static str],
}

impl std::fmt::Debug for InternalAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAuthLayer")
            .field("exempt", &self.exempt)
            .finish_non_exhaustive()
    }
}

/// A layer checking `X-Internal-Auth` against `key` in constant time; `exempt_paths` (such as
/// `/health`) match the request path exactly. Failures get 401 `{"detail":"unauthorized"}`
/// before any body is read.
pub fn internal_auth_layer(
    key: Secret,
    exempt_paths: &'static [&'static str],
) -> InternalAuthLayer {
    InternalAuthLayer {
        key: Arc::new(key),
        exempt: exempt_paths,
    }
}

/// Applies [`internal_auth_layer`] to every route (and the fallback) of `router`.
pub fn require_internal_auth(
    router: Router,
    key: Secret,
    exempt_paths: &'static [&'static str],
) -> Router {
    router.layer(internal_auth_layer(key, exempt_paths))
}

impl<S> Layer<S> for InternalAuthLayer {
    type Service = InternalAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InternalAuth {
            inner,
            key: Arc::clone(&self.key),
            exempt: self.exempt,
        }
    }
}

/// The service produced by [`InternalAuthLayer`].
#[derive(Clone)]
pub struct InternalAuth<S> {
    inner: S,
    key: Arc<Secret>,
    exempt: &'static [&'static str],
}

impl<S> std::fmt::Debug for InternalAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAuth")
            .field("exempt", &self.exempt)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for InternalAuth<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let allowed = self.exempt.contains(&req.uri().path())
            || req
                .headers()
                .get(INTERNAL_AUTH_HEADER)
                .is_some_and(|presented| self.key.matches(presented.as_bytes()));
        if allowed {
            Either::Right(self.inner.call(req))
        } else {
            // The route template, never the raw path: paths carry session ids (docs/security.md).
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", |matched| matched.as_str());
            tracing::debug!(route, "rejected request without a valid internal key");
            Either::Left(ready(Ok(unauthorized())))
        }
    }
}

fn unauthorized() -> Response {
    let mut response = Response::new(Body::from(UNAUTHORIZED_BODY));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
