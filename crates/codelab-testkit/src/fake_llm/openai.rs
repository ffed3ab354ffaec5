//! OpenAI Chat Completions wire format: `chat.completion` objects, `data:` SSE
//! chunks ending in `data: [DONE]`, and `{"error":{…}}` bodies.

use axum::body::Bytes;
use axum::http::Method;
use serde_json::{Value, json};

use super::{FakeReply, ReplyCtx};

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn id(ctx: &ReplyCtx) -> String {
    format!("chatcmpl-{}", ctx.uid)
}

/// A `chat.completion` or `chat.completion.chunk` (the `object`) with `choices`.
fn envelope(ctx: &ReplyCtx, object: &str, choices: Value) -> Value {
    json!({
        "id": id(ctx),
        "object": object,
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": null,
        "choices": choices,
    })
}

fn chunk(ctx: &ReplyCtx, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut chunk = envelope(
        ctx,
        "chat.completion.chunk",
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
    );
    // Real OpenAI sends `"usage": null` on every chunk only when usage was requested.
    if ctx.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

fn usage(reply: &FakeReply) -> Value {
    let (prompt, completion) = reply.usage;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    })
}

fn finish_reason(reply: &FakeReply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

/// The SSE events of a streamed reply, one body chunk each.
pub(super) fn stream_events(reply: &FakeReply, ctx: &ReplyCtx) -> Vec<Bytes> {
    let mut out = Vec::new();
    // Tool-call-only replies carry the role in the first tool-call chunk.
    let role_chunk = !reply.text_chunks.is_empty()
        || !reply.reasoning_chunks.is_empty()
        || reply.tool_calls.is_empty();
    if role_chunk {
        out.push(sse(&chunk(
            ctx,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        )));
    }
    for piece in &reply.reasoning_chunks {
        out.push(sse(&chunk(ctx, json!({"reasoning_content": piece}), None)));
    }
    for piece in &reply.text_chunks {
        out.push(sse(&chunk(ctx, json!({"content": piece}), None)));
    }
    for (index, call) in reply.tool_calls.iter().enumerate() {
        let start = json!([{
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }]);
        let delta = if index == 0 && !role_chunk {
            json!({"role": "assistant", "content": null, "tool_calls": start})
        } else {
            json!({"tool_calls": start})
        };
        out.push(sse(&chunk(ctx, delta, None)));
        for fragment in call.fragments() {
            let delta =
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]});
            out.push(sse(&chunk(ctx, delta, None)));
        }
    }
    if let Some(message) = &reply.stream_error {
        out.push(sse(&json!({"error": {
            "message": message,
            "type": "server_error",
            "param": null,
            "code": null,
        }})));
        return out;
    }
    out.push(sse(&chunk(ctx, json!({}), Some(finish_reason(reply)))));
    if ctx.include_usage {
        let mut last = envelope(ctx, "chat.completion.chunk", json!([]));
        last["usage"] = usage(reply);
        out.push(sse(&last));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The non-stream `chat.completion` object.
pub(super) fn completion(reply: &FakeReply, ctx: &ReplyCtx) -> Value {
    let text = reply.full_text();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !reply.tool_calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
        "annotations": [],
    });
    if !reply.reasoning_chunks.is_empty() {
        message["reasoning_content"] = Value::String(reply.full_reasoning());
    }
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = reply
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
    }
    let choice = json!({
        "index": 0,
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason(reply),
    });
    let mut completion = envelope(ctx, "chat.completion", json!([choice]));
    completion["usage"] = usage(reply);
    completion["service_tier"] = json!("default");
    completion
}

/// `{"error":{"message","type","param","code"}}` for an HTTP error status.
pub(super) fn error_body(status: u16, message: Option<&str>, model: &str) -> Value {
    let (kind, code, default_message) = match status {
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided: sk-fake****. (fake)".to_owned(),
        ),
        403 => (
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
            "Country, region, or territory not supported (fake)".to_owned(),
        ),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist or you do not have access to it."),
        ),
        429 => (
            "rate_limit_exceeded",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests (fake)".to_owned(),
        ),
        500.. => (
            "server_error",
            None,
            "The server had an error while processing your request. (fake)".to_owned(),
        ),
        _ => (
            "invalid_request_error",
            None,
            "Invalid request (fake)".to_owned(),
        ),
    };
    json!({"error": {
        "message": message.map_or(default_message, str::to_owned),
        "type": kind,
        "param": null,
        "code": code,
    }})
}

/// 404 body for an unknown route.
pub(super) fn not_found(method: &Method, path: &str) -> Value {
    json!({"error": {
        "message": format!("Invalid URL ({method} {path})"),
        "type": "invalid_request_error",
        "param": null,
        "code": null,
    }})
}

/// `GET /v1/models`.
pub(super) fn models(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}))
        .collect();
    json!({"object": "list", "data": data})
}
