//! Anthropic Messages API wire format: `message` objects with content blocks,
//! named-event SSE (`event: <type>` + `data: <json>`, no `[DONE]`), and error bodies.

use axum::body::Bytes;
use serde_json::{Value, json};

use super::{FakeReply, ReplyCtx};

const SIGNATURE: &str = "ZmFrZS10aGlua2luZy1zaWduYXR1cmU=";

fn event(value: &Value) -> Bytes {
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    Bytes::from(format!("event: {kind}\ndata: {value}\n\n"))
}

fn id(ctx: &ReplyCtx) -> String {
    format!("msg_{}", ctx.uid)
}

fn stop_reason(reply: &FakeReply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}

/// Whether a text block is emitted: when there is text, or nothing else at all.
fn has_text_block(reply: &FakeReply) -> bool {
    !reply.text_chunks.is_empty()
        || (reply.tool_calls.is_empty() && reply.reasoning_chunks.is_empty())
}

/// The SSE events of a streamed reply, one body chunk each.
pub(super) fn stream_events(reply: &FakeReply, ctx: &ReplyCtx) -> Vec<Bytes> {
    let start = message_object(reply, ctx, json!([]), Value::Null, 1);
    let mut out = vec![
        event(&json!({"type": "message_start", "message": start})),
        event(&json!({"type": "ping"})),
    ];
    // Content blocks are numbered in the order they are sent.
    let mut blocks: Vec<(Value, Vec<Value>)> = Vec::new();
    if !reply.reasoning_chunks.is_empty() {
        let thinking = reply
            .reasoning_chunks
            .iter()
            .map(|piece| json!({"type": "thinking_delta", "thinking": piece}));
        let signature = json!({"type": "signature_delta", "signature": SIGNATURE});
        let deltas = thinking.chain(std::iter::once(signature)).collect();
        blocks.push((json!({"type": "thinking", "thinking": ""}), deltas));
    }
    if has_text_block(reply) {
        let deltas = reply
            .text_chunks
            .iter()
            .map(|piece| json!({"type": "text_delta", "text": piece}))
            .collect();
        blocks.push((json!({"type": "text", "text": ""}), deltas));
    }
    for call in &reply.tool_calls {
        let start = json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
        // Real Anthropic opens every tool input with an empty partial_json.
        let deltas = std::iter::once(String::new())
            .chain(call.fragments())
            .map(|fragment| json!({"type": "input_json_delta", "partial_json": fragment}))
            .collect();
        blocks.push((start, deltas));
    }
    for (index, (block, deltas)) in blocks.into_iter().enumerate() {
        out.push(event(&json!({
            "type": "content_block_start",
            "index": index,
            "content_block": block,
        })));
        for delta in deltas {
            out.push(event(&json!({
                "type": "content_block_delta",
                "index": index,
                "delta": delta,
            })));
        }
        out.push(event(
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    if let Some(message) = &reply.stream_error {
        out.push(event(&json!({
            "type": "error",
            "error": {"type": "overloaded_error", "message": message},
        })));
        return out;
    }
    out.push(event(&json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
        "usage": {"output_tokens": reply.usage.1},
    })));
    out.push(event(&json!({"type": "message_stop"})));
    out
}

/// The non-stream `message` object.
pub(super) fn message(reply: &FakeReply, ctx: &ReplyCtx) -> Value {
    let mut content = Vec::new();
    if !reply.reasoning_chunks.is_empty() {
        content.push(json!({
            "type": "thinking",
            "thinking": reply.full_reasoning(),
            "signature": SIGNATURE,
        }));
    }
    if has_text_block(reply) {
        content.push(json!({"type": "text", "text": reply.full_text()}));
    }
    for call in &reply.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": call.arguments_object(),
        }));
    }
    let stop_reason = json!(stop_reason(reply));
    message_object(reply, ctx, json!(content), stop_reason, reply.usage.1)
}

/// A `message` object: the whole reply, or (in `message_start`) its empty beginning.
fn message_object(
    reply: &FakeReply,
    ctx: &ReplyCtx,
    content: Value,
    stop_reason: Value,
    output_tokens: u64,
) -> Value {
    json!({
        "id": id(ctx),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": reply.usage.0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    })
}

/// `{"type":"error","error":{"type","message"}}` for an HTTP error status.
pub(super) fn error_body(status: u16, message: Option<&str>) -> Value {
    let (kind, default_message) = match status {
        400 => ("invalid_request_error", "Invalid request (fake)"),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "Not found (fake)"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit (fake)",
        ),
        529 => ("overloaded_error", "Overloaded"),
        500.. => ("api_error", "Internal server error"),
        _ => ("invalid_request_error", "Invalid request (fake)"),
    };
    json!({
        "type": "error",
        "error": {"type": kind, "message": message.unwrap_or(default_message)},
    })
}

/// 404 body for an unknown route.
pub(super) fn not_found() -> Value {
    error_body(404, Some("Not Found"))
}

/// `GET /v1/models`.
pub(super) fn models(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-05-14T00:00:00Z",
            })
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": models.first(),
        "last_id": models.last(),
    })
}
