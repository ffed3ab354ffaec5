//! HTTP handlers: `/v1/chat/completions`, the model lists.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use codelab_core::http::ApiError;
use codelab_protocol::ide::json_kind;
use codelab_protocol::openai::{
    ANSWERED_BY_MODEL_HEADER, ANSWERED_BY_PROVIDER_HEADER, ChatCompletionRequest, ModelInfo,
};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::AppState;
use crate::dispatch::{OpenStream, is_token};
use crate::events::{LlmEvent, UpstreamError};
use crate::metrics::{self as m, InflightGuard, Outcome, ProviderSeries};
use crate::pricing::Prices;
use crate::providers::ProviderKind;
use crate::relay::WaitTimer;
use crate::render::{
    Accumulator, AnswerIdentity, ChunkRenderer, client_status, upstream_error_body, write_sse_data,
};

/// `POST /v1/chat/completions`.
pub async fn create_chat_completion(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received_at = Instant::now();
    let Ok(permit) = state.limiter.clone().try_acquire_owned() else {
        metrics::counter!(m::CONCURRENCY_REJECTIONS).increment(1);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!(
                "the proxy is already serving its limit of {} concurrent requests; retry shortly",
                state.dispatcher.config.max_concurrent_requests
            ),
        )
        .with_code("concurrency_limit")
        .with_retry_after(1)
        .into_response();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(rejection).into_response(),
    };
    let mut request = match parse_request(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    if request.model.is_empty() {
        request.model = state.dispatcher.config.default_model.clone();
    }
    let plan = match state.dispatcher.plan(&request.model) {
        Ok(plan) => plan,
        Err(unknown) => {
            metrics::counter!(m::REQUESTS, "provider" => "none", "outcome" => "rejected")
                .increment(1);
            return ApiError::bad_request(format!(
                "the model `{}` does not exist: it is not in the model table and has no provider prefix",
                unknown.0
            ))
            .with_code("model_not_found")
            .into_response();
        }
    };
    tracing::debug!(model = %request.model, stream = request.is_stream(), "chat completion");
    let opened = state.dispatcher.open(&plan, &request).await;
    let provider = plan
        .first()
        .map(|d| d.provider)
        .unwrap_or(ProviderKind::Mock);
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => {
            ProviderSeries::of(provider)
                .requests(Outcome::Error)
                .increment(1);
            return upstream_failure(&error);
        }
    };
    let identity = AnswerIdentity::new(&request.model);
    if request.is_stream() {
        stream_answer(
            opened,
            identity,
            request.wants_stream_usage(),
            received_at,
            permit,
            &state,
        )
    } else {
        json_answer(opened, identity, received_at).await
    }
}

/// Checks the body the way clients need to hear about it: bad JSON is 400, a body without
/// `model` or `messages` (or with wrong types) is 422, each with the reason.
fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    // A valid body reads straight into the request; only a body that does not is read again as
    // a tree, to say precisely what is wrong with it.
    if let Ok(request) = serde_json::from_slice(body) {
        return Ok(request);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON: {e}")).with_code("invalid_json")
    })?;
    let Some(object) = value.as_object() else {
        return Err(unprocessable(
            format!("expected a JSON object, got {}", json_kind(&value)),
            None,
        ));
    };
    for (field, expected) in [("model", "a string"), ("messages", "an array")] {
        match object.get(field) {
            None | Some(Value::Null) => {
                return Err(unprocessable(
                    format!("field `{field}` is required"),
                    Some(field),
                ));
            }
            Some(v)
                if (field == "model" && !v.is_string())
                    || (field == "messages" && !v.is_array()) =>
            {
                return Err(unprocessable(
                    format!("field `{field}` must be {expected}, got {}", json_kind(v)),
                    Some(field),
                ));
            }
            Some(_) => {}
        }
    }
    serde_json::from_value(value).map_err(|e| unprocessable(format!("invalid request: {e}"), None))
}

fn unprocessable(message: String, param: Option<&str>) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request_error",
        message,
    )
    .with_code("invalid_body");
    if let Some(param) = param {
        error = error.with_param(param);
    }
    error
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(
            "the request body is larger than the proxy accepts (LLM_PROXY__MAX_BODY_BYTES)",
        )
    } else {
        ApiError::new(status, "invalid_request_error", rejection.body_text())
    }
}

fn upstream_failure(error: &UpstreamError) -> Response {
    let status = StatusCode::from_u16(client_status(error)).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, Json(upstream_error_body(error))).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let secs = error.retry_after.map(|d| d.as_secs().max(1)).unwrap_or(1);
        if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// Token, cost and time accounting shared by both answer forms.
struct Accounting {
    provider: ProviderKind,
    prices: Option<Prices>,
    received_at: Instant,
    first_token_seen: bool,
}

impl Accounting {
    fn new(opened: &OpenStream, received_at: Instant) -> Self {
        Accounting {
            provider: opened.provider,
            prices: opened.prices,
            received_at,
            first_token_seen: false,
        }
    }

    /// Counts the event and prices its usage (the answering deployment's cost).
    fn observe(&mut self, event: &mut LlmEvent) {
        if !self.first_token_seen && is_token(event) {
            self.first_token_seen = true;
            ProviderSeries::of(self.provider)
                .ttft()
                .record(self.received_at.elapsed().as_secs_f64());
        }
        if let LlmEvent::Usage(usage) = event {
            usage.cost = self.prices.map(|prices| prices.cost(usage));
            let series = ProviderSeries::of(self.provider);
            series.tokens_in().increment(usage.prompt_tokens);
            series.tokens_out().increment(usage.completion_tokens);
        }
    }

    fn finish(&self, outcome: Outcome) {
        let series = ProviderSeries::of(self.provider);
        series.requests(outcome).increment(1);
        series
            .duration()
            .record(self.received_at.elapsed().as_secs_f64());
    }
}

async fn json_answer(
    opened: OpenStream,
    identity: AnswerIdentity,
    received_at: Instant,
) -> Response {
    let mut accounting = Accounting::new(&opened, received_at);
    let answered_by = answered_by(&opened);
    let mut accumulator = Accumulator::default();
    let mut events = opened.events;
    while let Some(item) = events.next().await {
        match item {
            Ok(mut event) => {
                accounting.observe(&mut event);
                accumulator.push(event);
            }
            Err(error) => {
                accounting.finish(Outcome::Error);
                return upstream_failure(&error);
            }
        }
    }
    accounting.finish(Outcome::Ok);
    (answered_by, Json(accumulator.into_response(identity))).into_response()
}

/// The headers naming the deployment that answered (`codelab_protocol::openai`): its provider
/// and the model it was sent; a model name no header can carry is left out.
fn answered_by(opened: &OpenStream) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        HeaderName::from_static(ANSWERED_BY_PROVIDER_HEADER),
        HeaderValue::from_static(opened.provider.label()),
    );
    if let Ok(model) = HeaderValue::from_str(&opened.upstream_model) {
        headers.insert(HeaderName::from_static(ANSWERED_BY_MODEL_HEADER), model);
    }
    headers
}

fn stream_answer(
    opened: OpenStream,
    identity: AnswerIdentity,
    include_usage: bool,
    received_at: Instant,
    permit: OwnedSemaphorePermit,
    state: &AppState,
) -> Response {
    let keepalive = Duration::from_secs(state.dispatcher.config.keepalive_interval.max(1));
    let answered_by = answered_by(&opened);
    let accounting = Accounting::new(&opened, received_at);
    let relay = Relay {
        events: Some(opened.events),
        renderer: ChunkRenderer::new(identity, include_usage),
        accounting,
        out: BytesMut::new(),
        keepalive: WaitTimer::new(keepalive),
        _permit: permit,
        _inflight: InflightGuard::new(),
    };
    // The permit and the upstream stream live inside the body: when the client goes away,
    // hyper drops the body, which drops the upstream response and cancels the request.
    (
        answered_by,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx must not buffer a token stream.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(relay),
    )
        .into_response()
}

/// Pieces of the body handed to hyper at once: the events that are ready, up to about this size.
const RELAY_FRAME_BYTES: usize = 16 * 1024;

/// The SSE comment sent when nothing else was sent for a keep-alive interval.
const KEEPALIVE_COMMENT: &[u8] = b": ping\n\n";

/// The body of a streamed answer: upstream events rendered as SSE chunks, every event that is
/// ready written into one piece, then `data: [DONE]`; a keep-alive comment while the upstream
/// is silent.
struct Relay {
    /// `None` once the answer is complete.
    events: Option<crate::events::EventStream>,
    renderer: ChunkRenderer,
    accounting: Accounting,
    /// Rendered bytes not yet handed to hyper.
    out: BytesMut,
    keepalive: WaitTimer,
    _permit: OwnedSemaphorePermit,
    _inflight: InflightGuard,
}

impl Relay {
    /// Renders what the upstream has ready now, until it has nothing ready or the piece is full.
    fn pull(&mut self, cx: &mut Context<'_>) {
        while self.out.len() < RELAY_FRAME_BYTES {
            let Some(events) = self.events.as_mut() else {
                return;
            };
            match events.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(mut event))) => {
                    self.accounting.observe(&mut event);
                    self.renderer.render(&event, &mut self.out);
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(provider = self.accounting.provider.label(), error = %error.message, "upstream failed mid-stream");
                    self.accounting.finish(Outcome::Error);
                    if let Ok(body) = serde_json::to_vec(&upstream_error_body(&error)) {
                        write_sse_data(&mut self.out, &body);
                    }
                    write_sse_data(&mut self.out, b"[DONE]");
                    self.events = None;
                }
                Poll::Ready(None) => {
                    self.accounting.finish(Outcome::Ok);
                    self.renderer.finish(&mut self.out);
                    write_sse_data(&mut self.out, b"[DONE]");
                    self.events = None;
                }
                Poll::Pending => return,
            }
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.pull(cx);
        if !this.out.is_empty() {
            this.keepalive.reset();
            return Poll::Ready(Some(Ok(this.out.split().freeze())));
        }
        if this.events.is_none() {
            return Poll::Ready(None);
        }
        match this.keepalive.poll_expired(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE_COMMENT)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `GET /v1/llm/models` (and the original's unauthenticated `/llm/models`): a bare array.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Vec<ModelInfo>> {
    let models = state
        .dispatcher
        .table
        .list()
        .into_iter()
        .map(|model| {
            let is_mock = model.provider == ProviderKind::Mock;
            ModelInfo {
                name: if is_mock {
                    "FakeLLM Echo".to_owned()
                } else {
                    model.name.clone()
                },
                id: model.name,
                provider: if is_mock {
                    "Fake".to_owned()
                } else {
                    model.provider.label().to_owned()
                },
                context_length: model.context_length.unwrap_or(4096),
                is_available: true,
            }
        })
        .collect();
    Json(models)
}

/// `GET /v1/models`: the OpenAI list shape, for SDK users.
pub async fn list_models_openai(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .dispatcher
        .table
        .list()
        .into_iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": m.provider.label()}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_what_is_missing() {
        let err = parse_request(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message().contains("`model`"));
        let err = parse_request(br#"{"model":"m"}"#).unwrap_err();
        assert!(err.message().contains("`messages`"));
        let err = parse_request(br#"{"model":1,"messages":[]}"#).unwrap_err();
        assert!(err.message().contains("must be a string, got a number"));
        let err = parse_request(b"{not json").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err =
            parse_request(br#"{"model":"m","messages":[{"content":"no role"}]}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message().contains("role"), "{}", err.message());
    }
}
