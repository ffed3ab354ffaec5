//! The standard middleware stack: request ids, a tracing span, HTTP metrics and body limits.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use metrics::{Counter, Histogram};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, OnResponse, TraceLayer};
use tracing::{Level, Span};

use super::{ErrorEnvelope, ErrorShape, ServiceErrorShape, ServiceInfo};
use crate::telemetry::metrics_handle;

/// The request id header, generated when absent and echoed on the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client-supplied request id we keep; longer ones are replaced by a fresh UUID.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Route label for requests that matched no route (bounded, never the raw path).
const UNMATCHED: &str = "unmatched";

/// Metric names for one service, computed once, and the handles of the series seen so far.
struct HttpMetricNames {
    requests: String,
    duration: String,
    /// By route: the (method, status) series of that route. A request finds its handles with
    /// a read lock instead of building owned label sets and looking them up in the recorder's
    /// registry. Bounded like the labels themselves: routes are templates, methods and
    /// statuses few.
    series: RwLock<HashMap<String, Vec<RouteSeries>>>,
}

/// The handles of one (route, method, status) combination.
struct RouteSeries {
    method: &'static str,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

impl HttpMetricNames {
    /// Counts one request and records its duration.
    fn record(&self, method: &'static str, route: &str, status: StatusCode, seconds: f64) {
        let code = status.as_u16();
        let record = |all: &HashMap<String, Vec<RouteSeries>>| {
            let series = all
                .get(route)?
                .iter()
                .find(|s| s.method == method && s.status == code)?;
            series.requests.increment(1);
            series.duration.record(seconds);
            Some(())
        };
        if record(&self.series.read().unwrap_or_else(PoisonError::into_inner)).is_some() {
            return;
        }
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if record(&all).is_some() {
            return;
        }
        let made = RouteSeries {
            method,
            status: code,
            requests: metrics::counter!(
                self.requests.clone(),
                "method" => method,
                "route" => route.to_owned(),
                "status" => code.to_string()
            ),
            duration: metrics::histogram!(
                self.duration.clone(),
                "method" => method,
                "route" => route.to_owned(),
                "status_class" => status_class(status)
            ),
        };
        made.requests.increment(1);
        made.duration.record(seconds);
        all.entry(route.to_owned()).or_default().push(made);
    }
}

/// Wraps every route of `router` (and its fallback) with: request id (`x-request-id`, a UUID
/// when absent, echoed back), a tracing span (method, route template, request id; never
/// headers or bodies), `codelab_<service>_http_requests_total` and
/// `codelab_<service>_http_request_duration_seconds`, and a body limit answered with a 413
/// envelope. Call it last, after merging every route and adding auth layers.
pub fn with_standard_layers(router: Router, info: &ServiceInfo, body_limit_bytes: usize) -> Router {
    let _ = metrics_handle();
    let names = Arc::new(HttpMetricNames {
        requests: info.metric_name("http_requests_total"),
        duration: info.metric_name("http_request_duration_seconds"),
        series: RwLock::default(),
    });
    metrics::describe_counter!(
        names.requests.clone(),
        "HTTP requests by method, route and status"
    );
    metrics::describe_histogram!(
        names.duration.clone(),
        metrics::Unit::Seconds,
        "HTTP request latency until the response head, by method, route and status class"
    );

    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    router
        // Innermost first: Router::layer wraps what is already there.
        .layer(RequestBodyLimitLayer::new(body_limit_bytes))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            (body_limit_bytes, info.error_shape),
            payload_too_large_envelope,
        ))
        .layer(middleware::from_fn_with_state(names, record_http_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or(UNMATCHED, |p| p.as_str());
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), route, request_id)
                })
                // One line per request, written when the response head leaves: no
                // "started" line, no "end of stream" line.
                .on_request(())
                .on_response(ResponseLine)
                .on_eos(())
                // ApiError already logs 5xx once with its detail; avoid a second error line.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRandomRequestId))
        .layer(middleware::map_request(drop_unusable_request_id))
}

/// Makes a random (v4) UUID request id from the thread's CSPRNG (the one `ids::random_hex`
/// uses): `Uuid::new_v4` asks the kernel for every id, a system call per request.
#[derive(Clone, Copy, Debug)]
struct MakeRandomRequestId;

impl MakeRequestId for MakeRandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let mut bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        let text = uuid.hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// The one line logged per request, inside the request span (method, route, request id):
/// `response status=200 latency_us=85`. A success (1xx-3xx) is DEBUG, so at the default
/// level it costs neither CPU nor log bytes (docs/operations.md, "Logs"); a client error (4xx)
/// is INFO and a server error (5xx) WARN, so failures stay visible at the default level.
#[derive(Clone, Copy, Debug)]
struct ResponseLine;

impl<B> OnResponse<B> for ResponseLine {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        let status = response.status().as_u16();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // `tracing::event!` needs a constant level per call site, hence three of them.
        match response_level(response.status()) {
            Level::WARN => tracing::warn!(status, latency_us, "response"),
            Level::INFO => tracing::info!(status, latency_us, "response"),
            _ => tracing::debug!(status, latency_us, "response"),
        }
    }
}

/// The level of a request's line by its status: see [`ResponseLine`].
fn response_level(status: StatusCode) -> Level {
    match status.as_u16() {
        500.. => Level::WARN,
        400..=499 => Level::INFO,
        _ => Level::DEBUG,
    }
}

/// Removes a client-supplied request id that is too long or not plain text, so logs stay
/// clean; the next layer then generates a fresh one.
async fn drop_unusable_request_id(mut req: Request) -> Request {
    let unusable = req.headers().get(REQUEST_ID_HEADER).is_some_and(|value| {
        value.len() > MAX_REQUEST_ID_LEN
            || value.is_empty()
            || !value
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if unusable {
        req.headers_mut().remove(REQUEST_ID_HEADER);
    }
    req
}

async fn record_http_metrics(
    State(names): State<Arc<HttpMetricNames>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    names.record(
        method,
        route,
        response.status(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Turns the body-limit layers' plain-text 413 into the service's envelope, and stamps every
/// response with the service's error shape so the listener's 408 can use it too.
async fn payload_too_large_envelope(
    State((limit, shape)): State<(usize, ErrorShape)>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = next.run(req).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        let message = format!("request body is larger than the {limit} byte limit");
        response = ErrorEnvelope {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: Some("payload_too_large"),
            message: &message,
            detail: None,
        }
        .render(shape);
    }
    response.extensions_mut().insert(ServiceErrorShape(shape));
    response
}

/// A bounded method label: the standard methods, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
